"""Fine-tuning the top blocks (``--finetune N``): which weights change, the trunk cache, saving, loading, export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from transferlab import Classifier, load
from transferlab.backbones import create_backbone, get_backbone_cfg, list_backbones, split_blocks
from transferlab.errors import TransferlabError
from transferlab.finetune import FinetuneConfig
from transferlab.finetune_images import finetune

from .conftest import REPO, run

IMAGENET = [
    n for n in list_backbones() if get_backbone_cfg(n).blocks is not None and get_backbone_cfg(n).kind != "faces"
]
QUICK = {"epochs": 2, "copies": 1}


def _photos(root):
    paths = sorted(p for p in root.rglob("*.jpg"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


def test_every_whole_image_backbone_can_be_fine_tuned():
    assert {"mobilenet_v2", "efficientnet_lite0", "vgg16", "resnet50", "inception_v3"} <= set(IMAGENET)
    assert not any(get_backbone_cfg(n).kind == "faces" for n in IMAGENET)


@pytest.mark.parametrize("name", IMAGENET)
def test_the_blocks_composed_in_order_are_the_network(name):
    cfg = get_backbone_cfg(name)
    torch.manual_seed(0)
    net = cfg.build(None).eval()
    blocks = cfg.blocks(net)
    assert len(blocks) == cfg.num_blocks
    x = torch.randn(1, *cfg.input_size)
    with torch.no_grad():
        y = x
        for block in blocks:
            y = block(y)
        assert torch.equal(y, net(x))
    # every parameter belongs to exactly one block
    owned = [id(p) for b in blocks for p in b.parameters()]
    assert len(owned) == len(set(owned)) == len(list(net.parameters()))


def test_only_the_last_n_blocks_change_and_the_trunk_is_cached_once(small_photos, tmp_path):
    paths, labels = _photos(small_photos)
    bb = create_backbone("mobilenet_v2")
    cfg = FinetuneConfig.from_params(2, QUICK)
    first = finetune(bb, paths, None, labels, cfg, cache_dir=tmp_path)
    assert first.trunk["computed"] == 2 * len(paths) - round(0.15 * len(paths)) and first.trunk["cached"] == 0
    assert [row["epoch"] for row in first.history] == [1, 2] and "val_accuracy" in first.history[0]

    pretrained = bb.cfg.build(bb.weights_file).state_dict()
    _, prefixes = split_blocks(bb.cfg, bb.cfg.build(None), 2)
    assert prefixes == ["17.", "18."]
    top = {k for k, v in pretrained.items() if k.startswith(("17.", "18.")) and v.is_floating_point()}
    assert set(first.state) == top
    changed = [k for k, v in first.state.items() if not np.array_equal(v, pretrained[k].numpy())]
    assert any(k.startswith("17.") for k in changed) and any(k.startswith("18.") for k in changed)

    tuned = create_backbone("mobilenet_v2").tune(first.state)
    net = tuned.cfg.build(tuned.weights_file)
    from transferlab.backbones import load_tuned

    load_tuned(net, tuned.tuned, "mobilenet_v2")
    for k, v in net.state_dict().items():  # every other tensor is bit-identical to the pretrained network's
        if not k.startswith(("17.", "18.")):
            assert torch.equal(v, pretrained[k]), k
    assert tuned.recipe("avg")["finetuned_sha256"] == tuned.tuned_hash != None  # noqa: E711
    assert "finetuned_sha256" not in bb.recipe("avg")  # the pretrained backbone was not touched

    second = finetune(bb, paths, None, labels, cfg, cache_dir=tmp_path)
    assert second.trunk == {"computed": 0, "cached": first.trunk["computed"]}
    assert all(np.array_equal(second.state[k], first.state[k]) for k in first.state)  # seeded: same result


def test_the_same_fine_tuning_is_reused_and_a_changed_one_is_not(small_photos, tmp_path):
    paths, labels = _photos(small_photos)
    hashes = [f"photo-{i}" for i in range(len(paths))]  # content hashes as the intake table gives them
    bb = create_backbone("mobilenet_v2")
    cfg = FinetuneConfig.from_params(1, {"epochs": 1, "copies": 1})
    first = finetune(bb, paths, hashes, labels, cfg, cache_dir=tmp_path)
    again = finetune(bb, paths, hashes, labels, cfg, cache_dir=tmp_path)
    assert not first.reused and again.reused and again.trunk == {"computed": 0, "cached": 0}
    assert again.history == first.history and again.best_epoch == first.best_epoch
    assert all(np.array_equal(again.state[k], first.state[k]) for k in first.state)
    other_seed = FinetuneConfig.from_params(1, {"epochs": 1, "copies": 1, "seed": 1})
    assert not finetune(bb, paths, hashes, labels, other_seed, cache_dir=tmp_path).reused
    relabelled = labels[1:] + labels[:1]
    assert not finetune(bb, paths, hashes, relabelled, cfg, cache_dir=tmp_path).reused
    stored = sorted((tmp_path / "finetuned").glob("*.safetensors"))
    assert len(stored) == 3
    for path in stored:  # a damaged entry is trained again (and rewritten), never read
        path.write_bytes(path.read_bytes()[:100])
    retrained = finetune(bb, paths, hashes, labels, cfg, cache_dir=tmp_path)
    assert not retrained.reused and all(np.array_equal(retrained.state[k], first.state[k]) for k in first.state)
    assert finetune(bb, paths, hashes, labels, cfg, cache_dir=tmp_path).reused


def test_a_fine_tuned_model_round_trips_through_save_load_and_onnx(small_photos, tmp_path):
    paths, labels = _photos(small_photos)
    clf = Classifier("mobilenet_v2", finetune=2, finetune_params=QUICK, cache_dir=tmp_path / "c").fit(paths, labels)
    assert clf.finetune_.best_epoch in (1, 2)
    expected = clf.predict_proba(paths[:6])

    clf.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["finetune"]["blocks"] == 2 and meta["finetune"]["params"] == QUICK
    assert meta["features"]["finetuned_sha256"] == meta["finetune"]["sha256"]
    back = load(tmp_path / "model", use_cache=False)
    np.testing.assert_allclose(back.predict_proba(paths[:6]), expected, atol=1e-5)

    res = run("export", str(tmp_path / "model"), "--onnx", str(tmp_path / "m.onnx"), cache=tmp_path / "c2")
    diff = float(res.stdout.split("max |difference| ")[1].split(";")[0])
    assert diff < 1e-4

    # a model whose fine-tuned tensors were removed is refused, not silently run with the pretrained network
    from safetensors.numpy import load_file, save_file

    from transferlab.artifact import HEAD_FILE

    arrays = {k: v for k, v in load_file(str(tmp_path / "model" / HEAD_FILE)).items() if "finetuned." not in k}
    save_file(arrays, str(tmp_path / "model" / HEAD_FILE))
    with pytest.raises(TransferlabError, match="does not match"):  # head file no longer the one model.json names
        load(tmp_path / "model")
    meta.pop("head_sha256")  # as a model saved before the head's hash was recorded
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(TransferlabError, match="fine-tuned model without its fine-tuned weights"):
        load(tmp_path / "model")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backbone": "dlib_resnet", "finetune": 1}, "'dlib_resnet' cannot be fine-tuned"),
        ({"backbone": "sface", "finetune": 15}, "choose 1 to 14"),
        ({"backbone": "mobilenet_v2", "finetune": 19}, "choose 1 to 18"),
        ({"backbone": "mobilenet_v2", "finetune": 2, "finetune_params": {"epoch": 3}}, "'epoch': choose from"),
        ({"backbone": "mobilenet_v2", "finetune": 2, "finetune_params": {"copies": 0}}, "copies = 0"),
        ({"backbone": "mobilenet_v2", "finetune_params": {"epochs": 3}}, "without --finetune"),
    ],
)
def test_bad_fine_tuning_options_are_one_line(options, message):
    with pytest.raises(TransferlabError, match=message):
        Classifier(**options).options()


def test_a_killed_fine_tuning_run_leaves_the_old_model_and_the_rerun_reuses_the_trunk(
    small_photos, trained_model, tmp_path
):
    out, cache = tmp_path / "model", tmp_path / "cache"
    args = ["train", str(small_photos), "--out", str(out), "--backbone", "mobilenet_v2"]
    shutil.copytree(trained_model, out)  # a frozen model from an earlier run
    before = (out / "model.json").read_bytes()
    bad = run(*args, "--finetune", "30", cache=cache, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "choose 1 to 18" in bad.stderr

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TRANSFERLAB_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferlab", *args, "--finetune", "1"], stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # SIGKILL in the middle of the epochs
        if line.startswith("fine-tune epoch 1/"):
            proc.kill()
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "model.json").read_bytes() == before  # nothing written before training ends
    load(out)

    res = run(*args, "--finetune", "1", "--json", cache=cache)  # restarts cleanly; the trunk maps are cached
    assert 0.0 <= json.loads(res.stdout)["accuracy"] <= 1.0
    meta = json.loads((out / "model.json").read_text())
    assert meta["finetune"]["blocks"] == 1 and len(meta["finetune"]["history"]) >= 1
    assert meta["finetune"]["trunk"]["cached"] > 0
    assert load(out).predict([str(next(small_photos.rglob("*.jpg")))])[0] in meta["classes"]


def test_the_face_embedder_fine_tunes_only_its_top_blocks_and_round_trips(small_photos, tmp_path):
    """sface with --finetune 2: only the embedder's last two blocks change, the face rows get their own cache key,
    and the saved model answers as the fitted one."""
    from transferlab.backbones.face_graphs import torch_module
    from transferlab.features import feature_spec

    clf = Classifier(backbone="sface", finetune=2, finetune_params={"epochs": 2}, cache_dir=tmp_path / "c")
    clf.fit(small_photos)
    tuned = clf.extractor_.tuned
    _, prefixes = split_blocks(
        get_backbone_cfg("sface"), torch_module(clf.extractor_.backbone.pipeline.graphs["embedder"]), 2
    )
    assert prefixes[0] == "conv_14_dw_conv2d." and tuned and all(k.startswith(tuple(prefixes)) for k in tuned)
    pretrained = torch_module(create_backbone("sface").pipeline.graphs["embedder"]).state_dict()
    assert any(not np.array_equal(v, pretrained[k].numpy()) for k, v in tuned.items())  # it trained
    frozen_spec = feature_spec(create_backbone("sface"), "faces")
    assert feature_spec(clf.extractor_.backbone, "faces")["finetuned_sha256"] == clf.extractor_.backbone.tuned_hash
    assert "finetuned_sha256" not in frozen_spec
    files = sorted(str(p) for p in small_photos.rglob("*.jpg"))[::7]
    before = clf.predict_images(files)
    clf.save(tmp_path / "model")
    again = load(tmp_path / "model", cache_dir=tmp_path / "c2")
    assert again.options().finetune == 2
    for a, b in zip(before, again.predict_images(files), strict=True):
        assert a.label == b.label
        for c, v in a.probabilities.items():
            assert b.probabilities[c] == pytest.approx(v, abs=1e-5)
