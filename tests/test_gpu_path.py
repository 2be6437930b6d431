"""The GPU feature path's pieces, checked on the CPU (the same code runs there on ``device="cpu"``): JPEG bytes
packed per batch, resizes grouped by size, decoding overlapped with the forward pass, the batch size chosen by
speed. On a CUDA GPU, the last test also checks the fast path end to end against the portable one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from transferlab.backbones import create_backbone
from transferlab.features import featurize_images as featurize
from transferlab.features.cuda import (
    RawJpegDataset,
    collate_raw,
    fastest_batch,
    overlapped,
    transform_grouped,
)

from .conftest import PRESIDENTS


def _photos(n: int) -> list[str]:
    return sorted(str(p) for p in (PRESIDENTS / "trump").iterdir())[:n]


def test_a_raw_batch_packs_the_jpegs_bytes_into_one_tensor_and_keeps_the_rest(tmp_path):
    from PIL import Image

    png = tmp_path / "a.png"
    Image.new("RGB", (200, 150), (1, 2, 3)).save(png)
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"not a jpeg at all")
    photos = _photos(3)
    sources = [photos[0], str(png), photos[1], str(broken), photos[2]]
    data = RawJpegDataset(sources, range(len(sources)), lambda img: img, (1 << 16, 1 << 16))
    batch = collate_raw([data[k] for k in range(len(sources))])
    assert [i for i, *_ in batch.jpegs] == [0, 2, 4]
    for (_, raw, _), f in zip(batch.raw(), [photos[0], photos[1], photos[2]], strict=True):
        assert raw.numpy().tobytes() == open(f, "rb").read()  # a view of the one blob, byte for byte
        assert raw.untyped_storage().data_ptr() == batch.blob.untyped_storage().data_ptr()
    assert [i for i, _ in batch.pixels] == [1] and tuple(batch.pixels[0][1].shape) == (3, 150, 200)
    assert [(i, r) for i, r, _ in batch.bad] == [(3, "not an image")]


def test_resizing_a_group_of_equal_sizes_gives_the_same_pixels_as_one_image_at_a_time():
    bb = create_backbone("mobilenet_v2")
    gen = torch.Generator().manual_seed(0)
    sizes = [(480, 640), (480, 640), (300, 200), (480, 640), (300, 200), (123, 457)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in sizes]
    calls: list[tuple[int, ...]] = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return bb.transform(x)

    got = transform_grouped(images, transform)
    assert len(calls) == 3  # one call per size, not per image
    for img, g in zip(images, got, strict=True):
        assert torch.equal(g, bb.transform(img))


def test_overlapped_keeps_order_runs_ahead_in_another_thread_and_passes_errors_on():
    seen: list[str] = []

    def make(k: int) -> tuple[list[int], None, list]:
        seen.append(threading.current_thread().name)
        if k == 5:
            raise ValueError("batch 5 is broken")
        return [k], None, []

    it = overlapped(make, range(8), "cpu")
    assert [next(it)[0] for _ in range(5)] == [[0], [1], [2], [3], [4]]
    with pytest.raises(ValueError, match="batch 5 is broken"):
        next(it)
    assert seen and all(name.startswith("transferlab-decode") for name in seen)


def test_the_batch_size_is_the_smallest_of_the_fastest():
    assert fastest_batch({64: 9000.0, 128: 11900.0, 256: 12100.0, 512: 11000.0}) == 128
    assert fastest_batch({32: 100.0}) == 32
    assert fastest_batch({32: 50.0, 64: 100.0}, within=0.0) == 64


def test_the_overlapped_raw_path_on_the_cpu_gives_the_loader_paths_features(small_photos):
    """Raw bytes → packed batch → decode → grouped resize → forward, overlapped, on the CPU: the loader path's
    features (the raw path decodes at full size, the loader in draft mode: compare directions)."""
    files = sorted(str(p) for p in small_photos.rglob("*.jpg"))[:20]
    bb = create_backbone("mobilenet_v2")
    ref = featurize(files, bb, batch_size=8)
    got = featurize(files, bb, batch_size=8, decode_device="cpu")
    assert ref.ok.all() and got.ok.all()
    a, b = ref.features, got.features
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_the_fast_gpu_path_is_close_to_the_portable_one():
    files = _photos(64)
    portable = featurize(files, create_backbone("mobilenet_v2").to("cuda"))
    fast = featurize(files, create_backbone("mobilenet_v2").to("cuda").use_recipe("fast"))
    a, b = portable.features, fast.features
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95, cos.min()
