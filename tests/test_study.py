"""`transferlab study`: the seed's two tables with repeated seeds, intervals, augmentation and resumption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from transferlab.augment import AugmentConfig, AugmentedImages
from transferlab.backbones import get_backbone_cfg
from transferlab.errors import TransferlabError
from transferlab.evaluate import mean_ci
from transferlab.study import StudyConfig, run_study

from .conftest import PRESIDENTS, REPO

QUICK = REPO / "studies" / "quick.toml"
TIMING = ["features_s", "head_s"]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """The quick study, run as a user would: ``transferlab study`` is SIGKILLed once 5 runs are logged, then the
    study is resumed to the end (through the API). Returns the output folder, the resumed run's result and the runs
    the killed process had logged.

    One study serves both the tables' tests and the resumption test (each used to run its own, ~45 s apiece). A
    resumed study must write what an uninterrupted one writes, so the tables' assertions hold for it as they did for
    an uninterrupted run, and now also check that the report of a resumed study is complete; a resume that lost,
    redid or changed a logged run fails them (each cell has every seed exactly once) as well as the resumption test.
    The runs the killed process logged are the first cells' (mobilenet_v2 frozen), so the report's fine-tuning
    lines pair rows read back from runs.csv with rows of the resumed process.
    """
    out = tmp_path_factory.mktemp("study") / "quick"
    cache = tmp_path_factory.mktemp("study-cache")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "transferlab", "study", str(QUICK), "--out", str(out), "--cache-dir", str(cache)]
    proc = subprocess.Popen([*cmd, "--quiet"], env=env)
    runs_csv = out / "runs.csv"
    # The kill follows the study's progress (rows in runs.csv), not a clock: on a loaded machine it only comes later.
    while proc.poll() is None:
        if runs_csv.exists() and runs_csv.read_text().count("\n") >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the study finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = pd.read_csv(runs_csv)
    res = run_study(QUICK, out, cache_dir=cache)
    return out, res, killed


def test_quick_study_writes_both_tables_with_intervals(quick_study):
    out, _, _ = quick_study
    cfg = StudyConfig.from_toml(QUICK)
    runs = pd.read_csv(out / "runs.csv")
    tunable = [
        b for b in cfg.backbones if get_backbone_cfg(b).blocks is not None and get_backbone_cfg(b).kind != "faces"
    ]
    t1_cells = (len(cfg.backbones) + len(tunable)) * len(cfg.heads)
    assert cfg.finetune == 1 and tunable == ["mobilenet_v2"]
    t2_cells = len(cfg.per_class) * len(cfg.augment_modes)
    assert len(runs) == (t1_cells + t2_cells) * cfg.seeds
    assert runs.groupby("cell")["seed"].nunique().eq(cfg.seeds).all()
    report = (out / "report.md").read_text()
    for _, rows in runs[runs["table"] == "table1"].groupby("cell"):  # the report shows each cell's t-interval
        acc = rows["accuracy"].to_numpy()
        half = stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc)) if acc.std() > 0 else 0.0
        b, h = rows["backbone"].iloc[0], rows["head"].iloc[0]
        line = next(x for x in report.splitlines() if x.startswith(f"| {b} | {h} |"))
        assert f"{acc.mean():.3f} ± {half:.3f}" in line
        assert mean_ci(acc) == pytest.approx((acc.mean(), acc.mean() - half, acc.mean() + half))
    for b in cfg.backbones + [f"{t}+finetune1" for t in tunable]:
        for h in cfg.heads:
            assert f"| {b} | {h} |" in report
    for h in cfg.heads:  # what fine-tuning bought, paired by seed
        assert f"- Fine-tuning the last 1 block of mobilenet_v2 ({h} head): accuracy " in report
    for n in cfg.per_class:
        assert f"\n| {n} | " in report
    assert "± " in report and "Where we differ from the seed" in report
    for png in ("table1.png", "table2.png", "confusion_best.png", "augmentations.png"):
        assert (out / png).stat().st_size > 1000, png
    # few-shot faces: 3 photos per class already go a long way
    fs = runs[(runs["table"] == "table2") & (runs["per_class"] == 3)]
    assert fs["accuracy"].mean() >= 0.7


def test_rerun_of_a_finished_study_runs_nothing(quick_study, tmp_path):
    """Nothing is run or featurized again, even with an empty cache: the report's backbone facts (what featurizing
    cost) are the earlier run's, read back from facts.json, so Table 1 is written as it was."""
    out, first, _ = quick_study
    before = pd.read_csv(out / "runs.csv")
    table1 = _section((out / "report.md").read_text(), "## Table 1")
    again = run_study(QUICK, out, cache_dir=tmp_path / "c")
    after = pd.read_csv(out / "runs.csv")
    pd.testing.assert_frame_equal(before, after)
    assert len(again.runs) == len(first.runs)
    assert not list((tmp_path / "c").rglob("*.npy"))  # no feature computed
    assert _section((out / "report.md").read_text(), "## Table 1") == table1


