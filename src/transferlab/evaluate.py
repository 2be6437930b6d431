"""Evaluation: metrics from true labels and predicted probabilities, overall and per group, and confidence
intervals (Wilson for one accuracy, Student's t over repeated seeds)."""

from __future__ import annotations

from collections.abc import Sequence
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


def compute_metrics(
    y_true: Sequence[str],
    proba: np.ndarray,
    labels: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    skipped: dict[str, int] | None = None,
    answers: Sequence[str] | None = None,
) -> dict[str, Any]:
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
    dict
        Keys ``accuracy, accuracy_closed_set, n, labels, per_class, confusion, log_loss, skipped`` (and ``groups``
        when given), the shape of ``transferlab evaluate --json``. Precision, recall, F1 and the confusion matrix are
        over the classes (closed set).
    """
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    labels = [str(c) for c in labels]
    y_true = np.asarray(y_true).astype(str)
    n = len(y_true)
    out: dict[str, Any] = {"accuracy": float("nan"), "accuracy_closed_set": float("nan"), "n": n, "labels": labels}
    if n == 0:
        out.update(per_class={}, confusion=[], log_loss=float("nan"), skipped=dict(skipped or {}))
        if groups is not None:
            out["groups"] = {}
        return out
    y_pred = np.asarray(labels)[np.argmax(proba, axis=1)]
    closed = y_pred == y_true
    correct = closed if answers is None else np.asarray(answers).astype(str) == y_true
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    lo, hi = wilson_interval(int(correct.sum()), n)
    out.update(
        accuracy=float(correct.mean()),
        accuracy_ci95=[lo, hi],
        accuracy_closed_set=float(closed.mean()),
        per_class={
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(labels)
        },
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        log_loss=float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=labels)),
        skipped=dict(skipped or {}),
    )
    if groups is not None:
        g = np.asarray(groups).astype(str)
        out["groups"] = {
            str(v): {
                "accuracy": float(correct[g == v].mean()),
                "accuracy_closed_set": float(closed[g == v].mean()),
                "n": int((g == v).sum()),
                "per_class": {
                    c: {
                        "accuracy": float(correct[(g == v) & (y_true == c)].mean()),
                        "n": int(((g == v) & (y_true == c)).sum()),
                    }
                    for c in labels
                    if ((g == v) & (y_true == c)).any()
                },
            }
            for v in sorted(set(g))
        }
    return out


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
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics for the photos of an intake table, given the model's analysis of each row.

    ``accuracy`` scores the answers as the model gives them: for a face model a photo answered ``unknown`` is
    wrong; ``accuracy_closed_set`` scores the most probable class (what the seed measured). Rows without an answer
    are counted in ``skipped`` by reason. ``unknown_rate`` is the share of answered photos (all of known people)
    answered ``unknown``; ``no_face_rate`` the share of photos with no face found; both also per group. Face models
    add ``several_faces``.

    Returns
    -------
    metrics, detail
        The ``evaluate --json`` object, and ``{"rows", "proba"}`` of the answered rows for reports.
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
    metrics["unknown_rate"] = float(unknown.mean()) if len(used) else float("nan")
    counted = ok | no_face
    metrics["no_face_rate"] = float(no_face[counted].mean()) if counted.any() else float("nan")
    if group_by is not None:
        all_groups = table[group_by].astype(str).to_numpy()
        for v, g in metrics["groups"].items():
            here = all_groups[ok] == v
            g["unknown_rate"] = float(unknown[here].mean()) if here.any() else float("nan")
            g["no_face_rate"] = float(no_face[(all_groups == v) & counted].mean())
    if any(a.faces for a in analyses):
        metrics["several_faces"] = int(sum(len(a.faces) > 1 for a in analyses))
    return metrics, {"rows": rows, "proba": proba, "answers": answers}


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


def seen_note(metrics: dict[str, Any]) -> str | None:
    """One line saying how many evaluated photos the model was trained on (None when it saw none of them)."""
    seen, others = metrics.get("n_seen_in_training", 0), metrics.get("n_unseen", 0)
    if not seen:
        return None
    if not others:
        return f"evaluate: all {seen} photos were used to train this model; this is not a held-out accuracy"
    return (
        f"evaluate: {seen} of these photos were used to train this model; accuracy on the {others} others: "
        f"{metrics['accuracy_unseen']:.3f} (accuracy_unseen)"
    )
