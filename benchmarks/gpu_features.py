"""Whole-image features on a GPU: each recipe end to end from JPEG files beside the ceilings of its parts (read,
decode, resize, forward), measured in one run, and CPU ↔ GPU parity on the bundled photos.

    python -m benchmarks --only gpu                          # on a machine with a CUDA GPU (part of the benchmarks)
    python benchmarks/gpu_features.py --device cpu --images 96   # the same code on the CPU: a smoke run, not figures

Rows per registered whole-image backbone (pretrained weights when installed, else random ones: speed only):
- forward-only on uint8 batches already on the device, bf16 (fast recipe) and fp32 without TF32 (portable);
- fast recipe: files → nvJPEG batched decode → grouped resize → bf16 forward, overlapped, against
  min(forward-only, decode-only), target ≥ 0.75 (and ResNet-50 ≥ 10,000 img/s);
- portable recipe: files decoded by CPU workers (libjpeg-turbo) → fp32 forward, against min(forward-only, CPU
  decode-only).
Parity: a logistic-regression head fitted on one device's features answers the same given the other device's
default (portable) features, both ways, on the 812 bundled photos (target ≥ 99.8 %); the fast recipe beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

Row = Callable[..., None]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, reps: int = 2) -> float:
    """Best wall time of ``reps`` calls (after the device finished)."""
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _backbone(name: str, device: str, recipe: str):
    from transferlab.backbones import ImageBackbone, create_backbone, get_backbone_cfg
    from transferlab.errors import TransferlabError

    try:
        bb = create_backbone(name).to(device).use_recipe(recipe).build()
        return bb, "pretrained"
    except TransferlabError:
        bb = ImageBackbone.with_random_weights(get_backbone_cfg(name)).to(device).use_recipe(recipe)
        return bb, "random weights"


def _read_all(files: list[str]) -> list:
    import torch

    return [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files]


def ceilings(files: list[str], device: str, workers: int, row: Row) -> dict[str, float]:
    """Files read, decoded (device decoder, batch 256), resized (stacked groups) and CPU-decoded (workers)."""
    import torch
    from torchvision.io import decode_jpeg

    from transferlab.backbones import create_backbone
    from transferlab.features import loader
    from transferlab.features.cuda import transform_grouped

    n = len(files)
    read = n / _timed(lambda: _read_all(files), "cpu", 1)
    raw = _read_all(files)
    decoded: list = []

    def decode() -> None:
        decoded.clear()
        for i in range(0, n, 256):
            decoded.extend(decode_jpeg(raw[i : i + 256], device=device))

    def resize() -> None:
        for i in range(0, n, 256):
            transform_grouped(decoded[i : i + 256], bb.transform)

    decode()  # warm-up
    dec = n / _timed(decode, device)
    bb = create_backbone("mobilenet_v2").to(device)
    resized = n / _timed(resize, device)
    dataset = loader.ImageDataset(files, range(n), bb.transform, bb.draft_size)
    data = torch.utils.data.DataLoader(
        dataset, batch_size=256, num_workers=workers, collate_fn=loader.collate, prefetch_factor=4 if workers else None
    )
    cpu_dec = n / _timed(lambda: list(data), "cpu", 1)
    row("gpu", f"read {n} JPEG files (640×480), one thread", f"{read:.0f} files/s")
    row("gpu", f"decode only, {device} decoder (nvJPEG on a GPU), batch 256", f"{dec:.0f} img/s")
    row("gpu", "resize + centre-crop only, stacked groups, on the device", f"{resized:.0f} img/s")
    row("gpu", f"CPU decode + resize only, {workers} loader workers (libjpeg-turbo)", f"{cpu_dec:.0f} img/s")
    return {"read": read, "decode": dec, "resize": resized, "cpu_decode": cpu_dec}


def one_recipe(name: str, recipe: str, files: list[str], device: str, workers: int, ceil: dict[str, float], row: Row):
    """Forward-only and end to end for one backbone and recipe."""
    import torch

    from transferlab.features import featurize_images as featurize
    from transferlab.features.cuda import auto_batch_size

    bb, kind = _backbone(name, device, recipe)
    batch = auto_batch_size(bb) if device.startswith("cuda") else 32
    size = bb.cfg.input_size
    x = torch.randint(0, 256, (4 * batch, size[1], size[2], 3), dtype=torch.uint8, device=device)

    def forward() -> None:
        for i in range(0, len(x), batch):
            bb.forward(x[i : i + batch])

    bb.forward(x[:batch])
    fwd = len(x) / _timed(forward, device)
    fast = recipe == "fast"
    # fast: nvJPEG on a GPU (torchvision's CPU decoder in a smoke run on the CPU); portable: CPU loader workers
    decode_device = device if fast else "loader"
    limit = min(fwd, ceil["decode"] if fast else ceil["cpu_decode"])

    def run(some: list[str]) -> None:
        featurize(some, bb, batch_size=batch, decode_device=decode_device, num_workers=workers)

    run(files[: 2 * batch])  # warm-up: decoder, cuDNN kernels for the shapes
    e2e = len(files) / _timed(lambda: run(files), device)
    row("gpu", f"{name} ({kind}) forward-only, {bb.precision}, batch {batch}", f"{fwd:.0f} img/s", "1.00")
    target = ", target ≥ 0.75" + (" and ≥ 10,000 img/s" if name == "resnet50" else "") if fast else ""
    parts = "decode-only" if fast else "CPU decode-only"
    row(
        "gpu",
        f"{name} JPEG files → features, {recipe}",
        f"{e2e:.0f} img/s",
        f"{e2e / limit:.2f} × min(forward, {parts}){target}",
    )


def parity(device: str, row: Row) -> None:
    """Heads fitted on one device's features, answering from the other's, on the bundled photos."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from transferlab.backbones import create_backbone
    from transferlab.features import featurize_images as featurize

    manifest = pd.read_csv(REPO / "data" / "presidents" / "manifest.csv")
    files = [str(REPO / "data" / "presidents" / f) for f in manifest["file"]]
    y = manifest["label"].to_numpy()
    made = {
        "cpu": featurize(files, create_backbone("mobilenet_v2")),
        "portable": featurize(files, create_backbone("mobilenet_v2").to(device)),
    }
    if device.startswith("cuda"):
        made["fast"] = featurize(files, create_backbone("mobilenet_v2").to(device).use_recipe("fast"))
    for other in [k for k in made if k != "cpu"]:
        a, b = made["cpu"], made[other]
        ok = a.ok & b.ok
        fa = LogisticRegression(max_iter=3000).fit(a.features[ok], y[ok])
        fb = LogisticRegression(max_iter=3000).fit(b.features[ok], y[ok])
        there = float((fa.predict(a.features[ok]) == fa.predict(b.features[ok])).mean())
        back = float((fb.predict(b.features[ok]) == fb.predict(a.features[ok])).mean())
        cos = (a.features[ok] * b.features[ok]).sum(1)
        cos /= np.linalg.norm(a.features[ok], axis=1) * np.linalg.norm(b.features[ok], axis=1)
        goal = ", target ≥ 0.998" if other == "portable" else " (speed chosen over parity)"
        row(
            "gpu",
            f"parity mobilenet_v2, CPU ↔ {device} {other} recipe, {int(ok.sum())} bundled photos",
            f"{there:.4f} / {back:.4f}",
            f"same answers CPU-fitted head / {other}-fitted head; feature cosine ≥ {cos.min():.4f}{goal}",
        )


