"""The local engine: the featurize and predict stages in this process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..features import FeatureResult, extract
from . import _rows


@dataclass
class TableSummary:
    """What an engine wrote: a feature or prediction table and its counts."""

    out: Path
    rows: int
    errors: int
    n_cached: int | None = None
    n_computed: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, engine: str) -> dict[str, Any]:
        """The ``featurize --json`` object."""
        return {
            "out": str(self.out),
            "rows": self.rows,
            "errors": self.errors,
            "computed": self.n_computed,
            "cached": self.n_cached,
            "engine": engine,
            "seconds": round(self.seconds, 2),
        }


class LocalEngine:
    """Run every stage in this process (decoding in DataLoader workers where that pays)."""

    name = "local"

    def __deepcopy__(self, memo: dict[int, Any]) -> LocalEngine:
        # Engines are services, not parameter values: clone() of a Classifier keeps the same engine.
        return self

    def featurize(
        self,
        sources: Sequence[Any],
        backbone: Any,
        *,
        pool: str,
        content_hashes: Sequence[str | None] | None,
        cache: Any,
        batch_size: int,
        num_workers: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureResult:
        """The featurize stage in this process (:func:`transferlab.features.extract`)."""
        return extract(
            backbone,
            sources,
            pool=pool,
            content_hashes=content_hashes,
            cache=cache,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )

    def feature_table(
        self,
        paths: Sequence[str],
        labels: Sequence[str | None],
        backbone: Any,
        *,
        pool: str,
        cache: Any,
        out: Path,
        meta: dict[str, Any],
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> TableSummary:
        """Featurize ``paths`` and write the feature table to ``out``."""
        t = time.perf_counter()
        rows = _rows.feature_rows(
            list(paths),
            backbone,
            pool=pool,
            cache=cache,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
        out = _rows.prepare_out(out)
        _rows.write_local_table(_rows.table_frame(paths, labels, rows), out, _rows.table_schema())
        _rows.write_meta(out, meta)
        n_err = sum(e is not None for e in rows.errors)
        return TableSummary(out, len(paths), n_err, rows.n_cached, rows.n_computed, time.perf_counter() - t)

    def predict_table(self, clf: Any, paths: Sequence[str], out: Path) -> TableSummary:
        """Predict every path with ``clf`` and write the predictions table to ``out``."""
        t = time.perf_counter()
        preds = clf.predict_images(list(paths))
        out = _rows.prepare_out(out)
        _rows.write_local_table(_rows.prediction_frame(preds), out, _rows.prediction_schema())
        counts = clf.extractor_.counts
        n_err = sum(p.error is not None for p in preds)
        return TableSummary(out, len(preds), n_err, counts["cached"], counts["computed"], time.perf_counter() - t)
