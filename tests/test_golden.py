"""Same answers as the release before the kinds refactor (main at 451c0b6): the public ``--json`` shapes of train,
evaluate and predict, the figures they report, and models saved by that release.

The golden files were written by that release on the same photos (``tests/data/golden/cli_json.json``,
``tests/data/models_451c0b6/``): 12 photos per class for training, 3 unseen per class (and a text file) to predict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import transferlab
from transferlab.cli import main

from .conftest import REPO, copy_subset

GOLDEN = json.loads((REPO / "tests" / "data" / "golden" / "cli_json.json").read_text())
SAVED = REPO / "tests" / "data" / "models_451c0b6"
SAVED_PREDICTIONS = json.loads((SAVED / "predictions.json").read_text())
FLAGS = {"sface_logreg": ["--backbone", "sface"], "mobilenet_v2_svm": ["--backbone", "mobilenet_v2", "--head", "svm"]}


def shape(value):
    """The JSON shape of a value: dicts by key, lists element by element, leaves by type (ints and floats apart)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def assert_same(got, want, where="$"):
    """Every golden key is there with the same type and value (strings, ints and booleans exactly, floats to 1e-3:
    features differ across CPUs at ~1e-6). An object may gain keys: the contract may be extended, never reshaped."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        missing = sorted(set(want) - set(got))
        assert not missing, f"{where}: keys gone: {missing}"
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
        return
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{k}]")
        return
    assert shape(got) == shape(want), where
    if isinstance(want, float):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-3), where
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The golden runs' photos: ``photos/`` (12 per class, with a manifest) and ``unseen/`` (3 more per class and a
    text file), in one folder that predict runs from, so the printed paths match."""
    root = tmp_path_factory.mktemp("golden")
    copy_subset(root / "photos", 12, kinds=True)
    unseen = copy_subset(root / "unseen", 3, offset=12)
    (unseen / "notes.txt").write_text("not a photo")
    return root


def _cli(capsys, monkeypatch, cwd: Path, *args: str) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_train_evaluate_and_predict_print_the_golden_json(name, photos, tmp_path, capsys, monkeypatch):
    want = GOLDEN[name]
    model = tmp_path / "model"
    common = ["--manifest", "photos/manifest.csv", "--group-by", "kind", "--json", "-q"]
    code, out = _cli(capsys, monkeypatch, photos, "train", "photos", "--out", model, *FLAGS[name], *common)
    assert code == 0
    assert_same(json.loads(out), want["train"])
    code, out = _cli(capsys, monkeypatch, photos, "evaluate", model, "photos", *common)
    assert code == 0
    assert_same(json.loads(out), want["evaluate"])
    files = sorted(str(p.relative_to(photos)) for p in (photos / "unseen").rglob("*") if p.is_file())
    for key, extra in (("predict", []), ("predict_faces_all", ["--faces", "all"])):
        if key in want:
            code, out = _cli(capsys, monkeypatch, photos, "predict", model, *files, "--json", "-q", *extra)
            assert code == 1  # notes.txt is not a photo: some inputs could not be used (the documented exit 1)
            assert_same([json.loads(line) for line in out.splitlines()], want[key])


@pytest.mark.parametrize("name", sorted(SAVED_PREDICTIONS["predict"]))
def test_models_saved_by_the_release_before_load_and_answer_as_then(name, photos, tmp_path, monkeypatch):
    """A face model, a face model with an mlp head, the 'largest' choice and a whole-image fallback, a whole-image
    svm model and a fine-tuned whole-image model, saved by that release, give the answers they gave then."""
    monkeypatch.chdir(photos)
    want = SAVED_PREDICTIONS["predict"][name]
    clf = transferlab.load(SAVED / name, cache_dir=tmp_path / "c")
    got = clf.predict_images([e["path"] for e in want])
    assert_same([p.to_dict() for p in got], want)
    if name in SAVED_PREDICTIONS["predict_faces_all"]:
        lines = [line for p in got for line in p.face_dicts()]
        assert_same(lines, SAVED_PREDICTIONS["predict_faces_all"][name])
    assert np.asarray(clf.classes_).tolist() == sorted({"bush", "clinton", "obama", "trump"})
