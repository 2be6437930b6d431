"""Crash safety: SIGKILL `transferlab train` and `transferlab study` at random moments, over and over.

A kill moment is drawn from an uninterrupted run's progress (what it had kept on disk, and the seconds since), so
kills fall across start-up, featurizing, fitting and writing on a fast machine and a loaded one alike.
After every kill the files on disk are checked the way a rerun reads them (nothing half-written may be read:
cache entries verify their checksums, model.json/metrics.json/runs.csv parse, plots open), the next run resumes
from whatever was left, and at the end of each chain a run completes and its artifacts equal an uninterrupted
run's.

Each command runs in a process forked from a forkserver that imported torch, timm and transferlab once (without
running anything, so forking is safe): a kill costs the work done, not ~3 s of imports. The child runs the real
command line (`transferlab.cli.main` with its argv), exactly as the console script does.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferlab.artifact import load_artifact
from transferlab.cache import FeatureCache

from .conftest import copy_subset

TRAIN_CHAINS, TRAIN_KILLS_PER_CHAIN = 2, 6  # 12 kills of train (featurize, head, report, model writing)
STUDY_CHAINS, STUDY_KILLS_PER_CHAIN = 2, 4  # 8 kills of study
PRELOAD = [
    "torch",
    "timm",
    "sklearn.linear_model",
    "pandas",
    "scipy.stats",
    "imagehash",
    "matplotlib.pyplot",  # the report's plots: ~0.5 s a run otherwise, in each of ~40 runs
    "transferlab.cli",
    "transferlab.api",
    "transferlab.study",
    "transferlab.study_report",
    "transferlab.report",
    "transferlab.features",
    "transferlab.backbones",
    "transferlab.heads",
    "tests._kill_child",
]

STUDY_TOML = """
name = "kill"
data = "photos"
test_size = 0.4
seeds = 2
[table1]
backbones = ["mobilenet_v2"]
heads = ["logreg"]
[table2]
backbone = "mobilenet_v2"
head = "logreg"
per_class = [1, 2]
augment = [false]
"""


@pytest.fixture(scope="module")
def forkserver():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


Progress = tuple[int, int, int, int]


def _progress(out: Path, cache: Path) -> Progress:
    """What a run has kept so far, as a rerun would find it: (cache entries, model written, study lines logged,
    files in the output folder)."""
    entries = sum(1 for p in cache.rglob("*.npy") if not p.name.startswith(".tmp-")) if cache.exists() else 0
    runs = (out / "runs.csv").read_bytes().count(b"\n") if (out / "runs.csv").exists() else 0
    files = sum(1 for p in out.iterdir() if not p.name.startswith(".tmp-")) if out.exists() else 0
    return entries, int((out / "model.json").exists()), runs, files


def _reached(now: Progress, target: Progress) -> bool:
    return all(a >= b for a, b in zip(now, target, strict=True))


def _run(
    ctx, argv: list[str], watch: tuple[Path, Path], kill_at: tuple[Progress, float] | None = None
) -> tuple[int | None, list[tuple[float, Progress]], float]:
    """Run the CLI with ``argv`` in a forked child, watching what it keeps in ``watch`` (its output and cache).

    ``kill_at=(progress, after)``: SIGKILL the child ``after`` seconds once it has kept at least ``progress`` (see
    `_progress`); a run resuming past that point is killed ``after`` seconds from its start. Returns the exit code
    (None when killed), the progress seen over time (each change once) and the seconds the run took.
    """
    from ._kill_child import run_cli

    p = ctx.Process(target=run_cli, args=(argv,))
    t0 = time.monotonic()
    p.start()
    trace = [(0.0, _progress(*watch))]
    deadline = None
    while p.is_alive():
        now = _progress(*watch)
        if now != trace[-1][1]:
            trace.append((time.monotonic() - t0, now))
        if kill_at is not None and deadline is None and _reached(now, kill_at[0]):
            deadline = time.monotonic() + kill_at[1]
        if deadline is not None and time.monotonic() >= deadline:
            p.kill()  # SIGKILL
            p.join()
            return None, trace, time.monotonic() - t0
        p.join(0.02)  # a look every 20 ms: finer cost the test process ~5 s of CPU in the suite
    return p.exitcode, trace, time.monotonic() - t0


def _check_nothing_half_written(out: Path, cache: Path, spaces: list[FeatureCache]) -> dict[str, int]:
    """Read everything a rerun would read; fail on anything damaged. Returns what was on disk."""
    n_entries = 0
    for space in spaces:
        for p in space.dir.rglob("*.npy"):
            if p.name.startswith(".tmp-"):
                continue  # an unfinished write: never read (entries are found by exact name only)
            n_entries += 1
            assert space.get(p.stem) is not None, f"{p}: a damaged entry was left behind"
        assert space.damaged == 0
    if (out / "model.json").exists():
        load_artifact(out)  # validates model.json and reads head.safetensors
    for name in ("metrics.json", "intake.json", "facts.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())
    if (out / "split.csv").exists():
        pd.read_csv(out / "split.csv")
    for png in out.glob("*.png"):
        if not png.name.startswith(".tmp-"):  # pathlib's glob matches hidden names: a write killed before its rename
            Image.open(png).verify()
    n_runs = 0
    if (out / "runs.csv").exists():
        from transferlab.study import RunLog

        n_runs = len(RunLog(out / "runs.csv").done)
    return {"entries": n_entries, "model": int((out / "model.json").exists()), "runs": n_runs}


def _spaces(cache: Path) -> list[FeatureCache]:
    root = cache / "features"
    if not root.exists():
        return []
    return [FeatureCache(cache, json.loads((d / "space.json").read_text())) for d in root.iterdir()]


def _assert_train_equal(a: Path, b: Path) -> None:
    ma, arrays_a = load_artifact(a)
    mb, arrays_b = load_artifact(b)
    for m in (ma, mb):
        m.pop("created")
    assert ma == mb
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:  # features may differ in the last bits with batch composition (oneDNN): see test_features
        np.testing.assert_allclose(arrays_a[k], arrays_b[k], rtol=1e-3, atol=1e-4, err_msg=k)
    xa, xb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    assert xa["accuracy"] == xb["accuracy"] and xa["confusion"] == xb["confusion"]
    assert xa["log_loss"] == pytest.approx(xb["log_loss"], rel=1e-3, abs=1e-4)
    assert (a / "intake.json").read_text() == (b / "intake.json").read_text()
    assert (a / "split.csv").read_text() == (b / "split.csv").read_text()


def _runs(out: Path) -> pd.DataFrame:
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    df = pd.DataFrame(rows).drop(columns=["features_s", "head_s"])  # timings differ between runs
    return df.sort_values(["cell", "seed"]).reset_index(drop=True)


def _assert_study_equal(a: Path, b: Path) -> None:
    ra, rb = _runs(a), _runs(b)
    assert len(ra) == len(rb) == 6 and not ra.duplicated(["cell", "seed"]).any()
    for col in ra.columns:
        if col == "log_loss":
            np.testing.assert_allclose(ra[col].astype(float), rb[col].astype(float), rtol=1e-3, atol=1e-4)
        else:
            assert ra[col].tolist() == rb[col].tolist(), col
    assert (a / "report.md").exists() and (a / "table1.png").exists()


def test_sigkill_at_random_moments_never_loses_or_corrupts_work(tmp_path, forkserver):
    rng = random.Random(int(os.environ.get("TRANSFERLAB_KILL_SEED", "0")))
    photos = copy_subset(tmp_path / "photos", 5)  # 20 photos
    (tmp_path / "kill.toml").write_text(STUDY_TOML)

    def train_argv(out: Path, cache: Path) -> list[str]:
        return ["train", str(photos), "--out", str(out), "--backbone", "mobilenet_v2", "--cache-dir", str(cache)]

    def study_argv(out: Path, cache: Path) -> list[str]:
        return ["study", str(tmp_path / "kill.toml"), "--out", str(out), "--cache-dir", str(cache)]

    # The forkserver's start (~5 s of imports) comes first, so the reference runs below time the runs alone.
    from ._kill_child import noop

    warm = forkserver.Process(target=noop)
    warm.start()
    warm.join()

    # Uninterrupted reference runs: what each keeps on disk, and when. A kill moment is a point of a reference run
    # given as progress (the first cache entries, the model, the logged runs it had kept) and the seconds since that
    # progress was reached, so kills land across start-up, featurizing, fitting and writing however loaded the
    # machine is: a clock alone put most kills after the end of a run here, and all before its features on a busy one.
    refs: dict[str, tuple[list[tuple[float, Progress]], float]] = {}
    for name, argv in (("train", train_argv), ("study", study_argv)):
        out, cache = tmp_path / f"ref-{name}", tmp_path / f"ref-{name}-cache"
        code, trace, seconds = _run(forkserver, argv(out, cache), (out, cache))
        assert code == 0
        refs[name] = trace, seconds

    def moment(name: str, within: float) -> tuple[Progress, float]:
        """A moment drawn from the first ``within`` seconds of the reference run, as (progress, seconds after it)."""
        trace, _ = refs[name]
        u = rng.uniform(0.0, within)
        at, progress = [(t, p) for t, p in trace if t <= u][-1]
        return progress, u - at

    kills: list[dict[str, object]] = []
    plan = [("train", train_argv, _assert_train_equal)] * TRAIN_CHAINS
    plan += [("study", study_argv, _assert_study_equal)] * STUDY_CHAINS
    for chain, (name, argv, same) in enumerate(plan):
        out, cache = tmp_path / f"{name}-{chain}", tmp_path / f"{name}-{chain}-cache"
        per_chain = TRAIN_KILLS_PER_CHAIN if name == "train" else STUDY_KILLS_PER_CHAIN
        length = refs[name][1]
        killed = attempts = 0
        kill_at = moment(name, 0.5 * length)  # a chain's first kill: a run from nothing, in its first half
        if not kills:  # one kill for certain before anything is kept (start-up), on fast machines too
            kill_at = ((0, 0, 0, 0), 0.05)
        while killed < per_chain:
            attempts += 1
            assert attempts <= 10 * per_chain, f"{name}: runs keep finishing before the kill"
            code, _, seconds = _run(forkserver, argv(out, cache), (out, cache), kill_at)
            if code is not None:  # it finished before the kill: a resumed run is shorter, so kill the next sooner
                assert code == 0
                if killed == 0:
                    shutil.rmtree(out)
                    shutil.rmtree(cache)
                kill_at = (kill_at[0], rng.uniform(0.0, 0.9 * seconds))
                continue
            killed += 1
            state = _check_nothing_half_written(out, cache, _spaces(cache))
            kills.append({"command": name, "progress": kill_at[0], "after_s": round(kill_at[1], 2), **state})
            kill_at = moment(name, length)
            if name == "train" and killed == per_chain - 1:  # a chain's last kill: a run resuming a finished model
                kill_at = ((0, 1, 0, 0), kill_at[1])
        assert _run(forkserver, argv(out, cache), (out, cache))[0] == 0, f"{name}: the rerun after the kills failed"
        assert _check_nothing_half_written(out, cache, _spaces(cache))["entries"] > 0
        same(out, tmp_path / f"ref-{name}")

    assert len(kills) >= 20
    sys.stderr.write(f"\nkill loop: {len(kills)} kills survived, nothing lost: {kills}\n")
    # kills hit runs before anything was kept as well as runs resuming a finished model
    assert any(k["model"] == 0 and k["entries"] < 20 for k in kills if k["command"] == "train")
    assert any(k["model"] == 1 for k in kills if k["command"] == "train")
