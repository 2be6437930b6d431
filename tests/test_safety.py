"""Safe artifacts and a self-checking cache: nothing loaded can run code, and nothing damaged is used."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import transferlab
from transferlab.artifact import FORMAT_VERSION
from transferlab.backbones import create_backbone
from transferlab.errors import TransferlabError
from transferlab.features import featurize_images as featurize
from transferlab.features import open_cache


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _copy(trained_model: Path, tmp_path: Path, edit=None) -> Path:
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    if edit is not None:
        meta = json.loads((model / "model.json").read_text())
        edit(meta)
        (model / "model.json").write_text(json.dumps(meta))
    return model


@pytest.mark.parametrize("name", ["head.pkl", "head.pt", "head.npy", "../head.safetensors"])
def test_a_head_file_other_than_safetensors_is_refused(trained_model, tmp_path, name):
    marker = tmp_path / "ran"
    model = _copy(trained_model, tmp_path, lambda m: m.update(head_file=name))
    (model / Path(name).name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(TransferlabError, match="refused") as e:
        transferlab.load(model)
    assert "model.json" in str(e.value) and not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_bytes_under_the_safetensors_name_are_refused(trained_model, tmp_path, kind):
    marker = tmp_path / "ran"
    model = _copy(trained_model, tmp_path)
    if kind == "pickle":
        (model / "head.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    else:
        import torch

        torch.save({"w": torch.zeros(2)}, model / "head.safetensors")
    with pytest.raises(TransferlabError, match="refused") as e:
        transferlab.load(model)
    assert "head.safetensors" in str(e.value) and not marker.exists()


def test_pickle_bearing_files_planted_beside_the_model_are_never_opened(trained_model, tmp_path, small_photos):
    marker = tmp_path / "ran"
    model = _copy(trained_model, tmp_path)
    (model / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (model / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    np.save(model / "head.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    clf = transferlab.load(model)
    clf.predict([next((small_photos / "bush").iterdir())])
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), r"format version 2 \(written by transferlab"),
        (lambda m: m.update(format_version="1"), "format version '1'"),
        (lambda m: m.pop("classes"), "missing field 'classes'"),
        (lambda m: m.update(classes="bush"), "field 'classes' should be a list, found a string"),
        (lambda m: m.update(classes=["a", "a"]), "distinct class names"),
        (lambda m: m["backbone"].pop("name"), "backbone.name should be a string"),
        (lambda m: m.update(head=[1, 2]), "field 'head' should be an object, found a list"),
        (lambda m: m.update(format="something-else"), "not a transferlab model file"),
    ],
)
def test_model_json_is_validated_with_a_message_naming_the_file(trained_model, tmp_path, edit, message):
    model = _copy(trained_model, tmp_path, edit)
    with pytest.raises(TransferlabError, match=message) as e:
        transferlab.load(model)
    assert str(model / "model.json") in str(e.value)


def test_a_model_from_another_version_names_both_versions(trained_model, tmp_path):
    def future(m):
        m.update(format_version=7, transferlab_version="9.0.0")

    model = _copy(trained_model, tmp_path, future)
    with pytest.raises(TransferlabError) as e:
        transferlab.load(model)
    msg = str(e.value)
    assert "format version 7" in msg and "9.0.0" in msg and f"reads format version {FORMAT_VERSION}" in msg


def test_a_damaged_cache_entry_is_detected_counted_and_recomputed(tmp_path, small_photos):
    bb = create_backbone("mobilenet_v2")
    paths = sorted((small_photos / "bush").iterdir())[:4]
    cache = open_cache(bb, "avg", tmp_path / "c", True)
    first = featurize(paths, bb, cache=cache)
    entries = sorted((tmp_path / "c").rglob("*.npy"))
    assert len(entries) == 4
    # one entry cut short, one with a flipped bit in the middle of the floats (still a loadable .npy)
    entries[0].write_bytes(entries[0].read_bytes()[:200])
    blob = bytearray(entries[1].read_bytes())
    blob[300] ^= 0x01
    entries[1].write_bytes(bytes(blob))
    assert np.load(entries[1]).shape == (1280,)  # a plain reader would have used the wrong numbers
    cache = open_cache(bb, "avg", tmp_path / "c", True)
    with pytest.warns(RuntimeWarning, match="2 damaged entries"):
        again = featurize(paths, bb, cache=cache)
    assert (again.n_cached, again.n_computed, again.n_damaged) == (2, 2, 2) and cache.damaged == 2
    np.testing.assert_allclose(again.features, first.features, rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: no warning the next time
        third = featurize(paths, bb, cache=open_cache(bb, "avg", tmp_path / "c", True))
    assert (third.n_cached, third.n_damaged) == (4, 0)
    assert not [p for p in (tmp_path / "c").rglob("*") if p.name.startswith(".tmp-")]
    assert os.access(entries[0], os.R_OK)


def test_the_pixel_limit_is_configurable(monkeypatch):
    import io as _io

    from PIL import Image

    from transferlab.decode import ImageRejected, load_rgb

    buf = _io.BytesIO()
    Image.new("RGB", (100, 50)).save(buf, "PNG")
    assert load_rgb(buf.getvalue()).size == (100, 50)
    monkeypatch.setenv("TRANSFERLAB_MAX_PIXELS", "4999")
    with pytest.raises(ImageRejected, match=r"exceeds (the )?limit of 4,?999") as e:
        load_rgb(buf.getvalue())
    assert e.value.reason == "decompression bomb"
    monkeypatch.setenv("TRANSFERLAB_MAX_PIXELS", "lots")
    with pytest.raises(TransferlabError, match="TRANSFERLAB_MAX_PIXELS='lots'"):
        load_rgb(buf.getvalue())
