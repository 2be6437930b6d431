"""Generator of bad and unusual inputs for intake tests (nothing opaque is committed: it is all made here).

``build_corpus(root, good, other)`` writes a folder of class subfolders into ``root`` and returns one
:class:`Kind` per kind of input, with the outcome intake must give it:

- ``"used"``: the file is used (with the conversion in ``note``); ``check`` may verify the decoded pixels;
- ``"ignored"``: the file (or folder) is not a photo and is not counted as found at all;
- ``"class ..."``: a class-level outcome (an empty class folder, labels differing only by case);
- any other value: the file is found and skipped with that reason (one of ``intake.SKIP_REASONS``).

The guide's table "What intake does with messy folders" (docs/GUIDE.md) lists the same kinds and outcomes; a test
keeps them in sync.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MIXED = "mixed"  # the class folder that holds most kinds


@dataclass
class Kind:
    """One kind of input: the files made for it (relative to the corpus root) and the outcome intake must give."""

    kind: str
    outcome: str
    files: list[str] = field(default_factory=list)
    check: Callable[[Image.Image], bool] | None = None
    vanish: bool = False  # deleted after the folder scan, before the file is read
    doc: str = ""  # the guide's outcome cell, where it is not simply derived from ``outcome``

    @property
    def documented(self) -> str:
        """The outcome as the guide's table states it."""
        if self.doc:
            return self.doc
        if self.outcome in ("used", "ignored") or self.outcome.startswith("class "):
            return self.outcome
        return f"skipped: {self.outcome}"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    return _save(img, "JPEG", quality=92, **kw)


def _close(a: Image.Image, b: Image.Image, tol: float = 12.0) -> bool:
    """Same size and nearly the same pixels (JPEG is lossy)."""
    if a.size != b.size:
        return False
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b.convert("RGB"), dtype=float)).mean()) < tol


