"""Face pipeline throughput on CPU beside whole-image MobileNetV2, measured in one run.

    python benchmarks/faces.py [--images 200]

Rows: detection only (YuNet, batched), the one-photo-at-a-time OpenCV path the batched pipeline replaced, detection +
alignment + SFace embedding (batched, lanes), the same with dlib's descriptor and with both fused (`sface_dlib`; worker
processes), and transferlab's
whole-image mobilenet_v2 pipeline on the same files. No cache is used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # benchmarks.face_reference

from benchmarks.face_reference import reference  # noqa: E402
from transferlab._runtime import tune_allocator  # noqa: E402
from transferlab.backbones import create_backbone  # noqa: E402
from transferlab.backbones.faces import FACE_DECODE_DRAFT  # noqa: E402
from transferlab.decode import decode_pixels, read_rgb  # noqa: E402
from transferlab.features import featurize_faces  # noqa: E402
from transferlab.features import featurize_images as featurize  # noqa: E402
from transferlab.intake import intake  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "presidents"))
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    tune_allocator()
    paths = intake(args.data).table.sample(frac=1.0, random_state=0)["path"].tolist()[: args.images]
    n = len(paths)
    print(f"{os.cpu_count()} cores; {n} photos (bundled presidents, shuffled: web photos and face crops)")

    sface, dlib, fused = (create_backbone(b).build() for b in ("sface", "dlib_resnet", "sface_dlib"))
    decoded = [decode_pixels(p, sface.draft_size) for p in paths]
    t = time.perf_counter()
    n_faces = sum(len(d) for k in range(0, n, 24) for d in sface.pipeline.detect(decoded[k : k + 24]))
    detect = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in paths:
        reference(sface).faces(np.asarray(read_rgb(p, draft=FACE_DECODE_DRAFT)))
    opencv = n / (time.perf_counter() - t)

    rows = []
    for name, bb in (("sface", sface), ("dlib_resnet", dlib), ("sface + dlib_resnet (fused)", fused)):
        featurize_faces(paths[:8], bb)  # warm-up
        t = time.perf_counter()
        res = featurize_faces(paths, bb)
        dt = time.perf_counter() - t
        faces = sum(len(f) for f in res.bags if f is not None)
        rows.append((name, n / dt, faces / dt))

    mb = create_backbone("mobilenet_v2")
    featurize(paths[:32], mb)  # warm-up
    t = time.perf_counter()
    featurize(paths, mb)
    whole = n / (time.perf_counter() - t)

    print(f"\n{n_faces} faces in {n} photos ({n_faces / n:.2f} per photo)\n")
    print("| pipeline (CPU, files → features, no cache) | images/s | faces/s | vs mobilenet_v2 |")
    print("|---|---:|---:|---:|")
    per_face = n_faces / n
    print(f"| YuNet detection only (decoded, batches of 24, one stream) | {detect:.1f} | {detect * per_face:.1f} | |")
    before = f"{opencv:.1f} | {opencv * per_face:.1f} | {opencv / whole:.2f}"
    print(f"| before: OpenCV path, one photo at a time, sface | {before} |")
    for name, ips, fps in rows:
        print(f"| batched: detect + align + {name} embed | {ips:.1f} | {fps:.1f} | {ips / whole:.2f} |")
    print(f"| mobilenet_v2 whole image (transferlab pipeline) | {whole:.1f} | — | 1.00 |")


if __name__ == "__main__":
    main()
