"""Face embedders that read the aligned 112×112 crop (the 5-point template SFace and ArcFace-trained networks share):
a registry, so a new embedder is a module that registers one and a backbone config that names it.

SFace (the shipped ONNX graph, with its own fine-tuning and CPU tracing) and dlib (its own chip, on the CPU) are
built into :mod:`.face_pipeline`; every other crop embedder comes from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TransferlabError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class CropEmbedder:
    """A network from aligned face crops to embeddings.

    Attributes
    ----------
    name
        What a :class:`~._registry.FaceCfg` names in ``embedder``.
    dim
        Embedding width.
    build
        ``build(weights_file)`` → a frozen torch module from RGB crops ``(n, 3, 112, 112)``, float values 0–255, to
        ``(n, dim)`` embeddings (not yet normalised).
    """

    name: str
    dim: int
    build: Callable[[Path], torch.nn.Module]


_EMBEDDERS: dict[str, CropEmbedder] = {}


def register_crop_embedder(embedder: CropEmbedder) -> CropEmbedder:
    """Add a crop embedder (names are unique)."""
    if embedder.name in _EMBEDDERS:
        raise ValueError(f"crop embedder {embedder.name!r} is already registered")
    _EMBEDDERS[embedder.name] = embedder
    return embedder


def crop_embedder(name: str) -> CropEmbedder:
    """A registered crop embedder."""
    try:
        return _EMBEDDERS[name]
    except KeyError:
        raise TransferlabError(f"no face embedder {name!r} is registered") from None


def is_crop_embedder(name: str) -> bool:
    """Whether ``name`` is a registered crop embedder."""
    return name in _EMBEDDERS
