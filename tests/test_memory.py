"""Bounded memory: featurizing a folder streams it; peak RSS does not grow with the number of images."""

from __future__ import annotations

import sys

from .conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

PEAK_BOUND_MB = 1500  # one lane: measured ~1,120 MB for mobilenet_v2 here (BENCHMARKS.md); torch + timm ~780 MB
LANES_PEAK_BOUND_MB = 2200  # two lanes (2 cores): measured ~1,750 MB, two batches' activations at once
GROWTH_BOUND_MB = 40  # 384 more decoded 224 px images held in memory would add at least 58 MB


def test_featurizing_a_folder_streams_with_flat_peak_memory():
    from memory import measure  # benchmarks/memory.py: a fresh child process, so its peak RSS is its own

    # One torch thread, so one lane: with two, the peak rises whenever both lanes' largest layers first coincide,
    # which is timing, not growth. Whole batches of 32 only (608 = 19 × 32, checkpoint after 7 batches): no new
    # tensor shape appears after the checkpoint, so what is measured is growth with the folder, not a new set of
    # oneDNN kernels for a last short batch.
    out = measure(608, [224], threads=1)
    marks = out["peak_rss_mb"]
    assert out["images"] == 608 and out["failed"] == 0
    at_224, at_end = marks["224 featurized"], marks["608 featurized (end)"]
    assert at_end - at_224 < GROWTH_BOUND_MB, marks
    assert at_end < PEAK_BOUND_MB, marks


def test_featurizing_with_lanes_stays_within_its_memory_bound():
    from memory import measure

    out = measure(608, [], threads=2)
    assert out["images"] == 608 and out["failed"] == 0
    assert out["peak_rss_mb"]["608 featurized (end)"] < LANES_PEAK_BOUND_MB, out["peak_rss_mb"]
