"""What a person waits for when they run one command: a cold `transferlab predict` of one photo against a bare
`python -c "import torch"`, and `transferlab --help`, measured side by side in one run (issue 25).

    python benchmarks/startup.py [--model runs/presidents] [--rounds 5]

Each round runs, in fresh processes and alternating so a busy machine slows them alike: the bare torch import, a
predict of one bundled photo with ``--no-cache`` (its features computed: the face networks' converted graphs are kept
in the user cache from the model's training, as on any machine that trained or served once), and ``--help``. The
medians and the predict ÷ torch ratio are printed (target ≤ 1.6). Without ``--model`` a model is trained first on the
bundled photos into a temporary folder (not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def measure(model: str | None = None, rounds: int = 5) -> dict[str, float]:
    """Median seconds of each command over ``rounds`` alternating rounds (a model trained first when None)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "transferlab"]
    photo = str(sorted((REPO / "data" / "presidents" / "obama").glob("*.jpg"))[7])
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            model = str(Path(tmp) / "model")
            subprocess.run(
                [*cli, "train", str(REPO / "data" / "presidents"), "--out", model, "-q", "--per-class", "20"],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
        rows: dict[str, list[float]] = {TORCH: [], PREDICT: [], HELP: []}
        for _ in range(rounds):
            rows[TORCH].append(_timed([sys.executable, "-c", "import torch"], env))
            rows[PREDICT].append(_timed([*cli, "predict", model, photo, "--no-cache", "-q"], env))
            rows[HELP].append(_timed([*cli, "--help"], env))
    return {k: statistics.median(v) for k, v in rows.items()}


TORCH, PREDICT, HELP = "python -c 'import torch'", "transferlab predict (cold)", "--help"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a trained model folder (default: train one on the bundled photos)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    med = measure(args.model, args.rounds)
    print(f"{os.cpu_count()} cores, {args.rounds} rounds (median seconds)\n")
    print("| command | median s | ÷ import torch |\n|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / med[TORCH]:.2f} |")


if __name__ == "__main__":
    main()
