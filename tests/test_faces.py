"""Face-aware classification: detection, several faces, no face, unknown people."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import transferlab
from benchmarks.face_reference import YuNetDetector

from .conftest import PRESIDENTS, copy_subset, run

MANIFEST = pd.read_csv(PRESIDENTS / "manifest.csv")


def crops(label: str, kind: str = "aligned-face-crop", skip: int = 0, n: int = 1) -> list:
    files = MANIFEST[(MANIFEST.label == label) & (MANIFEST.kind == kind)]["file"]
    return [PRESIDENTS / f for f in sorted(files)[skip : skip + n]]


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    photos = copy_subset(tmp_path_factory.mktemp("faces") / "photos", 15)
    out = tmp_path_factory.mktemp("face-model") / "model"
    res = transferlab.train(photos, out, backbone="sface", cache_dir=tmp_path_factory.mktemp("fc"), test_size=0.2)
    return out, photos, res


def test_face_model_trains_and_states_its_policy(face_model):
    out, _, res = face_model
    assert res.metrics["accuracy"] >= 0.9
    meta = json.loads((out / "model.json").read_text())
    assert meta["backbone"]["name"] == "sface"
    assert 0.0 < meta["faces"]["unknown_threshold"] < 1.0
    assert "images_with_several_faces" in meta["faces"]
    assert "face" in (out / "report.md").read_text().lower()


def test_two_known_faces_give_two_predictions_with_correct_boxes(face_model, tmp_path):
    out, photos, _ = face_model
    used = {p.name for p in photos.rglob("*.jpg")}
    obama = next(p for p in crops("obama", n=30, skip=0) if p.name not in used)
    bush = next(p for p in crops("bush", n=30, skip=0) if p.name not in used)
    canvas = Image.new("RGB", (720, 400), (128, 128, 128))
    canvas.paste(Image.open(obama).convert("RGB").resize((250, 250)), (60, 75))
    canvas.paste(Image.open(bush).convert("RGB").resize((250, 250)), (410, 75))
    path = tmp_path / "two_presidents.jpg"
    canvas.save(path, quality=95)
    proc = run("predict", str(out), str(path), "--faces", "all", "--json")
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == 2
    by_label = {x["label"]: x for x in lines}
    assert set(by_label) == {"obama", "bush"}
    x, _, w, _ = by_label["obama"]["box"]
    assert 60 <= x + w / 2 <= 310  # centre of the box inside the left crop
    x, _, w, _ = by_label["bush"]["box"]
    assert 410 <= x + w / 2 <= 660
    assert all(0 < line["face_score"] <= 1 for line in lines)
    single = json.loads(run("predict", str(out), str(path), "--json").stdout)
    assert single["label"] in {"obama", "bush"} and single["n_faces"] == 2


def test_no_face_is_reported_and_does_not_stop_a_batch(face_model, tmp_path):
    out, photos, _ = face_model
    gradient = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    blank = tmp_path / "landscape.png"
    Image.fromarray(np.stack([gradient, gradient[::-1], gradient], axis=2)).save(blank)
    good = sorted((photos / "trump").iterdir())[0]
    clf = transferlab.load(out)
    preds = clf.predict_images([good, blank, good])
    assert preds[1].error == "no face found"
    assert preds[0].label == preds[2].label == "trump"


def test_training_skips_photos_without_a_face_and_counts_reconcile(tmp_path):
    photos = copy_subset(tmp_path / "photos", 6)
    Image.new("RGB", (300, 300), (30, 120, 200)).save(photos / "obama" / "sky.jpg")
    res = transferlab.train(photos, tmp_path / "m", backbone="sface", test_size=0.3, seed=1)
    split = pd.read_csv(tmp_path / "m" / "split.csv")
    sky = split[split["path"].str.endswith("sky.jpg")]
    assert sky["side"].tolist() == ["skipped"]
    assert res.metrics["skipped"].get("no face") == 1
    assert res.intake.report.reconciles()


def test_people_outside_the_classes_are_mostly_unknown(tmp_path):
    """Train without Trump: his photos should be answered 'unknown', the others' held-out photos mostly not."""
    photos = copy_subset(tmp_path / "photos", 40)
    shutil.move(photos / "trump", tmp_path / "outsiders")
    trump = sorted((tmp_path / "outsiders").iterdir())
    held = {c: sorted((photos / c).iterdir())[-8:] for c in ("bush", "clinton", "obama")}
    for files in held.values():
        for f in files:
            f.rename(tmp_path / f"{f.parent.name}_{f.name}")
    clf = transferlab.Classifier(backbone="sface", cache_dir=tmp_path / "c").fit(photos)
    unknown_rate = np.mean([p.label == "unknown" for p in clf.predict_images(trump) if not p.error])
    known_files = sorted(tmp_path.glob("*_*.jpg"))
    known_preds = clf.predict_images(known_files)
    false_unknown = np.mean([p.label == "unknown" for p in known_preds])
    correct = np.mean([p.label == f.name.split("_")[0] for p, f in zip(known_preds, known_files, strict=True)])
    assert unknown_rate >= 0.8, unknown_rate
    assert false_unknown <= 0.2, false_unknown
    assert correct >= 0.75, correct


