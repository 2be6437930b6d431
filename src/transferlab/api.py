"""The whole jobs: :func:`train` (intake → split → features → head → held-out evaluation → saved model and
report) and :func:`featurize_table` (a Parquet feature table); plus the public names of the Python API.

    >>> import transferlab                                                      # doctest: +SKIP
    >>> result = transferlab.train("photos/", "model/", backbone="sface")      # doctest: +SKIP
    >>> clf = transferlab.load("model/"); clf.predict(["a.jpg"])               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import atomic_write_text
from ._progress import Reporter
from ._version import __version__
from .engines import TableSummary, as_engine
from .errors import TransferlabError
from .evaluate import Metrics
from .features import feature_spec
from .intake import Intake, list_images
from .options import Options, validate_options
from .pipeline import Classifier, load
from .predictions import Prediction, prediction_counts
from .report import write_report
from .split import Split, split_table

__all__ = [
    "Classifier",
    "FitEvaluation",
    "Prediction",
    "TrainResult",
    "featurize_table",
    "fit_evaluate",
    "load",
    "prediction_counts",
    "train",
]


class Chain(Sequence):
    """Two sequences read as one, without materialising them (augmented copies decode only when read)."""

    def __init__(self, first: Sequence[Any], second: Sequence[Any]) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def _locate(self, i: int) -> tuple[Sequence[Any], int]:
        return (self.first, i) if i < len(self.first) else (self.second, i - len(self.first))

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        seq, j = self._locate(i)
        return seq[j]

    def peek(self, i: int) -> Any:
        """What item ``i`` is, without making it (see :func:`~transferlab.gallery.gallery_paths`)."""
        seq, j = self._locate(i)
        peek = getattr(seq, "peek", None)
        return peek(j) if peek is not None else seq[j]


@dataclass
class FitEvaluation:
    """Result of :func:`fit_evaluate`."""

    metrics: Metrics
    detail: dict[str, Any]
    stats: dict[str, int]
    train_rows: np.ndarray
    test_rows: np.ndarray
    timings: dict[str, float]


def fit_evaluate(
    clf: Classifier,
    table: pd.DataFrame,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    group_by: str | None = None,
    skipped: dict[str, int] | None = None,
    extra_train: tuple[Sequence[Any], Sequence[str], Sequence[str]] | None = None,
) -> FitEvaluation:
    """Fit ``clf`` on the training rows of an intake table and evaluate it on the test rows.

    The test side goes through the prediction path: no label is used to pick its faces or features.
    ``extra_train`` adds ``(sources, cache_keys, labels)`` to the training side (augmented copies, for studies).
    """
    timings: dict[str, float] = {}
    labels = table["label"].to_numpy().astype(str)
    sources: Sequence[Any] = table["path"].to_numpy()[train_idx].tolist()
    hashes = table["content_hash"].to_numpy()[train_idx].tolist()
    y = labels[train_idx]
    if extra_train is not None:
        sources = Chain(sources, extra_train[0])
        hashes, y = hashes + list(extra_train[1]), np.concatenate([y, np.asarray(extra_train[2]).astype(str)])
    clf.fit_sources(sources, y, hashes)
    if "finetune" in clf.fit_seconds_:
        timings["fine-tuning (trunk maps + epochs)"] = clf.fit_seconds_["finetune"]
    timings["features (train)"] = clf.fit_seconds_["features"]
    timings["head"] = clf.fit_seconds_["head"]
    n = len(train_idx)
    train_rows = train_idx[clf.train_used_[clf.train_used_ < n]]
    t = time.perf_counter()
    metrics, detail = clf.evaluate_table(
        table.iloc[test_idx].reset_index(drop=True), group_by=group_by, skipped=skipped
    )
    timings["features + evaluation (test)"] = time.perf_counter() - t
    metrics = metrics.skipping(Counter(reason for i, (reason, _) in clf.train_errors_.items() if i < n))
    test_paths = set(detail["rows"]["path"])
    test_rows = np.array([i for i in test_idx if table.at[i, "path"] in test_paths], dtype=int)
    stats = {k: int(clf.extractor_.counts[k]) for k in ("cached", "computed", "failed")}
    stats["seconds"] = round(clf.extractor_.seconds, 3)
    stats["build_seconds"] = round(clf.extractor_.build_seconds, 3)
    return FitEvaluation(metrics, detail, stats, train_rows, test_rows, timings)


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    classifier: Classifier
    metrics: Metrics
    intake: Intake
    split: Split
    out: Path
    report_path: Path
    timings: dict[str, float]
    feature_stats: dict[str, int]


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    test_size: float = 0.25,
    per_class: int | None = None,
    seed: int = 0,
    manifest: str | os.PathLike[str] | None = None,
    group_by: str | None = None,
    engine: Any = None,
    options: Options | None = None,
    **option_values: Any,
) -> TrainResult:
    """Intake → split → features → head → held-out evaluation → saved model with ``report.md``.

    Parameters
    ----------
    data
        A folder with one subfolder per class, or a CSV with ``path,label``.
    out
        The model directory to write.
    test_size, per_class, seed
        The split: the share held out per class, training images kept per class, and the seed (also the head's
        ``random_state`` where it has one).
    manifest, group_by
        A CSV with extra columns (e.g. ``kind``), and the column to report accuracy by.
    engine
        Where features are computed (see :class:`~transferlab.Classifier`).
    options, **option_values
        The model's :class:`~transferlab.options.Options`, or its fields as keywords (``backbone="sface"``,
        ``head="svm"``, ``cache_dir=...``; see :class:`~transferlab.Classifier`).

    Returns
    -------
    TrainResult
    """
    opts = (options if options is not None else validate_options(**option_values)).seeded(seed)
    clf = Classifier.from_options(opts, engine=as_engine(engine))
    timings: dict[str, float] = {}
    rep = Reporter(opts.verbose)
    _ = clf.build_extractor(opts).backbone  # fail fast on missing weights, before any long work
    t = time.perf_counter()
    got = clf.read(data, manifest)
    timings["intake"] = time.perf_counter() - t
    table = got.table
    if group_by is not None and group_by not in table.columns:
        raise TransferlabError(
            f"--group-by {group_by}: no such column in the data; pass --manifest CSV with that column"
        )
    split = split_table(table, test_size=test_size, seed=seed, per_class=per_class)
    skipped = got.report.skipped_counts()
    rep.info(_intake_line(got, split))
    fe = fit_evaluate(clf, table, split.train, split.test, group_by=group_by, skipped=skipped)
    metrics, train_rows, test_rows = fe.metrics, fe.train_rows, fe.test_rows
    timings.update(fe.timings)
    labels = table["label"].to_numpy().astype(str)
    split_info = {**split.params(), "n_train": len(train_rows), "n_test": len(test_rows)}
    evaluation = metrics.summary(group_by)
    clf.meta_.update(
        training_data={
            "data": str(data),
            "n_images": len(train_rows),
            "per_class": {str(k): int(v) for k, v in Counter(labels[train_rows]).items()},
        },
        split=split_info,
        evaluation=evaluation,
    )
    # found = used + skipped by reason: intake skips, feature errors on either side, and rows left out by --per-class
    not_sampled = len(table) - len(split.train) - len(split.test)
    if not_sampled:
        metrics = metrics.skipping({"not sampled (--per-class)": not_sampled})
    found = sum(got.report.found.values())
    metrics = metrics.counted(found=found, used=len(train_rows) + metrics.n, n_train=len(train_rows))
    out = Path(out)
    clf.save(out)
    _write_split(out, table, split, train_rows, test_rows)
    atomic_write_text(out / "intake.json", json.dumps(got.report.to_dict(), indent=2, default=str))
    atomic_write_text(out / "metrics.json", json.dumps(metrics.to_dict(), indent=2))
    config: dict[str, Any] = {
        "backbone": opts.backbone,
        "head": opts.head.value,
        "pool": opts.pool.value,
        "data": str(data),
        **opts.kind.report_config(clf.head_, clf.fit_stats_),
    }
    report_path = write_report(
        out,
        metrics=metrics,
        intake_report=got.report,
        config=config,
        split_info=split_info,
        timings=timings,
        feature_stats=fe.stats,
        detail=fe.detail,
        group_by=group_by,
        draft=clf.extractor_.backbone.draft_size,
    )
    return TrainResult(clf, metrics, got, split, out, report_path, timings, fe.stats)


def _intake_line(got: Intake, split: Split) -> str:
    """``train``'s status line after the intake: files, usable, skipped by reason, the split."""
    skipped = got.report.skipped_counts()
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    return (
        f"intake: {sum(got.report.found.values())} files, {len(got.table)} usable"
        + (f", skipped {sum(skipped.values())} ({reasons})" if skipped else "")
        + f"; split {len(split.train)} train / {len(split.test)} test"
    )


