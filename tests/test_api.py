"""Python API: Classifier follows the estimator contract, saves to JSON + safetensors, loads without pickle."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

import transferlab
from transferlab.errors import TransferlabError

from .conftest import REPO, copy_subset


def test_fit_predict_save_load_round_trip(tmp_path, small_photos):
    paths = sorted(small_photos.glob("*/*.jpg"))
    labels = [p.parent.name for p in paths]
    held_out = copy_subset(tmp_path / "held-out", 8, offset=12)  # other photos of the same people
    test_paths = sorted(held_out.glob("*/*.jpg"))
    test_labels = [p.parent.name for p in test_paths]
    clf = transferlab.Classifier(backbone="mobilenet_v2", head="logreg", cache_dir=tmp_path / "c")
    clf.fit(paths, labels)
    pil = Image.open(paths[0])
    proba = clf.predict_proba([paths[0], pil])
    np.testing.assert_allclose(proba[0], proba[1], atol=1e-6)  # a path and the same PIL image agree
    clf.save(tmp_path / "m")
    again = transferlab.load(tmp_path / "m", cache_dir=tmp_path / "c")
    np.testing.assert_allclose(again.predict_proba(paths[:5]), clf.predict_proba(paths[:5]), atol=1e-6)
    assert again.score(test_paths, test_labels) > 0.5  # unseen photos, 12 per class to learn from; chance is 0.25
    assert list(again.classes_) == ["bush", "clinton", "obama", "trump"]


def test_fit_on_a_folder_and_evaluate_on_another(tmp_path, small_photos):
    held_out = copy_subset(tmp_path / "held-out", 8, offset=12, kinds=True)
    clf = transferlab.Classifier(backbone="mobilenet_v2", head="svm", cache_dir=tmp_path / "c").fit(small_photos)
    metrics = clf.evaluate(held_out, manifest=held_out / "manifest.csv", group_by="kind")
    assert metrics["n"] == 32 and metrics["accuracy"] > 0.5  # chance is 0.25
    assert set(metrics["groups"]) == {"web-photo", "aligned-face-crop"}


def test_the_classifier_follows_scikit_learns_estimator_rules(small_photos):
    """``__init__`` stores parameters (nothing is validated or built there), get_params/set_params/clone work,
    and a clone is unfitted."""
    from sklearn.base import clone

    clf = transferlab.Classifier(backbone="mobilenet_v2", head="svm", head_params={"C": 0.1}, pool="max")
    assert clf.get_params()["head_params"] == {"C": 0.1} and clf.get_params()["pool"] == "max"
    copy = clone(clf.set_params(pool="avg"))
    assert copy.get_params() == clf.get_params() and copy is not clf
    assert not hasattr(copy, "classes_") and not hasattr(copy, "head_")
    with pytest.raises(TransferlabError, match="not trained yet"):
        copy.predict([next(small_photos.glob("*/*.jpg"))])
    with pytest.raises(TransferlabError, match="pool 'max'"):
        transferlab.Classifier(pool="max").options()


def test_the_classifiers_parameters_pass_scikit_learns_checks():
    """``Classifier`` has scikit-learn's parameter protocol without inheriting ``BaseEstimator`` (a saved model
    answers without importing scikit-learn): scikit-learn's own checks of parameters pass on it, a bad name is
    scikit-learn's ValueError, nested parameters reach an estimator parameter, and ``repr`` shows what changed."""
    from sklearn.utils import estimator_checks as ec

    clf = transferlab.Classifier(backbone="mobilenet_v2", head="svm")
    for check in (
        ec.check_no_attributes_set_in_init,
        ec.check_parameters_default_constructible,
        ec.check_get_params_invariance,
        ec.check_set_params,
        ec.check_estimator_cloneable,
        ec.check_estimator_repr,
        ec.check_valid_tag_types,
    ):
        check("Classifier", clf)
    with pytest.raises(ValueError, match="Invalid parameter 'colour' for estimator"):
        clf.set_params(colour="blue")
    assert repr(clf) == "Classifier(backbone='mobilenet_v2', head='svm')"

    class Engine:  # an engine object with parameters of its own
        def __init__(self, partitions: int = 2) -> None:
            self.partitions = partitions

        def get_params(self, deep: bool = True) -> dict:
            return {"partitions": self.partitions}

        def set_params(self, **params: int) -> Engine:
            self.partitions = params.get("partitions", self.partitions)
            return self

    clf.set_params(engine=Engine()).set_params(engine__partitions=8)
    assert clf.engine.partitions == 8 and clf.get_params()["engine__partitions"] == 8