def test_detector_maps_boxes_back_to_full_resolution():
    """A photo larger than the detector's 640 px is downscaled for detection; boxes come back in its own pixels."""
    import cv2
    import torch

    from transferlab.backbones import create_backbone

    face = np.asarray(Image.open(crops("bush")[0]).convert("RGB").resize((400, 400)))
    big = np.full((1280, 1280, 3), 128, np.uint8)
    big[300:700, 500:900] = face
    seen_by_detector = cv2.resize(big, (640, 640), interpolation=cv2.INTER_AREA)
    pipeline = create_backbone("sface").pipeline
    a, b = pipeline.detect([torch.from_numpy(x).permute(2, 0, 1) for x in (big, seen_by_detector)])
    assert len(a) == len(b) == 1
    np.testing.assert_allclose(a[0, :14], b[0, :14] * 2.0, atol=1e-3)
    x, y, w, h = a[0, :4]
    assert 500 <= x + w / 2 <= 900 and 300 <= y + h / 2 <= 700


def test_fallback_answers_photos_without_a_face_and_survives_save_and_load(tmp_path):
    photos = copy_subset(tmp_path / "photos", 6)
    sky = tmp_path / "sky.jpg"
    Image.new("RGB", (300, 300), (30, 120, 200)).save(sky)
    out = tmp_path / "m"
    run(
        "train",
        str(photos),
        "--out",
        str(out),
        "--fallback",
        "mobilenet_v2",
        "--test-size",
        "0.3",
        cache=tmp_path / "c",
    )
    meta = json.loads((out / "model.json").read_text())
    assert meta["fallback"]["backbone"]["name"] == "mobilenet_v2"
    assert "fallback" in meta["faces"]["no_face"]
    face = sorted((photos / "obama").iterdir())[0]
    lines = [
        json.loads(x)
        for x in run("predict", str(out), str(sky), str(face), "--json", cache=tmp_path / "c").stdout.splitlines()
    ]
    assert lines[0]["fallback"] is True and lines[0]["label"] in {"bush", "clinton", "obama", "trump"}
    assert "box" in lines[1] and "fallback" not in lines[1]
    with pytest.raises(transferlab.TransferlabError, match="face backbones only"):  # validated before any work
        transferlab.Classifier(backbone="mobilenet_v2", fallback="efficientnet_lite0").fit([str(face)], ["obama"])


PARALLEL_SCRIPT = """
import sys, json
import numpy as np
from benchmarks.face_reference import reference
from transferlab.backbones import create_backbone
from transferlab.features import face_rows, featurize_faces
from transferlab.features import featurize_images as featurize
from transferlab.intake import intake
paths = intake(sys.argv[1]).table["path"].tolist()[:10] + [sys.argv[2]]  # and a file that is not a JPEG
featurize(paths[:2], create_backbone("mobilenet_v2"))          # torch/OpenMP threads running in this process
sface = create_backbone("sface")
lanes = featurize_faces(paths, sface)                           # the default: lanes (OpenCV threads too)
ran, real = [], face_rows._process_batches
face_rows._process_batches = lambda *a: ran.append(a[-1]) or real(*a)
pooled = featurize_faces(paths, sface, num_workers=2)           # worker processes, started after those threads
same = all(np.allclose(a, b, atol=1e-5) for a, b in zip(pooled.bags[:-1], lanes.bags[:-1]))
bb = create_backbone("dlib_resnet")
dlib_rows = featurize_faces(paths[:-1], bb)
one_at_a_time = reference(bb)                                  # dlib's own descriptor, photo by photo
serial = [one_at_a_time.faces(np.asarray(__import__("PIL.Image").Image.open(p).convert("RGB"))) for p in paths[:-1]]
# the same embeddings and landmarks as dlib's one-photo-at-a-time path (boxes are clamped to the photo now)
cols = list(range(128)) + list(range(132, 143))
diff = max(float(np.abs(a[:, cols] - b[:, cols]).max()) for a, b in zip(dlib_rows.bags, serial) if len(a))
print(json.dumps({"ran": ran, "n": len(pooled.bags), "faces": sum(map(len, serial)), "diff": diff, "same": same,
                  "errors": [sorted(pooled.errors), sorted(lanes.errors)]}))
"""


