"""Model artifact: a directory with ``model.json`` and ``head.safetensors``. Loading never unpickles anything."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._atomic import atomic_write_bytes
from ._files import file_sha256
from ._version import __version__
from .errors import TransferlabError

FORMAT = "transferlab-model"
FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"


def save_artifact(
    path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray], *, replace: bool = False
) -> Path:
    """Write ``model.json`` and the head's arrays (safetensors) into ``path``, each file atomically.

    Parameters
    ----------
    path
        Model directory (created if needed).
    meta
        JSON-serialisable description (classes, backbone, preprocessing, head parameters, training summary).
    arrays
        The head's fitted arrays; string arrays (class names) belong in ``meta``.
    replace
        Replace a model in ``path`` in one step: the arrays go to a new file named by their hash and one rename of
        ``model.json`` switches to it, so a reader or a crash sees the old model or the new one, never a mix;
        the old arrays file is removed afterwards.

    Returns
    -------
    Path
        The model directory.
    """
    from safetensors.numpy import save

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    numeric = {k: np.ascontiguousarray(v) for k, v in arrays.items() if v.dtype.kind in "fiub"}
    blob = save(numeric)
    head_sha = hashlib.sha256(blob).hexdigest()
    head_file = f"head-{head_sha[:16]}.safetensors" if replace else HEAD_FILE
    atomic_write_bytes(out / head_file, blob)
    # Written by train: the two files are replaced one after the other; the hash lets a reader tell a pair cut apart
    # by a kill. Replaced (enrol, forget): model.json's rename is the one step that switches models.
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "head_file": head_file, "head_sha256": head_sha}
    atomic_write_bytes(out / "model.json", json.dumps(doc, indent=2, default=_json_default).encode())
    for old in out.glob("head*.safetensors"):  # the arrays of a model this one replaced (a gallery, perhaps)
        if old.name != head_file:
            old.unlink(missing_ok=True)
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
    meta.setdefault("head_file", HEAD_FILE)
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
    expected = meta.get("head_sha256")  # absent in models saved before it was recorded
    if expected is not None and file_sha256(head_path) != expected:
        raise TransferlabError(
            f"{head_path}: does not match {mj} (a save was interrupted, or a file was replaced); retrain the model"
        )
    try:
        arrays = load_file(str(head_path))
    except (OSError, SafetensorError) as exc:
        raise TransferlabError(f"{head_path}: unreadable head weights ({exc}); retrain the model") from None
    return meta, arrays


class _Named(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str


class _Head(_Named):
    params: dict[str, Any] = Field(default_factory=dict)


class ModelFile(BaseModel):
    """The fields of ``model.json`` this version reads (others are kept and ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: str
    format_version: int
    classes: list[str]
    backbone: _Named
    head: _Head
    head_file: str = HEAD_FILE
    pool: str | None = None
    features: dict[str, Any] | None = None
    face_choice: str | None = None
    transferlab_version: str | None = None
    faces: dict[str, Any] | None = None

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if not classes or len(set(classes)) != len(classes):
            raise ValueError("should be a list of distinct class names")
        return classes


_JSON_TYPES = {
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
}


def _validate(meta: Any, mj: Path) -> None:
    """Check ``model.json`` against the format this version reads; errors name the file, field and version."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TransferlabError(f'{mj}: not a transferlab model file (no "format": "{FORMAT}")')
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        written_by = meta.get("transferlab_version", "an unknown version")
        raise TransferlabError(
            f"{mj}: model format version {version!r} (written by transferlab {written_by}) is not supported by "
            f"transferlab {__version__}, which reads format version {FORMAT_VERSION}; retrain the model with "
            "this version, or load it with the version that wrote it"
        )
    try:
        ModelFile.model_validate(meta)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        field = f"{loc[0]!r}" if len(loc) == 1 else ".".join(loc)
        damaged = "; the file is damaged or was edited by hand: retrain the model"
        if err["type"] == "missing" and len(loc) == 1:
            raise TransferlabError(f"{mj}: missing field {field}{damaged}") from None
        if err["type"] == "missing":
            raise TransferlabError(f"{mj}: field {field} should be {_expected(loc)}, found nothing{damaged}") from None
        if err["type"] in _JSON_TYPES:
            found = _json_type(type(err.get("input")))
            raise TransferlabError(
                f"{mj}: field {field} should be {_JSON_TYPES[err['type']]}, found {found}{damaged}"
            ) from None
        raise TransferlabError(f"{mj}: field {field} {err['msg'].removeprefix('Value error, ')}{damaged}") from None


def _expected(loc: list[str]) -> str:
    """The JSON type ``model.json`` should have at a nested location, from the schema."""
    model: Any = ModelFile
    annotation: Any = None
    for part in loc:
        annotation = model.model_fields[part].annotation
        model = annotation
    return _json_type(annotation)


def _json_type(kind: Any) -> str:
    names = {str: "a string", int: "a whole number", list: "a list", dict: "an object", float: "a number"}
    names[bool] = "a boolean"
    return names.get(kind, "null" if kind is type(None) else getattr(kind, "__name__", str(kind)))
