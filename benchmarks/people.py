"""People as data, timed as a person runs them (issue 26): a cold `transferlab train` of the bundled-data face model
from an empty cache, then `transferlab enroll` of 20 photos, `transferlab forget` of a photo and of a person, each a
fresh process on the same machine in the same run; and whether the enrolment left other people's answers alone.

    python benchmarks/people.py [--backbone sface] [--n 20]

The 20 photos are web photos of Clinton held out of the training folder (the bundled data has no fifth person).
First they make a known person better known (the model trained on all four); then they add a new person to a model
trained without Clinton, and the rest of Clinton's photos say how well 20 photos teach the model someone new.
Targets: enrol ÷ cold train ≤ 0.25; answers for held-out photos of the other people ≥ 99.5 % identical before and
after.
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
        train_cmd = [*cli, "train", str(train_dir), "--out", str(model), "--backbone", args.backbone, "-q"]
        train_s, _ = _timed(train_cmd, env)
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
        # a new person: a model trained without Clinton, then her 20 photos enrolled
        three, new_model, newly = tmp / "three", tmp / "three_model", tmp / "three_enrolled"
        for f in manifest["file"]:
            if not f.startswith("clinton/"):
                (three / f).parent.mkdir(parents=True, exist_ok=True)
                (three / f).symlink_to(DATA / f)
        _timed([*cli, "train", str(three), "--out", str(new_model), "--backbone", args.backbone, "-q"], env)
        new_s, _ = _timed([*cli, "enroll", str(new_model), "clinton", str(new_dir), "--out", str(newly), "-q"], env)
        split3 = pd.read_csv(new_model / "split.csv")
        others3 = split3[split3["side"] == "test"]["path"].tolist()
        rest = [str(DATA / f) for f in manifest["file"] if f.startswith("clinton/") and f not in held]
        got = []
        for m, photos in ((new_model, others3), (newly, others3), (newly, rest)):
            _, out = _timed([*cli, "predict", str(m), *photos, "--json", "-q"], env)
            got.append([json.loads(line).get("label") for line in out.splitlines()])
        same3 = sum(a == b for a, b in zip(got[0], got[1], strict=True)) / len(others3)
        changed = [
            f"{Path(p).parent.name}/{Path(p).name}: {a} → {b}"
            for p, a, b in zip(others3, *got[:2], strict=True)
            if a != b
        ]
        learnt = sum(a == "clinton" for a in got[2]) / len(rest)
        unknown = sum(a == "unknown" for a in got[2]) / len(rest)
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
    print(
        f"\nknown person, {args.n} more photos: other people's held-out answers identical {same:.1%} of "
        f"{len(others)}; unknown threshold {enrol['unknown_threshold_before']} → {enrol['unknown_threshold_after']}"
    )
    print(
        f"new person (model trained without Clinton, {args.n} photos enrolled in {new_s:.1f} s): the other people's "
        f"held-out answers identical {same3:.1%} of {len(others3)}; Clinton's other {len(rest)} photos answered "
        f"clinton {learnt:.1%}, unknown {unknown:.1%}"
    )
    for line in changed:
        print(f"  changed: {line}")


if __name__ == "__main__":
    main()
