"""People as data: enrol a person without retraining, forget one leaving no trace, explain an answer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transferlab
from tests.conftest import PRESIDENTS, copy_subset, run
from transferlab.decode import content_hash, read_rgb


def _tree_digest(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def _files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    """Every file under ``roots`` that holds one of ``needles`` (as bytes)."""
    found = []
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                blob = p.read_bytes()
                found += [f"{p}: {n[:16]!r}" for n in needles if n in blob]
    return found


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """A face model of three people (bush, obama, trump: 10 photos each), its cache, and photos of a fourth
    (clinton) to enrol plus held-out photos of everyone."""
    base = tmp_path_factory.mktemp("people")
    photos = copy_subset(base / "all", 16)
    train_dir = base / "train"
    held = base / "held"
    for label in ("bush", "obama", "trump"):
        files = sorted((photos / label).iterdir())
        (train_dir / label).mkdir(parents=True)
        (held / label).mkdir(parents=True)
        for f in files[:10]:
            shutil.copy(f, train_dir / label / f.name)
        for f in files[10:]:
            shutil.copy(f, held / label / f.name)
    clinton = sorted((photos / "clinton").iterdir())
    cache = base / "cache"
    model = base / "model"
    transferlab.train(train_dir, model, backbone="sface", cache_dir=cache, test_size=0.2, verbose=False)
    return {"model": model, "cache": cache, "train": train_dir, "held": held, "clinton": clinton, "base": base}


def _copy_model(people, tmp_path) -> tuple[Path, Path]:
    model, cache = tmp_path / "model", tmp_path / "cache"
    shutil.copytree(people["model"], model)
    shutil.copytree(people["cache"], cache)
    return model, cache


def _answers(model: Path, photos: list[Path], cache: Path) -> list[str]:
    return list(transferlab.load(model, cache_dir=cache, verbose=False).predict(photos))


def test_enrol_adds_a_person_skips_what_it_cannot_use_and_leaves_others_answers(people, tmp_path):
    model, cache = _copy_model(people, tmp_path)
    held = sorted(people["held"].rglob("*.jpg"))
    before = _answers(model, held, cache)
    new = tmp_path / "clinton"
    new.mkdir()
    for f in people["clinton"][:10]:
        shutil.copy(f, new / f.name)
    obama = people["train"] / transferlab.load(model).gallery().paths[-1]
    shutil.copy(obama, new / "already_known.jpg")  # the same pixels as a photo the model was trained on
    (new / "cut.jpg").write_bytes(people["clinton"][11].read_bytes()[:300])
    Image.new("RGB", (320, 240), (120, 130, 140)).save(new / "wall.png")  # no face
    assert {"report.md", "split.csv", "metrics.json"} <= {p.name for p in model.iterdir()}
    trained = transferlab.load(model).gallery().counts()  # the training side of train's split

    proc = run("enroll", str(model), "clinton", str(new), "--json", "--cache-dir", str(cache), check=False)
    assert proc.returncode == 1, proc.stderr  # some photos could not be used: each is listed
    out = json.loads(proc.stdout)
    assert out["per_class_before"] == trained and set(trained) == {"bush", "obama", "trump"}
    assert out["per_class_after"]["clinton"] == out["added"] >= 8
    reasons = {s["path"]: s["reason"] for s in out["skipped_files"]}
    assert reasons["clinton/already_known.jpg"] == "duplicate"
    assert reasons["clinton/cut.jpg"] in ("truncated", "unreadable")
    assert reasons["clinton/wall.png"] == "no face"
    assert out["added"] + len(out["skipped_files"]) == 13
    assert out["unknown_threshold_after"] is not None
    # the model was replaced: it knows clinton, its gallery says where each photo came from, the report is gone
    clf = transferlab.load(model, cache_dir=cache)
    assert list(clf.classes_) == ["bush", "clinton", "obama", "trump"]
    assert "clinton/" + people["clinton"][0].name in clf.gallery().paths
    assert "report.md" in out["removed_files"] and not (model / "report.md").exists()
    meta = json.loads((model / "model.json").read_text())
    assert meta["changes"][-1]["action"] == "enroll" and meta["training_data"]["per_class"]["clinton"] == out["added"]
    assert "evaluation" not in meta  # it described the model as trained
    # photos of the others are answered as before; new photos of clinton are clinton
    after = _answers(model, held, cache)
    same = np.mean([a == b for a, b in zip(before, after, strict=True)])
    assert same >= 0.995, list(zip(before, after, strict=True))
    assert _answers(model, people["clinton"][12:16], cache).count("clinton") >= 3


def test_forget_a_person_leaves_no_row_of_them_in_the_model_or_the_cache(people, tmp_path):
    model, cache = _copy_model(people, tmp_path)
    run("enroll", str(model), "clinton", *map(str, people["clinton"][:8]), "--cache-dir", str(cache))
    gallery = transferlab.load(model, cache_dir=cache).gallery()
    gone = [h for h, label in zip(gallery.hashes, gallery.labels, strict=True) if label == "clinton"]
    assert len(gone) == 8
    needles = [h.encode() for h in gone] + [bytes.fromhex(h) for h in gone]
    assert _files_holding([cache], needles)  # their features and intake records are there before

    proc = run("forget", str(model), "clinton", "--json", "--cache-dir", str(cache))
    out = json.loads(proc.stdout)
    assert out["removed_photos"] == 8 and "clinton" not in out["per_class_after"]
    assert out["cache"]["feature_entries"] >= 8 and out["cache"]["intake_rows"] == 8
    assert _files_holding([model, cache], needles) == []  # every file scanned: no hash, hex or raw
    assert _files_holding([model], [b"clinton"]) == []  # nor the name, in the model directory
    clf = transferlab.load(model, cache_dir=cache)
    assert "clinton" not in clf.classes_
    assert "clinton" not in set(clf.predict(people["clinton"][:8]))


def test_forget_one_photo_by_its_pixels(people, tmp_path):
    model, cache = _copy_model(people, tmp_path)
    gallery = transferlab.load(model).gallery()
    photo = people["train"] / gallery.paths[3]  # a photo the model was trained on (the split kept it)
    h = content_hash(read_rgb(photo))
    assert h == gallery.hashes[3]
    proc = run("forget", str(model), "--photo", str(photo), "--cache-dir", str(cache))
    assert "forgot 1 photo" in proc.stdout
    g = transferlab.load(model).gallery()
    assert h not in g.hashes and len(g) == len(transferlab.load(people["model"]).gallery()) - 1
    assert _files_holding([model, cache], [h.encode(), bytes.fromhex(h)]) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["enroll", "{model}", "", "{photo}"], "the name is empty"),
        (["enroll", "{model}", "unknown", "{photo}"], "reserved"),
        (["enroll", "{model}", "a/b", "{photo}"], "not a valid label"),
        (["enroll", "{model}", "lincoln", "{wall}"], "none of the photos can be used"),
        (["enroll", "{model}", "lincoln", "{nothing}"], "no such file or folder"),
        (["enroll", "{notmodel}", "lincoln", "{photo}"], "not a transferlab model"),
        (["forget", "{model}", "lincoln"], "not a person this model knows"),
        (["forget", "{model}", "--photo", "{photo}"], "not in"),
        (["forget", "{model}", "bush", "--photo", "{photo}"], "not both"),
        (["forget", "{damaged}", "bush"], "does not match its hash"),
        (["forget", "{old}", "bush"], "saved without a gallery"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(people, tmp_path, args, says):
    model, cache = _copy_model(people, tmp_path)
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    meta = json.loads((damaged / "model.json").read_text())
    meta["gallery"]["paths"][0] = "someone-else/x.jpg"  # edited by hand
    (damaged / "model.json").write_text(json.dumps(meta))
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "models_451c0b6" / "sface_logreg", old)
    Image.new("RGB", (320, 240), (120, 130, 140)).save(tmp_path / "wall.png")
    (tmp_path / "notmodel").mkdir()
    values = {
        "model": model,
        "photo": people["clinton"][0],
        "wall": tmp_path / "wall.png",
        "nothing": tmp_path / "nothing.jpg",
        "notmodel": tmp_path / "notmodel",
        "damaged": damaged,
        "old": old,
    }
    digests = {d: _tree_digest(d) for d in (model, damaged, old)}
    proc = run(*[a.format(**values) for a in args], "--cache-dir", str(cache), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()  # status lines may come first (e.g. the networks built)
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and says in lines[-1] and "Traceback" not in proc.stderr, proc.stderr
    assert {d: _tree_digest(d) for d in digests} == digests


def test_a_crash_while_switching_models_leaves_the_old_model(people, tmp_path, monkeypatch):
    import transferlab.artifact as artifact

    model, cache = _copy_model(people, tmp_path)
    before = _tree_digest(model)
    real = artifact.atomic_write_bytes

    def crash_on_model_json(path, data):
        if Path(path).name == "model.json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(artifact, "atomic_write_bytes", crash_on_model_json)
    with pytest.raises(OSError):
        transferlab.enroll_model(model, "clinton", people["clinton"][:4], cache_dir=cache)
    monkeypatch.setattr(artifact, "atomic_write_bytes", real)
    clf = transferlab.load(model, cache_dir=cache)  # the old model, whole: its head file is still the one named
    assert list(clf.classes_) == ["bush", "obama", "trump"]
    assert {k: v for k, v in _tree_digest(model).items() if not k.startswith("head-")} == before
    transferlab.enroll_model(model, "clinton", people["clinton"][:4], cache_dir=cache)  # and a rerun finishes it
    assert [p.name for p in model.glob("head*.safetensors")] == [
        json.loads((model / "model.json").read_text())["head_file"]
    ]


def test_predict_explain_names_the_nearest_training_photos(people, tmp_path):
    model, cache = _copy_model(people, tmp_path)
    photo = sorted((people["held"] / "obama").iterdir())[0]
    proc = run("predict", str(model), str(photo), "--explain", "--neighbours", "2", "--json", "--cache-dir", str(cache))
    line = json.loads(proc.stdout)
    e = line["explanation"]
    assert len(e["neighbours"]) == 2 and e["neighbours"][0]["similarity"] >= e["neighbours"][1]["similarity"]
    assert all(n["path"].split("/")[0] in ("bush", "obama", "trump") for n in e["neighbours"])
    assert set(e["class_similarity"]) == {"bush", "obama", "trump"}
    assert e["margin"] == pytest.approx(line["similarity"] - line["unknown_threshold"], abs=2e-4)
    assert e["face"] == 0 and line["label"] == "obama" and e["neighbours"][0]["label"] == "obama"
    text = run("predict", str(model), str(photo), "--explain", "--cache-dir", str(cache)).stdout
    assert "nearest training photos: obama" in text and "margin to the unknown threshold: +" in text


def test_a_whole_image_model_enrols_explains_and_forgets_in_python(trained_model, small_photos, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    clf = transferlab.load(model)
    n = len(clf.gallery())
    new = sorted((PRESIDENTS / "clinton").iterdir())[-6:]
    change = clf.enroll("hillary", new)
    assert change.after["hillary"] == 6 and len(clf.gallery()) == n + 6 and "hillary" in clf.classes_
    explained = clf.explain([new[0]], k=3)[0].explanation
    assert explained.neighbours[0]["label"] == "hillary" and explained.neighbours[0]["similarity"] == pytest.approx(1.0)
    assert explained.margin is None and set(explained.class_similarity) == set(clf.classes_)
    clf.save(model, replace=True)
    again = transferlab.load(model)
    assert again.gallery().counts() == clf.gallery().counts()
    again.forget("hillary")
    assert "hillary" not in again.classes_ and len(again.gallery()) == n
    with pytest.raises(transferlab.TransferlabError, match="not a person this model knows"):
        again.forget("hillary")


def _serve(app):
    """The app on a real server (uvicorn in a thread) on a free port; returns the server and its URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:  # waits on the server, not a clock
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def test_people_over_http_need_the_token_and_never_show_a_half_changed_model(people, tmp_path):
    import threading

    import httpx
    from fastapi.testclient import TestClient

    from transferlab.serve import create_app

    model, _ = _copy_model(people, tmp_path)
    photo = people["clinton"][0].read_bytes()
    assert TestClient(create_app(model)).post("/api/people/clinton", files={"file": photo}).status_code in (404, 405)
    token = "s3cret-token-0123456789abcdef"
    (tmp_path / "token").write_text(token + "\n")
    app = create_app(model, admin_token_file=tmp_path / "token", gallery_dir=people["train"])
    server, url = _serve(app)
    admin = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                r = c.post("/api/people/clinton", files={"file": ("a.jpg", photo)}, headers=headers)
                assert (r.status_code, r.content) == (401, b"")
                assert c.delete("/api/people/bush", headers=headers).status_code == 401
            # predictions from three clients while 20 enrol/forget cycles run
            asks = [p.read_bytes() for p in sorted(people["held"].rglob("*.jpg"))[:6]]
            three, four = {"bush", "obama", "trump"}, {"bush", "clinton", "obama", "trump"}
            answers, stop = [], threading.Event()

            def ask(k: int) -> None:
                with httpx.Client(base_url=url, timeout=120) as client:
                    i = k
                    while not stop.is_set():
                        r = client.post("/api/predict", files={"file": ("p.jpg", asks[i % len(asks)])})
                        answers.append((r.status_code, r.json()))
                        i += 1

            clients = [threading.Thread(target=ask, args=(k,)) for k in range(3)]
            for t in clients:
                t.start()
            try:
                for _ in range(20):
                    files = [("file", (p.name, p.read_bytes())) for p in people["clinton"][:2]]
                    r = c.post("/api/people/clinton", files=files, headers=admin)
                    assert r.status_code == 200 and r.json()["added"] == 2 and r.json()["classes"] == sorted(four)
                    r = c.delete("/api/people/clinton", headers=admin)
                    assert r.status_code == 200 and r.json()["removed_photos"] == 2
            finally:
                stop.set()
                for t in clients:
                    t.join()
            assert answers and all(status == 200 for status, _ in answers), {s for s, _ in answers}
            for _, a in answers:  # each answer is one model's: its classes, its label among them
                face = next(f for f in a["faces"] if f["answer"])
                assert set(face["probabilities"]) in (three, four)
                assert a["label"] in set(face["probabilities"]) | {"unknown"}
            # an uploaded photo is named by the same pixel hash as its file: `forget --photo FILE` finds it
            c.post("/api/people/clinton", files=[("file", ("c.jpg", photo))], headers=admin).raise_for_status()
            assert content_hash(read_rgb(people["clinton"][0])) in transferlab.load(model).gallery().hashes
            c.delete("/api/people/clinton", headers=admin).raise_for_status()
            # the nearest training faces, served from the --gallery folder only
            r = c.post("/api/predict", files={"file": ("p.jpg", asks[0])}).json()
            urls = [n["url"] for n in r["explanation"]["neighbours"] if "url" in n]
            assert urls and c.get(urls[0]).headers["content-type"] == "image/jpeg"
            assert c.get("/api/gallery/" + "0" * 64).status_code == 404
    finally:
        server.should_exit = True
    assert list(transferlab.load(model).classes_) == ["bush", "obama", "trump"]


