"""Intake: a folder (or CSV) of labelled photos → a clean, deduplicated table, and a report of what was skipped.

Every file found ends up either in the table of usable images or in the list of skipped files with a reason, so
that per class ``found == used + sum(skipped)``. Files are decoded through :mod:`transferlab.decode`, as in every
later stage (features, predict, serve), so a photo means the same pixels everywhere.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._files import expand_paths, is_hidden
from .cache import ProbeCache
from .decode import ImageRejected, content_hash, load_rgb, max_pixels
from .errors import TransferlabError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"})
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

_INTAKE_VERSION = "2"  # bump when decoding or hashing changes, so cached intake results are recomputed


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


def class_folders(root: str | os.PathLike[str]) -> list[str]:
    """Names of the class subfolders of ``root`` (hidden folders such as ``__MACOSX`` are not classes)."""
    root = Path(root)
    return sorted(d for d in os.listdir(root) if (root / d).is_dir() and not is_hidden(d))


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
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            for f in sorted(filenames):
                if not is_hidden(f):
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
    """Group photos whose perceptual hashes are within ``max_distance`` bits: one component id per row.

    Pairs are found in blocks (numpy popcount on XOR, so 50,000 images stay in seconds and bounded memory); the
    groups are the connected components of that pair graph (``scipy.sparse.csgraph``). Component ids increase with
    each group's first row, so the ids sort groups as the rows do.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(phashes)
    h = phashes.astype(np.uint64)
    rows, cols = [], []
    block = 2048
    for start in range(0, n, block):
        d = np.bitwise_count(h[start : start + block, None] ^ h[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        keep = jj > ii + start
        rows.append(ii[keep] + start)
        cols.append(jj[keep])
    i, j = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, int), np.zeros(0, int))
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def intake(
    source: str | os.PathLike[str] | Sequence[tuple[str, str]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
    progress: Callable[[Iterable[Any], int, str], Iterable[Any]] | None = None,
    manifest: str | os.PathLike[str] | None = None,
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
    manifest
        A CSV whose extra columns (e.g. ``kind``) are attached to the table (:func:`attach_manifest`).

    Returns
    -------
    Intake
        ``table`` has columns ``path, label, content_hash, width, height, group`` plus any extra CSV columns;
        ``report`` accounts for every file found.
    """
    items, extra, root = _listed(source)
    report = IntakeReport()
    report.found = dict(Counter(label for _, label in items))
    if root is not None and extra is None:
        report.empty_classes = [c for c in class_folders(root) if c not in report.found]
    by_fold: dict[str, list[str]] = defaultdict(list)
    for label in sorted(report.found):
        by_fold[label.casefold()].append(label)
    report.similar_labels = [g for g in by_fold.values() if len(g) > 1]
    table = _probed(items, cache_dir, report, progress)
    table = _without_exact_duplicates(table, report)
    table["group"] = _near_duplicates(table, report, near_duplicate_distance)
    if extra is not None and len(table):
        table = pd.concat([table, extra.iloc[table["_row"].to_numpy()].reset_index(drop=True)], axis=1)
    table = table.drop(columns=["_phash", "_row"])
    report.used = dict(Counter(table["label"]))
    if manifest is not None:
        table = attach_manifest(table, manifest, root)
    return Intake(table=table, report=report, root=root)


def _listed(
    source: str | os.PathLike[str] | Sequence[tuple[str, str]],
) -> tuple[list[tuple[str, str]], pd.DataFrame | None, Path | None]:
    """``(path, label)`` pairs of a folder, a CSV or a list; the CSV's extra columns; the folder the paths are in."""
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
    return items, extra, root


def _probed(
    items: list[tuple[str, str]],
    cache_dir: str | os.PathLike[str] | None,
    report: IntakeReport,
    progress: Callable[[Iterable[Any], int, str], Iterable[Any]] | None,
) -> pd.DataFrame:
    """Every file read and probed (decoded once: content hash, size, perceptual hash; remembered by the file's
    sha256); the usable ones as rows, the others in ``report.skipped`` with their reason."""
    cache = ProbeCache(Path(cache_dir) if cache_dir is not None else None)
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
            row = cache.get(key)
            probe = _Probe(*row) if row is not None else None
            if probe is None:
                probe = _probe_bytes(data)
                cache.put(key, astuple(probe))
                if i % 256 == 255:
                    cache.commit()  # a killed intake keeps most of its work
            if not probe.ok:
                report.skipped.append(Skipped(path, label, probe.reason, probe.detail))
                continue
            ok_rows.append(
                {
                    "path": path,
                    "label": label,
                    "content_hash": probe.content_hash,
                    "width": probe.width,
                    "height": probe.height,
                    "_phash": probe.phash,
                    "_row": i,
                }
            )
    finally:
        cache.close()
    return pd.DataFrame(ok_rows, columns=["path", "label", "content_hash", "width", "height", "_phash", "_row"])


def _without_exact_duplicates(table: pd.DataFrame, report: IntakeReport) -> pd.DataFrame:
    """Exact duplicates (same decoded pixels): the first kept, the rest skipped, label conflicts reported."""
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
    return table[keep].reset_index(drop=True)


def _near_duplicates(table: pd.DataFrame, report: IntakeReport, distance: int) -> np.ndarray:
    """Each row's near-duplicate group (so a group never straddles a split); conflicting labels are reported."""
    gid = (
        _near_duplicate_groups(table["_phash"].to_numpy(dtype=np.uint64), distance) if len(table) else np.zeros(0, int)
    )
    groups = pd.Series(gid)
    for g, idx in groups.groupby(groups).indices.items():
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
    return gid


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


def list_images(data: str | os.PathLike[str]) -> tuple[list[str], list[str | None]]:
    """Paths and labels of ``data``: a folder of class subfolders, a CSV (``path,label``) or image files/folders.

    Unlike :func:`intake` nothing is decoded or dropped here: a feature table has a row, perhaps an error row, for
    every file found.

    Returns
    -------
    paths, labels
        Labels are None for files outside class folders.
    """
    p = Path(data)
    if not p.exists():
        raise TransferlabError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() == ".csv":
        items: list[tuple[str, str | None]] = list(scan_csv(p)[0])
    elif p.is_dir() and any((p / d).is_dir() and not is_hidden(d) for d in os.listdir(p)):
        items = list(scan_folder(p))
    else:
        items = [(f, None) for f in expand_paths([p])]
    if not items:
        raise TransferlabError(f"{p}: no image files found")
    return [str(a) for a, _ in items], [b for _, b in items]
