"""Peak memory (RSS) of intake + featurize over a folder of generated images: it must not grow with the folder.

    python benchmarks/memory.py [--images 5000] [--checkpoints 1000,2500] [--backbone mobilenet_v2] [--threads N]
                                [--json]

Generates N distinct small JPEGs (64×64 noise over gradients, ~3 KB each) in a temporary folder, then runs intake
and featurize (no feature cache) in a fresh child process and reads its peak RSS (``resource.getrusage``) after
intake, at each checkpoint (images featurized) and at the end. Streaming means the peak reached after the first
checkpoint stays flat: only a batch of decoded images is alive at any time; what grows is the output itself
(N × 1280 float32 features, 5 KB per image, allocated up front) and the table of paths.

On 2 cores featurize runs two batches side by side (lanes), each with its own activations; the peak is reached
when both lanes' largest layers happen to coincide, which can take a few hundred images. With ``--threads 1``
there is one lane and the peak is reached in the first batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from transferlab.backbones import create_backbone
from transferlab.features import featurize_images as featurize
from transferlab.intake import intake

root, checkpoints, backbone = sys.argv[1], [int(x) for x in sys.argv[2].split(",") if x], sys.argv[3]
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
marks = {"start": rss_mb()}
if int(sys.argv[4]):
    import torch
    torch.set_num_threads(int(sys.argv[4]))
bb = create_backbone(backbone)
bb.build()
marks["backbone built"] = rss_mb()
t = time.perf_counter()
got = intake(root)
marks["after intake"] = rss_mb()
intake_s = time.perf_counter() - t
done = 0
def progress(n):
    global done
    done += n
    for c in checkpoints:
        if done - n < c <= done:
            marks[f"{c} featurized"] = rss_mb()
t = time.perf_counter()
res = featurize(got.table["path"].tolist(), bb, content_hashes=got.table["content_hash"].tolist(), cache=None,
                progress=progress)
marks[f"{len(got.table)} featurized (end)"] = rss_mb()
print(json.dumps({"images": len(got.table), "failed": len(res.errors), "peak_rss_mb": marks,
                  "intake_s": intake_s, "featurize_s": time.perf_counter() - t}))
"""


def make_images(folder: Path, n: int, classes: int = 4) -> None:
    """Write ``n`` distinct 64×64 JPEGs into ``classes`` class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(n):
        d = folder / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        base = (xx * (i % 7 + 1) + yy * (i % 5 + 1) + i) % 256
        arr = np.stack([base, np.roll(base, i % 64, 0), 255 - base], axis=-1) + rng.integers(-40, 40, (64, 64, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"img{i:06d}.jpg", quality=85)


def measure(n: int, checkpoints: list[int], backbone: str = "mobilenet_v2", threads: int = 0) -> dict:
    """Generate ``n`` images and measure the child's peak RSS (MB) at each stage (``threads``: torch threads in
    the child, 0 for the default)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_images(folder, n)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.setdefault("HF_HUB_OFFLINE", "1")
        cp = ",".join(str(c) for c in checkpoints)
        # Started through a small intermediate Python: Linux carries the parent's peak RSS into a child's
        # ru_maxrss across fork/vfork + exec, so a child of a large process (e.g. pytest after many tests) would
        # report the parent's peak. The intermediate is small, so its child's figure is the child's own.
        launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
        proc = subprocess.run(
            [sys.executable, "-c", launcher, sys.executable, "-c", CHILD, str(folder), cp, backbone, str(threads)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--checkpoints", default="1000,2500")
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the child (default: all cores)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    out = measure(args.images, [int(c) for c in args.checkpoints.split(",") if c], args.backbone, args.threads)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['images']} generated 64×64 JPEGs, {args.backbone}, no cache ({os.cpu_count()} cores)")
    for stage, mb in out["peak_rss_mb"].items():
        print(f"  peak RSS {stage:<26} {mb:8.0f} MB")
    print(
        f"  intake {out['intake_s']:.1f} s, featurize {out['featurize_s']:.1f} s "
        f"({out['images'] / out['featurize_s']:.0f} img/s); total with generation {time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