def test_predictions_report_errors_per_image(trained_model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    clf = transferlab.load(trained_model)
    preds = clf.predict_images([bad])
    assert preds[0].label is None and preds[0].error.startswith(("truncated", "unreadable", "not an image"))


def tampered_copy(trained_model, tmp_path, edit):
    """A copy of the trained model whose model.json was changed by ``edit(meta)``."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    meta = json.loads((model / "model.json").read_text())
    edit(meta)
    (model / "model.json").write_text(json.dumps(meta))
    return model


def test_loading_never_unpickles(trained_model, tmp_path):
    model = tampered_copy(trained_model, tmp_path, lambda m: m.update(head_file="head.pkl"))
    (model / "head.pkl").write_bytes(pickle.dumps({"boom": 1}))
    with pytest.raises(TransferlabError, match="refused"):
        transferlab.load(model)


def test_models_from_other_format_versions_get_a_clear_message(trained_model, tmp_path):
    model = tampered_copy(trained_model, tmp_path, lambda m: m.update(format_version=99))
    with pytest.raises(TransferlabError, match="retrain"):
        transferlab.load(model)


def test_other_weights_than_trained_with_are_refused(trained_model, tmp_path, small_photos):
    model = tampered_copy(trained_model, tmp_path, lambda m: m["backbone"].update(weights_sha256="0" * 64))
    clf = transferlab.load(model)
    with pytest.raises(TransferlabError, match="differ"):
        clf.predict([next((small_photos / "bush").iterdir())])


def test_train_reports_per_kind_and_reconciles(tmp_path, small_photos):
    res = transferlab.train(
        small_photos,
        tmp_path / "m",
        backbone="mobilenet_v2",
        head="mlp",
        head_params={"epochs": 5},
        manifest=small_photos / "manifest.csv",
        group_by="kind",
        per_class=6,
        cache_dir=tmp_path / "c",
    )
    assert res.split.per_class == 6 and len(res.split.train) == 24
    assert res.metrics["n"] == len(res.split.test)
    assert res.intake.report.reconciles()


def test_train_with_per_class_accounts_for_every_file(tmp_path, small_photos):
    res = transferlab.train(
        small_photos, tmp_path / "m", backbone="mobilenet_v2", head="logreg", per_class=3, cache_dir=tmp_path / "c"
    )
    m = res.metrics
    assert m["found"] == 48 and m["n_train"] == 12
    assert m["skipped"]["not sampled (--per-class)"] == 48 - 12 - m["n"]
    assert m["found"] == m["used"] + sum(m["skipped"].values())
    preds = res.classifier.predict_images([*sorted((small_photos / "bush").iterdir())[:2], b"not an image"])
    assert transferlab.predictions.prediction_counts(preds) == {"found": 3, "used": 2, "skipped": {"not an image": 1}}


OLD_MODELS = REPO / "tests" / "data" / "models_v0.1.0"


@pytest.mark.parametrize("name", ["sface_logreg", "sface_fallback_largest"])
def test_models_saved_by_the_previous_version_load_and_answer_as_before(name, tmp_path):
    """Models written by transferlab 0.1.0 before the pipeline was rebuilt (the default model, and a face model with
    a whole-image fallback and the 'largest' face choice) load and give the answers they gave then."""
    import json

    expected = json.loads((OLD_MODELS / "predictions.json").read_text())[name]
    clf = transferlab.load(OLD_MODELS / name, cache_dir=tmp_path / "c")
    got = clf.predict_images([str(REPO / e["path"]) for e in expected], names=[e["path"] for e in expected])
    for e, p in zip(expected, got, strict=True):
        line = p.to_dict()
        assert line["label"] == e["label"] and line["n_faces"] == e["n_faces"]
        x, y, w, h = e["box"]  # boxes are clamped to the photo now
        width, height = Image.open(REPO / e["path"]).size
        clamped = [max(x, 0), max(y, 0), min(x + w, width) - max(x, 0), min(y + h, height) - max(y, 0)]
        np.testing.assert_allclose(line["box"], clamped, atol=0.11)
        for c, v in e["probabilities"].items():  # embeddings now agree with 0.1.0's to a cosine of 0.99999
            assert line["probabilities"][c] == pytest.approx(v, abs=1e-3), (e["path"], c)
    if name.endswith("fallback_largest"):  # a photo without a face: the whole-image model answers
        (sky,) = clf.predict_images([Image.new("RGB", (160, 120), (90, 140, 220))])
        assert sky.fallback and sky.label in clf.classes_
