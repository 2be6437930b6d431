"""Intake: a folder (or CSV) of labelled photos → a clean, deduplicated table, and a report of what was skipped.

Every file found ends up either in the table of usable images or in the list of skipped files with a reason, so
that per class ``found == used + sum(skipped)``. Decoding lives here too (:func:`load_rgb`), and every later stage
(features, predict, serve) decodes through it, so a photo means the same pixels everywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import struct
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import TransferlabError

# Formats we read. Everything else Pillow can open (ICO, PSD, PPM, ...) is skipped as "unsupported format":
# users get a clear reason instead of a model silently trained on odd inputs.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"})
PIL_STATE_LOCK = threading.RLock()  # guards Image.MAX_IMAGE_PIXELS and warning filters while decoding
MAX_PIXELS = 64_000_000  # ~ 8000 x 8000; larger images are treated as decompression bombs
MAX_PIXELS_ENV = "TRANSFERLAB_MAX_PIXELS"  # overrides MAX_PIXELS, e.g. 200000000 for very large scans
MIN_SIDE = 32  # smaller than this carries no usable detail for 224 px backbones
NEAR_DUPLICATE_DISTANCE = 4  # perceptual-hash Hamming distance (of 64 bits) for "the same photo re-encoded"

SKIP_REASONS = (
    "zero-byte",
    "truncated",
    "not an image",
    "unsupported format",
    "decompression bomb",
    "too small",
    "unreadable",
    "duplicate",
)

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

_INTAKE_VERSION = "2"  # bump when decoding or hashing changes, so cached intake results are recomputed


class ImageRejected(Exception):
    """An input that cannot be used as an image, with a reason from :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _to_rgb(img: Image.Image) -> Image.Image:
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
                img = _to_rgb(img)
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


