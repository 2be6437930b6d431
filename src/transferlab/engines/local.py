"""The local engine: the featurize and predict stages in this process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class LocalEngine:
    """Run every stage in this process (decoding in DataLoader workers where that pays)."""

    name = "local"

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
    ) -> Any:
        """The featurize stage: ``FeatureResult`` (whole-image) or ``FaceFeatureResult`` (faces)."""
        from ..features import featurize_any

        return featurize_any(
            sources,
            backbone,
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
        stats = clf.last_feature_stats
        n_err = sum(p.error is not None for p in preds)
        return TableSummary(out, len(preds), n_err, stats.get("cached"), stats.get("computed"), time.perf_counter() - t)
