"""Features: computed once, cached by content, resumed after a crash, identical across runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.backbones import create_backbone
from transferlab.features import featurize_images as featurize
from transferlab.features import open_cache
from transferlab.intake import intake

from .conftest import REPO, copy_subset


@pytest.fixture(scope="module")
def mobilenet():
    return create_backbone("mobilenet_v2")


def test_second_run_computes_nothing_and_superset_computes_only_new(tmp_path, small_photos, mobilenet):
    table = intake(small_photos).table
    cache = open_cache(mobilenet, "avg", tmp_path / "c", True)
    half = table.iloc[: len(table) // 2]
    first = featurize(half["path"].tolist(), mobilenet, content_hashes=half["content_hash"].tolist(), cache=cache)
    assert (first.n_computed, first.n_cached) == (len(half), 0)
    again = featurize(half["path"].tolist(), mobilenet, content_hashes=half["content_hash"].tolist(), cache=cache)
    assert (again.n_computed, again.n_cached) == (0, len(half))
    np.testing.assert_array_equal(first.features, again.features)
    full = featurize(table["path"].tolist(), mobilenet, content_hashes=table["content_hash"].tolist(), cache=cache)
    assert (full.n_computed, full.n_cached) == (len(table) - len(half), len(half))


def test_cache_is_keyed_by_content_not_by_path(tmp_path, small_photos, mobilenet):
    src = next((small_photos / "obama").iterdir())
    renamed = tmp_path / "renamed.png"
    Image.open(src).save(renamed)  # same pixels, other name and format
    cache = open_cache(mobilenet, "avg", tmp_path / "c", True)
    a = featurize([src], mobilenet, cache=cache)
    b = featurize([renamed], mobilenet, cache=cache)
    assert b.n_cached == 1 and b.n_computed == 0
    # the cache holds features only: no image files
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert all(p.suffix in {".npy", ".json", ".sqlite"} for p in files)
    assert a.features.shape == (1, 1280)


def test_pool_and_backbone_get_separate_cache_spaces(tmp_path, mobilenet):
    a = open_cache(mobilenet, "avg", tmp_path, True)
    b = open_cache(mobilenet, "flatten", tmp_path, True)
    assert a.dir != b.dir


def test_bad_images_do_not_stop_a_batch(tmp_path, small_photos, mobilenet):
    good = sorted((small_photos / "trump").iterdir())[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    res = featurize([good[0], bad, good[1], tmp_path / "vanished.jpg", good[2]], mobilenet, batch_size=2)
    assert set(res.errors) == {1, 3}
    assert res.errors[1][0] == "not an image" and res.errors[3][0] == "unreadable"
    assert np.isfinite(res.features[[0, 2, 4]]).all()


def test_flatten_gives_the_seed_head_input(mobilenet, small_photos):
    p = next((small_photos / "bush").iterdir())
    res = featurize([p], mobilenet, pool="flatten")
    assert res.features.shape == (1, 1280 * 7 * 7)


def test_batched_and_single_image_features_agree(mobilenet, small_photos):
    paths = sorted((small_photos / "clinton").iterdir())[:5]
    batched = featurize(paths, mobilenet, batch_size=5).features
    single = np.stack([featurize([p], mobilenet, batch_size=1).features[0] for p in paths])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)


KILL_SCRIPT = """
import sys
from transferlab.backbones import create_backbone
from transferlab.features import featurize_images as featurize
from transferlab.features import open_cache
from transferlab.intake import intake
t = intake(sys.argv[1]).table
bb = create_backbone("mobilenet_v2")
featurize(t["path"].tolist(), bb, content_hashes=t["content_hash"].tolist(),
          cache=open_cache(bb, "avg", sys.argv[2], True), batch_size=4, num_workers=1)
