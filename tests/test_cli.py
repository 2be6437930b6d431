"""The command line contract: commands, flags and --json shapes that users' scripts rely on."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import run


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, small_photos):
    cache = tmp_path_factory.mktemp("cli-cache")
    out = tmp_path_factory.mktemp("cli") / "model"
    first = run(
        "train",
        str(small_photos),
        "--out",
        str(out),
        "--backbone",
        "mobilenet_v2",
        "--manifest",
        str(small_photos / "manifest.csv"),
        "--group-by",
        "kind",
        cache=cache,
        process=True,  # the console script end to end, in a process of its own as a user runs it
    )
    return out, cache, first


def test_train_writes_model_report_and_plots_and_prints_accuracy_per_kind(cli_model):
    out, _, first = cli_model
    for f in (
        "model.json",
        "head.safetensors",
        "report.md",
        "confusion.png",
        "per_class.png",
        "split.csv",
        "intake.json",
        "metrics.json",
    ):
        assert (out / f).is_file(), f
    meta = json.loads((out / "model.json").read_text())
    for key in ("classes", "backbone", "head", "transferlab_version", "training_data", "split", "features"):
        assert key in meta
    assert meta["backbone"]["name"] == "mobilenet_v2" and len(meta["backbone"]["weights_sha256"]) == 64
    assert meta["split"]["seed"] == 0 and meta["classes"] == ["bush", "clinton", "obama", "trump"]
    assert "kind=web-photo" in first.stdout and "accuracy" in first.stdout
    assert "48 computed, 0 from cache" in first.stderr + first.stdout
    report = (out / "report.md").read_text()
    assert "Accuracy per `kind`" in report and "| bush | 12 | 12 |" in report


def test_second_train_computes_no_features(cli_model, small_photos, tmp_path):
    _, cache, _ = cli_model
    again = run("train", str(small_photos), "--out", str(tmp_path / "m2"), "--backbone", "mobilenet_v2", cache=cache)
    assert "features: 0 computed, 48 from cache" in again.stdout


def test_evaluate_json_shape(cli_model, small_photos):
    out, cache, _ = cli_model
    proc = run(
        "evaluate",
        str(out),
        str(small_photos),
        "--json",
        "--manifest",
        str(small_photos / "manifest.csv"),
        "--group-by",
        "kind",
        cache=cache,
    )
    obj = json.loads(proc.stdout)
    for key in ("accuracy", "n", "labels", "per_class", "confusion", "log_loss", "skipped", "groups"):
        assert key in obj
    for key in ("accuracy_closed_set", "unknown_rate", "no_face_rate", "n_seen_in_training", "accuracy_unseen"):
        assert key in obj
    assert obj["n"] == 48 and obj["n_seen_in_training"] == 36 and obj["n_unseen"] == 12  # trained on 3/4 of them
    assert "12 others" in proc.stderr and "were used to train this model" in proc.stderr
    held_out = json.loads((out / "metrics.json").read_text())
    assert obj["accuracy_unseen"] == pytest.approx(held_out["accuracy"])  # the unseen 12 are the held-out split
    assert set(obj["per_class"]["bush"]) >= {"precision", "recall", "f1", "support"}
    assert set(obj["groups"]) == {"web-photo", "aligned-face-crop"}
    assert all(set(g) >= {"accuracy", "n"} for g in obj["groups"].values())
    assert len(obj["confusion"]) == 4 and obj["accuracy"] > 0.5


def test_evaluate_on_training_photos_only_says_it_is_not_held_out(cli_model, tmp_path):
    import csv
    import shutil

    out, cache, _ = cli_model
    with (out / "split.csv").open() as f:
        train = [r for r in csv.DictReader(f) if r["side"] == "train"]
    for r in train:
        (tmp_path / r["label"]).mkdir(exist_ok=True)
        shutil.copy(r["path"], tmp_path / r["label"])
    proc = run("evaluate", str(out), str(tmp_path), "--json", cache=cache)
    obj = json.loads(proc.stdout)
    assert obj["n_seen_in_training"] == len(train) == 36 and obj["n_unseen"] == 0
    assert f"all {len(train)} photos were used to train this model; this is not a held-out accuracy" in proc.stderr


def test_predict_json_lines_with_errors_for_unusable_files(cli_model, small_photos, tmp_path):
    out, cache, _ = cli_model
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    proc = run(
        "predict", str(out), str(small_photos / "obama"), str(bad), "--json", "--top-k", "2", cache=cache, check=False
    )
    assert proc.returncode == 1  # some inputs could not be used: each has its line, the others their answers
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == 13
    good = [x for x in lines if "label" in x]
    assert len(good) == 12
    assert all(set(x) == {"path", "label", "probabilities"} and len(x["probabilities"]) == 2 for x in good)
    err = [x for x in lines if "error" in x]
    assert err == [{"path": str(bad), "error": "not an image: no image format recognised"}]


def test_predict_table(cli_model, small_photos):
    out, cache, _ = cli_model
    photo = sorted((small_photos / "trump").iterdir())[0]
    proc = run("predict", str(out), str(photo), cache=cache)
    assert photo.name[:20] in proc.stdout and "trump" in proc.stdout


def test_featurize_writes_a_feature_table_and_predict_writes_a_prediction_table(cli_model, small_photos, tmp_path):
    import pandas as pd

    out, cache, _ = cli_model
    (tmp_path / "in" / "obama").mkdir(parents=True)
    for p in sorted((small_photos / "obama").iterdir())[:3]:
        (tmp_path / "in" / "obama" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "obama" / "notes.jpg").write_text("not a photo")
    args = ("featurize", str(tmp_path / "in"), "--backbone", "mobilenet_v2", "--out", str(tmp_path / "t"), "--json")
    got = json.loads(run(*args, cache=cache).stdout)
    assert (got["rows"], got["errors"], got["computed"], got["cached"]) == (4, 1, 0, 3)  # train cached these
    table = pd.read_parquet(tmp_path / "t")
    assert list(table.columns) == ["path", "content_hash", "label", "features", "error"]
    assert set(table["label"]) == {"obama"} and table["features"].isna().sum() == 1
    proc = run("predict", str(out), str(tmp_path / "in"), "--out", str(tmp_path / "p"), cache=cache)
    assert "4 rows, 1 errors" in proc.stdout
    preds = pd.read_parquet(tmp_path / "p")
    assert preds["error"].notna().sum() == 1 and preds["label"].notna().sum() == 3


def test_backbones_lists_every_entry():
    proc = run("backbones", "--json")
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert {"mobilenet_v2", "efficientnet_lite0", "vgg16", "resnet50", "inception_v3"} <= set(rows)
    assert rows["vgg16"]["params"] == 14_714_688 and rows["vgg16"]["feature_shape"] == [512, 7, 7]
    assert rows["mobilenet_v2"]["weights_available"] is True
    text = run("backbones").stdout
    assert "14,714,688" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "/no/such/folder", "--out", "x"], "no such file or folder"),
        (["predict", "/no/such/model", "a.jpg"], "not a transferlab model"),
        (["train", "data/presidents", "--out", "x", "--backbone", "alexnet"], "unknown backbone"),
        (["train", "data/presidents", "--out", "x", "--head", "forest"], "unknown head"),
        (["featurize", "data/presidents", "--out", "x", "--engine", "flink"], "choose one of: local, spark"),
        (["featurize", "data/presidents", "--out", "x", "--master", "yarn"], "applies to --engine spark only"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_every_command_accounts_for_every_file_over_the_bad_input_corpus(tmp_path):
    """Good photos mixed with every kind of bad file: train, evaluate and predict complete, report each bad file by
    reason, and their counts reconcile: found = used + skipped by reason."""
    import shutil

    from transferlab.intake import SKIP_REASONS

    from .conftest import copy_subset
    from .corpus import MIXED, build_corpus

    photos = copy_subset(tmp_path / "photos", 8)
    good, other = sorted((photos / "obama").iterdir())[:2]
    kinds = build_corpus(tmp_path / "corpus", good, other)
    shutil.move(tmp_path / "corpus" / MIXED, photos / "obama" / MIXED)
    expected = {f.removeprefix(MIXED + "/"): k.outcome for k in kinds if k.outcome in SKIP_REASONS for f in k.files}
    expected = {f: o for f, o in expected.items() if "vanish" not in f}  # nothing deletes it in this run
    out, cache = tmp_path / "model", tmp_path / "c"
    trained = run("train", str(photos), "--out", str(out), "--backbone", "mobilenet_v2", "--json", cache=cache)
    metrics = json.loads(trained.stdout)
    report = json.loads((out / "intake.json").read_text())
    reasons = {os.path.relpath(s["path"], photos / "obama" / MIXED): s["reason"] for s in report["skipped"]}
    for name, outcome in expected.items():
        assert reasons.get(name) == outcome, name
    for c, d in report["classes"].items():
        assert d["found"] == d["used"] + sum(d["skipped"].values()), c
    assert metrics["found"] == sum(d["found"] for d in report["classes"].values())
    assert metrics["found"] == metrics["used"] + sum(metrics["skipped"].values())
    assert metrics["used"] == metrics["n_train"] + metrics["n"]
    md = (out / "report.md").read_text()
    assert "bad_crc.png" in md and "decompression bomb" in md
    assert "latin1_caf?.jpg" in (out / "split.csv").read_text()  # a non-UTF-8 name is shown, not a crash

    evaluated = json.loads(run("evaluate", str(out), str(photos), "--json", cache=cache).stdout)
    assert evaluated["found"] == metrics["found"]
    assert evaluated["found"] == evaluated["used"] + sum(evaluated["skipped"].values())
    assert evaluated["used"] == evaluated["n"] == metrics["used"]

    predicted = run("predict", str(out), str(photos / "obama"), "--json", cache=cache, check=False)
    assert predicted.returncode == 1  # some inputs could not be used
    lines = [json.loads(x) for x in predicted.stdout.splitlines()]
    n_ok = sum("label" in x for x in lines)
    bad = {}
    for x in lines:
        if "error" in x:
            reason = x["error"].split(":")[0]
            bad[reason] = bad.get(reason, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(bad.items()))
    assert f"predict: {len(lines)} found, {n_ok} used, skipped {sum(bad.values())} ({summary})" in predicted.stderr
    assert bad["truncated"] == 4 and bad["not an image"] == 3 and "duplicate" not in bad  # predict keeps duplicates


def test_device_cuda_without_a_gpu_is_one_clear_line(small_photos, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    proc = run(
        "train",
        str(small_photos),
        "--out",
        str(tmp_path / "m"),
        "--backbone",
        "mobilenet_v2",
        "--device",
        "cuda",
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --device cuda:") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "m").exists()