def jpeg_folder(folder: Path, n: int) -> list[str]:
    """``n`` distinct 640×480 JPEGs made from the bundled photos (flips, crops, brightness)."""
    from PIL import Image, ImageOps

    src = sorted(str(p) for p in (REPO / "data" / "presidents").rglob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        img = Image.open(src[k % len(src)]).convert("RGB")
        variant = k // len(src)
        if variant % 2:
            img = ImageOps.mirror(img)
        w, h = img.size
        c = 0.04 * (variant // 2)
        img = img.crop((int(c * w), int(c * h), w - int(c * w), h - int(c * h))).resize((640, 480))
        p = folder / f"{k:05d}.jpg"
        img.save(p, quality=90)
        out.append(str(p))
    return out


def section(n: int, device: str, row: Row, backbones: list[str] | None = None) -> None:
    """Every row of this module."""
    from transferlab.backbones import get_backbone_cfg, list_backbones

    names = backbones or [b for b in list_backbones() if get_backbone_cfg(b).kind != "faces"]
    workers = max(1, (os.cpu_count() or 1) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        files = jpeg_folder(Path(tmp) / "jpegs", n)
        ceil = ceilings(files, device, workers, row)
        for name in names:
            for recipe in ("fast", "portable"):
                one_recipe(name, recipe, files, device, workers, ceil, row)
    parity(device, row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--backbones", default=None, help="comma-separated (default: every whole-image backbone)")
    args = ap.parse_args()
    rows: list[tuple[str, ...]] = []

    def row(*cells: str) -> None:
        rows.append(cells)
        print(" | ".join(cells), flush=True)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRANSFERLAB_CACHE_DIR"] = cache
        section(args.images, args.device, row, args.backbones.split(",") if args.backbones else None)
    print("\n| section | measurement | value | ratio |\n|---|---|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + (" |" if len(r) == 4 else " | |"))


if __name__ == "__main__":
    main()