# What each EXIF orientation value asks a viewer to do to the stored pixels to show them upright.
_ORIENT = {
    1: [],
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _png_with_bad_crc(img: Image.Image) -> bytes:
    """A valid PNG whose IHDR chunk CRC is wrong (the data itself is intact)."""
    png = bytearray(_save(img, "PNG"))
    ihdr = png.find(b"IHDR")
    length = struct.unpack(">I", png[ihdr - 4 : ihdr])[0]
    crc_at = ihdr + 4 + length
    good = zlib.crc32(bytes(png[ihdr:crc_at])) & 0xFFFFFFFF
    png[crc_at : crc_at + 4] = struct.pack(">I", good ^ 0xDEADBEEF)
    return bytes(png)


def _broken_exif_jpeg(img: Image.Image) -> bytes:
    """A JPEG with an APP1 'Exif' segment whose TIFF structure is garbage."""
    jpg = _jpeg(img)
    junk = b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xf0" + os.urandom(40)
    seg = b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk
    return jpg[:2] + seg + jpg[2:]


def is_root() -> bool:
    """Running as root (as in CI containers), where permission bits do not stop reading."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def build_corpus(root: Path, good: Path, other: Path) -> list[Kind]:
    """Write the corpus under ``root`` (class subfolders) from two distinct real photos; return its kinds."""
    mixed = root / MIXED
    mixed.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    base = Image.open(good).convert("RGB")
    photo = Image.open(other).convert("RGB").resize((160, 120))
    kinds: list[Kind] = []
    n = iter(range(1000))

    def variant() -> Image.Image:
        """A distinct, asymmetric image per file, so no two kinds are duplicates of each other."""
        k = next(n)
        img = photo.rotate(7 * k + 3)
        arr = np.asarray(img).copy()
        arr[: 10 + k % 20, : 20 + k % 30] = (255, 40 * (k % 6), 0)  # a corner mark: asymmetric, distinct
        return Image.fromarray(arr)

    def add(kind: str, outcome: str, files: dict[str, bytes], check=None, vanish: bool = False) -> None:
        names = []
        for rel, data in files.items():
            p = mixed / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            names.append(f"{MIXED}/{rel}")
        kinds.append(Kind(kind, outcome, names, check, vanish))

    # --- files that cannot be used: skipped with a named reason
    add("zero-byte file", "zero-byte", {"zero.jpg": b""})
    for frac in (0.1, 0.5, 0.9):
        add(
            f"truncated JPEG ({int(frac * 100)}% kept)",
            "truncated",
            {f"truncated_{int(frac * 100)}.jpg": raw[: int(len(raw) * frac)]},
        )
    add("truncated JPEG (header only)", "truncated", {"truncated_header.jpg": raw[:400]})
    add("text saved as .jpg", "not an image", {"text.jpg": b"these are not the pixels you are looking for\n" * 20})
    add("HTML error page saved as .jpg", "not an image", {"page.jpg": b"<!doctype html><html><body>404</body></html>"})
    add("random bytes as .png", "not an image", {"random.png": np.random.default_rng(0).bytes(4096)})
    add("ICO icon (unsupported format)", "unsupported format", {"icon.jpg": _save(variant().resize((64, 64)), "ICO")})
    add("PPM (unsupported format)", "unsupported format", {"portable.ppm": _save(variant(), "PPM")})
    add(
        "decompression bomb (81 Mpx PNG)",
        "decompression bomb",
        {"bomb.png": _save(Image.new("1", (9000, 9000)), "PNG")},
    )
    add("1×1 px", "too small", {"one_pixel.gif": _save(Image.new("P", (1, 1)), "GIF")})
    add("8×8 px", "too small", {"tiny.png": _save(variant().resize((8, 8)), "PNG")})
    add(
        "extremely wide (20000×10)",
        "too small",
        {"wide.png": _save(Image.new("RGB", (20000, 10), (9, 99, 199)), "PNG")},
    )
    png = bytearray(_save(variant(), "PNG"))
    idat = png.find(b"IDAT")
    png[idat + 10 : idat + 30] = b"\x00" * 20
    add("PNG with corrupt pixel data", "unreadable", {"corrupt_data.png": bytes(png)})
    add("PNG with bad CRC", "unreadable", {"bad_crc.png": _png_with_bad_crc(variant())})
    add("WebP cut short", "unreadable", {"corrupt.webp": _save(variant(), "WEBP", quality=80)[:300]})
    add("exact copy of another photo", "duplicate", {"zz_copy_of_good.jpg": raw})
    add("same pixels in another format", "duplicate", {"zz_same_pixels.png": _save(base, "PNG")})
    os.symlink("does-not-exist.jpg", mixed / "broken_link.jpg")  # relative links: the corpus can be moved
    kinds.append(Kind("broken symbolic link", "unreadable", [f"{MIXED}/broken_link.jpg"]))
    os.symlink("loop_b.jpg", mixed / "loop_a.jpg")
    os.symlink("loop_a.jpg", mixed / "loop_b.jpg")
    kinds.append(Kind("symbolic link loop (file)", "unreadable", [f"{MIXED}/loop_a.jpg", f"{MIXED}/loop_b.jpg"]))
    add("file that vanishes during the run", "unreadable", {"vanishing.jpg": _jpeg(variant())}, vanish=True)

    # Permission bits do not stop root (CI containers run as root): there the photo is simply used.
    locked = mixed / "no_permission.jpg"
    locked.write_bytes(_jpeg(variant()))
    locked.chmod(0)
    kinds.append(
        Kind(
            "unreadable permission (chmod 000)",
            "used" if is_root() else "unreadable",
            [f"{MIXED}/no_permission.jpg"],
            doc="skipped: unreadable (as root: used)",
        )
    )

    # --- unusual but usable files: converted to upright 8-bit RGB
    add("ordinary JPEG", "used", {"good.jpg": raw})
    img = variant()
    add("CMYK JPEG", "used", {"cmyk.jpg": _jpeg(img.convert("CMYK"))}, check=lambda d, s=img: _close(d, s, 20))
    img = variant()
    add(
        "grayscale JPEG",
        "used",
        {"gray.jpg": _jpeg(img.convert("L"))},
        check=lambda d, s=img: _close(d, s.convert("L")),
    )
    img = variant().convert("L")
    arr16 = (np.asarray(img, dtype=np.uint16) * 257).astype(np.uint16)
    add(
        "16-bit PNG",
        "used",
        {"sixteen_bit.png": _save(Image.fromarray(arr16), "PNG")},
        check=lambda d, s=img: _close(d, s, 2),
    )
    pal = variant().convert("P", palette=Image.Palette.ADAPTIVE)
    add("palette PNG with transparency", "used", {"palette_transparent.png": _save(pal, "PNG", transparency=0)})
    img = variant()
    la = Image.merge("LA", (img.convert("L"), Image.new("L", img.size, 0)))
    add(  # fully transparent: composited on white
        "LA (gray + alpha) PNG",
        "used",
        {"gray_alpha.png": _save(la, "PNG")},
        check=lambda d: bool((np.asarray(d) == 255).all()),
    )
    img = variant()
    rgba = img.convert("RGBA")
    rgba.putalpha(128)
    add("RGBA PNG (half transparent)", "used", {"rgba.png": _save(rgba, "PNG")})
    f1, f2 = variant(), variant()
    buf = io.BytesIO()
    f1.save(buf, "GIF", save_all=True, append_images=[f2], duration=100, loop=0)
    add("animated GIF", "used", {"animated.gif": buf.getvalue()}, check=lambda d, s=f1: _close(d, s, 25))
    p1, p2 = variant(), variant()
    buf = io.BytesIO()
    p1.save(buf, "TIFF", save_all=True, append_images=[p2])
    add("multi-page TIFF", "used", {"pages.tiff": buf.getvalue()}, check=lambda d, s=p1: _close(d, s, 1))
    add("WebP", "used", {"photo.webp": _save(variant(), "WEBP")})
    add("BMP", "used", {"photo.bmp": _save(variant(), "BMP")})
    add("progressive JPEG", "used", {"progressive.jpg": _jpeg(variant(), progressive=True)})
    upright = variant()
    for o, ops in _ORIENT.items():
        stored = upright
        # store the pixels so that applying the orientation shows ``upright``: invert the display transform
        for op in reversed(ops):
            inverse = {
                Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
                Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
            }.get(op, op)
            stored = stored.transpose(inverse)
        exif = Image.Exif()
        exif[0x0112] = o
        add(
            f"EXIF orientation {o}",
            "used",
            {f"exif_orientation_{o}.jpg": _jpeg(stored, exif=exif.tobytes())},
            check=lambda d, s=upright: _close(d, s),
        )
        upright = variant()  # a fresh image per orientation: otherwise they are exact duplicates
    img = variant()
    add("broken EXIF block", "used", {"broken_exif.jpg": _broken_exif_jpeg(img)}, check=lambda d, s=img: _close(d, s))
    add("JPEG with a .png extension", "used", {"wrong_extension.png": _jpeg(variant())})
    add("JPEG without extension", "used", {"no_extension": _jpeg(variant())})
    add("spaces and unicode in the name", "used", {"my photo – Ünïcödé 写真.jpg": _jpeg(variant())})
    odd = os.fsdecode(b"latin1_caf\xe9.jpg")  # not valid UTF-8: Python keeps it via surrogate escapes
    add("non-UTF-8 file name", "used", {odd: _jpeg(variant())})
    add("photo in a nested subfolder", "used", {"trip/day1/nested.jpg": _jpeg(variant())})
    # a directory symlink pointing back up: walked once, never forever
    os.symlink("..", mixed / "trip" / "loop")
    kinds.append(Kind("symbolic link loop (folder)", "ignored", [f"{MIXED}/trip/loop"]))

    # --- clutter that is not a photo: not counted as found
    add(".DS_Store and AppleDouble files", "ignored", {".DS_Store": b"\x00\x00\x00\x01Bud1", "._good.jpg": b"junk"})
    add(
        "hidden and __MACOSX folders (nested)",
        "ignored",
        {
            "trip/.thumbnails/t.jpg": _jpeg(variant()),
            "__MACOSX/trip/._nested.jpg": b"junk",
            "trip/__MACOSX/x.jpg": _jpeg(variant()),
        },
    )

    # --- class-level kinds
    (root / "empty_class").mkdir()
    kinds.append(Kind("empty class folder", "class ignored, listed as empty", ["empty_class"]))
    (root / "single").mkdir()
    (root / "single" / "only.jpg").write_bytes(_jpeg(variant()))
    kinds.append(Kind("class folder with one image", "used", ["single/only.jpg"]))
    for label in ("Dog", "dog"):
        (root / label).mkdir()
        (root / label / f"{label}_1.jpg").write_bytes(_jpeg(variant()))
        (root / label / f"{label}_2.jpg").write_bytes(_jpeg(variant()))
    kinds.append(Kind("labels differing only by case", "class kept apart, reported", ["Dog", "dog"]))
    return kinds
