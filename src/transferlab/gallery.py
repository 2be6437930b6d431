"""A model's gallery: per training photo, the features its head was fitted on, its label, its content hash and its
path relative to the folder it came from.

A model that keeps its gallery can learn a new person or forget one without the training folder (the head, the
prototypes and the ``unknown`` threshold are refitted on the gallery), and can show which training photos an answer
resembles. For a face model the features are the chosen face's embedding: biometric data. The gallery is saved
beside the head (``gallery.*`` arrays in ``head.safetensors``, labels and paths in ``model.json``) with a sha256 of
all of it, so an edited or damaged gallery is refused rather than refitted on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import TransferlabError
from .fitted import l2_normalise

PREFIX = "gallery."
_HASH_HEX = 64


def hash_bytes(key: str | None) -> bytes:
    """The 32 bytes saved for a photo's cache key: the content hash itself, or (for keys that are not one, such as
    an augmented copy's) the sha256 of the key."""
    if key is not None and len(key) == _HASH_HEX:
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    return hashlib.sha256((key or "").encode()).digest()


@dataclass
class Gallery:
    """The training photos a model's head was fitted on.

    Attributes
    ----------
    features
        ``(n, d)`` float32: what the head was fitted on per photo (a face model: the chosen face's embedding).
    labels
        ``(n,)`` the photos' labels.
    hashes
        Each photo's content hash (hex), the key of its cached features.
    paths
        Each photo's path relative to the folder it came from (``label/file.jpg`` for a training folder).
    columns
        What the model's kind keeps per photo besides (a face model: the chosen face's box, the number of faces).
    """

    features: np.ndarray
    labels: np.ndarray
    hashes: list[str]
    paths: list[str]
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32).reshape(len(self.labels), -1)
        self.labels = np.asarray(self.labels).astype(str)
        self.hashes = [hash_bytes(h).hex() for h in self.hashes]  # as saved: 32 bytes each
        self.paths = [str(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Photos per label, labels sorted."""
        return dict(sorted(Counter(str(v) for v in self.labels).items()))

    def select(self, keep: np.ndarray | Sequence[bool]) -> Gallery:
        """The photos where ``keep`` is true."""
        keep = np.asarray(keep, dtype=bool)
        idx = np.flatnonzero(keep)
        return Gallery(
            self.features[idx],
            self.labels[idx],
            [self.hashes[i] for i in idx],
            [self.paths[i] for i in idx],
            {k: v[idx] for k, v in self.columns.items()},
        )

    def extended(self, other: Gallery) -> Gallery:
        """This gallery followed by ``other`` (same kind of columns)."""
        if set(self.columns) != set(other.columns):
            raise TransferlabError("the galleries keep different columns; they come from different kinds of model")
        return Gallery(
            np.concatenate([self.features, other.features]),
            np.concatenate([self.labels, other.labels]),
            self.hashes + other.hashes,
            self.paths + other.paths,
            {k: np.concatenate([v, other.columns[k]]) for k, v in self.columns.items()},
        )

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` gallery photos most similar to each query (cosine similarity), most similar first.

        Returns
        -------
        index, similarity
            ``(m, k')`` arrays, ``k' = min(k, len(self))``.
        """
        sims = l2_normalise(np.asarray(queries, np.float32)) @ l2_normalise(self.features).T
        k = min(k, len(self))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(sims, order, axis=1)

    def class_means(self, classes: Sequence[str]) -> np.ndarray:
        """``(len(classes), d)``: each class's unit-length mean feature (zeros for a class with no photo)."""
        unit = l2_normalise(self.features)
        out = np.zeros((len(classes), self.features.shape[1]), np.float32)
        for j, c in enumerate(classes):
            rows = unit[self.labels == c]
            if len(rows):
                out[j] = rows.mean(axis=0)
        return l2_normalise(out)

    # -- saving ----------------------------------------------------------------------------------------------
    def sha256(self) -> str:
        """A hash of everything the gallery holds (features, labels, hashes, paths, columns)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.features).tobytes())
        h.update(json.dumps([self.labels.tolist(), self.hashes, self.paths]).encode())
        for k in sorted(self.columns):
            h.update(k.encode() + np.ascontiguousarray(self.columns[k]).tobytes())
        return h.hexdigest()

    def to_state(self, what: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays for ``head.safetensors`` (``gallery.*``) and ``model.json``'s ``gallery`` entry; ``what`` says
        what the features are."""
        names = sorted(set(self.labels.tolist()))
        index = {c: j for j, c in enumerate(names)}
        arrays = {
            PREFIX + "features": self.features,
            PREFIX + "label": np.asarray([index[c] for c in self.labels], np.int32),
            PREFIX + "content_hash": np.frombuffer(b"".join(hash_bytes(h) for h in self.hashes), np.uint8).reshape(
                -1, 32
            ),
            **{PREFIX + "column." + k: v for k, v in self.columns.items()},
        }
        meta = {
            "n_photos": len(self),
            "features": what,
            "labels": names,
            "paths": self.paths,
            "sha256": self.sha256(),
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], where: Any) -> Gallery:
        """The gallery :meth:`to_state` saved; one line naming ``where`` when it is incomplete or does not match
        its hash."""
        damaged = (
            f"{where}: the model's gallery is damaged or was edited (it does not match its hash); retrain the model"
        )
        try:
            names = list(meta["labels"])
            label = np.asarray(arrays[PREFIX + "label"], np.int64)
            g = cls(
                np.asarray(arrays[PREFIX + "features"], np.float32),
                np.asarray(names, dtype=object)[label] if len(label) else np.asarray([], dtype=str),
                [bytes(r).hex() for r in np.asarray(arrays[PREFIX + "content_hash"], np.uint8)],
                list(meta["paths"]),
                {
                    k.removeprefix(PREFIX + "column."): np.asarray(v)
                    for k, v in arrays.items()
                    if k.startswith(PREFIX + "column.")
                },
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise TransferlabError(damaged) from None
        if len(g.paths) != len(g) or g.sha256() != meta.get("sha256"):
            raise TransferlabError(damaged)
        return g


def gallery_paths(sources: Sequence[Any], indices: Sequence[int]) -> list[str]:
    """How the gallery names ``sources[i]`` for each ``i`` in ``indices``: a file's path relative to the folder all
    of them are in (for a training folder, ``label/file.jpg``), ``<image i>`` for an image given in memory.

    A sequence that makes its items when read (augmented copies: decoded and transformed) says what item ``i`` is
    through ``peek(i)`` instead (a path, or None for an image made in memory), so naming it costs nothing.
    """
    peek = getattr(sources, "peek", None)
    items = [peek(i) if peek is not None else sources[i] for i in indices]
    files = [os.path.abspath(s) if isinstance(s, str | os.PathLike) else None for s in items]
    dirs = [os.path.dirname(f) for f in files if f is not None]
    root = os.path.commonpath(dirs) if dirs else ""
    return [
        os.path.relpath(f, root).replace(os.sep, "/") if f is not None else f"<image {i}>"
        for f, i in zip(files, indices, strict=True)
    ]
