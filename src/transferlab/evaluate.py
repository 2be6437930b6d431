"""Evaluation: :class:`Metrics` from true labels and the model's answers, overall and per group, and confidence
intervals (Wilson for one accuracy, Student's t over repeated seeds). This module is the only writer of
:class:`Metrics`; reports, the command line, the server and the study read it."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .errors import TransferlabError
from .predictions import Analysis


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct``/``n`` (sensible at 0 and 1, unlike ±1.96·se).

    Examples
    --------
    >>> [round(x, 3) for x in wilson_interval(10, 10)]
    [0.722, 1.0]
    """
    if n == 0:
        return (float("nan"), float("nan"))
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def mean_ci(values: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval ``(mean, lower, upper)`` of repeated-seed results (NaNs ignored).

    Examples
    --------
    >>> [round(x, 3) for x in mean_ci([0.9, 0.92, 0.94])]
    [0.92, 0.87, 0.97]
    """
    from scipy import stats

    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return (float("nan"),) * 3
    m = float(a.mean())
    if len(a) < 2 or a.std(ddof=1) == 0:
        return m, m, m
    lo, hi = stats.t.interval(confidence, len(a) - 1, loc=m, scale=stats.sem(a))
    return m, float(lo), float(hi)


def fmt_ci(values: Any) -> str:
    """``"mean ± half-width"`` of :func:`mean_ci` with three decimals, ``"—"`` without values."""
    m, lo, hi = mean_ci(values)
    return "—" if np.isnan(m) else f"{m:.3f} ± {(hi - lo) / 2:.3f}"


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class, over the photos of known classes, by the most probable class."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class GroupMetrics:
    """Accuracy within one value of the ``--group-by`` column (e.g. ``kind=web-photo``)."""

    accuracy: float
    accuracy_closed_set: float
    n: int
    per_class: dict[str, dict[str, Any]]  # class → {"accuracy", "n"}
    unknown_rate: float | None = None
    no_face_rate: float | None = None


@dataclass(frozen=True)
class Metrics(Mapping[str, Any]):
    """What an evaluation measured: the one type every report, the CLI, the server and the study read.

    Built here only (:func:`compute_metrics`, :func:`evaluate_analyses` and the methods that return an updated
    copy); :meth:`to_dict` is the ``--json`` object of ``train`` and ``evaluate`` (its keys and types are a public
    contract, checked against golden files). It also reads like that dict (``metrics["accuracy"]``), as the Python
    API's metrics always did.

    Attributes
    ----------
    accuracy
        The answers as given: for a face model a known person answered ``unknown`` is wrong.
    accuracy_closed_set
        The most probable class (what the seed study measured).
    n, labels, per_class, confusion, log_loss
        Photos scored, the classes, per-class scores and the confusion matrix (most probable class), log loss.
    skipped
        Photos not scored, by reason.
    accuracy_ci95
        Wilson interval of ``accuracy`` (absent when ``n`` is 0).
    groups
        Per value of the ``--group-by`` column, when one was given.
    unknown_rate, no_face_rate, several_faces
        Share of scored photos answered ``unknown``; share of read photos with no face found; photos with several
        faces (face models).
    n_seen_in_training, n_unseen, accuracy_unseen
        How many of the photos the model was trained on, and the accuracy on the others (a saved model).
    found, used, n_train
        Files found, used (``found = used + skipped``), and used for training (``train``).
    """

    accuracy: float
    accuracy_closed_set: float
    n: int
    labels: list[str]
    per_class: dict[str, ClassScores]
    confusion: list[list[int]]
    log_loss: float
    skipped: dict[str, int]
    accuracy_ci95: list[float] | None = None
    groups: dict[str, GroupMetrics] | None = None
    unknown_rate: float | None = None
    no_face_rate: float | None = None
    several_faces: int | None = None
    n_seen_in_training: int | None = None
    n_unseen: int | None = None
    accuracy_unseen: float | None = None
    found: int | None = None
    used: int | None = None
    n_train: int | None = None

    # The --json key order; entries that are None are left out (as they always were).
    _ORDER = (
        "accuracy",
        "accuracy_closed_set",
        "n",
        "labels",
        "accuracy_ci95",
        "per_class",
        "confusion",
        "log_loss",
        "skipped",
        "groups",
        "unknown_rate",
        "no_face_rate",
        "several_faces",
        "n_seen_in_training",
        "n_unseen",
        "accuracy_unseen",
        "found",
        "used",
        "n_train",
    )

    def to_dict(self) -> dict[str, Any]:
        """The ``train --json`` / ``evaluate --json`` object."""
        out: dict[str, Any] = {}
        for key in self._ORDER:
            value = getattr(self, key)
            if value is None:
                continue
            if key == "per_class":
                value = {c: asdict(v) for c, v in value.items()}
            elif key == "groups":
                value = {g: {k: v for k, v in asdict(m).items() if v is not None} for g, m in value.items()}
            elif isinstance(value, dict | list):
                value = copy.deepcopy(value)
            out[key] = value
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def skipping(self, counts: dict[str, int]) -> Metrics:
        """These metrics with more photos counted as skipped, by reason."""
        skipped = dict(self.skipped)
        for reason, k in counts.items():
            skipped[reason] = skipped.get(reason, 0) + int(k)
        return replace(self, skipped=skipped)

    def counted(self, *, found: int, used: int, n_train: int | None = None) -> Metrics:
        """These metrics with the file counts of the job (``found = used + skipped``)."""
        return replace(self, found=int(found), used=int(used), n_train=None if n_train is None else int(n_train))

    def summary(self, group_by: str | None) -> dict[str, Any]:
        """What a saved model says of its held-out evaluation (``model.json``'s ``evaluation``)."""
        out: dict[str, Any] = {"accuracy": self.accuracy}
        if self.accuracy_ci95 is not None:
            out["accuracy_ci95"] = list(self.accuracy_ci95)
        out.update(n=self.n, log_loss=self.log_loss)
        if group_by and self.groups is not None:
            out.update(
                groups={k: {"accuracy": g.accuracy, "n": g.n} for k, g in self.groups.items()}, group_by=group_by
            )
        return out


def compute_metrics(
    y_true: Sequence[str],
    proba: np.ndarray,
    labels: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    skipped: dict[str, int] | None = None,
    answers: Sequence[str] | None = None,
) -> Metrics:
    """Accuracy, per-class precision/recall/F1, confusion matrix, log loss and per-group accuracy.

    Parameters
    ----------
    y_true
        True labels (each must be one of ``labels``).
    proba
        Predicted probabilities, ``(n, len(labels))``, columns in ``labels`` order.
    labels
        Class names.
    groups
        Optional value per row (e.g. the manifest's ``kind``) for per-group accuracy.
    skipped
        Counts of images that could not be evaluated, by reason (reported, not scored).
    answers
        The answers as the model gives them, when they can differ from the most probable class (a face model's
        ``unknown``). ``accuracy`` scores these; ``accuracy_closed_set`` the most probable class. Default: the most
        probable class.

    Returns
    -------
    Metrics
        Precision, recall, F1 and the confusion matrix are over the classes (closed set).
    """
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    labels = [str(c) for c in labels]
    y_true = np.asarray(y_true).astype(str)
    n = len(y_true)
    skipped = dict(skipped or {})
    if n == 0:
        nan = float("nan")
        return Metrics(nan, nan, 0, labels, {}, [], nan, skipped, groups=None if groups is None else {})
    y_pred = np.asarray(labels)[np.argmax(proba, axis=1)]
    closed = y_pred == y_true
    correct = closed if answers is None else np.asarray(answers).astype(str) == y_true
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    lo, hi = wilson_interval(int(correct.sum()), n)
    per_group = None
    if groups is not None:
        g = np.asarray(groups).astype(str)
        per_group = {
            str(v): GroupMetrics(
                accuracy=float(correct[g == v].mean()),
                accuracy_closed_set=float(closed[g == v].mean()),
                n=int((g == v).sum()),
                per_class={
                    c: {
                        "accuracy": float(correct[(g == v) & (y_true == c)].mean()),
                        "n": int(((g == v) & (y_true == c)).sum()),
                    }
                    for c in labels
                    if ((g == v) & (y_true == c)).any()
                },
            )
            for v in sorted(set(g))
        }
    return Metrics(
        accuracy=float(correct.mean()),
        accuracy_closed_set=float(closed.mean()),
        n=n,
        labels=labels,
        accuracy_ci95=[lo, hi],
        per_class={c: ClassScores(float(p[i]), float(r[i]), float(f[i]), int(s[i])) for i, c in enumerate(labels)},
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        log_loss=float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=labels)),
        skipped=skipped,
        groups=per_group,
    )


