"""Study: the seed's Table 1 (source models × heads) and Table 2 (training images per class × augmentation),
with repeated seeds, 95% confidence intervals, plots, and resumption after an interruption.

Every run is one (cell, seed): a fresh stratified split for that seed, a head trained on cached features (plus
cached features of augmented copies), evaluated on the held-out side. Runs are appended to ``runs.csv`` one line
at a time, so a killed study resumes where it stopped and finished runs are never redone.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_write_text
from .._progress import Reporter
from .._runtime import tune_allocator
from ..api import fit_evaluate
from ..augment import AugmentedImages
from ..backbones import get_backbone_cfg, list_backbones
from ..cache import default_cache_dir
from ..engines import get_engine
from ..errors import TransferlabError
from ..finetune_images import prepare_trunk
from ..intake import intake
from ..kinds import kind_of
from ..options import validate_options
from ..pipeline import Classifier
from ..split import split_table
from .config import FINETUNED, StudyConfig, split_backbone
from .report import write_study_report


@dataclass(frozen=True)
class Cell:
    """One cell of a table: what is trained and how; each cell runs once per seed."""

    table: str
    backbone: str
    head: str
    per_class: int | None
    augment: bool

    @property
    def id(self) -> str:
        return (
            f"{self.table}|{self.backbone}|{self.head}|{self.per_class or 'all'}|{'aug' if self.augment else 'plain'}"
        )


RUN_COLUMNS = [
    "cell",
    "table",
    "backbone",
    "head",
    "per_class",
    "augment",
    "seed",
    "accuracy",
    "log_loss",
    "n_train",
    "n_test",
    "features_s",
    "head_s",
    "unknown_rate",
    "groups",
    "confusion",
]


class RunLog:
    """``runs.csv``: one line per finished run, appended and flushed immediately (a killed study loses at most
    the run in progress; a torn last line is dropped on reading)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[tuple[str, int], dict[str, Any]] = {}
        if path.exists():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    if None in row.values() or row.get("confusion", "").count("[") != row.get("confusion", "").count(
                        "]"
                    ):
                        continue  # torn line from a kill
                    self.done[(row["cell"], int(row["seed"]))] = row
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, RUN_COLUMNS)
            w.writeheader()
            for row in self.done.values():
                w.writerow({k: row.get(k, "") for k in RUN_COLUMNS})
        os.replace(tmp, self.path)

    def add(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, RUN_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self.done[(row["cell"], int(row["seed"]))] = row

    def frame(self) -> pd.DataFrame:
        """The finished runs, typed alike whether read back from ``runs.csv`` (text) or run in this process (a
        resumed study pairs its rows by seed: ``"0"`` and ``0`` must not differ)."""
        df = pd.DataFrame(list(self.done.values()), columns=RUN_COLUMNS)
        for c in ("accuracy", "log_loss", "features_s", "head_s", "unknown_rate"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
        for c in ("per_class", "augment", "seed", "n_train", "n_test"):  # per_class: empty in Table 1's rows
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
        return df


@dataclass
class StudyResult:
    """Where the study wrote its outputs, and its runs."""

    out: Path
    report: Path
    runs: pd.DataFrame
    skipped_backbones: dict[str, str]
    seconds: float


def _load_table(cfg: StudyConfig, reporter: Reporter, cache_root: Path | None) -> pd.DataFrame:
    table = intake(cfg.data, cache_dir=cache_root, progress=reporter.wrap, manifest=cfg.manifest).table
    if cfg.group_by is not None and cfg.group_by not in table.columns:
        raise TransferlabError(f"group_by = {cfg.group_by!r}: no such column; add a manifest with it")
    if cfg.limit_per_class:
        table = table.sort_values("path").groupby("label", group_keys=False).head(cfg.limit_per_class)
        table = table.reset_index(drop=True)
    return table


def _resolve_backbones(cfg: StudyConfig) -> tuple[list[str], dict[str, str]]:
    names = list_backbones() if cfg.backbones == ["available"] else cfg.backbones
    use, skipped = [], {}
    for n in names:
        c = get_backbone_cfg(n)
        if n in cfg.weights or c.weights_available():
            use.append(n)
        else:
            skipped[n] = "no weights on this machine (add `[weights] " + n + ' = "FILE"` or download them once)'
    if not use:
        raise TransferlabError("no backbone with weights available for the study")
    return use, skipped


def _classifier(
    cfg: StudyConfig,
    backbone: str,
    head: str,
    seed: int,
    cache_dir: Any,
    use_cache: bool,
    verbose: bool = False,
    engine: Any = None,
) -> Classifier:
    params: dict[str, Any] = {"random_state": seed} if head in ("mlp", "svm") else {}
    if head == "mlp":
        params["epochs"] = cfg.epochs
    backbone, finetune = split_backbone(backbone)
    opts = validate_options(
        finetune=finetune,
        finetune_params={"seed": seed} if finetune else {},
        backbone=backbone,
        head=head,
        pool=cfg.pool,
        head_params=params,
        weights=cfg.weights.get(backbone),
        cache_dir=cache_dir,
        use_cache=use_cache,
        verbose=verbose,
    )
    return Classifier.from_options(opts, engine=engine)


def _run_one(
    cfg: StudyConfig, table: pd.DataFrame, cell: Cell, seed: int, cache_dir: Any, use_cache: bool
) -> dict[str, Any]:
    """One (cell, seed): a fresh split, a head fitted on cached features, evaluated on the held-out side."""
    labels = table["label"].to_numpy().astype(str)
    split = split_table(table, test_size=cfg.test_size, seed=seed, per_class=cell.per_class)
    clf = _classifier(cfg, cell.backbone, cell.head, seed, cache_dir, use_cache)
    extra = None
    if cell.augment:
        aug = AugmentedImages(
            table["path"].to_numpy()[split.train].tolist(),
            table["content_hash"].to_numpy()[split.train].tolist(),
            cfg.augment,
        )
        extra = (aug, aug.keys(), np.repeat(labels[split.train], cfg.augment.copies).tolist())
    fe = fit_evaluate(clf, table, split.train, split.test, group_by=cfg.group_by, extra_train=extra)
    m = fe.metrics
    groups = {k: g.accuracy for k, g in (m.groups or {}).items()}
    return {
        "cell": cell.id,
        "table": cell.table,
        "backbone": cell.backbone,
        "head": cell.head,
        "per_class": cell.per_class or "",
        "augment": int(cell.augment),
        "seed": seed,
        "accuracy": m.accuracy,
        "log_loss": m.log_loss,
        "n_train": len(fe.train_rows),
        "n_test": m.n,
        "features_s": round(fe.timings["features (train)"], 4),
        "head_s": round(fe.timings["head"], 4),
        "unknown_rate": m.unknown_rate if m.unknown_rate is not None else "",
        "groups": json.dumps(groups),
        "confusion": json.dumps(m.confusion),
    }


_WORKER: dict[str, Any] = {}


def _worker_init(cfg: StudyConfig, table: pd.DataFrame, cache_dir: Any, use_cache: bool) -> None:
    import torch

    tune_allocator()
    # One thread per process: the heads are small, and 2 threads per process on 2 cores oversubscribe (an MLP
    # fit measured 5–7× slower with another process busy).
    torch.set_num_threads(1)
    _WORKER.update(cfg=cfg, table=table, cache_dir=cache_dir, use_cache=use_cache)


def _worker_run(job: tuple[Cell, int]) -> dict[str, Any]:
    w = _WORKER
    return _run_one(w["cfg"], w["table"], job[0], job[1], w["cache_dir"], w["use_cache"])


# What a run costs (fitting a head on cached features, scoring it), roughly: 0.1 s + 1 ms per photo in the study,
# and what starting a worker process costs (importing torch, scikit-learn and pandas): ~4 s of CPU. Measured on
# the 2-core machine: the quick study (40 photos, 30 runs) took 35 s with two workers and 19 s in one process; the
# seed study's 155 runs on 812 photos (~140 s of runs) keep their workers.
_RUN_S, _RUN_PHOTO_S, _WORKER_START_S = 0.1, 1e-3, 4.0


def _study_workers(cfg: StudyConfig, n_jobs: int, n_photos: int) -> int:
    """Processes for ``n_jobs`` runs on a table of ``n_photos``: ``workers`` from the config when it is given, else
    one per core (at most 4) when the runs take longer than starting the processes would, else this one."""
    if cfg.workers is not None:
        n = cfg.workers
    else:
        n = min(os.cpu_count() or 1, 4)
        if n_jobs * (_RUN_S + _RUN_PHOTO_S * n_photos) < n * _WORKER_START_S:
            n = 1
    return max(1, min(n, n_jobs // 4))  # a few runs are not worth starting processes for


def _tunable(backbone: str) -> bool:
    """Whether the study adds fine-tuned rows for ``backbone``: whole-image backbones whose blocks the registry knows
    (the face embedder can be fine-tuned too, but it overfits on a few hundred photos: BENCHMARKS.md)."""
    cfg = get_backbone_cfg(backbone)
    return cfg.blocks is not None and kind_of(cfg).finetune_in_study


class _StudyFeatures:
    """Every backbone's features of every photo (and of augmented copies, and fine-tuning's trunk maps), computed
    once in this process before the runs, which then read them from the cache; and what was measured doing it."""

    def __init__(
        self, cfg: StudyConfig, table: pd.DataFrame, cache_dir: Any, use_cache: bool, verbose: bool, engine: Any
    ) -> None:
        self.cfg, self.table, self.cache_dir, self.use_cache = cfg, table, cache_dir, use_cache
        self.verbose, self.engine, self.rep = verbose, engine, Reporter(verbose)
        self.facts: dict[str, dict[str, Any]] = {}
        self.classifiers: dict[str, Classifier] = {}  # one per backbone: its network is built once, for every pass

    def prepare(self, backbone: str, augmented: bool = False) -> dict[str, Any]:
        """The backbone's facts, its features computed (and, as the study needs them, trunk maps and augmented
        copies' features)."""
        if backbone not in self.facts:
            self._photos(backbone)
        if self.cfg.finetune and _tunable(backbone) and "trunk_s" not in self.facts[backbone] and self.use_cache:
            self._trunk_maps(backbone)
        if augmented and "augmented_s" not in self.facts[backbone] and self.use_cache:
            self._augmented(backbone)
        return self.facts[backbone]

    def _classifier(self, backbone: str) -> Classifier:
        if backbone not in self.classifiers:
            cfg, cache_dir, use_cache = self.cfg, self.cache_dir, self.use_cache
            clf = _classifier(
                cfg, backbone, "logreg", 0, cache_dir, use_cache, verbose=self.verbose, engine=self.engine
            )
            clf.extractor_ = clf.build_extractor(clf.options())
            self.classifiers[backbone] = clf
        return self.classifiers[backbone]

    def _photos(self, backbone: str) -> None:
        clf = self._classifier(backbone)
        t = time.perf_counter()
        bb = clf.extractor_.backbone.build()
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        res = clf.featurize(self.table["path"].tolist(), self.table["content_hash"].tolist())
        facts = self.facts[backbone] = {
            "params": bb.cfg.num_params,
            "feature_dim": bb.feature_dim(self.cfg.pool),
            "load_s": load_s,
            "featurize_s": time.perf_counter() - t,
            **res.stats(),
        }
        computed, cached, seconds = facts["computed"], facts["cached"], facts["featurize_s"]
        self.rep.info(f"{backbone}: features {computed} computed, {cached} cached ({seconds:.1f} s)")

    def _trunk_maps(self, backbone: str) -> None:
        """Trunk maps of every photo and augmented copy, once: each fine-tuning run reads its subset from the cache."""
        t = time.perf_counter()
        st = prepare_trunk(
            self._classifier(backbone).extractor_.backbone,
            self.table["path"].tolist(),
            self.table["content_hash"].tolist(),
            validate_options(backbone=backbone, finetune=self.cfg.finetune).finetune_config(),
            cache_dir=self.cache_dir,
            reporter=self.rep,
        )
        self.facts[backbone]["trunk_s"] = time.perf_counter() - t
        self.rep.info(f"{backbone}: trunk maps {st['computed']} computed, {st['cached']} cached")

    def _augmented(self, backbone: str) -> None:
        """Every photo's augmented copies, once: each seed's training side is a subset of them."""
        aug = AugmentedImages(self.table["path"].tolist(), self.table["content_hash"].tolist(), self.cfg.augment)
        t = time.perf_counter()
        st = self._classifier(backbone).featurize(aug, aug.keys()).stats()
        seconds = self.facts[backbone]["augmented_s"] = time.perf_counter() - t
        self.rep.info(
            f"{backbone}: augmented copies {st['computed']} computed, {st['cached']} cached ({seconds:.1f} s)"
        )


def _run_cells(
    cfg: StudyConfig,
    table: pd.DataFrame,
    log: RunLog,
    cells: list[Cell],
    advance: Any,
    cache_dir: Any,
    use_cache: bool,
) -> None:
    """Every (cell, seed) run not in ``log`` yet, appended to it as it finishes: in worker processes where the
    cache lets them share features, else here."""
    jobs = _todo(cfg, log, cells)
    advance(len(cells) * cfg.seeds - len(jobs))
    workers = _study_workers(cfg, len(jobs), len(table)) if use_cache else 1
    if workers == 1:
        for cell, seed in jobs:
            log.add(_run_one(cfg, table, cell, seed, cache_dir, use_cache))
            advance(1)
        return
    # spawn, not fork: forking a process whose OpenCV/OpenMP threads hold locks deadlocks the children.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init, initargs=(cfg, table, cache_dir, use_cache)) as pool:
        for row in pool.imap_unordered(_worker_run, jobs):
            log.add(row)
            advance(1)


def _todo(cfg: StudyConfig, log: RunLog, cells: list[Cell]) -> list[tuple[Cell, int]]:
    """The (cell, seed) runs of ``cells`` not logged yet."""
    return [(c, seed) for c in cells for seed in range(cfg.seeds) if (c.id, seed) not in log.done]


def _earlier_facts(out: Path) -> dict[str, dict[str, Any]]:
    """Each backbone's facts (parameters, feature size, what featurizing cost) as an earlier run of this study
    wrote them (``facts.json``), or nothing. A rerun reuses them for backbones whose runs are all logged instead of
    reading every photo's features again only to describe them (a finished quick study's rerun: 11 s → 3 s)."""
    try:
        facts = json.loads((out / "facts.json").read_text())["backbones"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {b: f for b, f in facts.items() if isinstance(f, dict)} if isinstance(facts, dict) else {}


def run_study(
    config: StudyConfig | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    verbose: bool = False,
) -> StudyResult:
    """Run (or resume) a study and write ``runs.csv``, ``report.md`` and plots into ``out``.

    Features (and features of augmented copies) are computed first, once, in this process; the runs then fit
    heads on cached features in ``workers`` processes, each run appended to ``runs.csv`` as it finishes.

    Parameters
    ----------
    config
        A :class:`StudyConfig` or the path of a TOML file (see ``studies/seed.toml``).
    out
        Output folder; an existing ``runs.csv`` there is resumed.
    cache_dir, use_cache
        Feature cache (shared across cells, seeds and studies). Without a cache every run recomputes its
        features, in one process.
    verbose
        Progress on stderr.

    Returns
    -------
    StudyResult
    """
    t_start = time.perf_counter()
    cfg = config if isinstance(config, StudyConfig) else StudyConfig.from_toml(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = Reporter(verbose)
    cache_root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    if use_cache and cache_dir is None:
        cache_dir = cache_root  # workers must see the same cache, whatever their environment
    table = _load_table(cfg, rep, cache_root)
    backbones, skipped = _resolve_backbones(cfg)
    log = RunLog(out / "runs.csv")
    engine = get_engine(cfg.engine, cfg.master)  # one engine (one SparkSession) for every run of the study
    features = _StudyFeatures(cfg, table, cache_dir, use_cache, verbose, engine)
    table1 = [Cell("table1", b, h, None, False) for b in backbones for h in cfg.heads]
    if cfg.finetune:  # fine-tuned rows beside the frozen ones, for every whole-image backbone that can be fine-tuned
        tunable = [b for b in backbones if _tunable(b)]
        table1 += [Cell("table1", f"{b}{FINETUNED}{cfg.finetune}", h, None, False) for b in tunable for h in cfg.heads]
    n_runs = (len(table1) + len(cfg.per_class) * len(cfg.augment_modes)) * cfg.seeds
    earlier, reused = _earlier_facts(out), set()
    with rep.task("study", n_runs) as advance:
        for b in backbones:
            if b in earlier and not _todo(cfg, log, [c for c in table1 if split_backbone(c.backbone)[0] == b]):
                features.facts[b] = earlier[b]  # every run of it is logged: what computing its features cost then
                reused.add(b)
            else:
                features.prepare(b)
        _run_cells(cfg, table, log, table1, advance, cache_dir, use_cache)
        runs = log.frame()
        t2_backbone = cfg.table2_backbone
        if t2_backbone == "best":  # among frozen backbones: Table 2 is the seed's frozen-source protocol
            frozen = runs[(runs["table"] == "table1") & ~runs["backbone"].str.contains(FINETUNED, regex=False)]
            t1 = frozen[frozen["head"] == cfg.table2_head]
            if t1.empty:
                t1 = frozen
            t2_backbone = t1.groupby("backbone")["accuracy"].mean().idxmax()
        table2 = [Cell("table2", t2_backbone, cfg.table2_head, n, a) for n in cfg.per_class for a in cfg.augment_modes]
        t2_todo = bool(_todo(cfg, log, table2))
        if t2_todo and t2_backbone in reused:
            del features.facts[t2_backbone]  # Table 2 has runs to do (a changed config): its features, cached, first
        if t2_todo or t2_backbone not in features.facts:
            features.prepare(t2_backbone, augmented=any(cfg.augment_modes))
        _run_cells(cfg, table, log, table2, advance, cache_dir, use_cache)
    runs = log.frame()
    seconds = time.perf_counter() - t_start
    atomic_write_text(
        out / "facts.json", json.dumps({"backbones": features.facts, "skipped": skipped, "seconds": seconds}, indent=2)
    )
    report = write_study_report(out, cfg, runs, features.facts, skipped, t2_backbone, table, seconds)
    return StudyResult(out, report, runs, skipped, seconds)
