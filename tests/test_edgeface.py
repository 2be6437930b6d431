"""EdgeFace, the opt-in face family: its weights added and checked like a user would, the dequantised float network
against Idiap's published int8 model, the fused backbone made from its parts' cached rows, and its licence said
wherever it is used."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from transferlab.backbones import create_backbone, get_backbone_cfg, weights_store
from transferlab.backbones.edgeface import build_edgeface
from transferlab.backbones.face_pipeline import FacePipeline
from transferlab.errors import TransferlabError
from transferlab.features import featurize_faces, open_cache

from .conftest import EDGEFACE, PRESIDENTS, copy_subset, run

PHOTOS = sorted(PRESIDENTS.glob("*/*.jpg"))[::61][:12]


def _int8_model(arch: str, path) -> torch.nn.Module:
    """Idiap's published model as it runs: the float network with every nn.Linear dynamically quantised, carrying
    the file's own int8 weights (not re-quantised from ours)."""
    float_net = build_edgeface(arch, path).net
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(float_net), {torch.nn.Linear}, dtype=torch.qint8)
    modules = dict(q.named_modules())
    for key, value in torch.load(str(path), map_location="cpu", weights_only=True).items():
        if key.endswith("._packed_params._packed_params"):
            name = key.removeprefix("model.").removesuffix("._packed_params._packed_params")
            modules[name]._packed_params.set_weight_bias(*value)
    return q.eval()


@pytest.mark.parametrize(("name", "arch"), [("edgeface_xs", "edgenext_x_small"), ("edgeface_xxs", "edgenext_xx_small")])
def test_the_dequantised_network_gives_the_published_int8_models_embeddings(name, arch, edgeface_weights):
    """On real faces aligned by the pipeline, the float network transferlab runs and Idiap's int8 model agree
    (cosine ≥ 0.9 for every face, ≥ 0.93 on average: the int8 kernels also quantise activations, measured 0.95–0.96
    for XS, 0.95 for XXS; a wrong dequantisation gives ~0), and the float network's parameter count is the
    registry's."""
    path = EDGEFACE / get_backbone_cfg(name).weights.filename
    pipe = FacePipeline(name, weights_file=path)
    from transferlab.decode import decode_pixels

    images = [decode_pixels(str(p), (1280, 1280), torchvision_jpeg=False) for p in PHOTOS]
    crops = pipe._crops(images, pipe.detect(images))
    assert crops is not None and len(crops) >= 8
    module = build_edgeface(arch, path)
    assert sum(p.numel() for p in module.parameters()) == get_backbone_cfg(name).num_params
    with torch.no_grad():
        ours = torch.nn.functional.normalize(module(crops), dim=1)
        theirs = torch.nn.functional.normalize(_int8_model(arch, path)(crops / 127.5 - 1.0), dim=1)
    cosine = (ours * theirs).sum(1)
    assert cosine.min() >= 0.9 and cosine.mean() >= 0.93, cosine


