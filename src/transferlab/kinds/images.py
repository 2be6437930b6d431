"""Models of whole photos: one feature row per photo, a plain head on it, every usable photo answered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._progress import Reporter
from ..errors import TransferlabError
from ..features import Extractor, FeatureResult
from ..finetune import FinetuneResult
from ..finetune_images import finetune
from ..predictions import Analysis
from ._base import ModelKind, fit_head, register_kind


class ImageKind(ModelKind):
    """A whole-image backbone's model: the configured head on each photo's feature row."""

    name = "images"
    unit = "features"
    rows_per_image = "one"
    answers_with_faces = False
    finetune_in_study = True
    export_refusal = None

    def check(self, opts: Any) -> None:
        """A whole-image model answers every photo it can read: it takes no fallback."""
        if opts.fallback is not None:
            raise TransferlabError(
                f"--fallback applies to face backbones only, not {opts.backbone!r}: it answers photos in which no "
                "face is found"
            )

    def make_head(self, opts: Any) -> Any:
        """The configured head, unfitted."""
        return opts.make_head()

    gallery_features = "the photo's feature row"

    def bags(self, res: FeatureResult, rows: Sequence[int]) -> tuple[list[np.ndarray], list[int]]:
        """Each photo's one row."""
        return [res.features[i][None] for i in rows], [0] * len(rows)

    def fit(
        self,
        head: Any,
        bags: Sequence[np.ndarray],
        start: Sequence[int],
        y: np.ndarray,
        *,
        engine: Any,
        reporter: Reporter,
    ) -> np.ndarray:
        """Fit the head on the photos' rows."""
        X = np.stack([b[0] for b in bags]) if len(bags) else np.zeros((0, 0), np.float32)
        fit_head(head, X, y, inner=head, engine=engine, reporter=reporter)
        return np.zeros(len(bags), dtype=int)

    def query(self, res: FeatureResult, i: int, analysis: Analysis) -> np.ndarray:
        """The photo's row."""
        return np.asarray(res.features[i], np.float32)

    def analyse(
        self, head: Any, res: FeatureResult, rows: Sequence[int], threshold: float | None = None
    ) -> list[Analysis]:
        """The head's probabilities for each photo's row (there is no open set: ``threshold`` is unused)."""
        rows = list(rows)
        proba = head.predict_proba(res.features[rows]) if rows else []
        return [Analysis(p) for p in proba]

    def finetune(
        self,
        extractor: Extractor,
        opts: Any,
        sources: Sequence[Any],
        hashes: list[str | None] | None,
        y: np.ndarray,
    ) -> FinetuneResult:
        """Train the network's top blocks on cached trunk maps of the photos and their augmented copies."""
        return finetune(
            extractor.backbone,
            sources,
            hashes,
            y,
            opts.finetune_config(),
            cache_dir=opts.cache_dir,
            use_cache=opts.use_cache,
            batch_size=opts.batch_size,
            num_workers=opts.num_workers,
            reporter=extractor.reporter,
        )


register_kind(ImageKind())