def _section(report: str, heading: str) -> str:
    start = report.index(heading)
    return report[start : report.index("\n## ", start + 1)]


def test_a_killed_study_resumes_with_the_same_finished_rows(quick_study):
    """The runs the killed study had logged are kept as they were; the resumed study adds the rest, once each."""
    out, _, killed = quick_study
    cfg = StudyConfig.from_toml(QUICK)
    n_runs = ((len(cfg.backbones) + 1) * len(cfg.heads) + len(cfg.per_class) * len(cfg.augment_modes)) * cfg.seeds
    assert n_runs == 30  # with mobilenet_v2's fine-tuned rows (the one tunable backbone)
    assert 0 < len(killed) < n_runs
    final = pd.read_csv(out / "runs.csv")
    assert len(final) == n_runs and not final.duplicated(["cell", "seed"]).any()
    merged = killed.merge(final, on=["cell", "seed"], suffixes=("_killed", "_final"))
    assert len(merged) == len(killed)
    for col in ("accuracy", "log_loss", "n_train", "n_test", "confusion"):
        assert (merged[f"{col}_killed"] == merged[f"{col}_final"]).all(), col


def test_augmented_copies_are_deterministic_and_keyed_by_config():
    paths = [str(next((PRESIDENTS / "trump").iterdir()))]
    a = AugmentedImages(paths, ["h0"], AugmentConfig(copies=3))
    b = AugmentedImages(paths, ["h0"], AugmentConfig(copies=3))
    assert len(a) == 3 and a.keys() == b.keys()
    assert np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))
    other = AugmentConfig.from_dict({"copies": 3, "rotate": {"p": 1.0, "strength": 30}})
    assert AugmentedImages(paths, ["h0"], other).keys() != a.keys()


def test_study_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('data = "x"\ncolour = "red"\n')
    with pytest.raises(TransferlabError, match="colour"):
        StudyConfig.from_toml(bad)
    bad.write_text('data = "x"\n[augment]\nwobble = {p = 0.5}\n')
    with pytest.raises(TransferlabError, match="wobble"):
        StudyConfig.from_toml(bad)
    with pytest.raises(TransferlabError, match="no such study config"):
        StudyConfig.from_toml(tmp_path / "missing.toml")


