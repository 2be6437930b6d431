"""Decoding on the device: raw JPEG bytes batched through nvJPEG (``torchvision.io.decode_jpeg`` on CUDA), turned
upright and resized there; other files decoded on the CPU in the same batch. Also the GPU batch size."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..decode import (
    JPEG_MAGIC,
    ImageRejected,
    apply_exif_orientation,
    decode_pixels,
    jpeg_header,
    quiet_torchvision_io_deprecation,
    read_bytes,
)
from .loader import ImageDataset

if TYPE_CHECKING:  # pragma: no cover
    import torch


class RawJpegDataset(ImageDataset):
    """For decoding on the device: ordinary JPEGs pass through as raw bytes (decoded in batches by nvJPEG), every
    other file is decoded and transformed here on the CPU, exactly as in :class:`ImageDataset`."""

    def __getitem__(self, k: int) -> tuple[int, Any, str]:
        i = self.indices[k]
        src = self.sources[i]
        if isinstance(src, str | os.PathLike | bytes | bytearray):
            try:
                data = bytes(src) if isinstance(src, bytes | bytearray) else read_bytes(src)
            except ImageRejected as exc:
                return i, exc.reason, exc.detail
            header = jpeg_header(data, orientation=True) if data[:3] == JPEG_MAGIC else None
            if header is not None:
                return i, ("jpeg", data, header[1]), ""
            src = data
        try:
            return i, ("pixels", self.transform(decode_pixels(src, self.draft)), 1), ""
        except ImageRejected as exc:
            return i, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a batch
            return i, "unreadable", f"{type(exc).__name__}: {exc}"


@dataclass
class RawBatch:
    """A batch for the device: the JPEGs' bytes end to end in one tensor (one shared-memory transfer from a loader
    worker instead of one per file), the images the CPU decoded, and the files that could not be used."""

    jpegs: list[tuple[int, int, int, int]]  # (image index, start, stop, EXIF orientation) into ``blob``
    blob: torch.Tensor
    pixels: list[tuple[int, torch.Tensor]]
    bad: list[tuple[int, str, str]]

    def raw(self) -> list[tuple[int, torch.Tensor, int]]:
        """``(index, that JPEG's bytes as a view of the blob, orientation)`` per JPEG."""
        return [(i, self.blob[a:b], o) for i, a, b, o in self.jpegs]


def collate_raw(batch: list[tuple[int, Any, str]]) -> RawBatch:
    """Dataset items → :class:`RawBatch` (in the loader worker, so only the packed batch crosses processes)."""
    import torch

    jpegs, chunks, pixels, bad, at = [], [], [], [], 0
    for i, t, d in batch:
        if isinstance(t, str):
            bad.append((i, t, d))
        elif t[0] == "jpeg":
            jpegs.append((i, at, at + len(t[1]), t[2]))
            chunks.append(t[1])
            at += len(t[1])
        else:
            pixels.append((i, t[1]))
    blob = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8) if at else torch.zeros(0, dtype=torch.uint8)
    return RawBatch(jpegs, blob, pixels, bad)


def transform_grouped(images: list[torch.Tensor], transform: Callable[..., Any]) -> list[torch.Tensor]:
    """``transform`` over images, one call per group of equal size on the stacked group (one resize kernel for
    many images: on a GPU per-image calls are bound by Python and kernel launches, ~15× slower for 640×480 photos).
    The same pixels as one call per image (tested)."""
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for k, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(k)
    out: list[Any] = [None] * len(images)
    for idx in groups.values():
        if len(idx) == 1:
            out[idx[0]] = transform(images[idx[0]])
            continue
        for k, t in zip(idx, transform(torch.stack([images[k] for k in idx])), strict=True):
            out[k] = t
    return out


