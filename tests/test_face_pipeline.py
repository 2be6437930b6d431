"""The batched face pipeline answers as the one-photo-at-a-time OpenCV path did, whatever a batch holds."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.face_reference import REFERENCE_ROWS, parity_sample, reference_rows, row_key
from transferlab.backbones import create_backbone
from transferlab.backbones.face_align import similarity_transforms, warp_faces, warp_faces_remap
from transferlab.backbones.face_pipeline import FacePipeline
from transferlab.decode import decode_pixels, read_rgb
from transferlab.features import featurize_faces

from .conftest import PRESIDENTS, REPO, copy_subset

EVERY = sorted(PRESIDENTS.glob("*/*.jpg"))
SAMPLE = parity_sample(PRESIDENTS)  # every 4th: 203 photos, every class and kind
CROWD = PRESIDENTS / "clinton" / "rileycong_0075_04b377c67b5c.jpg"  # 26 faces
NO_FACE = Image.new("RGB", (300, 200), (60, 130, 210))
OPENCV_4 = int(__import__("cv2").__version__.split(".")[0]) < 5
# The reference is the face path as it was, under OpenCV 4 (the pinned version): OpenCV 5 changed warpAffine by up to
# a grey level, and its dnn module cannot run SFace.
needs_opencv_4 = pytest.mark.skipif(not OPENCV_4, reason="the OpenCV reference path is defined with OpenCV 4")


@pytest.fixture(scope="module")
def sface():
    return create_backbone("sface")


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def _clamped(rows: np.ndarray, width: int, height: int) -> np.ndarray:
    boxes = rows[:, 128:132].copy()
    x2, y2 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width), np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    boxes[:, 0], boxes[:, 1] = np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 1], 0, height)
    boxes[:, 2], boxes[:, 3] = x2 - boxes[:, 0], y2 - boxes[:, 1]
    return boxes


@needs_opencv_4
def test_the_stored_reference_rows_are_the_opencv_paths(sface):
    """The reference rows the parity test reads (``python -m benchmarks.face_reference`` wrote them) are what the
    OpenCV path gives on this machine now, recomputed live for every 10th photo of the sample and its most crowded
    one (22 photos): rounding may differ between CPUs, nothing more."""
    stored = np.load(REPO / REFERENCE_ROWS)
    assert sorted(stored.files) == sorted(row_key(p) for p in SAMPLE)
    crowded = max(SAMPLE, key=lambda p: len(stored[row_key(p)]))
    live = reference_rows([*SAMPLE[::10], crowded], sface)
    assert sum(len(r) for r in live.values()) >= 40
    for key, rows in live.items():
        want = stored[key]
        assert rows.shape == want.shape, key
        if len(rows):
            np.testing.assert_allclose(rows[:, 128:], want[:, 128:], atol=0.05, err_msg=key)  # boxes, landmarks, score
            assert (rows[:, :128] * want[:, :128]).sum(1).min() >= 0.9999, key


@needs_opencv_4
def test_same_faces_boxes_embeddings_and_labels_as_the_opencv_path(sface):
    """On 203 bundled photos: the same faces, boxes within 1 px (the reference's clamped to the photo), embeddings
    at cosine ≥ 0.999, and a head trained on one path's embeddings labels ≥ 99.5% of photos alike on the other.

    The OpenCV path's rows are read from the stored reference (the test above recomputes a tenth of them live):
    running that path one photo at a time was ~27 s of CPU, two thirds of this test."""
    res = featurize_faces([str(p) for p in SAMPLE], sface)
    assert not res.errors
    stored = np.load(REPO / REFERENCE_ROWS)
    ref_rows, new_rows = [], []
    for path, new in zip(SAMPLE, res.bags, strict=True):
        img = np.asarray(read_rgb(path, draft=sface.draft_size))
        ref = stored[row_key(path)]
        assert len(ref) == len(new), path
        if len(ref):
            assert np.abs(_clamped(ref, img.shape[1], img.shape[0]) - new[:, 128:132]).max() <= 1.0, path
            np.testing.assert_allclose(new[:, 132:142], ref[:, 132:142], atol=1e-3)  # landmarks
            assert (ref[:, :128] * new[:, :128]).sum(1).min() >= 0.999, path
            ref_rows.append(ref)
            new_rows.append(new)
    assert sum(len(r) for r in ref_rows) > 300  # many photos with several faces
    from sklearn.linear_model import LogisticRegression

    labels = [p.parent.name for p, r in zip(SAMPLE, res.bags, strict=True) if len(r)]
    largest = [int(np.argmax(r[:, 130] * r[:, 131])) for r in ref_rows]
    head = LogisticRegression(max_iter=2000).fit(
        np.stack([r[k, :128] for r, k in zip(ref_rows, largest, strict=True)]), labels
    )
    a = head.predict(np.stack([r[k, :128] for r, k in zip(ref_rows, largest, strict=True)]))
    b = head.predict(np.stack([r[k, :128] for r, k in zip(new_rows, largest, strict=True)]))
    assert np.mean(a == b) >= 0.995


def test_a_batch_answers_as_each_photo_alone(sface):
    """Batched detection (photos of several sizes in one batch, suppression over the batch) and alignment give what
    each photo gives on its own."""
    photos = [decode_pixels(p, sface.draft_size) for p in [*EVERY[::37], CROWD]]
    together = sface.pipeline.faces(photos)
    for photo, rows in zip(photos, together, strict=True):
        (alone,) = sface.pipeline.faces([photo])
        assert rows.shape == alone.shape
        np.testing.assert_allclose(rows, alone, atol=1e-5)
    assert max(len(r) for r in together) >= 20


def test_alignment_is_opencvs_warp_bit_for_bit(sface):
    """The tensor warp (any device) and the CPU's cv2.remap with the same fixed-point maps give the same pixels, and
    those are cv2.warpAffine's (OpenCV 4), faces of every size included."""
    import cv2

    for path in [CROWD, *EVERY[::101]]:
        img = decode_pixels(path, sface.draft_size)
        det = sface.pipeline.detect([img])[0]
        if not len(det):
            continue
        m = similarity_transforms(det[:, 4:14].reshape(-1, 5, 2))
        ours = warp_faces(img, m).numpy()
        np.testing.assert_array_equal(ours, warp_faces_remap(img, m).numpy())
        if OPENCV_4:
            hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
            ref = np.stack([cv2.warpAffine(hwc, t, (112, 112), flags=cv2.INTER_LINEAR) for t in m])
            np.testing.assert_array_equal(ours, ref.transpose(0, 3, 1, 2).astype(np.float32))


def test_no_face_crowds_odd_sizes_rotations_and_a_bad_file_in_one_batch(sface, tmp_path):
    """One batch: a photo without a face, one with 26 faces, tiny and very wide images, a photo larger than the
    detector's input, every EXIF rotation, and a corrupt file: each gets its own answer, only the bad file fails."""
    face = Image.open(sorted((PRESIDENTS / "bush").iterdir())[0]).convert("RGB")
    files = {"sky.jpg": NO_FACE, "tiny.png": face.resize((40, 33)), "wide.png": Image.new("RGB", (1000, 150))}
    big = Image.new("RGB", (1400, 900), (128, 128, 128))
    big.paste(face.resize((400, 400)), (700, 300))
    files["big.jpg"] = big
    for orientation in range(1, 9):  # stored turned, with the EXIF tag that turns it back upright
        turned = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                  5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                  8: Image.Transpose.ROTATE_270}  # fmt: skip
        stored = face.transpose(turned[orientation]) if orientation > 1 else face
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
        (tmp_path / f"exif{orientation}.jpg").write_bytes(buf.getvalue())
    for name, img in files.items():
        img.save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "big.jpg").read_bytes()[:300])
    sources = [str(tmp_path / n) for n in (*files, "broken.jpg")] + [
        str(tmp_path / f"exif{o}.jpg") for o in range(1, 9)
    ]
    sources.insert(2, str(CROWD))
    res = featurize_faces(sources, sface, batch_size=64)  # everything in one batch
    by_name = {s.rsplit("/", 1)[-1]: i for i, s in enumerate(sources)}
    assert set(res.errors) == {by_name["broken.jpg"]} and res.errors[by_name["broken.jpg"]][0] == "truncated"
    assert len(res.bags[by_name["sky.jpg"]]) == 0 and len(res.bags[by_name["wide.png"]]) == 0
    assert len(res.bags[by_name[CROWD.name]]) >= 20
    (box,) = res.bags[by_name["big.jpg"]][:, 128:132]
    assert 700 <= box[0] + box[2] / 2 <= 1100 and 300 <= box[1] + box[3] / 2 <= 700  # full-resolution pixels
    upright = [res.bags[by_name[f"exif{o}.jpg"]] for o in range(1, 9)]
    assert all(len(r) == 1 for r in upright)
    for r in upright[1:]:  # every rotation found the same face in the upright photo
        assert (r[0, :128] @ upright[0][0, :128]) > 0.95
        np.testing.assert_allclose(r[0, 128:132], upright[0][0, 128:132], atol=3.0)


