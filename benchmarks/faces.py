"""Face pipeline throughput on CPU beside whole-image MobileNetV2, measured in one run.

    python benchmarks/faces.py [--images 200]

Rows: detection only (YuNet), detection + alignment + SFace embedding, the same with dlib's descriptor, and
transferlab's whole-image mobilenet_v2 pipeline on the same files. No cache is used.
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

from transferlab._runtime import tune_allocator  # noqa: E402
from transferlab.backbones import create_backbone  # noqa: E402
from transferlab.backbones.faces import FACE_DECODE_DRAFT  # noqa: E402
from transferlab.decode import read_rgb  # noqa: E402
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

    sface, dlib = create_backbone("sface"), create_backbone("dlib_resnet")
    detector = sface.module.detector
    _ = dlib.module
    rgbs = [np.asarray(read_rgb(p, draft=FACE_DECODE_DRAFT)) for p in paths]
    t = time.perf_counter()
    n_faces = sum(len(detector.detect(x)) for x in rgbs)
    detect = n / (time.perf_counter() - t)

    rows = []
    for name, bb in (("sface", sface), ("dlib_resnet", dlib)):
        t = time.perf_counter()
        res = featurize_faces(paths, bb)
        dt = time.perf_counter() - t
        faces = sum(len(f) for f in res.faces if f is not None)
        rows.append((name, n / dt, faces / dt))

    mb = create_backbone("mobilenet_v2")
    featurize(paths[:32], mb)  # warm-up
    t = time.perf_counter()
    featurize(paths, mb)
    whole = n / (time.perf_counter() - t)

    print(f"\n{n_faces} faces in {n} photos ({n_faces / n:.2f} per photo)\n")
    print("| pipeline (CPU, files → features, no cache) | images/s | faces/s | vs mobilenet_v2 |")
    print("|---|---:|---:|---:|")
    print(f"| YuNet detection only (decoded images) | {detect:.1f} | {detect * n_faces / n:.1f} | |")
    for name, ips, fps in rows:
        print(f"| detect + align + {name} embed | {ips:.1f} | {fps:.1f} | {ips / whole:.2f} |")
    print(f"| mobilenet_v2 whole image (transferlab pipeline) | {whole:.1f} | — | 1.00 |")


if __name__ == "__main__":
    main()
