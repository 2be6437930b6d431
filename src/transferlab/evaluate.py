"""Evaluation: :class:`Metrics` from true labels and the model's answers, overall and per group, and confidence
intervals (Wilson for one accuracy, Student's t over repeated seeds). This module is the only writer of
:class:`Metrics`; reports, the command line, the server and the study read it."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import TransferlabError
from .predictions import Analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


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
        The answers as given: a known person answered ``unknown`` or ``no face found`` is wrong.
    accuracy_closed_set
        The most probable class (what the seed study measured); a photo with no face has none, so it is wrong.
    n, labels
        Every photo asked about (answered, ``unknown`` or no face found: only photos that could not be read at all
        are outside it), and the classes.
    per_class, confusion, log_loss
        Over the photos with a most probable class (closed set): precision, recall and F1 per class, the confusion
        matrix (rows true, columns most probable), the log loss.
    answer_labels, confusion_answered
        The confusion of the answers as given: rows the true class, columns ``answer_labels`` (the classes,
        ``unknown``, ``no face found``).
    n_no_face
        Photos in ``n`` where no face was found.
    skipped, not_read
        Photos not scored, by reason (training photos without a face, files that could not be read), and the
        evaluated files that could not be read, each with its reason.
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
    answer_labels: list[str] | None = None
    confusion_answered: list[list[int]] | None = None
    n_no_face: int | None = None
    not_read: list[dict[str, str]] | None = None

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
        "answer_labels",
        "confusion_answered",
        "n_no_face",
        "not_read",
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

    def unread(self, files: Sequence[tuple[str, str]]) -> Metrics:
        """These metrics with more files that could not be read (``(path, reason)``) listed in ``not_read``."""
        listed = [*(self.not_read or []), *({"path": str(p), "reason": r} for p, r in files)]
        return replace(self, not_read=listed)

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


NO_FACE_ANSWER = "no face found"


def compute_metrics(
    y_true: Sequence[str],
    proba: np.ndarray,
    labels: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    skipped: dict[str, int] | None = None,
    answers: Sequence[str] | None = None,
) -> Metrics:
    """Accuracy as answered and of the most probable class, per-class precision/recall/F1, confusion matrices, log
    loss and per-group accuracy.

    Parameters
    ----------
    y_true
        True labels (each must be one of ``labels``).
    proba
        Predicted probabilities, ``(n, len(labels))``, columns in ``labels`` order; a row of NaN for a photo with no
        most probable class (no face found).
    labels
        Class names.
    groups
        Optional value per row (e.g. the manifest's ``kind``) for per-group accuracy.
    skipped
        Counts of images that could not be evaluated, by reason (reported, not scored).
    answers
        The answers as the model gives them, when they can differ from the most probable class (``unknown``,
        ``no face found``). ``accuracy`` scores these; ``accuracy_closed_set`` the most probable class. Default: the
        most probable class.

    Returns
    -------
    Metrics
        Precision, recall, F1, ``confusion`` and the log loss are over the photos with a most probable class.
    """
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    labels = [str(c) for c in labels]
    y_true = np.asarray(y_true).astype(str)
    n = len(y_true)
    skipped = dict(skipped or {})
    columns = [*labels, "unknown", NO_FACE_ANSWER]
    if n == 0:
        nan = float("nan")
        return Metrics(
            nan, nan, 0, labels, {}, [], nan, skipped, groups=None if groups is None else {},
            answer_labels=columns, confusion_answered=[], n_no_face=0,
        )  # fmt: skip
    proba = np.asarray(proba)  # its own float type: sklearn checks the sums to that precision
    has = ~np.isnan(proba).any(axis=1)
    y_pred = np.full(n, NO_FACE_ANSWER, dtype=object)
    y_pred[has] = np.asarray(labels)[np.argmax(proba[has], axis=1)]
    closed = y_pred == y_true
    given = y_pred if answers is None else np.asarray(answers, dtype=object)
    correct = given.astype(str) == y_true
    lo, hi = wilson_interval(int(correct.sum()), n)
    if has.any():
        p, r, f, s = precision_recall_fscore_support(
            y_true[has], y_pred[has].astype(str), labels=labels, zero_division=0
        )
        per_class = {c: ClassScores(float(p[i]), float(r[i]), float(f[i]), int(s[i])) for i, c in enumerate(labels)}
        confusion = confusion_matrix(y_true[has], y_pred[has].astype(str), labels=labels).tolist()
        loss = float(log_loss(y_true[has], np.clip(proba[has], 1e-15, 1.0), labels=labels))
    else:
        per_class, confusion, loss = {}, [[0] * len(labels) for _ in labels], float("nan")
    answered = confusion_matrix(y_true, given.astype(str), labels=columns)[: len(labels)].tolist()
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
        per_class=per_class,
        confusion=confusion,
        log_loss=loss,
        skipped=skipped,
        groups=per_group,
        answer_labels=columns,
        confusion_answered=answered,
        n_no_face=int((~has).sum()),
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

    One definition of accuracy (:class:`Metrics`): ``n`` is every photo asked about; ``accuracy`` scores the answers
    as given, so a known person answered ``unknown`` or ``no face found`` is wrong; ``accuracy_closed_set`` scores
    the most probable class (what the seed measured; none for a photo without a face). Only photos that could not be
    read at all stay outside ``n``: counted in ``skipped`` and listed in ``not_read``. ``unknown_rate`` and
    ``no_face_rate`` are shares of ``n``, also per group. Face models add ``several_faces``. With
    ``training_hashes`` (a saved model's), how many photos it was trained on and the accuracy on the others.

    Returns
    -------
    metrics, detail
        The metrics, and for reports, per photo of ``n``: ``rows`` (the table's rows), ``answers``, ``proba`` (NaN
        without a face), ``similarity`` (the answer face's, NaN without one) and ``box`` (the answer face's, or None).
    """
    skipped = dict(skipped or {})
    no_face = np.array([a.error is not None and a.error[0] == "no face" for a in analyses], dtype=bool)
    counted = np.array([a.usable for a in analyses], dtype=bool) | no_face
    not_read = []
    for i, a in enumerate(analyses):
        if not counted[i]:
            reason = a.error[0] if a.error is not None else "unreadable"
            skipped[reason] = skipped.get(reason, 0) + 1
            not_read.append({"path": str(table["path"].iloc[i]), "reason": reason})
    rows = table[counted].reset_index(drop=True)
    asked = [a for a, c in zip(analyses, counted, strict=True) if c]
    nan = np.full(len(classes), np.nan, dtype=np.float32)  # keeps float32 probabilities float32
    proba = np.stack([a.proba if a.proba is not None else nan for a in asked]) if asked else np.zeros((0, len(classes)))
    answers = [
        NO_FACE_ANSWER if a.proba is None else str(classes[int(np.argmax(a.proba))]) if a.known else "unknown"
        for a in asked
    ]
    faces = [a.faces[a.answer] if a.faces and a.answer is not None else None for a in asked]
    groups = rows[group_by].tolist() if group_by is not None else None
    metrics = compute_metrics(
        rows["label"].tolist(), proba, list(classes), groups=groups, skipped=skipped, answers=answers
    )
    unknown = np.array([a == "unknown" for a in answers], dtype=bool)
    lacking = np.array([a == NO_FACE_ANSWER for a in answers], dtype=bool)
    extra: dict[str, Any] = {
        "unknown_rate": float(unknown.mean()) if len(asked) else float("nan"),
        "no_face_rate": float(lacking.mean()) if len(asked) else float("nan"),
        "not_read": not_read,
    }
    if group_by is not None and metrics.groups is not None:
        values = rows[group_by].astype(str).to_numpy()
        extra["groups"] = {
            v: replace(
                g, unknown_rate=float(unknown[values == v].mean()), no_face_rate=float(lacking[values == v].mean())
            )
            for v, g in metrics.groups.items()
        }
    if any(a.faces for a in analyses):
        extra["several_faces"] = int(sum(len(a.faces) > 1 for a in analyses))
    detail = {
        "rows": rows,
        "proba": proba,
        "answers": answers,
        "similarity": np.array([f.similarity if f is not None else np.nan for f in faces]),
        "box": [f.box if f is not None else None for f in faces],
    }
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
