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

    Returns
    -------
    dict
        Keys ``accuracy, n, labels, per_class, confusion, log_loss, skipped`` (and ``groups`` when given), the
        shape of ``transferlab evaluate --json``.
    """
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    labels = [str(c) for c in labels]
    y_true = np.asarray(y_true).astype(str)
    n = len(y_true)
    out: dict[str, Any] = {"accuracy": float("nan"), "n": n, "labels": labels}
    if n == 0:
        out.update(per_class={}, confusion=[], log_loss=float("nan"), skipped=dict(skipped or {}))
        if groups is not None:
            out["groups"] = {}
        return out
    y_pred = np.asarray(labels)[np.argmax(proba, axis=1)]
    correct = y_pred == y_true
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    lo, hi = wilson_interval(int(correct.sum()), n)
    out.update(
        accuracy=float(correct.mean()),
        accuracy_ci95=[lo, hi],
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

    Accuracy is over the classes (the answer's most probable class). Rows without an answer are counted in
    ``skipped`` by reason. Face models (analyses with faces) add ``unknown_rate`` (the share of these photos of
    known people the open-set rule answers ``unknown``) and ``several_faces``.

    Returns
    -------
    metrics, detail
        The ``evaluate --json`` object, and ``{"rows", "proba"}`` of the answered rows for reports.
    """
    skipped = dict(skipped or {})
    ok = np.array([a.usable for a in analyses], dtype=bool)
    for a in analyses:
        if a.error is not None and not a.usable:
            skipped[a.error[0]] = skipped.get(a.error[0], 0) + 1
    rows = table[ok].reset_index(drop=True)
    proba = np.stack([a.proba for a in analyses if a.proba is not None]) if ok.any() else np.zeros((0, len(classes)))
    groups = rows[group_by].tolist() if group_by is not None else None
    metrics = compute_metrics(rows["label"].tolist(), proba, list(classes), groups=groups, skipped=skipped)
    if any(a.faces for a in analyses):
        known = [a.known for a in analyses if a.usable]
        metrics["unknown_rate"] = float(1 - np.mean(known)) if known else float("nan")
        metrics["several_faces"] = int(sum(len(a.faces) > 1 for a in analyses))
    return metrics, {"rows": rows, "proba": proba}