def test_study_config_names_its_engine(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('data = "x"\nengine = "spark"\nmaster = "local[2]"\n')
    got = StudyConfig.from_toml(cfg)
    assert (got.engine, got.master) == ("spark", "local[2]")
    cfg.write_text('data = "x"\nengine = "hadoop"\n')
    with pytest.raises(TransferlabError, match="engine = 'hadoop'; choose one of: local, spark"):
        StudyConfig.from_toml(cfg)


def test_the_seed_study_is_the_seeds_tables_and_the_extended_one_adds_fine_tuning():
    """studies/seed.toml reproduces the seed's two tables (every available backbone, the three heads; photos per
    class × augmentation) and fits in minutes; studies/extended.toml is the same with fine-tuned rows beside."""
    seed = StudyConfig.from_toml(REPO / "studies" / "seed.toml")
    extended = StudyConfig.from_toml(REPO / "studies" / "extended.toml")
    assert seed.backbones == ["available"] and sorted(seed.heads) == ["logreg", "mlp", "svm"] and not seed.finetune
    assert seed.per_class == [1, 3, 5, 10, 25, 50, 100, 150] and seed.augment_modes == [False, True]
    assert extended.finetune == 2
    assert (extended.per_class, extended.heads, extended.seeds) == (seed.per_class, seed.heads, seed.seeds)


def test_cached_augmented_copies_are_never_made_again(tmp_path, monkeypatch):
    """A study's augmented runs read their copies' features from the cache: a second fit on the same copies makes
    none of them (decoding and transforming every copy cost each augmented run 1.7 s), and fits the same model."""
    import transferlab.augment
    from transferlab import Classifier
    from transferlab.api import fit_evaluate
    from transferlab.intake import intake

    from .conftest import copy_subset

    photos = copy_subset(tmp_path / "photos", 4)
    table = intake(photos, cache_dir=tmp_path / "cache").table
    train, test = np.arange(0, len(table), 2), np.arange(1, len(table), 2)
    cfg = AugmentConfig(copies=2)

    def fit() -> tuple:
        aug = AugmentedImages(table["path"].to_numpy()[train].tolist(), table["content_hash"].to_numpy()[train], cfg)
        extra = (aug, aug.keys(), np.repeat(table["label"].to_numpy()[train], cfg.copies).tolist())
        clf = Classifier(backbone="mobilenet_v2", head="logreg", cache_dir=tmp_path / "cache")
        fe = fit_evaluate(clf, table, train, test, extra_train=extra)
        return fe.stats, fe.metrics, clf.gallery().paths

    first_stats, first_metrics, names = fit()
    assert first_stats["computed"] == len(train) * (1 + cfg.copies) + len(test)  # the test side too
    assert sum(n.startswith("<image ") for n in names) == len(train) * cfg.copies  # copies are named, not files

    def made(*args, **kwargs):
        raise AssertionError("an augmented copy was made although its features are cached")

    monkeypatch.setattr(transferlab.augment, "augment_image", made)
    stats, metrics, again = fit()
    assert stats["computed"] == 0 and metrics == first_metrics and again == names


def test_runs_in_worker_processes_are_the_runs_of_one_process(tmp_path):
    """`workers = 2`: the runs fitted in two worker processes (each reading the shared cache) are those one process
    fits, to the last digit. A small study runs in one process unless told (starting workers costs more than its
    runs: the quick study took 35 s with two and 19 s without), so this is where the worker path is tested."""
    from transferlab.study.runner import _study_workers

    from .conftest import copy_subset

    copy_subset(tmp_path / "photos", 4)
    toml = STUDY_TWO_HEADS.replace("WORKERS", "2")
    (tmp_path / "two.toml").write_text(toml)
    (tmp_path / "one.toml").write_text(toml.replace("workers = 2", "workers = 1"))
    cfg = StudyConfig.from_toml(tmp_path / "two.toml")
    assert _study_workers(cfg, 8, 16) == 2 and _study_workers(StudyConfig.from_toml(QUICK), 18, 40) == 1
    one = run_study(tmp_path / "one.toml", tmp_path / "one", cache_dir=tmp_path / "cache").runs
    two = run_study(tmp_path / "two.toml", tmp_path / "two", cache_dir=tmp_path / "cache").runs
    key = ["table", "cell", "seed"]
    one, two = (r.drop(columns=TIMING).sort_values(key).reset_index(drop=True) for r in (one, two))
    assert len(one) == (2 + 1) * 4 and two["accuracy"].notna().all()
    pd.testing.assert_frame_equal(one, two)


STUDY_TWO_HEADS = """
name = "workers"
data = "photos"
test_size = 0.5
seeds = 4
workers = WORKERS
[table1]
backbones = ["mobilenet_v2"]
heads = ["logreg", "mlp"]
epochs = 5
[table2]
backbone = "mobilenet_v2"
head = "logreg"
per_class = [1]  # 4 runs: too few for workers, so only Table 1's 8 start them
augment = [false]
"""