def test_worker_processes_start_without_deadlock_and_dlib_embeds_as_dlib_does(tmp_path):
    """``num_workers=N`` on the CPU runs the face pipeline in N single-thread processes (no shared GIL): started
    after torch and OpenCV threads exist they do not hang, and they give the lanes' rows (sface), a bad file
    reported the same way. dlib_resnet's rows (its network in torch) are dlib's own descriptors."""
    import subprocess
    import sys

    from .conftest import REPO

    photos = copy_subset(tmp_path / "photos", 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", PARALLEL_SCRIPT, str(photos), str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ran"] == [2]  # the processes really ran
    assert result["n"] == 11 and result["errors"] == [[10], [10]] and result["faces"] >= 10
    assert result["same"]
    assert result["diff"] < 1e-3  # decoding differs only by draft mode (none at these sizes)


def test_dlib_backbone_through_the_cli(tmp_path):
    """The CLI trains and evaluates a dlib_resnet model (dlib's shape and chip, its network in torch)."""
    photos = copy_subset(tmp_path / "photos", 5)
    proc = run(
        "train", str(photos), "--out", str(tmp_path / "m"), "--backbone", "dlib_resnet", "--json", cache=tmp_path / "c"
    )
    metrics = json.loads(proc.stdout)
    assert metrics["n"] == 4 and metrics["accuracy"] >= 0.75


def test_sface_on_onnxruntime_equals_opencv():
    """The float graph (weights dequantized once, faces batched) gives OpenCV's embeddings."""
    import cv2

    pytest.importorskip("onnxruntime")
    if int(cv2.__version__.split(".")[0]) >= 5:
        pytest.skip("OpenCV 5's dnn module cannot run SFace (setMainGraphInput); the reference needs OpenCV 4")
    from benchmarks.face_reference import SFaceEmbedder
    from transferlab.decode import read_rgb

    fast, ref = SFaceEmbedder("onnxruntime"), SFaceEmbedder("opencv")
    assert (fast.runtime, ref.runtime) == ("onnxruntime", "opencv")
    det = YuNetDetector()
    paths = sorted(PRESIDENTS.glob("*/*.jpg"))[::97]
    n = 0
    for p in paths:
        rgb = np.asarray(read_rgb(p))
        faces = det.detect(rgb)
        np.testing.assert_allclose(fast.embed(rgb, faces), ref.embed(rgb, faces), atol=1e-5)
        n += len(faces)
    assert n >= 5


def test_a_rerun_on_cached_features_builds_no_network_and_still_predicts_new_photos(face_model, tmp_path):
    """Every row in the cache (a rerun, a study's runs): the networks are not built (nothing is computed, the
    build is most of such a run); a photo the cache does not hold afterwards builds them on first use."""
    _, photos, first = face_model
    cache = first.classifier.cache_dir
    again = transferlab.train(photos, tmp_path / "m", backbone="sface", cache_dir=cache, test_size=0.2)
    backbone = again.classifier.extractor_.backbone
    assert again.feature_stats["computed"] == 0 and again.feature_stats["cached"] == len(first.intake.table)
    assert "pipeline" not in vars(backbone)  # FaceBackbone.pipeline: the networks, built on first use
    assert again.metrics == first.metrics
    new = crops("obama", skip=40)[0]  # not among the training photos: not cached
    (answer,) = again.classifier.predict_images([new])
    assert "pipeline" in vars(backbone) and answer.error is None and answer.label == "obama"
    assert answer.probabilities == first.classifier.predict_images([new])[0].probabilities
