"""Whole-image features: images → one feature row each, batched, decoded in lanes, worker processes or on the
GPU, computed once and cached."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .._runtime import tune_allocator
from ..cache import FeatureCache
from ..errors import TransferlabError
from . import cuda, loader
from .result import FeatureResult
from .spec import lookup


def featurize_images(
    sources: Sequence[Any],
    backbone: Any,
    *,
    pool: str = "avg",
    content_hashes: Sequence[str | None] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    decode_device: str | None = None,
    hash_all: bool = False,
    lanes: int | None = None,
) -> FeatureResult:
    """Compute (or fetch from the cache) one feature vector per image.

    Parameters
    ----------
    sources
        File paths, raw bytes or PIL images.
    backbone
        A built whole-image backbone (:class:`transferlab.backbones.ImageBackbone`).
    pool
        ``"avg"`` (global average of the final feature map) or ``"flatten"`` (the seed's head input).
    content_hashes
        Pixel hashes from intake, when known; otherwise images are decoded once to compute them.
    cache
        Feature cache for this backbone/pool, or None to compute everything.
    batch_size
        Forward batch size (None: 32 on the CPU; on a GPU, the largest that fits half the free memory).
    num_workers
        Decoding processes (None: :func:`~transferlab.features.loader.default_num_workers`). With none (the default
        on 2 cores), the CPU runs batches side by side in threads, decode and forward in each (lanes); peak memory
        then holds one batch's activations per lane.
    progress
        Called with the number of images finished after each batch.
    decode_device
        Where JPEGs are decoded: ``"loader"`` on the CPU in the data loader (decode workers); a device name
        (``"cuda"``, ``"cpu"``) decodes raw JPEG bytes there in batches (nvJPEG on a GPU, which only the backbone's
        fast recipe allows: its pixels differ from libjpeg-turbo's). None: as the backbone's recipe says
        (``backbone.decoder``).
    hash_all
        Compute every image's content hash even without a cache (returned in ``content_hashes``).
    lanes
        Batches run side by side in threads when decoding happens in this process (None: as many as
        :func:`~transferlab.features.loader.cpu_lanes` says; 1: one batch at a time with every thread).

    Returns
    -------
    FeatureResult
        One row per usable image.
    """
    tune_allocator()
    damaged_before = cache.damaged if cache is not None else 0
    n = len(sources)
    dim = backbone.row_width(pool)
    feats = np.full((n, dim), np.nan, dtype=np.float32)
    hits, hashes, todo, errors = lookup(sources, content_hashes, cache, lambda a: a.shape == (dim,), hash_all=hash_all)
    for i, hit in hits.items():
        feats[i] = hit
    n_cached = len(hits)
    if progress is not None and n_cached + len(errors):
        progress(n_cached + len(errors))
    n_damaged = cache.damaged - damaged_before if cache is not None else 0
    counts = {"n_cached": n_cached, "n_damaged": n_damaged, "content_hashes": hashes}
    if not todo:
        return FeatureResult.from_matrix(feats, errors, n_computed=0, **counts)

    batches = _forward_batches(backbone, sources, todo, pool, batch_size, num_workers, decode_device, lanes)
    n_computed = 0
    for idx, out, bad in batches:
        for i, reason, detail in bad:
            errors[i] = (reason, detail)
        if out is not None:
            for row, i in enumerate(idx):
                feats[i] = out[row]
                if cache is not None and hashes[i] is not None:
                    cache.put(hashes[i], out[row])
            n_computed += len(idx)
        if progress is not None:
            progress(len(idx) + len(bad))
    return FeatureResult.from_matrix(feats, errors, n_computed=n_computed, **counts)


def _forward_batches(
    backbone: Any,
    sources: Sequence[Any],
    todo: list[int],
    pool: str,
    batch_size: int | None,
    num_workers: int | None,
    decode_device: str | None,
    lanes: int | None,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str, str]]]]:
    """The photos ``todo`` through the network, a batch at a time, decoded where the backbone's recipe and the
    machine say (lanes in this process, DataLoader workers, or nvJPEG on the GPU): ``(indices, features or None,
    errors)`` per batch."""
    import torch  # only now: a run served entirely from the cache never imports torch

    on_gpu = backbone.device.type == "cuda"
    if decode_device is None:
        decode_device = str(backbone.device) if backbone.decoder == "nvjpeg" else "loader"
    elif decode_device.startswith("cuda") and backbone.decoder != "nvjpeg":
        raise TransferlabError(
            f"decode_device={decode_device!r} decodes with nvJPEG, but the backbone's {backbone.recipe_name} recipe "
            "decodes on the CPU; use its fast recipe (backbone.use_recipe('fast')) or decode_device=None"
        )
    if batch_size is None:
        batch_size = cuda.auto_batch_size(backbone, pool) if on_gpu else 32
    raw = decode_device != "loader"
    dataset_type = cuda.RawJpegDataset if raw else loader.ImageDataset
    dataset = dataset_type(sources, todo, backbone.transform, backbone.draft_size)
    workers = loader.default_num_workers(on_gpu and not raw) if num_workers is None else num_workers
    workers = min(workers, max(0, (len(todo) - 1) // batch_size))  # tiny jobs: worker start-up costs more
    n_lanes, per_lane = loader.cpu_lanes(-(-len(todo) // batch_size))
    if lanes is not None:
        n_lanes, per_lane = max(1, lanes), max(1, torch.get_num_threads() // max(1, lanes))
    if not raw and not on_gpu and workers == 0 and n_lanes > 1:
        batches = loader.lane_batches(dataset, batch_size, backbone, pool, n_lanes, per_lane)
    else:
        data_loader = torch.utils.data.DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=cuda.collate_raw if raw else loader.collate,
            pin_memory=on_gpu and not raw,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        pixels = (
            cuda.overlapped(lambda b: cuda.device_batch(b, decode_device, backbone), data_loader, decode_device)
            if raw
            else iter(data_loader)
        )
        batches = (loader.forwarded(backbone, pool, *b) for b in pixels)
    return batches
