"""The label audit of the bundled photos (``benchmarks/presidents_audit.csv``), which ``benchmarks/accuracy.py`` uses
to report the figures on photos that show the labelled president: every row names a bundled photo of that label,
with a known verdict, and the photos it drops are found in the intake table (a path mismatch would drop nothing
and print the full figures under the audited heading)."""

from __future__ import annotations

import sys

import pandas as pd

import transferlab

from .conftest import PRESIDENTS, REPO

sys.path.insert(0, str(REPO / "benchmarks"))


def test_audit_rows_name_bundled_photos_with_a_known_verdict():
    from accuracy import AUDIT

    rows = pd.read_csv(AUDIT)
    assert list(rows.columns) == ["file", "verdict", "finding"]
    assert rows["file"].is_unique
    assert set(rows["verdict"]) <= {"shows", "not-shown", "two-presidents", "unclear"}
    assert rows["finding"].str.len().min() > 10  # each verdict says what the photo shows
    manifest = pd.read_csv(PRESIDENTS / "manifest.csv").set_index("file")
    assert rows["file"].isin(manifest.index).all()
    assert (rows["file"].str.split("/").str[0] == manifest.loc[rows["file"], "label"].to_numpy()).all()


def test_audited_photos_are_dropped_from_the_evaluation_side():
    from accuracy import AUDIT, audited_out

    rows = pd.read_csv(AUDIT)
    dropped = audited_out(PRESIDENTS, AUDIT)
    assert len(dropped) == int(rows["verdict"].isin(["not-shown", "two-presidents"]).sum()) > 0
    paths = set(transferlab.Classifier().read(PRESIDENTS).table["path"].astype(str))
    assert dropped <= paths
    assert audited_out(PRESIDENTS, None) == set()
