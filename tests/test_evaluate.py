"""Metrics, confidence intervals, and the batch arithmetic of the featurize stage, checked against values worked
out by hand or by an independent formula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from transferlab.evaluate import compute_metrics, fmt_ci, mean_ci, wilson_interval
from transferlab.features import balanced_batches
from transferlab.features.cuda import auto_batch_size, batch_for_memory


def test_metrics_on_a_small_case_worked_out_by_hand():
    labels = ["a", "b", "c"]
    y = ["a", "a", "b", "b", "c", "c"]
    proba = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.2, 0.3]]
    )
    m = compute_metrics(y, proba, labels, groups=["x", "x", "x", "y", "y", "y"], skipped={"truncated": 2})
    assert m["accuracy"] == pytest.approx(4 / 6) and m["n"] == 6
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    expected_loss = -np.mean(np.log([0.8, 0.2, 0.8, 0.6, 0.6, 0.3]))
    assert m["log_loss"] == pytest.approx(expected_loss)
    assert m["groups"]["x"]["accuracy"] == pytest.approx(2 / 3) and m["groups"]["y"]["n"] == 3
    assert m["groups"]["y"]["per_class"]["c"] == {"accuracy": 0.5, "n": 2}
    assert m["skipped"] == {"truncated": 2}
    lo, hi = m["accuracy_ci95"]
    assert lo < 4 / 6 < hi


def test_wilson_interval_matches_the_closed_form():
    for k, n in [(0, 10), (8, 10), (199, 203), (50, 50)]:
        z = stats.norm.ppf(0.975)
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson_interval(k, n) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-9)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_seed_intervals_are_students_t():
    values = [0.90, 0.94, 0.91, 0.97, 0.93]
    m, lo, hi = mean_ci(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / np.sqrt(5)
    assert (m, lo, hi) == pytest.approx((0.93, 0.93 - half, 0.93 + half))
    assert half == pytest.approx(0.0340, abs=1e-4)  # 2.776 · 0.02739 / √5, by hand
    assert fmt_ci(values) == "0.930 ± 0.034"
    assert mean_ci([0.9, np.nan, 0.9]) == (0.9, 0.9, 0.9)  # no spread: a zero-width interval, NaN ignored
    assert fmt_ci([]) == "—"


@pytest.mark.parametrize(
    ("n", "batch", "lanes"), [(10, 4, 2), (100, 32, 2), (7, 32, 2), (608, 32, 3), (1, 32, 4), (0, 8, 2)]
)
def test_balanced_batches_cover_every_image_once_in_equal_batches_for_every_lane(n, batch, lanes):
    bounds = balanced_batches(n, batch, lanes)
    covered = [i for a, b in bounds for i in range(a, b)]
    assert covered == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes, default=0) <= batch and max(sizes, default=0) - min(sizes, default=0) <= 1
    if n >= lanes:
        assert len(bounds) % lanes == 0


def test_gpu_batch_size_follows_free_memory():
    assert batch_for_memory(per_image=20e6, free=40e9) == 512  # 0.5 · 40 GB / 20 MB = 1000 → 512
    assert batch_for_memory(per_image=20e6, free=40e9, limit=256) == 256
    assert batch_for_memory(per_image=1e9, free=2e9) == 8  # never below 8
    assert batch_for_memory(per_image=0.0, free=1e9) == 1024


def test_cpu_batch_size_is_32():
    class CPUBackbone:
        device = type("D", (), {"type": "cpu"})()

    assert auto_batch_size(CPUBackbone()) == 32


def test_accuracy_scores_the_answers_as_given_and_the_closed_set_beside_it():
    """One definition of accuracy: n is every photo asked about (answered, `unknown` or no face found); a known
    person answered `unknown` or `no face found` is wrong as answered; the most probable class is the closed-set
    figure (none without a face: wrong); only a photo that could not be read is outside n, listed; the confusion of
    the answers has `unknown` and `no face found` columns. All per group too."""
    import pandas as pd

    from transferlab.evaluate import evaluate_analyses
    from transferlab.predictions import Analysis, FaceFinding

    face = FaceFinding([0, 0, 10, 10], [[0, 0]] * 5, 0.9, np.array([0.9, 0.1]), 0.5, True)
    table = pd.DataFrame(
        {
            "path": list("abcdef"),
            "label": ["x", "x", "y", "y", "x", "y"],
            "content_hash": list("123456"),
            "kind": ["web", "web", "web", "crop", "crop", "crop"],
        }
    )
    analyses = [
        Analysis(np.array([0.9, 0.1]), faces=[face], answer=0, known=True),  # x, right
        Analysis(np.array([0.8, 0.2]), faces=[face], answer=0, known=False),  # x, unknown: right class, wrong answer
        Analysis(np.array([0.3, 0.7]), faces=[face, face], answer=1, known=True),  # y, right
        Analysis(np.array([0.6, 0.4]), faces=[face], answer=0, known=True),  # y, wrong
        Analysis(error=("no face", "no face found")),  # x, no face: wrong, and inside n
        Analysis(error=("truncated", "image file is truncated")),  # y, could not be read: outside n, listed
    ]
    m, detail = evaluate_analyses(table, analyses, ["x", "y"], group_by="kind", skipped={})
    assert m["n"] == 5 and m["skipped"] == {"truncated": 1} and m["n_no_face"] == 1
    assert m["not_read"] == [{"path": "f", "reason": "truncated"}]
    assert m["accuracy"] == 2 / 5 and m["accuracy_closed_set"] == 3 / 5
    assert m["unknown_rate"] == 1 / 5 and m["no_face_rate"] == 1 / 5 and m["several_faces"] == 1
    assert detail["answers"] == ["x", "unknown", "y", "x", "no face found"]
    assert m["answer_labels"] == ["x", "y", "unknown", "no face found"]
    assert m["confusion_answered"] == [[1, 0, 1, 1], [1, 1, 0, 0]]  # rows x, y
    assert m["confusion"] == [[2, 0], [1, 1]]  # closed set, over the photos with a face
    web, crop = m["groups"]["web"], m["groups"]["crop"]
    assert (web["accuracy"], web["accuracy_closed_set"], web["unknown_rate"]) == (2 / 3, 1.0, 1 / 3)
    assert (crop["accuracy"], crop["no_face_rate"], crop["n"]) == (0.0, 0.5, 2)
