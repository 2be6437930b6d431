"""Evaluation: metrics from true labels and predicted probabilities, overall and per group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for an accuracy of ``correct``/``n`` (sensible at 0 and 1, unlike ±1.96·se)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


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
