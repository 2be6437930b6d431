"""ONNX export: one graph (pixels → probabilities) whose outputs match the torch model within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from transferlab.cli import app

from .conftest import run

ort = pytest.importorskip("onnxruntime")


def _pixels(clf, paths):
    import torch

    from transferlab.decode import decode_pixels

    bb = clf.extractor_.backbone
    return torch.stack([bb.transform(decode_pixels(p, bb.draft_size)) for p in paths]).numpy()


def test_export_matches_the_saved_model_on_real_photos(trained_model, small_photos, tmp_path):
    import transferlab

    out = tmp_path / "model.onnx"
    res = CliRunner().invoke(app, ["export", str(trained_model), "--onnx", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["input"]["shape"] == [-1, 224, 224, 3] and info["max_abs_diff_vs_torch"] <= 1e-4

    clf = transferlab.load(trained_model, use_cache=False)
    paths = sorted(str(p) for p in small_photos.rglob("*.jpg"))[:6]
    expected = clf.predict_proba(paths)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"pixels": _pixels(clf, paths)})[0]
    assert sess.get_modelmeta().custom_metadata_map["transferlab.license"].startswith("BSD-3-Clause")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["transferlab.classes"]) == list(clf.classes_)
    assert json.loads(meta["transferlab.preprocessing"])["input_size"] == [3, 224, 224]


@pytest.mark.parametrize("head", ["logreg", "svm", "mlp", "mlp-sigmoid"])
def test_head_modules_equal_predict_proba(head):
    import torch

    from transferlab.export import head_module
    from transferlab.heads import make_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 16)).astype(np.float32)
    y = np.array(["a", "b", "c"] * 20)
    X[y == "b"] += 1.0
    params = {"epochs": 3} if head.startswith("mlp") else {}
    if head == "mlp-sigmoid":  # the hidden activation of heads fitted by Spark ML
        head, params["activation"] = "mlp", "sigmoid"
    h = make_head(head, **params).fit(X, y)
    with torch.inference_mode():
        got = head_module(h)(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, h.predict_proba(X), atol=1e-5)


def test_face_models_are_refused_with_a_reason():
    from transferlab import Classifier
    from transferlab.errors import TransferlabError
    from transferlab.export import pipeline_module

    with pytest.raises(TransferlabError, match="face model"):
        pipeline_module(Classifier("sface"))


def test_export_of_a_missing_model_is_one_line(tmp_path):
    proc = run("export", str(tmp_path / "nope"), "--onnx", str(tmp_path / "x.onnx"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "no model.json" in proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_onnxruntime_backend_gives_torch_features_and_exports_once(tmp_path, small_photos, monkeypatch):
    from transferlab.backbones import create_backbone, onnx_graph
    from transferlab.features import featurize_images as featurize

    paths = sorted(str(p) for p in small_photos.rglob("*.jpg"))[:10]
    ref = featurize(paths, create_backbone("mobilenet_v2"), batch_size=4)
    bb = create_backbone("mobilenet_v2").use_onnxruntime(tmp_path)
    fast = featurize(paths, bb, batch_size=4, num_workers=0, lanes=2)  # side by side, one onnxruntime thread each
    assert set(bb._sessions) == {"avg-1"}  # the lanes' sessions, exported and built once
    np.testing.assert_allclose(fast.features, ref.features, atol=1e-5)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_graph, "export_module", no_export)
    again = featurize(paths[:3], create_backbone("mobilenet_v2").use_onnxruntime(tmp_path))
    np.testing.assert_allclose(again.features, ref.features[:3], atol=1e-5)
