"""Decoding on the device: raw JPEG bytes batched through nvJPEG (``torchvision.io.decode_jpeg`` on CUDA), turned
upright and resized there; other files decoded on the CPU in the same batch. Also the GPU batch size."""

from __future__ import annotations

import os
from collections.abc import Callable
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
        import torch

        i = self.indices[k]
        src = self.sources[i]
        if isinstance(src, str | os.PathLike | bytes | bytearray):
            try:
                data = bytes(src) if isinstance(src, bytes | bytearray) else read_bytes(src)
            except ImageRejected as exc:
                return i, exc.reason, exc.detail
            header = jpeg_header(data, orientation=True) if data[:3] == JPEG_MAGIC else None
            if header is not None:
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return i, ("jpeg", raw, header[1]), ""
            src = data
        try:
            return i, ("pixels", self.transform(decode_pixels(src, self.draft)), 1), ""
        except ImageRejected as exc:
            return i, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a batch
            return i, "unreadable", f"{type(exc).__name__}: {exc}"


def collate_raw(batch: list[tuple[int, Any, str]]) -> list[tuple[int, Any, str]]:
    """Raw items stay a list: the device decodes them."""
    return batch


def decode_on_device(
    items: list[tuple[int, torch.Tensor, int]], device: Any, transform: Callable[..., Any]
) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, str, str]]]:
    """Decode raw JPEGs on ``device`` in one batched call (nvJPEG on CUDA), upright them and transform them there.

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
    good, bad = [], []
    for (i, raw, orientation), img in zip(items, decoded, strict=True):
        try:
            if img is None:  # the CPU decoder either manages or says why the file is unusable
                img = decode_pixels(raw.numpy().tobytes(), (1 << 16, 1 << 16)).to(device)
                orientation = 1  # decode_pixels already applied EXIF orientation
            good.append((i, transform(apply_exif_orientation(img, orientation))))
        except ImageRejected as exc:
            bad.append((i, exc.reason, exc.detail))
    return good, bad


def device_batch(
    batch: list[tuple[int, Any, str]], device: Any, backbone: Any
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str, str]]]:
    """Raw-JPEG batch → ``(indices, uint8 batch on the device, errors)``."""
    import torch

    bad = [(i, t, d) for i, t, d in batch if isinstance(t, str)]
    jpegs = [(i, t[1], t[2]) for i, t, _ in batch if not isinstance(t, str) and t[0] == "jpeg"]
    pixels = [(i, t[1].to(device, non_blocking=True)) for i, t, _ in batch if not isinstance(t, str) and t[0] != "jpeg"]
    good, failed = decode_on_device(jpegs, device, backbone.transform) if jpegs else ([], [])
    good += pixels
    return [i for i, _ in good], (torch.stack([t for _, t in good]) if good else None), bad + failed


def batch_for_memory(per_image: float, free: float, fraction: float = 0.5, limit: int = 1024) -> int:
    """Largest power-of-two batch (8 to ``limit``) whose activations fit in ``fraction`` of ``free`` bytes.

    Examples
    --------
    >>> batch_for_memory(per_image=20e6, free=40e9)
    512
    """
    n = int(fraction * free / max(1.0, per_image))
    return max(8, min(limit, 1 << max(3, n.bit_length() - 1)))


def auto_batch_size(backbone: Any, pool: str = "avg", fraction: float = 0.5, limit: int = 1024) -> int:
    """Batch size for a backbone's device: 32 on the CPU; on a GPU the largest power of two whose forward pass fits
    in ``fraction`` of the free memory.

    Measured, not guessed: one forward pass at batch 8 gives the memory one image needs (activations, bf16), which
    scales linearly with the batch (:func:`batch_for_memory`). Larger batches gave nothing on the CPU here.
    """
    import torch

    if backbone.device.type != "cuda":
        return 32
    probe = 8
    size = backbone.cfg.input_size
    x = torch.zeros((probe, size[1], size[2], 3), dtype=torch.uint8, device=backbone.device)
    torch.cuda.synchronize(backbone.device)
    torch.cuda.reset_peak_memory_stats(backbone.device)
    base = torch.cuda.memory_allocated(backbone.device)
    backbone.forward(x, pool=pool)
    torch.cuda.synchronize(backbone.device)
    per_image = (torch.cuda.max_memory_allocated(backbone.device) - base) / probe
    free, _ = torch.cuda.mem_get_info(backbone.device)
    return batch_for_memory(per_image, free, fraction, limit)