def test_weights_are_added_only_when_they_are_the_pinned_file(tmp_path):
    """A file that is not the pinned one (another file, a truncated copy) is refused in one line and nothing is
    stored; the real one is stored, and the backbone then just works."""
    bad = tmp_path / "edgeface_xs_q.pt"
    bad.write_bytes((EDGEFACE / "edgeface_xs_q.pt").read_bytes()[:100_000])  # truncated
    cache = tmp_path / "cache"
    proc = run("weights", "add", str(bad), cache=cache, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "is not a weights file transferlab knows" in proc.stderr and str(bad) in proc.stderr
    assert not (cache / "weights").exists() or not any((cache / "weights").iterdir())
    proc = run("weights", "add", str(EDGEFACE / "edgeface_xs_q.pt"), "--json", cache=cache)
    added = json.loads(proc.stdout)
    assert added["backbones"] == ["edgeface_xs", "sface_edgeface"] and "NC" in added["license"]
    listed = {r["backbone"]: r for r in json.loads(run("weights", "list", "--json", cache=cache).stdout)}
    assert listed["edgeface_xs"]["here"] and not listed["edgeface_xxs"]["here"]
    assert listed["edgeface_xs"]["noncommercial"] and not listed["sface"]["noncommercial"]


def test_offline_get_and_a_wrong_weights_file_are_one_line_and_write_nothing(tmp_path):
    proc = run("weights", "get", "edgeface_xs", cache=tmp_path / "c", check=False)
    if proc.returncode == 0:
        pytest.skip("this machine reached the network")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "gitlab.idiap.ch" in proc.stderr and "transferlab weights add FILE" in proc.stderr
    photos = copy_subset(tmp_path / "photos", 3)
    out = tmp_path / "model"
    for weights, message in (
        (tmp_path / "missing.pt", "no such file"),
        (EDGEFACE / "edgeface_xxs_q.pt", "is not edgeface_xs's weights file"),  # another network
    ):
        proc = run("train", str(photos), "--out", str(out), "--backbone", "edgeface_xs", "--weights", str(weights),
                   cache=tmp_path / "c", check=False)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
        assert not out.exists()
    proc = run("train", str(photos), "--out", str(out), "--backbone", "edgeface_xs", cache=tmp_path / "c", check=False)
    assert proc.returncode == 2 and "transferlab weights get edgeface_xs" in proc.stderr and not out.exists()


def test_an_edgeface_model_trains_says_its_licence_and_carries_it(tmp_path, edgeface_weights):
    photos = copy_subset(tmp_path / "photos", 6)
    out = tmp_path / "model"
    proc = run(
        "train", str(photos), "--out", str(out), "--backbone", "edgeface_xs", "--json",
        cache=weights_store().parent,
    )  # fmt: skip
    assert "non-commercial" in proc.stderr and "CC BY-NC-SA" in proc.stderr  # one line, stdout stays JSON
    assert json.loads(proc.stdout)["n"] > 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["backbone"]["noncommercial"] is True and "CC BY-NC-SA" in meta["backbone"]["license"]
    proc = run("train", str(photos), "--out", str(tmp_path / "s"), "--json", cache=weights_store().parent)
    assert "non-commercial" not in proc.stderr  # the default says nothing


def test_a_fused_backbone_is_made_from_its_parts_cached_rows(tmp_path, edgeface_weights, monkeypatch):
    """sface_edgeface after sface: SFace is not run again; the fused rows are the parts' unit embeddings side by
    side (what the fused pipeline computes, to float rounding); a second run computes nothing."""
    paths = [str(p) for p in PHOTOS[:6]]
    sface, fused = create_backbone("sface"), create_backbone("sface_edgeface")
    featurize_faces(paths, sface, cache=open_cache(sface, "faces", tmp_path, True))
    calls = []
    original = FacePipeline.embed
    monkeypatch.setattr(FacePipeline, "embed", lambda self, crops: calls.append(len(crops)) or original(self, crops))
    res = featurize_faces(paths, fused, cache=open_cache(fused, "faces", tmp_path, True))
    assert calls == [] and res.n_computed == len(paths) and not res.errors  # SFace's rows came from its cache
    monkeypatch.setattr(FacePipeline, "embed", original)
    from transferlab.decode import decode_pixels

    for path, rows in zip(paths, res.bags, strict=True):
        (direct,) = fused.pipeline.faces([decode_pixels(path, fused.draft_size, torchvision_jpeg=False)])
        np.testing.assert_allclose(rows, direct, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(rows[:, :640], axis=1), 1.0, rtol=1e-5)
    again = featurize_faces(paths, fused, cache=open_cache(fused, "faces", tmp_path, True))
    assert (again.n_computed, again.n_cached) == (0, len(paths))


def test_backbones_lists_each_licence(tmp_path):
    rows = {r["name"]: r for r in json.loads(run("backbones", "--json", cache=tmp_path).stdout)}
    assert rows["edgeface_xs"]["noncommercial"] and "NC" in rows["edgeface_xs"]["license"]
    assert not rows["sface"]["noncommercial"] and rows["sface"]["license"].startswith("Apache")
    assert not rows["edgeface_xs"]["weights_available"]  # never found without being added
    with pytest.raises(TransferlabError, match="weights get edgeface_xs"):
        create_backbone("edgeface_xs")