def test_two_enrolments_at_once_both_land(people, tmp_path):
    """Two `enroll` processes on one model: the second waits for the first and reads what it wrote."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    model, cache = _copy_model(people, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TRANSFERLAB_CACHE_DIR": str(cache)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "transferlab", "enroll", str(model), name, *map(str, photos), "-q"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, photos in (("clinton", people["clinton"][:3]), ("hillary", people["clinton"][3:6]))
    ]
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    counts = transferlab.load(model).gallery().counts()
    assert counts["clinton"] == 3 and counts["hillary"] == 3


def test_a_read_only_model_is_refused_before_any_work_unless_out_is_given(people, tmp_path, monkeypatch):
    import os

    import transferlab.enrolment as enrolment

    model, cache = _copy_model(people, tmp_path)
    before = _tree_digest(model)
    real = os.access
    monkeypatch.setattr(enrolment.os, "access", lambda p, mode: False if Path(p) == model else real(p, mode))
    with pytest.raises(transferlab.TransferlabError, match=r"read-only; the model was not changed \(pass --out DIR"):
        transferlab.enroll_model(model, "clinton", people["clinton"][:2], cache_dir=cache)
    with pytest.raises(transferlab.TransferlabError, match="read-only"):
        transferlab.forget_model(model, "bush", cache_dir=cache)
    assert _tree_digest(model) == before
    done = transferlab.enroll_model(model, "clinton", people["clinton"][:2], cache_dir=cache, out=tmp_path / "out")
    assert done.change.added == ["clinton/" + p.name for p in people["clinton"][:2]]
    assert _tree_digest(model) == before
