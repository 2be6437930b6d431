"""Decoding: bytes, files or PIL images → upright 8-bit RGB pixels, or a reason why they cannot be used.

Every stage that looks at pixels (intake, features, augmentation, reports, the web server) decodes through here, so a
photo means the same pixels everywhere. Pillow reads every supported format and enforces the limits; ordinary JPEGs
take libjpeg-turbo through ``torchvision.io.decode_jpeg`` (faster), and on a GPU nvJPEG (:mod:`transferlab.features`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import struct
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import TransferlabError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Formats we read. Everything else Pillow can open (ICO, PSD, PPM, ...) is skipped as "unsupported format":
# users get a clear reason instead of a model silently trained on odd inputs.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
PIL_STATE_LOCK = threading.RLock()  # guards Image.MAX_IMAGE_PIXELS and warning filters while decoding
MAX_PIXELS = 64_000_000  # ~ 8000 x 8000; larger images are treated as decompression bombs
MAX_PIXELS_ENV = "TRANSFERLAB_MAX_PIXELS"  # overrides MAX_PIXELS, e.g. 200000000 for very large scans
MIN_SIDE = 32  # smaller than this carries no usable detail for 224 px backbones

# File signatures of the formats we read: a file that starts like one but cannot be opened is a damaged image
# ("unreadable"), not "not an image".
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
JPEG_MAGIC = b"\xff\xd8\xff"


class ImageRejected(Exception):
    """An input that cannot be used as an image, with a reason (see :data:`transferlab.intake.SKIP_REASONS`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def max_pixels() -> int:
    """The largest image (width × height) decoded: ``$TRANSFERLAB_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`."""
    env = os.environ.get(MAX_PIXELS_ENV)
    if not env:
        return MAX_PIXELS
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value <= 0:
        raise TransferlabError(f"{MAX_PIXELS_ENV}={env!r}: must be a positive whole number of pixels, e.g. 64000000")
    return value


def _signature(data: bytes) -> str | None:
    for magic, fmt in _SIGNATURES.items():
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def load_rgb(
    data: bytes,
    *,
    draft: tuple[int, int] | None = None,
    min_side: int = MIN_SIDE,
    limit: int | None = None,
) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image, or raise :class:`ImageRejected`.

    Parameters
    ----------
    data
        The file's bytes.
    draft
        If given, let the JPEG decoder downscale by a power of two while keeping both sides at least this large
        (much faster for big photos; identical input for training and prediction because both pass the same value).
    min_side
        Images with a side shorter than this are rejected as "too small".
    limit
        Largest width × height accepted (default :func:`max_pixels`); larger images are rejected as
        "decompression bomb" from their header, before any pixel is decoded.

    Returns
    -------
    PIL.Image.Image
        RGB image with EXIF orientation applied and the first frame of animations.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (64, 48)).save(buf, "PNG")
    >>> load_rgb(buf.getvalue()).mode
    'RGB'
    """
    if not data:
        raise ImageRejected("zero-byte", "the file is empty")
    limit = max_pixels() if limit is None else limit
    # Pillow's pixel limit and the warning filters are process-wide: one decode at a time sets them (featurize
    # decodes in threads).
    with PIL_STATE_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                # Pillow warns (UserWarning) about odd metadata such as a corrupt EXIF block; the photo is still used.
                warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
                Image.MAX_IMAGE_PIXELS = limit
                try:
                    img = Image.open(io.BytesIO(data))
                except UnidentifiedImageError:
                    fmt = _signature(data)
                    if fmt is not None:
                        raise ImageRejected("unreadable", f"damaged {fmt} file (its header cannot be parsed)") from None
                    raise ImageRejected("not an image", "no image format recognised") from None
                if img.format not in SUPPORTED_FORMATS:
                    raise ImageRejected("unsupported format", f"{img.format}; convert it to JPEG or PNG to use it")
                if img.width * img.height > limit:
                    raise ImageRejected(
                        "decompression bomb",
                        f"{img.width}x{img.height} pixels exceeds the limit of {limit:,} "
                        f"(set {MAX_PIXELS_ENV} to raise)",
                    )
                if draft is not None and img.format == "JPEG":
                    img.draft("RGB", draft)
                img.load()
                try:
                    img = ImageOps.exif_transpose(img) or img
                except Exception:  # noqa: BLE001 - a broken EXIF block must not lose a good photo
                    pass
                img = to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("decompression bomb", str(exc)) from None
        except ImageRejected:
            raise
        except (SyntaxError, ValueError, OSError, EOFError, struct.error, MemoryError) as exc:
            msg = str(exc)
            if "truncat" in msg.lower() or "premature end" in msg.lower() or isinstance(exc, EOFError):
                raise ImageRejected("truncated", msg) from None
            detail = f"corrupt or unreadable image data ({type(exc).__name__}: {msg})"
            raise ImageRejected("unreadable", detail) from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    if min(img.size) < min_side:
        raise ImageRejected("too small", f"{img.width}x{img.height} px, need at least {min_side} px per side")
    return img


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes; I/O problems become ``ImageRejected("unreadable")``."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageRejected("unreadable", exc.strerror or str(exc)) from None


def read_rgb(path: str | os.PathLike[str], *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Read and decode a file through :func:`load_rgb`."""
    return load_rgb(read_bytes(path), draft=draft)


