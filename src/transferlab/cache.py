"""Content-addressed, crash-safe feature cache.

Layout: ``ROOT/features/<space>/<hh>/<content_hash>.npy`` where ``<space>`` is a hash of everything that changes
a feature (backbone, weights hash, preprocessing, pooling). One small file per image, written to a temporary
name and renamed into place, so a run killed at any instant (Ctrl-C, SIGKILL) leaves only complete entries and
the rerun resumes with the images still missing. Every entry carries a checksum, verified on each read: a damaged
entry counts as a miss (``FeatureCache.damaged``), is removed and recomputed. No photo is ever stored: only
features, keyed by a hash of the decoded pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write_bytes

__all__ = ["FeatureCache", "ProbeCache", "default_cache_dir", "purge", "space_key"]

# Each entry is an ``.npy`` file followed by this marker and the sha256 of the ``.npy`` bytes. The rename makes a
# kill harmless; the checksum catches what a rename cannot: a disk or copy that damaged or cut a file. np.load
# ignores the trailing bytes, so entries stay readable by hand.
_CHECK = b"\x00transferlab-sha256:"
_CHECK_LEN = len(_CHECK) + 32


def default_cache_dir() -> Path:
    """``$TRANSFERLAB_CACHE_DIR``, else the user's cache directory (XDG on Linux: ``~/.cache/transferlab``)."""
    env = os.environ.get("TRANSFERLAB_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("transferlab", appauthor=False))


def space_key(spec: dict[str, Any]) -> str:
    """Stable hash of a feature-space description."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class FeatureCache:
    """Features of one feature space, stored per image content hash.

    Parameters
    ----------
    root
        Cache root directory.
    spec
        Description of the feature space (backbone, weights hash, preprocessing, pooling); its hash names the
        sub-directory and it is written there as ``space.json`` for humans.
    """

    def __init__(self, root: str | os.PathLike[str], spec: dict[str, Any]) -> None:
        self.spec = spec
        self.damaged = 0  # entries found damaged (bad checksum, cut short) and dropped since this object was made
        self.root = Path(root)  # other caches (fine-tuned blocks, face graphs) live beside the features
        self.dir = self.root / "features" / space_key(spec)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "space.json"
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps(spec, indent=2, sort_keys=True).encode())

    def _path(self, content_hash: str) -> Path:
        return self.dir / content_hash[:2] / f"{content_hash}.npy"

    def get(self, content_hash: str) -> np.ndarray | None:
        """Cached feature vector, or None (also for a damaged entry, which is counted and removed)."""
        p = self._path(content_hash)
        try:
            blob = p.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return self._drop(p)
        body, tail = blob[:-_CHECK_LEN], blob[-_CHECK_LEN:]
        if len(blob) < _CHECK_LEN or tail[: len(_CHECK)] != _CHECK or hashlib.sha256(body).digest() != tail[-32:]:
            return self._drop(p)
        try:
            return np.load(io.BytesIO(body), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return self._drop(p)

    def holds(self, content_hashes: Sequence[str | None]) -> bool:
        """Whether every hash has an entry (not yet checked: :meth:`get` checks each one as it reads it)."""
        return all(h is not None and self._path(h).is_file() for h in content_hashes)

    def _drop(self, p: Path) -> None:
        self.damaged += 1
        try:
            p.unlink()
        except OSError:
            pass
        return None

    def put(self, content_hash: str, feature: np.ndarray) -> None:
        """Store a feature vector atomically, with its checksum."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(feature), allow_pickle=False)
        body = buf.getvalue()
        atomic_write_bytes(self._path(content_hash), body + _CHECK + hashlib.sha256(body).digest())


class ProbeCache:
    """Intake's per-file results (decodable?, content hash, size, perceptual hash) keyed by the sha256 of the file's
    bytes, so a rerun does not decode everything again.

    Holds hashes and sizes only, never pixels. SQLite gives atomic commits for free, so a killed run leaves a
    consistent file. A cache is an optimisation: when the database cannot be opened, nothing is cached.
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
            self.db = None

    def get(self, key: str) -> tuple[bool, str, str, str, int, int, int] | None:
        """``(ok, reason, detail, content_hash, width, height, phash)`` for a file key, or None."""
        if self.db is None:
            return None
        r = self.db.execute("SELECT ok, reason, detail, chash, w, h, phash FROM probe WHERE key=?", (key,)).fetchone()
        return None if r is None else (bool(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]))

    def put(self, key: str, row: tuple[bool, str, str, str, int, int, int]) -> None:
        """Remember a file's probe (see :meth:`get`)."""
        if self.db is not None:
            ok, reason, detail, chash, w, h, phash = row
            self.db.execute(
                "INSERT OR REPLACE INTO probe VALUES (?,?,?,?,?,?,?,?)",
                (key, int(ok), reason, detail, chash, w, h, str(phash)),
            )

    def commit(self) -> None:
        """Make what was put so far durable (a killed intake keeps it)."""
        if self.db is not None:
            try:
                self.db.commit()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        """Commit and close."""
        if self.db is not None:
            self.commit()
            self.db.close()


def purge(root: str | os.PathLike[str], content_hashes: set[str] | list[str]) -> dict[str, int]:
    """Remove every cache entry of these photos under ``root``: their features in every feature space (every
    backbone, recipe and pooling; augmented copies too, whose keys start with the content hash) and intake's
    probe rows that name them (deleted with SQLite's ``secure_delete`` and the file vacuumed, so the rows are not
    left in free pages).

    Returns
    -------
    dict
        ``{"feature_entries": n, "feature_spaces": n, "intake_rows": n}`` removed.
    """
    root = Path(root)
    hashes = sorted({h for h in content_hashes if h})
    entries, spaces = 0, set()
    for space in sorted((root / "features").glob("*")) if (root / "features").is_dir() else []:
        for h in hashes:
            for f in (space / h[:2]).glob(f"{h}*.npy"):
                f.unlink(missing_ok=True)
                entries += 1
                spaces.add(space.name)
    rows = 0
    db_path = root / "intake.sqlite"
    if db_path.is_file() and hashes:
        db = sqlite3.connect(db_path, timeout=30)
        try:
            db.execute("PRAGMA secure_delete=ON")
            for i in range(0, len(hashes), 500):
                chunk = hashes[i : i + 500]
                cur = db.execute(f"DELETE FROM probe WHERE chash IN ({','.join('?' * len(chunk))})", chunk)
                rows += cur.rowcount
            db.commit()
            db.execute("VACUUM")
        finally:
            db.close()
    return {"feature_entries": entries, "feature_spaces": len(spaces), "intake_rows": rows}
