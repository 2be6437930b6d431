"""Model artifact: a directory with ``model.json`` and ``head.safetensors``. Loading never unpickles anything."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .cache import atomic_write_bytes
from .errors import TransferlabError

FORMAT = "transferlab-model"
FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"


def save_artifact(path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``model.json`` and the head's arrays (safetensors) into ``path``, each file atomically.

    Parameters
    ----------
    path
        Model directory (created if needed).
    meta
        JSON-serialisable description (classes, backbone, preprocessing, head parameters, training summary).
    arrays
        The head's fitted arrays; string arrays (class names) belong in ``meta``.

    Returns
    -------
    Path
        The model directory.
    """
    from safetensors.numpy import save

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    numeric = {k: np.ascontiguousarray(v) for k, v in arrays.items() if v.dtype.kind in "fiub"}
    atomic_write_bytes(out / HEAD_FILE, save(numeric))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "head_file": HEAD_FILE}
    atomic_write_bytes(out / "model.json", json.dumps(doc, indent=2, default=_json_default).encode())
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_artifact(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a model directory written by :func:`save_artifact`, validating it first.

    Returns
    -------
    meta, arrays
        The parsed ``model.json`` and the head's arrays.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = Path(path)
    mj = d / "model.json"
    if not mj.is_file():
        raise TransferlabError(f"{d}: not a transferlab model (no model.json); train one with `transferlab train`")
    try:
        meta = json.loads(mj.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransferlabError(f"{mj}: unreadable model.json ({exc}); retrain or restore the file") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TransferlabError(f"{mj}: not a transferlab model file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise TransferlabError(
            f"{mj}: model format {version} (written by transferlab {meta.get('transferlab_version', '?')}) is not "
            f"supported by this version, which reads format {FORMAT_VERSION}; retrain the model"
        )
    for key in ("classes", "backbone", "head"):
        if key not in meta:
            raise TransferlabError(f"{mj}: missing field {key!r}; the file is damaged, retrain the model")
    head_file = meta.get("head_file", HEAD_FILE)
    if Path(head_file).name != head_file or not head_file.endswith(".safetensors"):
        raise TransferlabError(
            f"{mj}: head file {head_file!r} refused; only a .safetensors file inside the model folder is loaded "
            "(pickle files can run code)"
        )
    try:
        arrays = load_file(str(d / head_file))
    except (OSError, SafetensorError) as exc:
        raise TransferlabError(f"{d / head_file}: unreadable head weights ({exc}); retrain the model") from None
    return meta, arrays