def _write_split(out: Path, table: pd.DataFrame, split: Split, train_rows: np.ndarray, test_rows: np.ndarray) -> None:
    """``split.csv``: every photo of the split with its side (``train``, ``test``, or ``skipped`` when it could not
    be used)."""
    side = np.full(len(table), "", dtype=object)
    side[split.train] = side[split.test] = "skipped"
    side[train_rows], side[test_rows] = "train", "test"
    atomic_write_text(out / "split.csv", table.assign(side=side)[lambda d: d["side"] != ""].to_csv(index=False))


def featurize_table(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    engine: Any = None,
    options: Options | None = None,
    **option_values: Any,
) -> TableSummary:
    """Featurize every image of ``data`` into a Parquet feature table (``transferlab featurize``).

    The table (columns ``path, content_hash, label, features, error``; see :mod:`transferlab.engines`) is the same
    whichever engine writes it, and both engines fill and read the same feature cache. Options as for
    :func:`train` (``backbone``, ``pool``, ``weights``, ``cache_dir``, ``batch_size``, ...); ``engine``: an engine
    or its name (None: this process).

    Returns
    -------
    transferlab.engines.TableSummary
    """
    opts = options if options is not None else validate_options(**option_values)
    engine = as_engine(engine)
    extractor = Classifier.from_options(opts, engine=engine).build_extractor(opts)
    bb = extractor.backbone
    paths, labels = list_images(data)
    meta = {
        "feature_spec": feature_spec(bb, opts.pool.value),
        "row_width": bb.row_width(opts.pool.value),
        "rows_per_image": opts.kind.rows_per_image,
        "engine": engine.name,
        "transferlab_version": __version__,
    }
    with Reporter(opts.verbose).task("features", len(paths)) as advance:
        return engine.feature_table(extractor, paths, labels, out=Path(out), meta=meta, progress=advance)
