"""Feature recipes: what a model records about how its features were made, how loading honours it, and (where a
CUDA GPU exists) that the portable recipe gives the CPU's answers on the GPU and the fast one the same errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import transferlab
from transferlab.backbones import create_backbone, device_recipe, recorded_recipe
from transferlab.errors import TransferlabError
from transferlab.features import feature_spec
from transferlab.features import featurize_images as featurize

from .conftest import PRESIDENTS, run

CPU = {"precision": "fp32", "decode": "cpu"}
FAST = {"precision": "bf16", "decode": "nvjpeg"}


needs_cuda = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")


def test_each_device_and_recipe_names_how_it_makes_features():
    assert device_recipe("cpu") == device_recipe("cpu", "fast") == device_recipe("cuda", "portable") == CPU
    assert device_recipe("cuda:1", "fast") == FAST
    with pytest.raises(TransferlabError, match="--recipe quick: choose portable or fast"):
        device_recipe("cpu", "quick")
    assert recorded_recipe({}) == CPU
    assert recorded_recipe({"precision": "bf16"}) == FAST  # models from before the decoder was recorded: nvJPEG
    assert recorded_recipe({"precision": "bf16", "decode": "cpu"}) == {"precision": "bf16", "decode": "cpu"}


def test_a_model_records_its_recipe_and_loads_it_without_a_note(trained_model):
    meta = json.loads((trained_model / "model.json").read_text())
    assert meta["recipe"] == {"name": "portable", "device": "cpu", **CPU}
    assert recorded_recipe(meta["features"]) == CPU
    clf = transferlab.load(trained_model)
    assert clf.recipe == "portable" and clf.recipe_note_ is None
    # On the CPU the fast recipe makes the same features (and shares their cache): nothing differs, nothing to say.
    fast = transferlab.load(trained_model, recipe="fast")
    assert fast.recipe == "fast" and fast.recipe_note_ is None
    assert feature_spec(fast.extractor_.backbone, "avg") == feature_spec(clf.extractor_.backbone, "avg")


def _as_if_trained_fast_on_a_gpu(model, dest):
    shutil.copytree(model, dest)
    meta = json.loads((dest / "model.json").read_text())
    meta["features"].update(FAST)
    meta["recipe"] = {"name": "fast", "device": "cuda", **FAST}
    (dest / "model.json").write_text(json.dumps(meta))
    return dest


def test_a_model_made_with_the_fast_recipe_says_in_one_line_what_differs_here(trained_model, tmp_path, small_photos):
    fast = _as_if_trained_fast_on_a_gpu(trained_model, tmp_path / "fast-model")
    clf = transferlab.load(fast)
    assert clf.recipe == "fast"  # the model's own recipe is asked for; this CPU cannot make it
    note = clf.recipe_note_
    assert "nvJPEG decoding in bf16" in note and "here with CPU decoding in fp32" in note
    assert "--recipe portable" in note
    photos = [str(p) for p in sorted((small_photos / "obama").iterdir())[:2]]
    proc = run("predict", str(fast), *photos, "--json", cache=tmp_path / "c")
    assert [line for line in proc.stderr.splitlines() if line.startswith("note:")] == [note]
    assert all(json.loads(line)["label"] for line in proc.stdout.splitlines())  # stdout stays JSON lines
    quiet = run("predict", str(fast), *photos, "--json", "-q", cache=tmp_path / "c")
    assert "note:" not in quiet.stderr
    same = run("predict", str(trained_model), *photos, "--json", cache=tmp_path / "c")
    assert "note:" not in same.stderr
    assert [json.loads(x)["label"] for x in same.stdout.splitlines()] == [
        json.loads(x)["label"] for x in proc.stdout.splitlines()
    ]


def test_the_recipe_flag_is_checked_in_one_line(trained_model, tmp_path):
    proc = run("predict", str(trained_model), str(PRESIDENTS), "--recipe", "quick", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --recipe quick: unknown recipe; choose one of: portable, fast"


def test_nvjpeg_decoding_is_refused_for_a_portable_backbone(small_photos):
    bb = create_backbone("mobilenet_v2")
    photo = str(next((small_photos / "bush").iterdir()))
    with pytest.raises(TransferlabError, match="decodes with nvJPEG, but the backbone's portable recipe"):
        featurize([photo], bb, decode_device="cuda")


def _bundled(n_per_class: int) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    m = pd.read_csv(PRESIDENTS / "manifest.csv").groupby("label").head(n_per_class)
    return [str(PRESIDENTS / f) for f in m["file"]], m["label"].to_numpy()


def _agreement(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Share of photos a head fitted on ``a`` answers the same given ``b``, and the other way round."""
    from sklearn.linear_model import LogisticRegression

    fa = LogisticRegression(max_iter=2000).fit(a, y)
    fb = LogisticRegression(max_iter=2000).fit(b, y)
    return float((fa.predict(a) == fa.predict(b)).mean()), float((fb.predict(b) == fb.predict(a)).mean())


@needs_cuda
def test_portable_features_on_the_gpu_give_the_cpus_answers():
    """Parity, both ways: a head fitted on CPU features answers the same from the GPU's (default, portable)
    features on ≥ 99.8 % of the bundled photos, and a head fitted on GPU features from the CPU's."""
    files, y = _bundled(60)
    cpu = featurize(files, create_backbone("mobilenet_v2"))
    gpu = featurize(files, create_backbone("mobilenet_v2").to("cuda"))
    ok = cpu.ok & gpu.ok
    a, b = cpu.features[ok], gpu.features[ok]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999, cos.min()
    assert min(_agreement(a, b, y[ok])) >= 0.998


@needs_cuda
def test_portable_face_rows_on_the_gpu_match_the_cpus():
    from transferlab.features import featurize_faces

    files, _ = _bundled(15)
    cpu = featurize_faces(files, create_backbone("sface"))
    gpu = featurize_faces(files, create_backbone("sface").to("cuda"))
    for i in range(len(files)):
        a, b = cpu.bags[i], gpu.bags[i]
        assert a.shape == b.shape, files[i]
        if len(a):
            np.testing.assert_allclose(a[:, -15:-1], b[:, -15:-1], atol=0.5)  # boxes and landmarks, pixels
            assert ((a[:, :128] * b[:, :128]).sum(1) > 0.999).all(), files[i]


def test_spark_executors_are_told_the_drivers_recipe():
    """Each executor uses the device it has with the driver's recipe, so a GPU executor makes the portable
    features a CPU driver expects (and the fast ones only when asked)."""
    from transferlab.engines import LocalEngine
    from transferlab.engines.spark import _job
    from transferlab.features import Extractor, FeatureOptions

    def job(**options):
        return _job(Extractor(FeatureOptions(device="cpu", use_cache=False, **options), LocalEngine()), 32)

    assert job(backbone="mobilenet_v2").options.recipe == "portable"
    assert job(backbone="sface", recipe="fast").options.recipe == "fast"
    assert job(backbone="sface").options.device == "auto"  # each executor uses the device it has