def read_rgb(path: str | os.PathLike[str], *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Read and decode a file through :func:`load_rgb`; I/O problems become ``ImageRejected("unreadable")``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageRejected("unreadable", exc.strerror or str(exc)) from None
    return load_rgb(data, draft=draft)


def content_hash(img: Image.Image) -> str:
    """Hash of the decoded pixels (and size): equal for the same photo saved as JPEG, PNG or with other EXIF."""
    h = hashlib.sha256(f"{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _perceptual_hash(img: Image.Image) -> int:
    import imagehash

    return int(str(imagehash.phash(img)), 16)


@dataclass
class _Probe:
    ok: bool
    reason: str = ""
    detail: str = ""
    content_hash: str = ""
    width: int = 0
    height: int = 0
    phash: int = 0


def _probe_bytes(data: bytes) -> _Probe:
    try:
        img = load_rgb(data)
    except ImageRejected as exc:
        return _Probe(False, exc.reason, exc.detail)
    return _Probe(True, "", "", content_hash(img), img.width, img.height, _perceptual_hash(img))


class _IntakeCache:
    """Per-file results keyed by the sha256 of the file's bytes, so a rerun does not decode everything again.

    Holds hashes and sizes only, never pixels. SQLite gives atomic commits for free, so a killed run leaves a
    consistent file.
    """

    def __init__(self, root: Path | None) -> None:
        self.db: sqlite3.Connection | None = None
        if root is None:
            return
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(root / "intake.sqlite", timeout=30)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS probe (key TEXT PRIMARY KEY, ok INT, reason TEXT, detail TEXT,"
                " chash TEXT, w INT, h INT, phash TEXT)"
            )
        except sqlite3.Error:
            self.db = None  # a cache is an optimisation; never fail a run because of it

    def get(self, key: str) -> _Probe | None:
        if self.db is None:
            return None
        row = self.db.execute("SELECT ok, reason, detail, chash, w, h, phash FROM probe WHERE key=?", (key,))
        r = row.fetchone()
        if r is None:
            return None
        return _Probe(bool(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]))

    def put(self, key: str, p: _Probe) -> None:
        if self.db is None:
            return
        self.db.execute(
            "INSERT OR REPLACE INTO probe VALUES (?,?,?,?,?,?,?,?)",
            (key, int(p.ok), p.reason, p.detail, p.content_hash, p.width, p.height, str(p.phash)),
        )

    def commit(self) -> None:
        if self.db is not None:
            try:
                self.db.commit()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        if self.db is not None:
            self.commit()
            self.db.close()


@dataclass
class Skipped:
    """A file that was found but not used."""

    path: str
    label: str
    reason: str
    detail: str = ""


@dataclass
class IntakeReport:
    """What intake found, used and skipped, per class.

    Attributes
    ----------
    found, used
        Files per class.
    skipped
        Every skipped file with its reason.
    conflicts
        Duplicate groups whose members carry different labels: ``[{"group", "members": [(path, label)]}]``.
    near_duplicate_groups
        Number of groups of two or more near-identical photos that were kept (and kept on one side of a split).
    empty_classes
        Class folders with no file in them: not classes, and not counted.
    similar_labels
        Groups of labels that differ only by letter case (``Dog`` and ``dog``): kept as separate classes, because
        that is what the folders say, but reported since it is usually a mistake.
    """

    found: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    near_duplicate_groups: int = 0
    empty_classes: list[str] = field(default_factory=list)
    similar_labels: list[list[str]] = field(default_factory=list)

    def skipped_by_class(self) -> dict[str, Counter[str]]:
        """Skip reasons counted per class."""
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for s in self.skipped:
            out[s.label][s.reason] += 1
        return dict(out)

    def skipped_counts(self) -> dict[str, int]:
        """Skip reasons counted over all classes."""
        return dict(Counter(s.reason for s in self.skipped))

    def reconciles(self) -> bool:
        """True when, for every class, found == used + skipped."""
        by = self.skipped_by_class()
        return all(self.found[c] == self.used.get(c, 0) + sum(by.get(c, {}).values()) for c in self.found)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        by = self.skipped_by_class()
        return {
            "classes": {
                c: {"found": self.found[c], "used": self.used.get(c, 0), "skipped": dict(by.get(c, {}))}
                for c in sorted(self.found)
            },
            "skipped": [s.__dict__ for s in self.skipped],
            "conflicts": self.conflicts,
            "near_duplicate_groups": self.near_duplicate_groups,
            "empty_classes": self.empty_classes,
            "similar_labels": self.similar_labels,
        }

    def totals(self) -> dict[str, Any]:
        """Counts over all classes: ``found == used + sum(skipped.values())``."""
        return {
            "found": sum(self.found.values()),
            "used": sum(self.used.values()),
            "skipped": self.skipped_counts(),
        }


@dataclass
class Intake:
    """Result of :func:`intake`: the usable images and the report."""

    table: pd.DataFrame
    report: IntakeReport
    root: Path | None = None


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX" or name == "Thumbs.db" or name == "desktop.ini"


def class_folders(root: str | os.PathLike[str]) -> list[str]:
    """Names of the class subfolders of ``root`` (hidden folders such as ``__MACOSX`` are not classes)."""
    root = Path(root)
    return sorted(d for d in os.listdir(root) if (root / d).is_dir() and not _is_hidden(d))


def scan_folder(root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """List ``(path, label)`` for a folder with one subfolder per class.

    Hidden files and folders (``.DS_Store``, ``__MACOSX``, dot-folders) are not photos and are ignored. Every
    other file counts as found, whatever its extension, so a mislabelled extension is reported, not lost.
    Files nested deeper inside a class folder belong to that class.
    """
    root = Path(root)
    if not root.is_dir():
        raise TransferlabError(f"{root}: not a folder; give a folder with one subfolder per class, or a CSV")
    out: list[tuple[str, str]] = []
    classes = class_folders(root)
    if not classes:
        raise TransferlabError(
            f"{root}: no class subfolders found; put each class's photos in its own subfolder (e.g. {root}/cat/)"
        )
    for label in classes:
        visited: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(root / label, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in visited:  # symlink loop: do not walk forever
                dirnames[:] = []
                continue
            visited.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for f in sorted(filenames):
                if not _is_hidden(f):
                    out.append((os.path.join(dirpath, f), label))
    return out


def _read_path_csv(path: Path, what: str) -> tuple[pd.DataFrame, str]:
    """Read a CSV of strings that names files in a ``path`` or ``file`` column; returns it and that column."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TransferlabError(f"{path}: cannot read {what} ({exc}); expected a path (or file) column") from None
    col = "path" if "path" in df.columns else "file" if "file" in df.columns else None
    if col is None:
        raise TransferlabError(
            f"{path}: needs a 'path' (or 'file') column naming the photos, found {', '.join(df.columns)}"
        )
    return df, col


def scan_csv(csv_path: str | os.PathLike[str]) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """Read a CSV with ``path`` and ``label`` columns (relative paths are relative to the CSV's folder).

    Returns the ``(path, label)`` list and the other columns, row-aligned.
    """
    csv_path = Path(csv_path)
    df, path_col = _read_path_csv(csv_path, "CSV")
    if "label" not in df.columns:
        raise TransferlabError(
            f"{csv_path}: needs columns 'path' (or 'file') and 'label', found {', '.join(df.columns)}"
        )
    base = csv_path.parent
    paths = [str(p if os.path.isabs(p) else base / p) for p in df[path_col]]
    extra = df.drop(columns=[path_col, "label"]).reset_index(drop=True)
    return list(zip(paths, df["label"].tolist(), strict=True)), extra


def _file_key(data: bytes) -> str:
    # the pixel limit changes outcomes, so it is part of the key
    return f"{_INTAKE_VERSION}:{max_pixels()}:{hashlib.sha256(data).hexdigest()}"


def _near_duplicate_groups(phashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Union-find over pairs of perceptual hashes within ``max_distance`` bits; returns a group id per row.

    Vectorised in blocks (numpy popcount on XOR) so 50,000 images stay in seconds and bounded memory.
    """
    n = len(phashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    h = phashes.astype(np.uint64)
    block = 2048
    for start in range(0, n, block):
        a = h[start : start + block]
        d = np.bitwise_count(a[:, None] ^ h[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        for i, j in zip(ii + start, jj, strict=True):
            if j > i:
                ri, rj = find(int(i)), find(int(j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])


def intake(
    source: str | os.PathLike[str] | Sequence[tuple[str, str]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
    progress: Callable[[Iterable[Any], int, str], Iterable[Any]] | None = None,
) -> Intake:
    """Turn a folder of class subfolders, a CSV (``path,label``) or a list of ``(path, label)`` into a clean table.

    Parameters
    ----------
    source
        Folder with one subfolder per class, a ``.csv`` file, or ``(path, label)`` pairs.
    cache_dir
        Where to remember per-file results (hashes and sizes, keyed by the file's sha256); None disables it.
    near_duplicate_distance
        Maximum perceptual-hash distance (bits of 64) for two photos to count as the same photo.
    progress
        Optional wrapper ``progress(iterable, total, description)`` for a progress bar.

    Returns
    -------
    Intake
        ``table`` has columns ``path, label, content_hash, width, height, group`` plus any extra CSV columns;
        ``report`` accounts for every file found.
    """
    extra: pd.DataFrame | None = None
    root: Path | None = None
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_file() and p.suffix.lower() == ".csv":
            items, extra = scan_csv(p)
            root = p.parent
        elif p.exists():
            items = scan_folder(p)
            root = p
        else:
            raise TransferlabError(f"{p}: no such file or folder")
    else:
        items = [(str(a), str(b)) for a, b in source]
    if not items:
        raise TransferlabError(f"{source}: no files found")

    cache = _IntakeCache(Path(cache_dir) if cache_dir is not None else None)
    report = IntakeReport()
    report.found = dict(Counter(label for _, label in items))
    if root is not None and extra is None:
        report.empty_classes = [c for c in class_folders(root) if c not in report.found]
    by_fold: dict[str, list[str]] = defaultdict(list)
    for label in sorted(report.found):
        by_fold[label.casefold()].append(label)
    report.similar_labels = [g for g in by_fold.values() if len(g) > 1]
    ok_rows: list[dict[str, Any]] = []
    iterator: Iterable[tuple[int, tuple[str, str]]] = enumerate(items)
    if progress is not None:
        iterator = progress(iterator, len(items), "intake")
    try:
        for i, (path, label) in iterator:
            try:
                if os.path.islink(path) and not os.path.exists(path):
                    raise OSError("broken symbolic link")
                data = Path(path).read_bytes()
            except OSError as exc:
                report.skipped.append(Skipped(path, label, "unreadable", exc.strerror or str(exc)))
                continue
            if not data:
                report.skipped.append(Skipped(path, label, "zero-byte", "the file is empty"))
                continue
            key = _file_key(data)
            probe = cache.get(key)
            if probe is None:
                probe = _probe_bytes(data)
                cache.put(key, probe)
                if i % 256 == 255:
                    cache.commit()  # a killed intake keeps most of its work
            if not probe.ok:
                report.skipped.append(Skipped(path, label, probe.reason, probe.detail))
                continue
            row = {
                "path": path,
                "label": label,
                "content_hash": probe.content_hash,
                "width": probe.width,
                "height": probe.height,
                "_phash": probe.phash,
                "_row": i,
            }
            ok_rows.append(row)
    finally:
        cache.close()

    table = pd.DataFrame(ok_rows, columns=["path", "label", "content_hash", "width", "height", "_phash", "_row"])
    # Exact duplicates (same decoded pixels): keep the first, skip the rest, report label conflicts.
    keep = np.ones(len(table), dtype=bool)
    for h, idx in table.groupby("content_hash", sort=False).indices.items():
        if len(idx) < 2:
            continue
        first = idx[0]
        labels = set(table.loc[idx, "label"])
        if len(labels) > 1:
            report.conflicts.append(
                {
                    "group": h[:12],
                    "kind": "identical pixels",
                    "members": [(table.at[j, "path"], table.at[j, "label"]) for j in idx],
                }
            )
        for j in idx[1:]:
            keep[j] = False
            report.skipped.append(
                Skipped(
                    table.at[j, "path"], table.at[j, "label"], "duplicate", f"same pixels as {table.at[first, 'path']}"
                )
            )
    table = table[keep].reset_index(drop=True)

    # Near duplicates: grouped so they never straddle a split; conflicting labels are reported.
    if len(table):
        gid = _near_duplicate_groups(table["_phash"].to_numpy(dtype=np.uint64), near_duplicate_distance)
    else:
        gid = np.zeros(0, dtype=int)
    table["group"] = gid
    for g, idx in table.groupby("group").indices.items():
        if len(idx) > 1:
            report.near_duplicate_groups += 1
            if table.loc[idx, "label"].nunique() > 1:
                report.conflicts.append(
                    {
                        "group": int(g),
                        "kind": "near-duplicate photos",
                        "members": [(table.at[j, "path"], table.at[j, "label"]) for j in idx],
                    }
                )
    if extra is not None and len(table):
        table = pd.concat([table, extra.iloc[table["_row"].to_numpy()].reset_index(drop=True)], axis=1)
    table = table.drop(columns=["_phash", "_row"])
    report.used = dict(Counter(table["label"]))
    return Intake(table=table, report=report, root=root)


def attach_manifest(table: pd.DataFrame, manifest: str | os.PathLike[str], root: Path | None) -> pd.DataFrame:
    """Add a manifest's columns to an intake table, matching rows by path.

    The manifest needs a ``file`` or ``path`` column, relative to the data folder (or to the manifest's folder),
    or absolute. Rows without a manifest entry get empty values.
    """
    manifest = Path(manifest)
    m, col = _read_path_csv(manifest, "manifest CSV")

    def norm(p: str, base: Path | None) -> str:
        q = Path(p)
        if not q.is_absolute() and base is not None:
            q = base / q
        return os.path.normpath(os.path.abspath(q))

    bases = [root, manifest.parent] if root is not None else [manifest.parent]
    lookup: dict[str, int] = {}
    for base in bases:
        for i, p in enumerate(m[col]):
            lookup.setdefault(norm(p, base), i)
    rows = [lookup.get(os.path.normpath(os.path.abspath(p))) for p in table["path"]]
    extra_cols = [c for c in m.columns if c not in (col, "label") and c not in table.columns]
    out = table.copy()
    for c in extra_cols:
        values = m[c].tolist()
        out[c] = [values[r] if r is not None else "" for r in rows]
    return out
