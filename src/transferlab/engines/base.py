"""What every engine offers (:class:`Engine`), and :class:`TableSummary`, what an engine reports of a table it wrote.

An engine decides where the featurize stage runs and how tables are written; the stage itself, the heads and the
answers are the same whichever runs them. :class:`~transferlab.engines.LocalEngine` runs everything in this process
(it is what "no engine" means); :class:`~transferlab.engines.spark.SparkEngine` runs the same stage functions on
Spark's executors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..features import Extractor, FeatureResult


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
            **({"build_seconds": self.extra["build_seconds"]} if "build_seconds" in self.extra else {}),
        }


@runtime_checkable
class Engine(Protocol):
    """Where the featurize and predict stages run."""

    name: str

    def prepare(self, extractor: Extractor, photos: int | None = None) -> None:
        """Get the featurize stage ready where it runs, before the photos (the local engine builds the networks in
        this process: a one-time cost, timed apart from the photos/s), for a job of ``photos`` (None: unknown)."""
        ...

    def featurize(
        self,
        extractor: Extractor,
        sources: Sequence[Any],
        content_hashes: Sequence[str | None] | None,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureResult:
        """The extractor's feature rows for ``sources`` (paths, bytes or PIL images), aligned with them."""
        ...

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
        """Featurize ``paths`` and write the Parquet feature table to ``out``."""
        ...

    def predict_table(self, clf: Any, paths: Sequence[str], out: Path) -> TableSummary:
        """Predict every path with a saved classifier and write the predictions table to ``out``."""
        ...

    def fit_head(self, head: Any, X: Any, y: np.ndarray) -> bool:
        """Fit ``head`` on ``(X, y)`` where the engine does that itself (Spark ML for matrices too big to collect);
        False leaves the fit to the caller, in this process."""
        ...
