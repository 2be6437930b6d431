"""What a user reads is what happened: file permissions, exit codes, a fast `--help` and `--version`, status lines
without a terminal, the why of each answer, and short names in the tables."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import pytest

from .conftest import REPO, run


@pytest.fixture(scope="module")
def model_dir(small_photos, tmp_path_factory):
    """A face model trained through the CLI with the usual umask (022)."""
    out = tmp_path_factory.mktemp("m") / "model"
    cache = tmp_path_factory.mktemp("c")
    old = os.umask(0o022)
    try:
        run("train", str(small_photos), "--out", str(out), "-q", cache=cache)
    finally:
        os.umask(old)
    return out, cache


def test_files_get_the_permissions_the_umask_gives(model_dir, small_photos, tmp_path):
    """Written atomically, yet readable by others under umask 022 (not the temporary file's private 0600)."""
    out, cache = model_dir
    written = [p for p in out.iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"model.json", "head.safetensors", "report.md", "confusion.png", "split.csv"}
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name
    check = tmp_path / "check"
    old = os.umask(0o027)
    try:
        run("check-labels", str(small_photos), "--out", str(check), "--folds", "2", "-q", cache=cache)
    finally:
        os.umask(old)
    for p in check.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p.name  # the umask is honoured, whatever it is


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{model}", "no_such_folder"],
        ["evaluate", "{model}", "no_such_folder"],
        ["check-labels", "no_such_folder"],
        ["featurize", "no_such_folder", "--out", "t"],
        ["train", "no_such_folder", "--out", "m"],
    ],
)
def test_a_missing_path_is_one_line_and_exit_2_for_every_command(args, model_dir, tmp_path):
    """The predict case runs in a process of its own: nothing else (an import's warning) reaches its stderr."""
    out, cache = model_dir
    proc = run(*[a.format(model=out) for a in args], cache=cache, check=False, process=args[0] == "predict")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no_such_folder: no such file or folder")


def test_exit_1_when_some_inputs_cannot_be_used_and_0_otherwise(model_dir, small_photos, tmp_path):
    out, cache = model_dir
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    photo = sorted((small_photos / "bush").iterdir())[0]
    assert run("predict", str(out), str(photo), cache=cache, check=False).returncode == 0
    assert run("predict", str(out), str(photo), str(bad), cache=cache, check=False).returncode == 1


def test_help_and_version_import_nothing_heavy():
    """`transferlab --help` (and `--version`) load the command line only: no torch, scikit-learn, NumPy, SciPy or
    pandas, which take seconds to import (checked by what is imported, not by timing a shared machine; typer itself
    brings pydantic, ~30 ms)."""
    code = (
        "import sys\nfrom transferlab.cli import main\n"
        "for argv in (['--help'], ['--version'], ['train', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = ('torch', 'sklearn', 'numpy', 'pandas', 'scipy', 'transferlab.options')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-500:]
    assert "Examples:" in proc.stdout and "transferlab 0.1.0" in proc.stdout
    assert "Exit status: 0 done; 1 some inputs could not be used" in proc.stdout


def test_progress_without_a_terminal_is_a_status_line_every_few_seconds():
    from rich.console import Console

    from transferlab._progress import Reporter

    rep = Reporter(True)
    buf = io.StringIO()
    rep._console = Console(file=buf, force_terminal=False, width=100)
    advance = rep._status_lines("features", 10, every=0.0)
    for _ in range(10):
        advance(1)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "features: 1/10 (10%)" and len(lines) == 9  # none after the last photo: the job says done


def test_predict_says_why_and_names_files_as_the_user_gave_them(model_dir, small_photos):
    """The table's names are relative to the folder given; each answer says its similarity against the threshold
    (an `unknown` in words); --json carries the similarity and the threshold, and which face answered."""
    out, cache = model_dir
    proc = run("predict", str(out), str(small_photos / "obama"), "--unknown-threshold", "0.99", cache=cache)
    rows = [line for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert rows and all(line.startswith("obama/") for line in rows)
    assert all("not close enough to anyone this model knows:" in line and "< 0.99" in line for line in rows)
    lines = [
        json.loads(x)
        for x in run("predict", str(out), str(small_photos / "obama"), "--json", cache=cache).stdout.splitlines()
    ]
    assert all(0.0 < x["unknown_threshold"] < 1.0 and -1.0 <= x["similarity"] <= 1.0 for x in lines)
    faces = run("predict", str(out), str(small_photos / "obama"), "--json", "--faces", "all", cache=cache).stdout
    per_face = [json.loads(x) for x in faces.splitlines()]
    assert sum(x["answer"] for x in per_face) == len(lines)  # one answering face per photo


def test_building_the_networks_is_timed_apart_from_the_photos_per_second(
    small_photos, tmp_path, fresh_face_graphs, monkeypatch
):
    """A first run builds the face networks (graphs converted, cached): reported on its own, not inside the rate.
    Pointed at a prepared directory (``$TRANSFERLAB_FACE_GRAPHS_DIR``), a run with a new cache converts nothing."""
    import transferlab
    from transferlab.backbones.face_graphs import GRAPHS_ENV

    cache = tmp_path / "cache"
    table = str(tmp_path / "t")
    out = run("featurize", str(small_photos), "--backbone", "sface", "--out", table, "--json", cache=cache)
    doc = json.loads(out.stdout)
    assert doc["build_seconds"] > 0 and doc["seconds"] >= doc["build_seconds"]
    res = transferlab.train(small_photos, tmp_path / "m", backbone="sface", cache_dir=cache, verbose=False)
    st = res.feature_stats
    assert st["build_seconds"] > 0 and st["seconds"] > 0 and st["computed"] == 0  # every feature from the cache
    graphs = {p.name: p.stat().st_mtime_ns for p in (cache / "face_graphs").iterdir()}
    assert {p.rsplit(".", 1)[1] for p in graphs} == {"onnx", "pt"}  # the float graphs and the traced embedder
    monkeypatch.setenv(GRAPHS_ENV, str(cache / "face_graphs"))
    run("featurize", str(small_photos / "obama"), "--backbone", "sface", "--out", table, cache=tmp_path / "new")
    assert not (tmp_path / "new" / "face_graphs").exists()
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "face_graphs").iterdir()} == graphs


def test_a_face_networks_folder_that_cannot_be_written_is_one_line(small_photos, tmp_path, monkeypatch):
    """``$TRANSFERLAB_FACE_GRAPHS_DIR`` naming something that is not a folder: one line saying what to do."""
    from transferlab.backbones.face_graphs import GRAPHS_ENV

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "a-file" / "graphs"))
    proc = run("featurize", str(small_photos / "bush"), "--out", str(tmp_path / "t"), cache=tmp_path / "c", check=False)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot keep the converted face networks" in line and GRAPHS_ENV in line
