"""Face features: every photo → detected, aligned, embedded faces (a bag of rows), computed once and cached."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..cache import FeatureCache
from ..decode import ImageRejected, as_rgb
from .result import FeatureResult
from .spec import lookup


def featurize_faces(
    sources: Sequence[Any],
    backbone: Any,
    *,
    content_hashes: Sequence[str | None] | None = None,
    cache: FeatureCache | None = None,
    progress: Callable[[int], None] | None = None,
    hash_all: bool = False,
) -> FeatureResult:
    """Detect, align and embed every face of every image (or fetch the rows from the cache).

    Parameters
    ----------
    sources
        File paths, raw bytes or PIL images.
    backbone
        A face backbone (:class:`transferlab.backbones.FaceBackbone`).
    content_hashes, cache, progress, hash_all
        As for :func:`~transferlab.features.images.featurize_images`.

    Returns
    -------
    FeatureResult
        An image without a face has an empty ``(0, width)`` bag, not an error: the caller decides the policy.
    """
    width = backbone.row_width("faces")
    bags: list[np.ndarray | None] = [None] * len(sources)
    hits, hashes, todo, errors = lookup(
        sources, content_hashes, cache, lambda a: a.ndim == 2 and a.shape[1] == width, hash_all=hash_all
    )
    for i, hit in hits.items():
        bags[i] = hit
    n_cached = len(hits)
    if progress is not None and n_cached + len(errors):
        progress(n_cached + len(errors))
    for i, result in _face_rows(backbone, sources, todo):
        if isinstance(result, tuple):
            errors[i] = result
        else:
            bags[i] = result
            if cache is not None and hashes[i] is not None:
                cache.put(hashes[i], result)
        if progress is not None:
            progress(1)
    n_computed = len(todo) - sum(1 for i in todo if i in errors)
    return FeatureResult(bags, width, errors, n_cached, n_computed, content_hashes=hashes)


def _faces_of(model: Any, src: Any, draft: tuple[int, int]) -> Any:
    """Face rows of one image, or ``(reason, detail)`` when it cannot be used."""
    try:
        return model.faces(np.asarray(as_rgb(src, draft)))
    except ImageRejected as exc:
        return (exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return ("unreadable", f"{type(exc).__name__}: {exc}")


_WORKER: dict[str, Any] = {}


def _worker_init(backbone: Any) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER["model"] = backbone.module
    _WORKER["draft"] = backbone.draft_size


def _worker_faces(item: tuple[int, Any]) -> tuple[int, Any]:
    return item[0], _faces_of(_WORKER["model"], item[1], _WORKER["draft"])


def _face_rows(backbone: Any, sources: Sequence[Any], todo: list[int]) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, rows or (reason, detail))`` for the images to compute, in order.

    Embedders that run on one core (dlib: measured 1.00 CPU-seconds per second, and it holds the GIL, so threads
    do not help) are spread over processes; OpenCV's SFace already uses every core and runs in-process.
    """
    workers = min(os.cpu_count() or 1, 4)
    if backbone.cfg.extra.get("single_threaded") and workers > 1 and len(todo) >= 8:
        import multiprocessing as mp

        # spawn, not fork: forking a process whose OpenCV/OpenMP threads hold locks deadlocks the children. The
        # backbone is pickled without its networks (built on first use), so each worker builds its own.
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(_unbuilt(backbone),)) as pool:
            yield from pool.imap(_worker_faces, ((i, sources[i]) for i in todo), chunksize=2)
        return
    for i in todo:
        yield i, _faces_of(backbone.module, sources[i], backbone.draft_size)


def _unbuilt(backbone: Any) -> Any:
    """A copy of a face backbone without its built networks (which cannot be pickled)."""
    copy = type(backbone)(backbone.cfg, backbone.weights_file)
    return copy
