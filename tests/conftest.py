"""Shared fixtures: small real photo sets copied from the bundled presidents data, and isolated caches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

REPO = Path(__file__).resolve().parents[1]
PRESIDENTS = REPO / "data" / "presidents"


def run(*args: str, cache: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m transferlab ARGS`` in a subprocess, with its own feature cache when ``cache`` is given."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    if cache is not None:
        env["TRANSFERLAB_CACHE_DIR"] = str(cache)
    proc = subprocess.run([sys.executable, "-m", "transferlab", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own default cache directory, so no test sees another's features."""
    monkeypatch.setenv("TRANSFERLAB_CACHE_DIR", str(tmp_path / "default-cache"))


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


def _install_chromium() -> str:
    """The test setup installs Debian's Chromium where it can (root with apt-get, as on CI); '' when it worked."""
    import subprocess

    if CHROMIUM.exists():
        return ""
    if os.geteuid() != 0 or not Path("/usr/bin/apt-get").exists():
        return "not root or no apt-get here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(cmd)}: {exc}"
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-200:]}"
    return "" if CHROMIUM.exists() else "installed, but /usr/bin/chromium is missing"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Playwright drives Debian's Chromium (installed here when missing; no browser is downloaded by Playwright).
    Browser tests skip, saying why, only where Chromium cannot be installed."""
    why = _install_chromium()
    if why:
        pytest.skip(f"browser test needs Debian's Chromium at /usr/bin/chromium, which could not be installed: {why}")
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