def test_boxes_are_clamped_to_the_photo(sface):
    """A face cut by the photo's edge gets a box inside the photo (its landmarks are kept as detected)."""
    face = Image.open(sorted((PRESIDENTS / "bush").iterdir())[0]).convert("RGB").resize((200, 200))
    cut = np.asarray(face)[:, 40:]  # the left 40 px of the face are outside the photo
    (rows,) = sface.pipeline.faces([_tensor(cut)])
    assert len(rows)
    x, y, w, h = rows[0, 128:132]
    assert x >= 0 and y >= 0 and x + w <= cut.shape[1] + 1e-3 and y + h <= cut.shape[0] + 1e-3


def test_the_torch_runtime_on_the_cpu_gives_the_same_rows(sface, tmp_path):
    """The code path a GPU runs (torch for both networks, the fixed-point warp on the device), on the CPU."""
    torch_pipeline = FacePipeline("sface", device="cpu", runtime="torch", cache_root=tmp_path)
    photos = [decode_pixels(p, sface.draft_size) for p in EVERY[::61]]
    for a, b in zip(sface.pipeline.faces(photos), torch_pipeline.faces(photos), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a[:, 128:], b[:, 128:], atol=1e-2)
        if len(a):
            assert (a[:, :128] * b[:, :128]).sum(1).min() > 0.9999