def decode_on_device(
    items: list[tuple[int, torch.Tensor, int]], device: Any, transform: Callable[..., Any]
) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, str, str]]]:
    """Decode raw JPEGs on ``device`` in one batched call (nvJPEG on CUDA), upright them and transform them there
    (:func:`transform_grouped`).

    A batch call fails as a whole when one file is bad, so on failure each file is retried alone, and files the
    device decoder rejects go through the CPU decoder (which reports why a file is unusable).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    quiet_torchvision_io_deprecation()
    raws = [r for _, r, _ in items]
    try:
        decoded: list[Any] = decode_jpeg(raws, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError):
        decoded = []
        for r in raws:
            try:
                decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
            except (RuntimeError, ValueError):
                decoded.append(None)
    upright, bad = [], []
    for (i, raw, orientation), img in zip(items, decoded, strict=True):
        try:
            if img is None:  # the CPU decoder either manages or says why the file is unusable
                img = decode_pixels(raw.numpy().tobytes(), (1 << 16, 1 << 16)).to(device)
                orientation = 1  # decode_pixels already applied EXIF orientation
            upright.append((i, apply_exif_orientation(img, orientation)))
        except ImageRejected as exc:
            bad.append((i, exc.reason, exc.detail))
    done = transform_grouped([img for _, img in upright], transform)
    return [(i, t) for (i, _), t in zip(upright, done, strict=True)], bad


def device_batch(
    batch: RawBatch, device: Any, backbone: Any
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str, str]]]:
    """Raw-JPEG batch → ``(indices, uint8 batch on the device, errors)``."""
    import torch

    jpegs = batch.raw()
    good, failed = decode_on_device(jpegs, device, backbone.transform) if jpegs else ([], [])
    good += [(i, t.to(device, non_blocking=True)) for i, t in batch.pixels]
    return [i for i, _ in good], (torch.stack([t for _, t in good]) if good else None), batch.bad + failed


def overlapped(
    make: Callable[[Any], tuple[list[int], Any, list[tuple[int, str, str]]]],
    items: Iterable[Any],
    device: Any,
    ahead: int = 2,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str, str]]]]:
    """``make(item)`` for every item in a background thread, up to ``ahead`` items before the caller needs them.

    On a GPU the thread works on its own CUDA stream, so decoding and resizing the next batches overlaps the
    forward pass of this one (nvJPEG and the resize kernels release the GIL); the caller's stream waits for each
    batch's event before using it. Results come in order; an exception in the thread reaches the caller.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    on_cuda = torch.device(device).type == "cuda"
    stream = torch.cuda.Stream(device) if on_cuda else None

    def run(item: Any) -> tuple[Any, Any]:
        if stream is None:
            return make(item), None
        with torch.cuda.stream(stream):
            out = make(item)
            event = torch.cuda.Event()
            event.record(stream)
        return out, event

    it = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="transferlab-decode") as pool:
        pending = deque(pool.submit(run, item) for item in itertools.islice(it, ahead))
        while pending:
            out, event = pending.popleft().result()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append(pool.submit(run, nxt))
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                if out[1] is not None:
                    out[1].record_stream(current)  # the allocator must not reuse it while this stream works
            yield out


_END = object()


def batch_for_memory(per_image: float, free: float, fraction: float = 0.5, limit: int = 1024) -> int:
    """Largest power-of-two batch (8 to ``limit``) whose activations fit in ``fraction`` of ``free`` bytes.

    Examples
    --------
    >>> batch_for_memory(per_image=20e6, free=40e9)
    512
    """
    n = int(fraction * free / max(1.0, per_image))
    return max(8, min(limit, 1 << max(3, n.bit_length() - 1)))


def fastest_batch(rates: dict[int, float], within: float = 0.03) -> int:
    """The smallest batch whose measured rate (images/s) is within ``within`` of the best one.

    Bigger batches cost memory and latency and, past the GPU's saturation point, often speed too (cache pressure,
    worse kernels), so the smallest of the fastest wins.

    Examples
    --------
    >>> fastest_batch({64: 9000.0, 128: 11900.0, 256: 12100.0, 512: 11000.0})
    128
    """
    best = max(rates.values())
    return min(b for b, r in rates.items() if r >= (1 - within) * best)


_MEASURED: dict[tuple[str, ...], int] = {}


def auto_batch_size(backbone: Any, pool: str = "avg", fraction: float = 0.5, limit: int = 1024) -> int:
    """Batch size for a backbone's device: 32 on the CPU; on a GPU the fastest of the power-of-two batches from 32
    up to the largest whose forward pass fits in ``fraction`` of the free memory (:func:`fastest_batch`).

    Measured, not guessed: one forward pass at batch 8 gives the memory one image needs (activations), which scales
    linearly with the batch (:func:`batch_for_memory`); then each candidate batch runs a few timed forward passes
    (about a second in all, once per backbone, recipe and device in a process). Larger batches gave nothing on the
    CPU here.
    """
    import time

    import torch

    if backbone.device.type != "cuda":
        return 32
    key = (backbone.cfg.name, str(backbone.device), backbone.precision, pool, str(backbone.tuned_hash))
    if key in _MEASURED:
        return _MEASURED[key]
    size = backbone.cfg.input_size

    def batch(n: int) -> torch.Tensor:
        return torch.zeros((n, size[1], size[2], 3), dtype=torch.uint8, device=backbone.device)

    probe = 8
    torch.cuda.synchronize(backbone.device)
    torch.cuda.reset_peak_memory_stats(backbone.device)
    base = torch.cuda.memory_allocated(backbone.device)
    backbone.forward(batch(probe), pool=pool)
    torch.cuda.synchronize(backbone.device)
    per_image = (torch.cuda.max_memory_allocated(backbone.device) - base) / probe
    free, _ = torch.cuda.mem_get_info(backbone.device)
    top = batch_for_memory(per_image, free, fraction, limit)
    rates: dict[int, float] = {}
    n = min(32, top)
    while n <= top:
        x = batch(n)
        backbone.forward(x, pool=pool)  # warm-up: cuDNN picks its kernels for this shape
        torch.cuda.synchronize(backbone.device)
        reps = max(2, 512 // n)
        t = time.perf_counter()
        for _ in range(reps):
            backbone.forward(x, pool=pool)
        torch.cuda.synchronize(backbone.device)
        rates[n] = reps * n / (time.perf_counter() - t)
        n *= 2
    _MEASURED[key] = fastest_batch(rates)
    return _MEASURED[key]
