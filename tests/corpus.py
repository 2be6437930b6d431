"""Generator of bad and unusual image files for intake tests (nothing opaque is committed: it is all made here).

``make_corpus(folder, good_jpeg)`` writes one file per kind and returns ``{filename: expected}``, where expected
is ``"used"`` or the skip reason intake must give.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_corpus(folder: Path, good: Path, other: Path) -> dict[str, str]:
    """Write the corpus into ``folder``; ``good`` and ``other`` are two distinct real photos."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(good).convert("RGB")
    base2 = Image.open(other).convert("RGB")
    raw = good.read_bytes()
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (folder / name).write_bytes(data)
        expected[name] = outcome

    # --- bad files, each with the reason intake must give (of exact duplicates, the first path is kept)
    put("zero.jpg", b"", "zero-byte")
    put("truncated_half.jpg", raw[: len(raw) // 2], "truncated")
    put("truncated_header.jpg", raw[:400], "truncated")
    put("text.jpg", b"these are not the pixels you are looking for\n" * 20, "not an image")
    put("page.jpg", b"<!doctype html><html><body>404 Not Found</body></html>", "not an image")
    put("random.png", os.urandom(4096), "not an image")
    put("icon.jpg", _save(base.resize((64, 64)), "ICO"), "unsupported format")
    put("portable.ppm", _save(base, "PPM"), "unsupported format")
    bomb = Image.new("1", (9000, 9000))
    put("bomb.png", _save(bomb, "PNG"), "decompression bomb")
    put("tiny.png", _save(base.resize((8, 8)), "PNG"), "too small")
    put("one_pixel.gif", _save(Image.new("P", (1, 1)), "GIF"), "too small")
    png = bytearray(_save(base2.resize((120, 90)), "PNG"))
    idat = png.find(b"IDAT")
    png[idat + 10 : idat + 30] = b"\x00" * 20  # corrupt compressed data: CRC mismatch
    put("bad_crc.png", bytes(png), "unreadable")
    put("zz_copy_of_good.jpg", raw, "duplicate")
    put("zz_same_pixels.png", _save(base, "PNG"), "duplicate")
    os.symlink(folder / "does-not-exist.jpg", folder / "broken_link.jpg")
    expected["broken_link.jpg"] = "unreadable"
    put("corrupt.webp", _save(base2, "WEBP", quality=80)[:300], "unreadable")

    # --- unusual but usable files (converted to RGB)
    put("good.jpg", raw, "used")
    put("cmyk.jpg", _jpeg_bytes(base2.rotate(5).convert("CMYK")), "used")
    put("gray.jpg", _jpeg_bytes(base2.rotate(10).convert("L")), "used")
    arr16 = Image.frombytes("I;16", base2.size, bytes(base2.rotate(15).convert("L").tobytes()) * 2)
    put("sixteen_bit.png", _save(arr16, "PNG"), "used")
    pal = base2.rotate(20).convert("P", palette=Image.Palette.ADAPTIVE)
    put("palette_transparent.png", _save(pal, "PNG", transparency=0), "used")
    la = base2.rotate(25).convert("LA")
    put("gray_alpha.png", _save(la, "PNG"), "used")
    frames = [base2.rotate(30).convert("P"), base2.rotate(35).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    put("animated.gif", buf.getvalue(), "used")
    put("photo.webp", _save(base2.rotate(40), "WEBP"), "used")
    put("photo.bmp", _save(base2.rotate(45), "BMP"), "used")
    put("photo.tiff", _save(base2.rotate(50), "TIFF"), "used")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise on display
    put("exif_rotated.jpg", _jpeg_bytes(base2.rotate(55), exif=exif.tobytes()), "used")
    put("wrong_extension.png", _jpeg_bytes(base2.rotate(60)), "used")
    put("no_extension", _jpeg_bytes(base2.rotate(65)), "used")
    return expected
