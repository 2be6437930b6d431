"""People as data, timed as a person runs them (issue 26): a cold `transferlab train` of the bundled-data face model
from an empty cache, then `transferlab enroll` of 20 photos, `transferlab forget` of a photo and of a person, each a
fresh process on the same machine in the same run; and whether the enrolment left other people's answers alone.

    python benchmarks/people.py [--backbone sface] [--n 20]

The 20 photos are web photos of Clinton held out of the training folder (the bundled data has no fifth person):
they make a known person better known, the case an enrolment most often is. Targets: enrol ÷ cold train ≤ 0.25;
answers for held-out photos of the other people ≥ 99.5 % identical before and after.
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

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "presidents"


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--n", type=int, default=20, help="photos to enrol")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "transferlab"]
    manifest = pd.read_csv(DATA / "manifest.csv")
    held = manifest[(manifest["label"] == "clinton") & (manifest["kind"] == "web-photo")].sort_values("file")
    held = held["file"].tail(args.n).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dir, new_dir, cache = tmp / "train", tmp / "new" / "clinton", tmp / "cache"
        new_dir.mkdir(parents=True)
        for f in manifest["file"]:
            dest = (new_dir / Path(f).name) if f in held else (train_dir / f)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(DATA / f)
        model, enrolled = tmp / "model", tmp / "enrolled"
        env["TRANSFERLAB_CACHE_DIR"] = str(cache)
        train_s, _ = _timed([*cli, "train", str(train_dir), "--out", str(model), "--backbone", args.backbone, "-q"], env)
        enrol_s, out = _timed(
            [*cli, "enroll", str(model), "clinton", str(new_dir), "--out", str(enrolled), "--json", "-q"], env
        )
        enrol = json.loads(out)
        # the other people's held-out photos (train's test side), answered by the model before and after
        split = pd.read_csv(model / "split.csv")
        others = split[(split["side"] == "test") & (split["label"] != "clinton")]["path"].tolist()
        answers = []
        for m in (model, enrolled):
            _, out = _timed([*cli, "predict", str(m), *others, "--json", "-q"], env)
            answers.append([json.loads(line).get("label") for line in out.splitlines()])
        same = sum(a == b for a, b in zip(*answers, strict=True)) / len(others)
        one = str(train_dir / "obama" / sorted(os.listdir(train_dir / "obama"))[0])
        photo_s, _ = _timed([*cli, "forget", str(enrolled), "--photo", one, "--json", "-q"], env)
        person_s, out = _timed([*cli, "forget", str(enrolled), "clinton", "--json", "-q"], env)
        forgot = json.loads(out)
    print(f"{os.cpu_count()} cores, backbone {args.backbone}, {args.n} photos enrolled\n")
    print("| command (fresh process) | seconds | ÷ cold train |\n|---|---:|---:|")
    for what, s in (
        ("`train` of the bundled data, empty cache", train_s),
        (f"`enroll` {enrol['added']} photos (features + refit {enrol['seconds']:.1f} s)", enrol_s),
        ("`forget --photo` (refit + cache purge)", photo_s),
        (f"`forget` a person ({forgot['removed_photos']} photos)", person_s),
    ):
        print(f"| {what} | {s:.1f} | {s / train_s:.2f} |")
    print(f"\nother people's held-out answers identical after the enrolment: {same:.1%} of {len(others)}")
    print(f"unknown threshold {enrol['unknown_threshold_before']} → {enrol['unknown_threshold_after']}")


if __name__ == "__main__":
    main()
