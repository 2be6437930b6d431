"""Face features: every photo → its detected, aligned, embedded faces (a bag of rows), in batches, cached.

On the CPU batches run side by side in lanes (threads with one core each: measured 2.0× one lane on 2 cores,
BENCHMARKS.md), or in worker processes when asked for. On a GPU the files are read in DataLoader workers; the portable
recipe decodes them there as the CPU does, the fast one decodes JPEGs by nvJPEG and runs every stage on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .._runtime import tune_allocator
from ..backbones.faces import META_COLS
from ..cache import FeatureCache
from ..decode import ImageRejected, decode_pixels
from . import cuda, loader
from .result import FeatureResult
from .spec import lookup, open_cache

CPU_BATCH = 24  # photos per batch on the CPU (24–32 measured best on 2 cores; larger batches idle lanes at the end)
# Face lanes on the CPU: one per core (one torch thread each), up to this many. On 2 cores two single-thread lanes
# ran at 2.03 × one core against 1.7 × for one stream with both threads, so faces take a lane per core instead of
# the whole-image path's 4 lanes with several threads each; a face lane holds one batch of photos at the decode
# draft size and ~40 faces' activations (tens of MB), so 16 fit anywhere that has 16 cores.
FACE_MAX_LANES = 16
# From this many photos JPEGs are decoded by torchvision (~0.3 ms a photo faster than Pillow, the same pixels);
# fewer (a predict, a web request) go through Pillow, so that such a process never pays torchvision's ~2 s import.
BULK_DECODE = 64
MIN_LANE_BATCH = 8  # photos: fewer per batch and a lane's fixed costs (a network call per stage) start to show
GPU_BATCH = 128

# A batch of photos: (indices with rows, their rows, [(index, reason, detail)] for photos that could not be used).
FaceBatch = tuple[list[int], list[np.ndarray], list[tuple[int, str, str]]]


def featurize_faces(
    sources: Sequence[Any],
    backbone: Any,
    *,
    content_hashes: Sequence[str | None] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    hash_all: bool = False,
    lanes: int | None = None,
) -> FeatureResult:
    """Detect, align and embed every face of every image (or fetch the rows from the cache).

    Parameters
    ----------
    sources
        File paths, raw bytes or PIL images.
    backbone
        A face backbone (:class:`transferlab.backbones.FaceBackbone`), on the CPU or a GPU.
    content_hashes, cache, progress, hash_all
        As for :func:`~transferlab.features.images.featurize_images`.
    batch_size
        Photos per batch (default 24 on the CPU, 128 on a GPU).
    num_workers
        GPU: file-reading processes (default: :func:`~transferlab.features.loader.default_num_workers`). CPU: with
        N ≥ 1, N processes with one thread each run the whole pipeline, a batch at a time, instead of lanes (threads
        in this process, the default; a lane holds the GIL a few ms of a photo's ~35 ms, measured, which many
        cores may contend for).
    lanes
        CPU: batches side by side in threads (default: one per core, at most 16, each with one torch thread).

    Returns
    -------
    FeatureResult
        An image without a face has an empty ``(0, width)`` bag, not an error: the caller decides the policy.
    """
    tune_allocator()
    if backbone.face.parts:
        return _fused(sources, backbone, content_hashes, cache, batch_size, num_workers, progress, hash_all, lanes)
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
    n_computed = 0
    for idx, rows, bad in _face_batches(backbone, sources, todo, batch_size, num_workers, lanes):
        for i, reason, detail in bad:
            errors[i] = (reason, detail)
        for i, r in zip(idx, rows, strict=True):
            bags[i] = r
            if cache is not None and hashes[i] is not None:
                cache.put(hashes[i], r)
        n_computed += len(idx)
        if progress is not None:
            progress(len(idx) + len(bad))
    return FeatureResult(bags, width, errors, n_cached, n_computed, content_hashes=hashes)


def _fused(
    sources: Sequence[Any],
    backbone: Any,
    content_hashes: Sequence[str | None] | None,
    cache: FeatureCache | None,
    batch_size: int | None,
    num_workers: int | None,
    progress: Callable[[int], None] | None,
    hash_all: bool,
    lanes: int | None,
) -> FeatureResult:
    """A fused backbone's rows, made from its parts' rows: each part featurizes (from its own cache where it can,
    computing only what it lacks), and each face's part embeddings are put side by side, scaled so that a cosine is
    the mean of the parts'. Nothing a part has cached is computed again; the fused rows themselves are not stored
    (they are the parts' rows, side by side)."""
    parts = backbone.parts()
    results = []
    for k, part in enumerate(parts):
        part_cache = None if cache is None else open_cache(part, "faces", cache.root, True)
        results.append(
            featurize_faces(
                sources,
                part,
                content_hashes=content_hashes,
                cache=part_cache,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress if k == 0 else None,  # one bar: the first part's photos
                hash_all=hash_all or cache is not None,
                lanes=lanes,
            )
        )
        content_hashes = results[-1].content_hashes or content_hashes
    width = backbone.row_width("faces")
    bags: list[np.ndarray | None] = [None] * len(sources)
    errors: dict[int, tuple[str, str]] = {}
    redo = []
    for i in range(len(sources)):
        failed = [r.errors[i] for r in results if i in r.errors]
        if failed:
            errors[i] = failed[0]
            continue
        rows = [r.bags[i] for r in results]
        if any(len(r) != len(rows[0]) or not np.allclose(r[:, -META_COLS:], rows[0][:, -META_COLS:]) for r in rows):
            redo.append(i)  # the parts saw different faces (decoded apart): computed together instead
            continue
        emb = np.concatenate([r[:, :-META_COLS] for r in rows], axis=1) / np.sqrt(len(rows))
        bags[i] = np.concatenate([emb, rows[0][:, -META_COLS:]], axis=1).astype(np.float32)
    for idx, rows, bad in _face_batches(backbone, sources, redo, batch_size, num_workers, lanes):
        for i, reason, detail in bad:
            errors[i] = (reason, detail)
        for i, r in zip(idx, rows, strict=True):
            bags[i] = r
    computed = sum(r.n_computed > 0 for r in results)
    n_computed = max(r.n_computed for r in results) if computed else 0
    n_cached = len(sources) - len(errors) - n_computed
    hashes = list(results[-1].content_hashes) if results[-1].content_hashes else []
    return FeatureResult(bags, width, errors, n_cached, n_computed, content_hashes=hashes)


def _decoded(
    sources: Sequence[Any], indices: Sequence[int], draft: tuple[int, int], bulk: bool = True
) -> tuple[list[int], list, list]:
    good, images, bad = [], [], []
    for i in indices:
        try:
            images.append(decode_pixels(sources[i], draft, torchvision_jpeg=bulk))
            good.append(i)
        except ImageRejected as exc:
            bad.append((i, exc.reason, exc.detail))
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a batch
            bad.append((i, "unreadable", f"{type(exc).__name__}: {exc}"))
    return good, images, bad


def _run(pipeline: Any, idx: list[int], images: list, bad: list) -> FaceBatch:
    """The pipeline on a batch; if the batch fails as a whole, photo by photo, so only the culprit fails."""
    try:
        return idx, pipeline.faces(images), bad
    except Exception:  # noqa: BLE001 - isolate the photo that broke the batch
        good, rows = [], []
        for i, img in zip(idx, images, strict=True):
            try:
                rows.append(pipeline.faces([img])[0])
                good.append(i)
            except Exception as exc:  # noqa: BLE001 - one bad photo never stops the run
                bad = [*bad, (i, "unreadable", f"{type(exc).__name__}: {exc}")]
        return good, rows, bad


def _face_batches(
    backbone: Any,
    sources: Sequence[Any],
    todo: list[int],
    batch_size: int | None,
    num_workers: int | None,
    lanes: int | None,
) -> Iterator[FaceBatch]:
    """Yield batches of face rows for the images to compute, in order."""
    if not todo:
        return
    import torch

    pipeline = backbone.pipeline
    draft = backbone.draft_size
    if pipeline.device != "cpu":
        yield from _gpu_batches(backbone, sources, todo, batch_size or GPU_BATCH, num_workers)
        return
    size = batch_size or CPU_BATCH
    if num_workers and len(todo) >= 8:
        yield from _process_batches(backbone, sources, todo, size, num_workers)
        return
    threads = torch.get_num_threads()
    # Every lane gets work: with more lanes than full batches, the batches shrink (to 8 photos at least) rather
    # than cores idling (200 photos on 16 cores: 16 batches of 12–13, not 9 of 22–23).
    n_lanes = max(1, min(lanes or min(threads, FACE_MAX_LANES), len(todo) // MIN_LANE_BATCH))
    per_lane = max(1, threads // n_lanes)
    _ = pipeline.graphs, pipeline.modules  # build once, here, not in two lanes at once

    bulk = len(todo) >= BULK_DECODE

    def batch(bounds: tuple[int, int]) -> FaceBatch:
        return _run(pipeline, *_decoded(sources, todo[bounds[0] : bounds[1]], draft, bulk))

    yield from loader.map_in_lanes(batch, loader.balanced_batches(len(todo), size, n_lanes), n_lanes, per_lane)


_WORKER: dict[str, Any] = {}


def _worker_init(backbone: Any) -> None:
    import cv2
    import torch

    tune_allocator()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _WORKER["backbone"] = backbone


def _worker_batch(job: tuple[list[int], list[Any]]) -> FaceBatch:
    indices, items = job
    bb = _WORKER["backbone"]
    good, images, bad = _decoded(items, range(len(items)), bb.draft_size)
    idx, rows, bad = _run(bb.pipeline, good, images, bad)
    return [indices[k] for k in idx], rows, [(indices[k], r, d) for k, r, d in bad]


def _process_batches(
    backbone: Any, sources: Sequence[Any], todo: list[int], size: int, num_workers: int
) -> Iterator[FaceBatch]:
    """Batches in ``num_workers`` worker processes with one thread each."""
    import multiprocessing as mp

    batches = loader.balanced_batches(len(todo), size, num_workers)
    jobs = [(todo[a:b], [sources[i] for i in todo[a:b]]) for a, b in batches]
    # spawn, not fork: forking a process whose OpenCV/OpenMP threads hold locks deadlocks the children. The
    # backbone travels without its built networks; each worker builds its own.
    ctx = mp.get_context("spawn")
    with ctx.Pool(num_workers, initializer=_worker_init, initargs=(backbone.unbuilt(),)) as pool:
        yield from pool.imap(_worker_batch, jobs)


def _gpu_batches(
    backbone: Any, sources: Sequence[Any], todo: list[int], size: int, num_workers: int | None
) -> Iterator[FaceBatch]:
    """Files read by DataLoader workers. The fast recipe takes raw bytes for JPEGs, decodes them on the device by
    nvJPEG in batches and runs every stage there; the portable one decodes in the workers, as the CPU path does."""
    import torch

    fast = backbone.decoder == "nvjpeg"
    dataset = (cuda.RawJpegDataset if fast else loader.ImageDataset)(
        sources, todo, lambda image: image, backbone.draft_size
    )
    workers = loader.default_num_workers(not fast) if num_workers is None else num_workers
    data = torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=size,
        num_workers=min(workers, max(0, (len(todo) - 1) // size)),
        collate_fn=cuda.collate_raw if fast else list,
        prefetch_factor=4 if workers else None,
    )
    device = backbone.pipeline.device
    for batch in data:
        if not fast:
            good = [(i, t) for i, t, _ in batch if not isinstance(t, str)]
            bad = [(i, t, d) for i, t, d in batch if isinstance(t, str)]
            yield _run(backbone.pipeline, [i for i, _ in good], [t for _, t in good], bad)
            continue
        jpegs = batch.raw()
        good, failed = cuda.decode_on_device(jpegs, device, lambda image: image) if jpegs else ([], [])
        good += [(i, p.to(device)) for i, p in batch.pixels]  # files the CPU decoded
        yield _run(backbone.pipeline, [i for i, _ in good], [t for _, t in good], batch.bad + failed)