def rows_to_evaluate(
    table: pd.DataFrame, classes: Sequence[str], group_by: str | None, skipped: dict[str, int] | None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows of an intake table a model can be scored on (labels it knows), and the skip counts with the others.

    Raises
    ------
    TransferlabError
        When ``group_by`` names no column of the table.
    """
    skipped = dict(skipped or {})
    if group_by is not None and group_by not in table.columns:
        cols = [c for c in table.columns if c not in ("path", "label", "content_hash", "width", "height", "group")]
        raise TransferlabError(
            f"--group-by {group_by}: no such column; available: {', '.join(cols) or 'none (pass --manifest CSV)'}"
        )
    known = table["label"].isin(set(classes))
    if not known.all():
        skipped["label not in model"] = skipped.get("label not in model", 0) + int((~known).sum())
        table = table[known].reset_index(drop=True)
    return table, skipped


def evaluate_analyses(
    table: pd.DataFrame,
    analyses: Sequence[Analysis],
    classes: Sequence[str],
    *,
    group_by: str | None = None,
    skipped: dict[str, int] | None = None,
    training_hashes: set[str] | None = None,
) -> tuple[Metrics, dict[str, Any]]:
    """Metrics for the photos of an intake table, given the model's analysis of each row.

    ``accuracy`` scores the answers as the model gives them: for a face model a photo answered ``unknown`` is
    wrong; ``accuracy_closed_set`` scores the most probable class (what the seed measured). Rows without an answer
    are counted in ``skipped`` by reason. ``unknown_rate`` is the share of answered photos (all of known people)
    answered ``unknown``; ``no_face_rate`` the share of photos with no face found; both also per group. Face models
    add ``several_faces``. With ``training_hashes`` (a saved model's), how many photos it was trained on and the
    accuracy on the others.

    Returns
    -------
    metrics, detail
        The metrics, and ``{"rows", "proba", "answers"}`` of the answered rows for reports.
    """
    skipped = dict(skipped or {})
    ok = np.array([a.usable for a in analyses], dtype=bool)
    no_face = np.array([a.error is not None and a.error[0] == "no face" for a in analyses], dtype=bool)
    for a in analyses:
        if a.error is not None and not a.usable:
            skipped[a.error[0]] = skipped.get(a.error[0], 0) + 1
    rows = table[ok].reset_index(drop=True)
    used = [a for a in analyses if a.proba is not None]
    proba = np.stack([a.proba for a in used]) if used else np.zeros((0, len(classes)))
    answers = [str(classes[int(np.argmax(a.proba))]) if a.known else "unknown" for a in used]
    groups = rows[group_by].tolist() if group_by is not None else None
    metrics = compute_metrics(
        rows["label"].tolist(), proba, list(classes), groups=groups, skipped=skipped, answers=answers
    )
    unknown = np.array([not a.known for a in used], dtype=bool)
    counted = ok | no_face
    extra: dict[str, Any] = {
        "unknown_rate": float(unknown.mean()) if len(used) else float("nan"),
        "no_face_rate": float(no_face[counted].mean()) if counted.any() else float("nan"),
    }
    if group_by is not None and metrics.groups is not None:
        all_groups = table[group_by].astype(str).to_numpy()
        extra["groups"] = {
            v: replace(
                g,
                unknown_rate=float(unknown[all_groups[ok] == v].mean())
                if (all_groups[ok] == v).any()
                else float("nan"),
                no_face_rate=float(no_face[(all_groups == v) & counted].mean()),
            )
            for v, g in metrics.groups.items()
        }
    if any(a.faces for a in analyses):
        extra["several_faces"] = int(sum(len(a.faces) > 1 for a in analyses))
    detail = {"rows": rows, "proba": proba, "answers": answers}
    if training_hashes:
        extra.update(seen_in_training(table, detail, training_hashes))
    return replace(metrics, **extra), detail


def seen_in_training(table: pd.DataFrame, detail: dict[str, Any], training: set[str]) -> dict[str, Any]:
    """How many of the evaluated photos the model was trained on (by content hash), and the accuracy (answers as
    given) on the others: ``n_seen_in_training``, ``n_unseen``, ``accuracy_unseen`` (NaN when every photo was
    seen)."""
    rows, answers = detail["rows"], np.asarray(detail["answers"], dtype=object)
    seen_all = table["content_hash"].isin(training).to_numpy()
    unseen = ~rows["content_hash"].isin(training).to_numpy()
    correct = answers[unseen] == rows["label"].astype(str).to_numpy()[unseen]
    return {
        "n_seen_in_training": int(seen_all.sum()),
        "n_unseen": int(unseen.sum()),
        "accuracy_unseen": float(correct.mean()) if unseen.any() else float("nan"),
    }


def seen_note(metrics: Metrics) -> str | None:
    """One line saying how many evaluated photos the model was trained on (None when it saw none of them)."""
    seen, others = metrics.n_seen_in_training or 0, metrics.n_unseen or 0
    if not seen:
        return None
    if not others:
        return f"evaluate: all {seen} photos were used to train this model; this is not a held-out accuracy"
    return (
        f"evaluate: {seen} of these photos were used to train this model; accuracy on the {others} others: "
        f"{metrics.accuracy_unseen:.3f} (accuracy_unseen)"
    )
