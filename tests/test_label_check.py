"""``transferlab check-labels``: every photo answered out of fold, and the photos whose label the model doubts
listed most doubtful first. Checked on real photos with planted label errors."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from transferlab.errors import TransferlabError
from transferlab.label_check import check_labels

from .conftest import copy_subset, run


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """10 photos per class, then two moved into the wrong class folder: an LFW crop of Bush filed as Obama, and a
    Trump web photo filed as Clinton."""
    root = copy_subset(tmp_path_factory.mktemp("check") / "photos", 10)
    bush, trump = sorted((root / "bush").iterdir())[0], sorted((root / "trump").iterdir())[0]
    moved = {root / "obama" / bush.name: "bush", root / "clinton" / trump.name: "trump"}
    shutil.move(bush, root / "obama" / bush.name)
    shutil.move(trump, root / "clinton" / trump.name)
    check = check_labels(root, folds=5, backbone="sface", cache_dir=tmp_path_factory.mktemp("check-cache"))
    return root, moved, check


def test_planted_label_errors_are_doubted_first_and_answered_with_the_true_class(planted):
    _, moved, check = planted
    assert len(check.rows) == 40 and check.folds == 5 and check.found == 40
    doubted = check.doubted
    for path, truth in moved.items():
        row = doubted[doubted["path"] == str(path)]
        assert len(row) == 1, f"{path.name} filed under the wrong class was not doubted"
        assert row["answer"].iloc[0] in (truth, "unknown")
        assert row["most_probable"].iloc[0] == truth
    # The planted errors come before any photo that only the open set doubts, or at worst among the first few.
    rank = {p: i for i, p in enumerate(doubted["path"])}
    assert max(rank[str(p)] for p in moved) < 4, doubted[["path", "label", "answer"]]
    # Clean photos mostly agree: the check is not a list of everything.
    assert (check.rows["verdict"] == "agrees").mean() >= 0.8


def test_rows_order_json_and_files(planted, tmp_path):
    _, _, check = planted
    rows = check.rows
    order = rows["verdict"].map({"another class": 0, "unknown": 1, "no face found": 2, "agrees": 3})
    assert order.is_monotonic_increasing
    other = rows[rows["verdict"] == "another class"]["confidence"]
    assert other.is_monotonic_decreasing
    unknown = rows[rows["verdict"] == "unknown"]["similarity"]
    assert unknown.is_monotonic_increasing
    assert set(rows["fold"]) == set(range(5))
    doc = json.loads(json.dumps(check.to_dict()))
    assert set(doc) == {"n", "found", "skipped", "folds", "counts", "doubted"}
    assert doc["n"] == 40 and sum(doc["counts"].values()) == 40
    assert len(doc["doubted"]) == len(check.doubted)
    first = doc["doubted"][0]
    assert set(first) == {"path", "label", "answer", "most_probable", "confidence", "similarity", "n_faces", "box"}
    assert len(first["box"]) == 4 and first["n_faces"] >= 1
    text = check.summary("sface + logreg", show=1)
    assert str(check.doubted["path"].iloc[0]) in text and "(sface + logreg)" in text
    assert f"… and {len(check.doubted) - 1} more" in text or len(check.doubted) == 1
    written = check.write(tmp_path / "out")
    table = pd.read_csv(written["csv"])
    assert len(table) == 40 and table["path"].tolist() == rows["path"].tolist()
    assert written["gallery"].stat().st_size > 1000


def test_a_class_with_one_photo_or_one_fold_is_refused_in_one_line(tmp_path):
    root = copy_subset(tmp_path / "photos", 3)
    for extra in sorted((root / "bush").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(TransferlabError, match="'bush' has 1 usable photo"):
        check_labels(root, backbone="mobilenet_v2", cache_dir=tmp_path / "cache", verbose=False)
    with pytest.raises(TransferlabError, match="at least 2 folds"):
        check_labels(root, folds=1, backbone="mobilenet_v2")


def test_cli_check_labels_json_without_a_cache_leaves_no_cache_behind(tmp_path):
    root = copy_subset(tmp_path / "photos", 6)
    cache = tmp_path / "cache"
    proc = run(
        "check-labels", str(root), "--backbone", "mobilenet_v2", "--folds", "3", "--no-cache", "--json",
        "--out", str(tmp_path / "out"), cache=cache,
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    assert doc["n"] == 24 and doc["folds"] == 3
    assert set(doc["files"]) <= {"csv", "gallery"} and "csv" in doc["files"]
    assert len(pd.read_csv(doc["files"]["csv"])) == 24
    assert not cache.exists() or not any(cache.rglob("*")), "--no-cache wrote into the cache directory"
