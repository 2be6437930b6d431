"""Content-addressed, crash-safe feature cache.

Layout: ``ROOT/features/<space>/<hh>/<content_hash>.npy`` where ``<space>`` is a hash of everything that changes
a feature (backbone, weights hash, preprocessing, pooling). One small file per image, written to a temporary
name and renamed into place, so a run killed at any instant (Ctrl-C, SIGKILL) leaves only complete entries and
the rerun resumes with the images still missing. No photo is ever stored: only features, keyed by a hash of the
decoded pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
        self.dir = Path(root) / "features" / space_key(spec)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "space.json"
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps(spec, indent=2, sort_keys=True).encode())

    def _path(self, content_hash: str) -> Path:
        return self.dir / content_hash[:2] / f"{content_hash}.npy"

    def get(self, content_hash: str) -> np.ndarray | None:
        """Cached feature vector, or None (also for an unreadable entry, which is then removed)."""
        p = self._path(content_hash)
        try:
            return np.load(p, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            try:
                p.unlink()
            except OSError:
                pass
            return None

    def put(self, content_hash: str, feature: np.ndarray) -> None:
        """Store a feature vector atomically."""
        import io

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(feature), allow_pickle=False)
        atomic_write_bytes(self._path(content_hash), buf.getvalue())