def test_the_cpu_embedder_is_kept_as_an_archive_that_loads_to_the_same_outputs(sface, tmp_path, fresh_face_graphs):
    """Cold starts skip onnx2torch: the traced SFace is written once beside its graph, loaded afterwards with the
    same outputs bit for bit, and a damaged archive is made again rather than failing."""
    from transferlab.backbones.face_pipeline import cpu_embedder

    graph = sface.pipeline.graphs["embedder"]
    crops = torch.rand(3, 3, 112, 112) * 255
    built = cpu_embedder(graph, tmp_path)
    (archive,) = (tmp_path / "face_graphs").glob(f"{graph.stem}-torch*-pretrained.pt")
    with torch.no_grad():
        expected = built(crops.contiguous(memory_format=torch.channels_last))
        loaded = cpu_embedder(graph, tmp_path)(crops.contiguous(memory_format=torch.channels_last))
    assert torch.equal(expected, loaded)
    archive.write_bytes(b"not an archive")
    with torch.no_grad():
        rebuilt = cpu_embedder(graph, tmp_path)(crops.contiguous(memory_format=torch.channels_last))
    assert torch.equal(expected, rebuilt) and archive.stat().st_size > 1_000_000
    tuned = {"fc1.bias": np.full(128, 0.5, np.float32)}  # fine-tuned tensors: an archive of their own
    with torch.no_grad():
        shifted = cpu_embedder(graph, tmp_path, tuned)(crops.contiguous(memory_format=torch.channels_last))
    assert len(list((tmp_path / "face_graphs").glob("*.pt"))) == 2 and not torch.allclose(expected, shifted)


