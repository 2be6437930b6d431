"""What makes a feature (its recipe and the code version), the cache keyed by it, and cache lookups."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import FeatureCache, default_cache_dir
from ..decode import ImageRejected, as_rgb, content_hash
from ..errors import TransferlabError

# Bump when feature computation changes, so caches are never reused across versions.
# 2: conv+BN fused; 3: batched uint8 normalisation; 4: torch decode/resize; 5: checksummed cache entries.
FEATURES_VERSION = "5"


def feature_spec(backbone: Any, pool: str) -> dict[str, Any]:
    """Everything that determines a feature: the backbone's recipe and this code's version.

    It keys the cache (features from different recipes never mix) and is stored in ``model.json``.
    """
    return {**backbone.recipe(pool), "version": FEATURES_VERSION}


def open_cache(
    backbone: Any, pool: str, cache_dir: str | os.PathLike[str] | None, use_cache: bool
) -> FeatureCache | None:
    """The feature cache for a backbone and pooling, or None when caching is off."""
    if not use_cache:
        return None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return FeatureCache(root, feature_spec(backbone, pool))
    except OSError as exc:
        raise TransferlabError(
            f"--cache-dir {root}: cannot write there ({exc.strerror}); pass another --cache-dir or --no-cache"
        ) from None


def lookup(
    sources: Sequence[Any],
    content_hashes: Sequence[str | None] | None,
    cache: FeatureCache | None,
    valid: Callable[[np.ndarray], bool],
    hash_all: bool = False,
) -> tuple[dict[int, np.ndarray], list[str | None], list[int], dict[int, tuple[str, str]]]:
    """Split images into cache hits and work to do.

    Images without a known content hash are decoded once to compute it (only when there is a cache to ask, or
    ``hash_all`` asks for every hash, as feature tables do).

    Returns
    -------
    hits, hashes, todo, errors
        Cached entries by index, every image's hash (None where unknown), the indices still to compute, and images
        that could not be decoded.
    """
    hashes: list[str | None] = list(content_hashes) if content_hashes is not None else [None] * len(sources)
    damaged_before = cache.damaged if cache is not None else 0
    hits: dict[int, np.ndarray] = {}
    todo: list[int] = []
    errors: dict[int, tuple[str, str]] = {}
    for i in range(len(sources)):
        if hashes[i] is None and (cache is not None or hash_all):
            try:
                hashes[i] = content_hash(as_rgb(sources[i]))
            except ImageRejected as exc:
                errors[i] = (exc.reason, exc.detail)
                continue
        hit = cache.get(hashes[i]) if cache is not None and hashes[i] is not None else None
        if hit is not None and valid(hit):
            hits[i] = hit
        else:
            todo.append(i)
    if cache is not None and cache.damaged > damaged_before:
        warnings.warn(
            f"feature cache {cache.dir}: {cache.damaged - damaged_before} damaged entries (bad checksum) were dropped "
            "and are recomputed",
            RuntimeWarning,
            stacklevel=3,
        )
    return hits, hashes, todo, errors
