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
    _validate(meta, mj)
    head_file = meta["head_file"]
    if Path(head_file).name != head_file or not head_file.endswith(".safetensors"):
        raise TransferlabError(
            f"{mj}: head file {head_file!r} refused; only a .safetensors file inside the model folder is loaded "
            "(pickle files can run code)"
        )
    head_path = d / head_file
    try:
        with open(head_path, "rb") as f:
            start = f.read(9)
    except OSError as exc:
        raise TransferlabError(f"{head_path}: unreadable head weights ({exc.strerror}); retrain the model") from None
    # safetensors: an 8-byte header length, then the JSON header. Pickle (b"\x80" + protocol) and torch.save zip
    # files (b"PK") get a message that says why they are refused; safetensors itself never unpickles anything.
    if start[8:9] != b"{" and (start[:1] == b"\x80" or start[:2] == b"PK"):
        raise TransferlabError(
            f"{head_path}: is a pickle or torch.save file, not safetensors; refused (loading it could run code)"
        )
    try:
        arrays = load_file(str(head_path))
    except (OSError, SafetensorError) as exc:
        raise TransferlabError(f"{head_path}: unreadable head weights ({exc}); retrain the model") from None
    return meta, arrays


# model.json's required fields and their JSON types; other fields are optional (and extra ones are allowed).
_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "classes": list,
    "backbone": dict,
    "head": dict,
    "head_file": str,
}
_NESTED = {("backbone", "name"): str, ("head", "name"): str}
_OPTIONAL = {"pool": str, "features": dict, "face_choice": str, "transferlab_version": str, "faces": dict}


def _validate(meta: Any, mj: Path) -> None:
    """Check ``model.json`` against the format this version reads; errors name the file, field and version."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TransferlabError(f'{mj}: not a transferlab model file (no "format": "{FORMAT}")')
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        written_by = meta.get("transferlab_version", "an unknown version")
        raise TransferlabError(
            f"{mj}: model format version {version!r} (written by transferlab {written_by}) is not supported by "
            f"transferlab {_this_version()}, which reads format version {FORMAT_VERSION}; retrain the model with "
            "this version, or load it with the version that wrote it"
        )
    damaged = "; the file is damaged or was edited by hand: retrain the model"
    meta.setdefault("head_file", HEAD_FILE)
    for key, kind in _SCHEMA.items():
        if key not in meta:
            raise TransferlabError(f"{mj}: missing field {key!r}{damaged}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise TransferlabError(
                f"{mj}: field {key!r} should be {_json_type(kind)}, found {_json_type(type(meta[key]))}{damaged}"
            )
    for (outer, inner), kind in _NESTED.items():
        if not isinstance(meta[outer].get(inner), kind):
            raise TransferlabError(f"{mj}: field {outer}.{inner} should be {_json_type(kind)}{damaged}")
    for key, kind in _OPTIONAL.items():
        if key in meta and not isinstance(meta[key], kind):
            raise TransferlabError(f"{mj}: field {key!r} should be {_json_type(kind)}{damaged}")
    if "params" in meta["head"] and not isinstance(meta["head"]["params"], dict):
        raise TransferlabError(f"{mj}: field head.params should be an object{damaged}")
    classes = meta["classes"]
    if not classes or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise TransferlabError(f"{mj}: field 'classes' should be a list of distinct class names{damaged}")


def _json_type(kind: Any) -> str:
    names = {str: "a string", int: "a whole number", list: "a list", dict: "an object", float: "a number"}
    return names.get(kind, "null" if kind is type(None) else getattr(kind, "__name__", str(kind)))


def _this_version() -> str:
    from . import __version__

    return __version__