def test_small_jobs_skip_the_embedders_optimisation_and_embed_alike(tmp_path):
    """A process with fewer than OPTIMISE_FROM photos to embed (a predict of a few) does not pay for freezing and
    optimising the CPU embedder; one that goes on predicting gets it once its jobs add up, a server or a big job at
    once; the traced module embeds like the optimised one (unit vectors within float32's default tolerance, cosine
    within 1e-6: folding the batch norms into the convolutions only changes rounding, up to 2.4e-6 per value over
    40 random batches, so a bound of 2e-6 failed now and then)."""
    from transferlab.backbones.face_pipeline import OPTIMISE_FROM, cpu_embedder

    small = create_backbone("sface").build(3)
    traced_module = small.pipeline.modules["embedder"]
    assert small.pipeline.optimise is False
    small.build(OPTIMISE_FROM - 4)  # 3 + 196 photos: still under
    assert small.pipeline.optimise is False and small.pipeline.modules["embedder"] is traced_module
    small.build(1)  # the 200th photo: optimised from now on
    assert small.pipeline.optimise is True and small.pipeline.modules["embedder"] is not traced_module
    assert create_backbone("sface").build(None).pipeline.optimise is True
    assert create_backbone("sface").build(OPTIMISE_FROM).pipeline.optimise is True
    graph = small.pipeline.graphs["embedder"]
    noise = torch.rand(6, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    crops = (noise * 255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        traced = torch.nn.functional.normalize(cpu_embedder(graph, tmp_path, optimise=False)(crops))
        optimised = torch.nn.functional.normalize(cpu_embedder(graph, tmp_path)(crops))
    torch.testing.assert_close(optimised, traced)  # float32: atol 1e-5, rtol 1.3e-6
    assert (optimised * traced).sum(dim=1).min() > 1 - 1e-6


def test_the_recipe_keys_the_cache(sface):
    """Rows from another recipe (the one-photo OpenCV path, or a GPU's nvJPEG + bf16) never share a cache entry; a
    GPU's portable rows are the CPU's, and share them."""
    from transferlab.features import feature_spec

    spec = feature_spec(sface, "faces")
    assert spec["pipeline"].startswith("batched") and "precision" not in spec and "decode" not in spec
    assert feature_spec(create_backbone("sface").to("cuda"), "faces") == spec
    fast = feature_spec(create_backbone("sface").to("cuda").use_recipe("fast"), "faces")
    assert fast["precision"] == "bf16" and fast["decode"] == "nvjpeg"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch sees none on this machine")
def test_on_a_gpu_the_fast_recipe_finds_the_same_faces_with_close_embeddings():
    cpu, gpu = create_backbone("sface"), create_backbone("sface").to("cuda").use_recipe("fast")
    paths = [str(p) for p in SAMPLE[:64]]
    a, b = featurize_faces(paths, cpu), featurize_faces(paths, gpu)
    assert a.errors == b.errors
    for x, y in zip(a.bags, b.bags, strict=True):
        assert x.shape == y.shape
        if len(x):
            np.testing.assert_allclose(x[:, 128:142], y[:, 128:142], atol=2.0)
            assert (x[:, :128] * y[:, :128]).sum(1).min() > 0.99


def test_a_fused_backbone_puts_both_embeddings_side_by_side(sface, tmp_path):
    """sface_dlib: SFace's and dlib's unit embeddings concatenated and scaled to unit length, same boxes."""
    fused = create_backbone("sface_dlib").use_cache_root(tmp_path)
    dlib = create_backbone("dlib_resnet").use_cache_root(tmp_path)
    assert fused.embedding_dim == 256 and fused.row_width("faces") == 256 + 15
    photos = [decode_pixels(p, sface.draft_size) for p in [*EVERY[::97], CROWD]]
    for f, s, d in zip(
        fused.pipeline.faces(photos), sface.pipeline.faces(photos), dlib.pipeline.faces(photos), strict=True
    ):
        assert f.shape == (len(s), 256 + 15)
        np.testing.assert_allclose(f[:, :128] * np.sqrt(2), s[:, :128], atol=1e-6)
        np.testing.assert_allclose(f[:, 128:256] * np.sqrt(2), d[:, :128], atol=1e-6)
        np.testing.assert_array_equal(f[:, 256:], s[:, 128:])
        np.testing.assert_allclose(np.linalg.norm(f[:, :256], axis=1), 1.0, atol=1e-5)
    assert fused.recipe("faces") != dlib.recipe("faces")


@pytest.mark.parametrize(
    ("threads", "photos", "lanes", "batches"), [(16, 200, 16, 16), (2, 812, 2, 34), (2, 10, 1, 1), (2, 16, 2, 2)]
)
def test_face_lanes_take_one_core_each_and_every_lane_gets_work(sface, monkeypatch, threads, photos, lanes, batches):
    """On the CPU faces run one lane per core (one torch thread each, at most 16); with more lanes than full
    batches the batches shrink (to 8 photos at least) so that no core idles."""
    from transferlab.features import face_rows

    seen = {}

    def spy(fn, items, n_lanes, per_lane):
        seen.update(items=list(items), lanes=n_lanes, per_lane=per_lane)
        return iter(())

    monkeypatch.setattr(face_rows.loader, "map_in_lanes", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        list(face_rows._face_batches(sface, [None] * photos, list(range(photos)), None, None, None))
    finally:
        torch.set_num_threads(before)
    assert seen["lanes"] == lanes and seen["per_lane"] == threads // lanes
    assert len(seen["items"]) == batches and seen["items"][-1][1] == photos
    assert max(b - a for a, b in seen["items"]) <= face_rows.CPU_BATCH


def test_greedy_nms_keeps_what_torchvision_keeps():
    """The detector's suppression (written here to spare a cold start torchvision's import) keeps the boxes
    ``torchvision.ops.batched_nms`` keeps, in the same order, for crowded random boxes in several photos."""
    from torchvision.ops import batched_nms

    from transferlab.backbones.face_detect import greedy_nms

    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 60, 400):
        xy = rng.integers(0, 300, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.integers(5, 120, (n, 2))], axis=1).astype(np.float32)
        scores = rng.permutation(n).astype(np.float32) / max(n, 1)  # distinct: ties have no defined order
        groups = rng.integers(0, 4, n)
        for thr in (0.3, 0.5):
            want = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), thr)
            np.testing.assert_array_equal(greedy_nms(boxes, scores, groups, thr), want.numpy())


