"""The featurize stage's one result type: per image, a bag of feature rows, or the reason it has none."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FeatureResult:
    """Feature rows for a list of images, aligned with the input.

    Whole-image backbones give every usable image one row; face backbones one row per detected face (none when no
    face was found). An image that could not be used has no bag and an entry in ``errors``.

    Attributes
    ----------
    bags
        Per image, its rows ``(k, width)``, or None when ``errors`` has its reason.
    width
        Values per row.
    errors
        ``{index: (reason, detail)}`` for images that could not be used.
    n_cached, n_computed, n_damaged
        Images served from the cache, computed now, and damaged cache entries found (and recomputed).
    content_hashes
        The images' content hashes (the cache keys), where known.
    """

    bags: list[np.ndarray | None]
    width: int
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    n_cached: int = 0
    n_computed: int = 0
    n_damaged: int = 0
    content_hashes: list[str | None] = field(default_factory=list)

    @classmethod
    def from_matrix(cls, features: np.ndarray, errors: dict[int, tuple[str, str]], **counts: object) -> FeatureResult:
        """One row per image from an ``(n, width)`` matrix (rows of failed images are ignored)."""
        bags: list[np.ndarray | None] = [None if i in errors else features[i : i + 1] for i in range(len(features))]
        res = cls(bags, int(features.shape[1]), errors, **counts)  # type: ignore[arg-type]
        res._matrix = features
        return res

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of images that could be used (a face photo without a face is usable: it has 0 rows)."""
        mask = np.ones(len(self.bags), dtype=bool)
        mask[list(self.errors)] = False
        return mask

    @property
    def features(self) -> np.ndarray:
        """``(n, width)``: each image's single row, NaN for images with an error (whole-image backbones).

        Raises
        ------
        ValueError
            When an image has other than one row (face backbones: use :attr:`bags`).
        """
        matrix = getattr(self, "_matrix", None)
        if matrix is not None:
            return matrix
        out = np.full((len(self.bags), self.width), np.nan, dtype=np.float32)
        for i, bag in enumerate(self.bags):
            if bag is None:
                continue
            if len(bag) != 1:
                raise ValueError(f"image {i} has {len(bag)} feature rows; this result holds bags, not one row each")
            out[i] = bag[0]
        self._matrix = out
        return out

    def stats(self) -> dict[str, int]:
        """``{"cached", "computed", "failed"}`` image counts."""
        return {"cached": self.n_cached, "computed": self.n_computed, "failed": len(self.errors)}

    def subset(self, indices: Sequence[int]) -> FeatureResult:
        """The rows of some images, in the given order (counts are not carried over)."""
        where = {i: k for k, i in enumerate(indices)}
        errors = {where[i]: e for i, e in self.errors.items() if i in where}
        hashes = [self.content_hashes[i] for i in indices] if self.content_hashes else []
        return FeatureResult([self.bags[i] for i in indices], self.width, errors, content_hashes=hashes)