"""


def _entries(cache_root: Path) -> list[Path]:
    return [p for p in cache_root.rglob("*.npy")]


def test_sigkill_midway_then_rerun_equals_an_uninterrupted_run(tmp_path):
    photos = copy_subset(tmp_path / "photos", 30)  # 120 photos
    killed_cache, clean_cache = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(photos), str(killed_cache)], env=env)
    # the kill follows featurization's progress (entries in the cache), not a clock: a loaded machine only delays it
    while len(_entries(killed_cache)) < 12 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "featurization finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(_entries(killed_cache))
    assert 12 <= n_before < 120
    # every entry left behind is complete and loadable (no temp files are mistaken for entries)
    for p in _entries(killed_cache):
        assert np.load(p).shape == (1280,)

    table = intake(photos).table
    bb = create_backbone("mobilenet_v2")
    resumed = featurize(
        table["path"].tolist(),
        bb,
        content_hashes=table["content_hash"].tolist(),
        cache=open_cache(bb, "avg", killed_cache, True),
    )
    assert resumed.n_cached == n_before and resumed.n_computed == 120 - resumed.n_cached
    clean = featurize(
        table["path"].tolist(),
        bb,
        content_hashes=table["content_hash"].tolist(),
        cache=open_cache(bb, "avg", clean_cache, True),
    )
    # Batches differ between the two runs; oneDNN results may differ in the last bits with batch composition.
    np.testing.assert_allclose(resumed.features, clean.features, rtol=1e-4, atol=1e-5)
    shutil.rmtree(photos)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_tensors_matches_pillow(orientation):
    """The GPU path turns nvJPEG output upright itself; it must agree with Pillow for all eight orientations."""
    import torch
    from PIL import ImageOps

    from transferlab.decode import apply_exif_orientation

    rng = np.random.default_rng(orientation)
    img = Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(img))
    got = apply_exif_orientation(torch.from_numpy(np.array(img)).permute(2, 0, 1), orientation)
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU"),
        ),
    ],
)
def test_batched_device_decode_path_matches_the_loader_path(tmp_path, small_photos, mobilenet, monkeypatch, device):
    """The GPU pipeline (raw JPEG bytes → batched decode → upright → transform on the device), on the CPU and on a
    GPU (nvJPEG, the fast recipe): the same errors as the default path for the bad-input corpus (all 8 EXIF
    orientations, broken EXIF, mislabelled and non-JPEG files, in mixed batches) and the same features (on the CPU
    to rounding; nvJPEG and bf16 move them by up to ~1 % in cosine)."""
    import transferlab.features.cuda as F

    from .conftest import PRESIDENTS
    from .corpus import build_corpus

    photos = sorted(str(p) for p in small_photos.rglob("*.jpg"))[:6]
    kinds = build_corpus(tmp_path / "corpus", Path(photos[0]), Path(photos[1]))
    corpus = [str(tmp_path / "corpus" / f) for k in kinds if not k.vanish for f in k.files]
    corpus = [p for p in corpus if os.path.isfile(p)]
    sources = photos + corpus + [str(PRESIDENTS / "does-not-exist.jpg")]
    ref = featurize(sources, mobilenet, batch_size=8)
    decoded: list[int] = []
    real = F.decode_on_device
    monkeypatch.setattr(
        F, "decode_on_device", lambda items, *a: decoded.extend(i for i, *_ in items) or real(items, *a)
    )
    bb = mobilenet if device == "cpu" else create_backbone("mobilenet_v2").to("cuda").use_recipe("fast")
    got = featurize(sources, bb, batch_size=8, decode_device=device)
    orientations = [
        sources.index(str(tmp_path / "corpus" / f)) for k in kinds if "orientation" in k.kind for f in k.files
    ]
    assert len(orientations) == 8 and set(orientations) <= set(decoded)  # the raw path really ran
    assert {i: r for i, (r, _) in got.errors.items()} == {i: r for i, (r, _) in ref.errors.items()}
    ok = ref.ok
    # Full-size decodes vs. Pillow's reduced-scale draft decode of large JPEGs differ slightly: compare directions,
    # and the small (exactly decoded) EXIF-rotated files tightly.
    a, b = ref.features[ok], got.features[ok]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > (0.98 if device == "cpu" else 0.95), cos.min()
    if device == "cpu":
        np.testing.assert_allclose(got.features[orientations], ref.features[orientations], atol=1e-4)


def _threads_of_a_new_thread() -> int:
    """torch's thread count as a thread started now sees it (lanes change the default for new threads)."""
    import threading

    import torch

    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_lanes_match_one_batch_at_a_time(tmp_path, small_photos, mobilenet, monkeypatch):
    """Batches decoded and forwarded side by side in threads (the few-core CPU path) give the same features and
    errors, in the right rows, as one batch at a time; and leave torch's thread count as it was."""
    import threading

    import torch

    from .corpus import build_corpus

    photos = sorted(str(p) for p in small_photos.rglob("*.jpg"))[:13]
    kinds = build_corpus(tmp_path / "corpus", Path(photos[0]), Path(photos[1]))
    corpus = [str(tmp_path / "corpus" / f) for k in kinds if not k.vanish for f in k.files]
    sources = [s for pair in zip(photos, corpus, strict=False) for s in pair] + corpus[len(photos) :]
    threads = torch.get_num_threads()
    ref = featurize(sources, mobilenet, batch_size=4, num_workers=0, lanes=1)
    seen: set[str] = set()
    real = mobilenet.forward

    def forward(x, pool="avg"):
        seen.add(threading.current_thread().name.split("_")[0])
        assert torch.get_num_threads() == 1  # each lane runs with its share of the threads
        return real(x, pool=pool)

    monkeypatch.setattr(mobilenet, "forward", forward)
    got = featurize(sources, mobilenet, batch_size=4, num_workers=0, lanes=3)
    assert seen == {"transferlab-lane"}  # the lanes really ran
    assert torch.get_num_threads() == _threads_of_a_new_thread() == threads
    assert got.errors == ref.errors and got.n_computed == ref.n_computed == int(ref.ok.sum())
    assert got.n_computed >= 13 and len(got.errors) >= 20
    np.testing.assert_allclose(got.features[ref.ok], ref.features[ref.ok], atol=1e-4)
    assert np.isnan(got.features[~ref.ok]).all()


def test_an_error_in_a_lane_reaches_the_caller(small_photos, mobilenet, monkeypatch):
    import torch

    photos = sorted(str(p) for p in small_photos.rglob("*.jpg"))[:12]
    threads = torch.get_num_threads()
    monkeypatch.setattr(mobilenet, "forward", lambda x, pool="avg": (_ for _ in ()).throw(MemoryError("boom")))
    with pytest.raises(MemoryError, match="boom"):
        featurize(photos, mobilenet, batch_size=4, num_workers=0, lanes=2)
    assert torch.get_num_threads() == _threads_of_a_new_thread() == threads


def test_device_choice_is_checked():
    import torch

    from transferlab import Classifier
    from transferlab._runtime import resolve_device
    from transferlab.errors import TransferlabError

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    clf = Classifier("mobilenet_v2", device="tpu")  # scikit-learn's rule: __init__ stores, fit validates
    with pytest.raises(TransferlabError, match="choose auto, cpu"):
        clf.fit(["never-read.jpg"], ["a"])
    if not torch.cuda.is_available():
        with pytest.raises(TransferlabError, match="no CUDA GPU"):
            resolve_device("cuda")