def test_jpegs_decode_to_the_same_pixels_through_pillow_and_torchvision(sface, monkeypatch):
    """Small jobs (a predict) decode JPEGs with Pillow, large ones with torchvision: the same pixels, every photo."""
    import torchvision.io

    for path in EVERY:
        fast = decode_pixels(path, sface.draft_size)
        assert torch.equal(fast, decode_pixels(path, sface.draft_size, torchvision_jpeg=False)), path

    def refuse(*a, **k):
        raise AssertionError("torchvision's decoder was used")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse)  # the Pillow route really is Pillow's
    assert torch.equal(fast, decode_pixels(EVERY[-1], sface.draft_size, torchvision_jpeg=False))


# What a cold predict with a face model does not need: torchvision and torch._dynamo (~2 s of a cold start), and
# scikit-learn with SciPy and pandas (~1 s): a saved model answers from its arrays (transferlab.fitted).
NOT_FOR_PREDICT = ("torchvision", "torch._dynamo", "sklearn", "scipy", "pandas")


def test_a_cold_face_predict_imports_neither_torchvision_nor_scikit_learn(tmp_path):
    """Predicting one photo with a face model in a fresh process, through the Python API and through the command
    line, loads none of :data:`NOT_FOR_PREDICT`, and still answers."""
    import os
    import subprocess
    import sys

    import transferlab

    photos = copy_subset(tmp_path / "photos", 4)
    model = tmp_path / "model"
    transferlab.train(photos, model, cache_dir=tmp_path / "cache", test_size=0.25)
    show = f"print(sorted(m for m in {NOT_FOR_PREDICT!r} if m in sys.modules))\n"
    api = (
        "import sys, transferlab\n"
        f"clf = transferlab.load({str(model)!r}, use_cache=False)\n"
        f"(p,) = clf.predict_images([{str(EVERY[0])!r}])\n"
        "assert p.error is None and p.label in clf.classes_, p\n"
    )
    cli = (
        "import sys\nfrom transferlab.cli import main\n"
        "try:\n"
        f"    main(['predict', {str(model)!r}, {str(EVERY[0])!r}, '--no-cache', '--json', '--explain'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
    )
    env = {**os.environ, "TRANSFERLAB_CACHE_DIR": str(tmp_path / "cache")}
    for code in (api, cli):
        out = subprocess.run([sys.executable, "-c", code + show], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    assert '"label"' in out.stdout and '"explanation"' in out.stdout  # the command answered, and said why
