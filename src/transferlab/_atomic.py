"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the whole new one, never a part."""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path
from typing import Any


def file_mode() -> int:
    """The permissions an ordinary new file gets here: ``0o666`` less the process's umask (read by setting it and
    putting it back, under a lock: there is no getter)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    The file gets the permissions an ordinary write would (``0o666`` less the umask: with the usual 022, readable by
    everyone), not the temporary file's private 0600, so a model or a report can be shared or served.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically; a non-UTF-8 file name (kept by Python as surrogate escapes) is shown as ``?``."""
    atomic_write_bytes(path, text.encode("utf-8", errors="replace"))


def atomic_savefig(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """``fig.savefig`` into memory, then an atomic write (a plot is never seen half-drawn)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())
