"""How long does a face lane hold Python's interpreter lock (GIL) per photo? The question behind ``--workers N`` for
face backbones: lanes are threads in one process, and many cores may contend for the lock they share.

    python benchmarks/face_gil.py [--photos 120]

One lane (one torch thread) featurizes the bundled photos while a pure-Python counter thread runs beside it on the
other core. The counter advances only while it holds the lock, so the share of its solo rate it loses is the share
of time the lane held the lock; times the lane's time per photo, that is the lock time per photo. (The lane itself
slows down beside the counter, because it must win the lock back after every native call; that is the cost many
lanes would pay each other.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from benchmarks.__main__ import _photos  # noqa: E402
from transferlab._runtime import tune_allocator  # noqa: E402


def _count(stop: threading.Event, out: list[int]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
    out.append(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=120)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    import torch

    from transferlab.backbones import create_backbone
    from transferlab.features import featurize_faces

    tune_allocator()
    sys.setswitchinterval(0.0005)
    torch.set_num_threads(1)
    paths = _photos(args.photos)
    bb = create_backbone("sface")
    featurize_faces(paths, bb, lanes=1)  # warm-up: networks built, oneDNN kernels made for every batch shape
    holds = []
    for _ in range(args.trials):
        before = _counter_rate(None)
        t = time.perf_counter()
        beside = _counter_rate(lambda: featurize_faces(paths, bb, lanes=1))
        per_photo = (time.perf_counter() - t) / len(paths)
        after = _counter_rate(None)
        free = beside / ((before + after) / 2)  # the counter's solo rate drifts with other tenants' load
        holds.append((1 - free) * per_photo * 1000)
        print(
            f"  the counter kept {free:.2f} of its solo rate beside the lane ({per_photo * 1000:.1f} ms a photo "
            f"there): the lane holds the GIL ~{holds[-1]:.1f} ms a photo"
        )
    t = time.perf_counter()
    featurize_faces(paths, bb, lanes=1)
    solo = (time.perf_counter() - t) / len(paths)
    print(
        f"median over {args.trials} trials: ~{statistics.median(holds):.1f} ms of the GIL a photo, of "
        f"{solo * 1000:.1f} ms a photo for the lane alone"
    )


def _counter_rate(work) -> float:
    """Increments per second of the counter thread, alone for 2 s (``work`` None) or while ``work()`` runs."""
    stop, out = threading.Event(), []
    counter = threading.Thread(target=_count, args=(stop, out))
    t = time.perf_counter()
    counter.start()
    if work is None:
        time.sleep(2.0)
    else:
        work()
    stop.set()
    counter.join()
    return out[0] / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
