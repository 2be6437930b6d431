"""Featurization throughput, measured side by side in one run on one machine (CPU by default).

    python benchmarks/featurize.py [--backbone mobilenet_v2] [--images N] [--seed-images N]

Prints img/s for:
  forward-only   the backbone on pre-decoded, pre-processed tensors (the ceiling for this machine)
  pipeline       transferlab's featurize(): files → decode (worker process) → preprocess → forward, no cache
  naive loop     open, preprocess, forward, one image at a time (what a first script does)
  glibc default  forward-only with glibc's default allocator settings (what tune_allocator() avoids)
and the seed's protocol (every training image through the frozen network every epoch, 30 epochs, then the head)
against transferlab's (featurize once, then 30 head epochs on cached features), on the same images.
Ratios are what matter: machines are shared and noisy, so compare only figures from the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from transferlab._runtime import tune_allocator  # noqa: E402
from transferlab.backbones import create_backbone  # noqa: E402
from transferlab.decode import decode_pixels  # noqa: E402
from transferlab.features import default_num_workers  # noqa: E402
from transferlab.features import featurize_images as featurize  # noqa: E402
from transferlab.heads import MLPHead  # noqa: E402
from transferlab.intake import intake  # noqa: E402


def _glibc_default() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-4, 65536)  # M_MMAP_MAX default
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD default
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD default


def forward_only(bb, tensors: torch.Tensor, batch: int) -> float:
    bb.forward(tensors[:batch])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(tensors), batch):
        bb.forward(tensors[i : i + batch])
    return len(tensors) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "presidents"))
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--images", type=int, default=400, help="images for the throughput rows")
    ap.add_argument("--naive-images", type=int, default=200)
    ap.add_argument("--seed-images", type=int, default=100, help="training images for the protocol comparison")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of the throughput rows (median)")
    args = ap.parse_args()

    tune_allocator()
    table = intake(args.data).table.sample(frac=1.0, random_state=0).head(args.images)
    paths = table["path"].tolist()
    bb = create_backbone(args.backbone)
    bb.build()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; backbone {args.backbone} "
        f"(conv+BN fused: {type(bb.module).__name__ == 'GraphModule'}); "
        f"{len(paths)} photos"
    )

    tensors = torch.stack([bb.transform(decode_pixels(p, bb.draft_size)) for p in paths])
    featurize(paths[: args.batch], bb, batch_size=args.batch, num_workers=1)  # warm-up (oneDNN kernels, fork)
    # Interleave the repetitions so that load from other tenants hits every row alike; report medians.
    runs: dict[str, list[float]] = {"ceiling": [], "pipeline": [], "worker": []}
    for _rep in range(args.reps):
        runs["ceiling"].append(forward_only(bb, tensors, args.batch))
        t = time.perf_counter()
        featurize(paths, bb, batch_size=args.batch)
        runs["pipeline"].append(len(paths) / (time.perf_counter() - t))
        t = time.perf_counter()
        featurize(paths, bb, batch_size=args.batch, num_workers=1)
        runs["worker"].append(len(paths) / (time.perf_counter() - t))
    ceiling, pipeline, worker = (float(np.median(runs[k])) for k in ("ceiling", "pipeline", "worker"))
    print("per repetition (img/s): " + "; ".join(f"{k} " + ", ".join(f"{v:.0f}" for v in vs) for k, vs in runs.items()))

    naive_paths = paths[: args.naive_images]
    t = time.perf_counter()
    for p in naive_paths:
        from PIL import Image

        img = Image.open(p).convert("RGB")
        bb.forward(bb.transform(torch.from_numpy(np.array(img)).permute(2, 0, 1)).unsqueeze(0))
    naive = len(naive_paths) / (time.perf_counter() - t)

    # The seed's protocol vs featurize-once, on the same training images and epochs.
    seed_paths = paths[: args.seed_images]
    labels = np.asarray(table["label"].tolist()[: args.seed_images])
    head = MLPHead(epochs=1)
    t = time.perf_counter()
    for _epoch in range(args.epochs):
        feats = featurize(seed_paths, bb, batch_size=args.batch).features  # every image, every epoch
        head.fit(feats, labels)  # one epoch of head training on this epoch's features
    seed_protocol = time.perf_counter() - t
    t = time.perf_counter()
    feats = featurize(seed_paths, bb, batch_size=args.batch).features
    MLPHead(epochs=args.epochs).fit(feats, labels)
    once = time.perf_counter() - t

    _glibc_default()
    default_alloc = forward_only(bb, tensors, args.batch)
    tune_allocator.__globals__["_ALLOCATOR_TUNED"] = False
    tune_allocator()

    print()
    print(f"| measurement ({args.backbone}, CPU) | img/s | ratio to forward-only |")
    print("|---|---:|---:|")
    print(f"| forward-only on pre-decoded tensors (ceiling) | {ceiling:.1f} | 1.00 |")
    print(
        f"| transferlab pipeline (files → features), {default_num_workers()} decode workers (default here) "
        f"| {pipeline:.1f} | {pipeline / ceiling:.2f} |"
    )
    print(f"| transferlab pipeline, 1 DataLoader decode worker | {worker:.1f} | {worker / ceiling:.2f} |")
    print(f"| naive per-image loop | {naive:.1f} | {naive / ceiling:.2f} |")
    print(f"| forward-only, glibc default allocator | {default_alloc:.1f} | {default_alloc / ceiling:.2f} |")
    print()
    print(f"| protocol ({args.seed_images} training images, {args.epochs} epochs) | seconds | speed-up |")
    print("|---|---:|---:|")
    print(f"| seed: every image through the frozen network every epoch | {seed_protocol:.1f} | 1.0 |")
    print(f"| transferlab: featurize once + {args.epochs} head epochs | {once:.1f} | {seed_protocol / once:.1f}× |")
    print()
    target = 0.75
    print(f"pipeline / forward-only = {pipeline / ceiling:.2f} (target ≥ {target})")


if __name__ == "__main__":
    main()
