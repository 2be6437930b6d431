"""Process-level settings that must happen before heavy libraries start working."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import sys
from collections.abc import Iterator

from .errors import TransferlabError

_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Stop glibc from returning large activation buffers to the OS after every batch.

    A CNN forward pass at batch 32 allocates tens of MB per layer, above glibc's mmap threshold, so by default
    every batch maps and unmaps that memory and about half of the CPU time goes to the kernel. Disabling mmap for
    large blocks and raising the trim threshold roughly doubled MobileNetV2 throughput on our 2-core machines
    (see BENCHMARKS.md). ``MALLOC_*`` environment variables only work at process start, so we use ``mallopt``.

    Returns
    -------
    bool
        True when the allocator was tuned (glibc found), False elsewhere (macOS, musl, Windows).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("TRANSFERLAB_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
        # One arena: threads other than the main one (featurize's lanes) would otherwise get their own arenas,
        # whose 64 MB heaps cannot keep activation buffers and are mapped and unmapped per batch again (2 lanes:
        # 0.81 × one stream's forward rate with per-thread arenas, 0.95 × with one). Our threads make few, large
        # allocations, so sharing one arena's lock costs nothing measurable.
        ok = ok and libc.mallopt(m_arena_max, 1) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def hub_offline_unless_asked(download: bool) -> None:
    """Make Hugging Face hub access offline unless the user asked to download weights.

    Without this, a missing weights file makes timm retry the network for ~46 s before failing. It must run
    before ``huggingface_hub`` is imported to take effect, so the CLI calls it first thing.
    """
    if download:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def check_device(device: str) -> None:
    """Refuse a device name other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (before any work starts)."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise TransferlabError(f"--device {device}: choose auto, cpu, cuda or cuda:N")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a CUDA GPU, else ``cpu``; ``cuda``/``cuda:N`` checked; ``cpu`` as is.

    On a machine without NVIDIA device files ``auto`` answers ``cpu`` without importing torch (seconds), so a run
    served from the feature cache stays fast.
    """
    check_device(device)
    if device == "cpu":
        return "cpu"
    if device == "auto" and "torch" not in sys.modules and not glob.glob("/dev/nvidia[0-9]*"):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        if device.startswith("cuda:") and int(device.split(":", 1)[1] or 0) >= torch.cuda.device_count():
            raise TransferlabError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        return "cuda" if device == "auto" else device
    if device == "auto":
        return "cpu"
    raise TransferlabError(
        f"--device {device}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); use --device cpu"
    )


@contextlib.contextmanager
def exact_fp32(device: str) -> Iterator[None]:
    """Within the block, fp32 on a CUDA GPU is fp32: TF32 off for cuDNN convolutions and cuBLAS matmuls.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for fp32 convolutions by default, which moves features at the 1e-3
    level; the portable recipe promises the CPU's features to float rounding, so it turns TF32 off while it runs and
    restores the caller's settings after. A no-op elsewhere.
    """
    if not str(device).startswith("cuda"):
        yield
        return
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
