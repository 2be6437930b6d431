"""Features: images → backbone features, batched, decoded in worker processes, computed once and cached."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._runtime import tune_allocator
from .cache import FeatureCache
from .intake import ImageRejected, content_hash, load_rgb, read_rgb

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from .backbones import Backbone

ImageSource = "str | os.PathLike[str] | Image.Image | bytes"
FEATURES_VERSION = "1"  # bump when feature computation changes, so caches are not reused across versions


def feature_spec(backbone: Backbone, pool: str) -> dict[str, Any]:
    """Everything that determines a feature vector; the cache key and part of model.json."""
    return {
        "backbone": backbone.cfg.name,
        "architecture": backbone.cfg.architecture,
        "weights_sha256": backbone.weights_hash,
        "preprocessing": backbone.cfg.preprocessing(),
        "pool": pool,
        "version": FEATURES_VERSION,
    }


@dataclass
class FeatureResult:
    """Features for a list of images, row-aligned with the input; failed rows are NaN and listed in ``errors``."""

    features: np.ndarray
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    n_cached: int = 0
    n_computed: int = 0

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of rows that have features."""
        mask = np.ones(len(self.features), dtype=bool)
        mask[list(self.errors)] = False
        return mask


def _decode(source: Any, draft: tuple[int, int] | None) -> Image.Image:
    from PIL import Image

    if isinstance(source, Image.Image):
        from .intake import _to_rgb

        return _to_rgb(source)
    if isinstance(source, bytes | bytearray):
        return load_rgb(bytes(source), draft=draft)
    return read_rgb(source, draft=draft)


class _ImageDataset:
    """Map-style dataset: index → (index, tensor) or (index, reason, detail). Runs in DataLoader workers."""

    def __init__(self, sources: Sequence[Any], indices: Sequence[int], transform: Callable[..., Any], draft) -> None:
        self.sources = sources
        self.indices = list(indices)
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Any, str]:
        i = self.indices[k]
        try:
            img = _decode(self.sources[i], self.draft)
            return i, self.transform(img), ""
        except ImageRejected as exc:
            return i, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a batch
            return i, "unreadable", f"{type(exc).__name__}: {exc}"


def _collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str, str]]]:
    import torch

    good = [(i, t) for i, t, _ in batch if not isinstance(t, str)]
    bad = [(i, t, d) for i, t, d in batch if isinstance(t, str)]
    x = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], x, bad


def default_num_workers() -> int:
    """Decode workers: one on small machines (more oversubscribes the cores the forward pass uses)."""
    n = os.cpu_count() or 1
    return 1 if n <= 4 else min(4, n // 4)


def featurize(
    sources: Sequence[Any],
    backbone: Backbone,
    *,
    pool: str = "avg",
    content_hashes: Sequence[str | None] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> FeatureResult:
    """Compute (or fetch from the cache) one feature vector per image.

    Parameters
    ----------
    sources
        File paths, raw bytes or PIL images.
    backbone
        A built backbone (:func:`transferlab.backbones.create_backbone`).
    pool
        ``"avg"`` (global average of the final feature map) or ``"flatten"`` (the seed's head input).
    content_hashes
        Pixel hashes from intake, when known; otherwise images are decoded once to compute them.
    cache
        Feature cache for this backbone/pool, or None to compute everything.
    batch_size, num_workers
        Forward batch size and decoding processes (None: :func:`default_num_workers`).
    progress
        Called with the number of images finished after each batch.

    Returns
    -------
    FeatureResult
    """
    tune_allocator()
    n = len(sources)
    dim = int(np.prod(backbone.cfg.feature_shape)) if pool == "flatten" else backbone.cfg.feature_shape[0]
    feats = np.full((n, dim), np.nan, dtype=np.float32)
    errors: dict[int, tuple[str, str]] = {}
    hashes: list[str | None] = list(content_hashes) if content_hashes is not None else [None] * n
    todo: list[int] = []
    n_cached = 0
    for i in range(n):
        if hashes[i] is None and cache is not None:
            try:
                hashes[i] = content_hash(_decode(sources[i], None))
            except ImageRejected as exc:
                errors[i] = (exc.reason, exc.detail)
                continue
        hit = cache.get(hashes[i]) if cache is not None and hashes[i] is not None else None
        if hit is not None and hit.shape == (dim,):
            feats[i] = hit
            n_cached += 1
        else:
            todo.append(i)
    if progress is not None and n_cached + len(errors):
        progress(n_cached + len(errors))
    if not todo:
        return FeatureResult(feats, errors, n_cached, 0)

    import torch  # only now: a run served entirely from the cache never imports torch

    dataset = _ImageDataset(sources, todo, backbone.transform, backbone.draft_size)
    workers = default_num_workers() if num_workers is None else num_workers
    workers = min(workers, max(0, (len(todo) - 1) // batch_size))  # tiny jobs: worker start-up costs more
    loader = torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=backbone.device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    n_computed = 0
    for idx, x, bad in loader:
        for i, reason, detail in bad:
            errors[i] = (reason, detail)
        if x is not None:
            out = backbone.forward(x, pool=pool).cpu().numpy()
            for row, i in enumerate(idx):
                feats[i] = out[row]
                if cache is not None and hashes[i] is not None:
                    cache.put(hashes[i], out[row])
            n_computed += len(idx)
        if progress is not None:
            progress(len(idx) + len(bad))
    return FeatureResult(feats, errors, n_cached, n_computed)


def open_cache(
    backbone: Backbone, pool: str, cache_dir: str | os.PathLike[str] | None, use_cache: bool
) -> FeatureCache | None:
    """The feature cache for a backbone and pooling, or None when caching is off."""
    if not use_cache:
        return None
    from .cache import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return FeatureCache(root, feature_spec(backbone, pool))
    except OSError as exc:
        from .errors import TransferlabError

        raise TransferlabError(
            f"--cache-dir {root}: cannot write there ({exc.strerror}); pass another --cache-dir or --no-cache"
        ) from None
