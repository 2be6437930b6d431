"""The local engine: the featurize and predict stages in this process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..features import Extractor, FeatureResult
from . import _rows
from .base import TableSummary


class LocalEngine:
    """Run every stage in this process (decoding in DataLoader workers where that pays)."""

    name = "local"

    def __deepcopy__(self, memo: dict[int, Any]) -> LocalEngine:
        # Engines are services, not parameter values: clone() of a Classifier keeps the same engine.
        return self

    def prepare(self, extractor: Extractor, photos: int | None = None) -> None:
        """Build the backbone's networks in this process now (face graphs converted once and cached), for a job of
        ``photos``."""
        extractor.backbone.build(photos)

    def featurize(
        self,
        extractor: Extractor,
        sources: Sequence[Any],
        content_hashes: Sequence[str | None] | None,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureResult:
        """The featurize stage in this process (:meth:`transferlab.features.Extractor.compute`)."""
        return extractor.compute(sources, content_hashes, progress)

    def feature_table(
        self,
        extractor: Extractor,
        paths: Sequence[str],
        labels: Sequence[str | None],
        *,
        out: Path,
        meta: dict[str, Any],
        progress: Callable[[int], None] | None = None,
    ) -> TableSummary:
        """Featurize ``paths`` and write the feature table to ``out``."""
        t = time.perf_counter()
        self.prepare(extractor, len(paths))
        built = time.perf_counter() - t
        rows = _rows.feature_rows(
            list(paths),
            extractor.backbone,
            pool=extractor.pool,
            cache=extractor.cache,
            batch_size=extractor.options.batch_size or 32,
            num_workers=extractor.options.num_workers,
            progress=progress,
        )
        out = _rows.prepare_out(out)
        _rows.write_local_table(_rows.table_frame(paths, labels, rows), out, _rows.table_schema())
        _rows.write_meta(out, meta)
        n_err = sum(e is not None for e in rows.errors)
        seconds = time.perf_counter() - t
        extra = {"build_seconds": round(built, 2)}
        return TableSummary(out, len(paths), n_err, rows.n_cached, rows.n_computed, seconds, extra)

    def predict_table(self, clf: Any, paths: Sequence[str], out: Path) -> TableSummary:
        """Predict every path with ``clf`` and write the predictions table to ``out``."""
        t = time.perf_counter()
        preds = clf.predict_images(list(paths))
        out = _rows.prepare_out(out)
        _rows.write_local_table(_rows.prediction_frame(preds), out, _rows.prediction_schema())
        counts = clf.extractor_.counts
        n_err = sum(p.error is not None for p in preds)
        return TableSummary(out, len(preds), n_err, counts["cached"], counts["computed"], time.perf_counter() - t)

    def fit_head(self, head: Any, X: Any, y: np.ndarray) -> bool:
        """Heads are fitted by their caller, in this process: always False."""
        return False