def as_rgb(source: Any, draft: tuple[int, int] | None = None) -> Image.Image:
    """A path, bytes or PIL image as an upright RGB PIL image (through :func:`load_rgb` unless already decoded)."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, bytes | bytearray):
        return load_rgb(bytes(source), draft=draft)
    return read_rgb(source, draft=draft)


def content_hash(img: Image.Image) -> str:
    """Hash of the decoded pixels (and size): equal for the same photo saved as JPEG, PNG or with other EXIF."""
    h = hashlib.sha256(f"{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


@functools.cache
def quiet_torchvision_io_deprecation() -> None:
    """Silence torchvision 0.29's TorchCodec deprecation message, once per process.

    torchvision deprecates its decoders in favour of TorchCodec (which needs FFmpeg libraries) and warns on every
    call. They still work and are pinned here; only that message is silenced.
    """
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


def jpeg_header(data: bytes, orientation: bool = False) -> tuple[tuple[int, int], int] | None:
    """``(size, EXIF orientation)`` of an RGB/grey JPEG within the size limits, from its header; else None.

    Such files can skip Pillow and be decoded by libjpeg-turbo (CPU) or nvJPEG (GPU); everything else goes through
    :func:`load_rgb`, which reports why a file is unusable. The orientation (1–8, 1 when absent or unreadable, as
    Pillow's ``exif_transpose`` treats it) is read only when asked for: nvJPEG does not apply it.
    """
    try:
        with PIL_STATE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd metadata (a corrupt EXIF block) is load_rgb's business, not ours
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                    return None
                size, turn = img.size, 1
                if orientation:
                    try:
                        value = img.getexif().get(0x0112, 1)
                    except Exception:  # noqa: BLE001 - a broken EXIF block means "upright", as in Pillow
                        value = 1
                    turn = value if isinstance(value, int) and 1 <= value <= 8 else 1
    except Exception:  # noqa: BLE001 - anything odd goes the Pillow route, which reports it properly
        return None
    if min(size) < MIN_SIDE or size[0] * size[1] > max_pixels():
        return None
    return size, turn


def decode_pixels(source: Any, draft: tuple[int, int], *, torchvision_jpeg: bool = True) -> torch.Tensor:
    """Decode a path, bytes or PIL image to an upright ``uint8`` RGB tensor ``(3, H, W)``.

    JPEGs of ordinary size go through libjpeg-turbo in ``torchvision.io.decode_jpeg`` (EXIF orientation applied),
    about 25% faster than Pillow here. Every other case goes through :func:`load_rgb`, the one place that knows
    formats, conversions and limits: other formats, JPEGs torchvision cannot decode (CMYK, broken EXIF), and large
    JPEGs, where Pillow's draft mode decodes at a reduced scale (much faster for camera photos). Limits (size,
    decompression bombs) are checked from the header before decoding.

    ``torchvision_jpeg=False`` sends JPEGs to Pillow too: the same pixels (both are libjpeg-turbo with its default
    DCT and upsampling; equal for every bundled photo, tested), ~0.3 ms a photo slower, but a process that decodes a
    few photos (a cold ``predict`` of a face model, a web server) does not import torchvision (~2 s).
    """
    import torch

    if not isinstance(source, bytes | bytearray | str | os.PathLike):
        return torch.from_numpy(np.array(as_rgb(source))).permute(2, 0, 1)
    data = bytes(source) if isinstance(source, bytes | bytearray) else read_bytes(source)
    if data[:3] == JPEG_MAGIC:
        header = jpeg_header(data)
        if torchvision_jpeg and header is not None and min(header[0]) < 2 * min(draft):
            from torchvision.io import ImageReadMode, decode_jpeg

            quiet_torchvision_io_deprecation()
            try:
                return decode_jpeg(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8),
                    mode=ImageReadMode.RGB,
                    apply_exif_orientation=True,
                )
            except (RuntimeError, ValueError):
                pass  # Pillow below decodes it or says why not
    return torch.from_numpy(np.array(load_rgb(data, draft=draft))).permute(2, 0, 1)


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a decoded ``(C, H, W)`` image upright for an EXIF orientation (what Pillow's ``exif_transpose`` does).

    nvJPEG does not apply EXIF orientation (torchvision does it on the CPU only), so GPU-decoded photos are turned
    here, on the device.
    """
    if orientation in (5, 6, 7, 8):
        image = image.transpose(1, 2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation)
    return image.flip(flips) if flips else image
