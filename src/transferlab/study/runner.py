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
from ..features import Extractor
from ..finetune import prepare_trunk
from ..intake import intake
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
        df = pd.DataFrame(list(self.done.values()), columns=RUN_COLUMNS)
        for c in ("accuracy", "log_loss", "features_s", "head_s", "unknown_rate"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
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
    return {
        "cell": cell.id,
        "table": cell.table,
        "backbone": cell.backbone,
        "head": cell.head,
        "per_class": cell.per_class or "",
        "augment": int(cell.augment),
        "seed": seed,
        "accuracy": m["accuracy"],
        "log_loss": m["log_loss"],
        "n_train": len(fe.train_rows),
        "n_test": m["n"],
        "features_s": round(fe.timings["features (train)"], 4),
        "head_s": round(fe.timings["head"], 4),
        "unknown_rate": m.get("unknown_rate", ""),
        "groups": json.dumps({k: v["accuracy"] for k, v in m.get("groups", {}).items()}),
        "confusion": json.dumps(m["confusion"]),
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


def _study_workers(cfg: StudyConfig, n_jobs: int) -> int:
    n = cfg.workers if cfg.workers is not None else min(os.cpu_count() or 1, 4)
    return max(1, min(n, n_jobs // 4))  # a few runs are not worth starting processes for


def _tunable(backbone: str) -> bool:
    """Whether the study adds fine-tuned rows for ``backbone``: whole-image backbones whose blocks the registry knows
    (the face embedder can be fine-tuned too, but it overfits on a few hundred photos: BENCHMARKS.md)."""
    cfg = get_backbone_cfg(backbone)
    return cfg.blocks is not None and not cfg.embeds_faces


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
    facts: dict[str, dict[str, Any]] = {}
    engine = get_engine(cfg.engine, cfg.master)  # one engine (one SparkSession) for every run of the study
    extractors: dict[str, Extractor] = {}  # one per backbone: its network is built once, for both passes

    def backbone_facts(backbone: str, augmented: bool = False) -> dict[str, Any]:
        if backbone not in extractors:
            clf = _classifier(cfg, backbone, "logreg", 0, cache_dir, use_cache, verbose=verbose, engine=engine)
            extractors[backbone] = clf.build_extractor(clf.options())
        ex = extractors[backbone]
        label = "faces" if get_backbone_cfg(backbone).embeds_faces else "features"
        if backbone not in facts:
            t = time.perf_counter()
            bb = ex.backbone.build()
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            res = ex.extract(table["path"].tolist(), table["content_hash"].tolist(), label=label)
            facts[backbone] = {
                "params": bb.cfg.num_params,
                "feature_dim": bb.embedding_dim if get_backbone_cfg(backbone).embeds_faces else bb.row_width(cfg.pool),
                "load_s": load_s,
                "featurize_s": time.perf_counter() - t,
                **res.stats(),
            }
            rep.info(
                f"{backbone}: features {facts[backbone]['computed']} computed, "
                f"{facts[backbone]['cached']} cached ({facts[backbone]['featurize_s']:.1f} s)"
            )
        tuned = cfg.finetune and _tunable(backbone)
        if tuned and "trunk_s" not in facts[backbone] and use_cache:
            # Trunk maps of every photo and augmented copy, once: each fine-tuning run reads its subset from the cache.
            t = time.perf_counter()
            st = prepare_trunk(
                ex.backbone,
                table["path"].tolist(),
                table["content_hash"].tolist(),
                validate_options(backbone=backbone, finetune=cfg.finetune).finetune_config(),
                cache_dir=cache_dir,
                reporter=rep,
            )
            facts[backbone]["trunk_s"] = time.perf_counter() - t
            rep.info(f"{backbone}: trunk maps {st['computed']} computed, {st['cached']} cached")
        if augmented and "augmented_s" not in facts[backbone] and use_cache:
            # Every photo's augmented copies, once: each seed's training side is a subset of them.
            aug = AugmentedImages(table["path"].tolist(), table["content_hash"].tolist(), cfg.augment)
            t = time.perf_counter()
            st = ex.extract(aug, aug.keys(), label=label).stats()
            facts[backbone]["augmented_s"] = time.perf_counter() - t
            rep.info(
                f"{backbone}: augmented copies {st['computed']} computed, {st['cached']} cached "
                f"({facts[backbone]['augmented_s']:.1f} s)"
            )
        return facts[backbone]

    def run_cells(cells: list[Cell], advance: Any) -> None:
        jobs = [(c, seed) for c in cells for seed in range(cfg.seeds) if (c.id, seed) not in log.done]
        advance(len(cells) * cfg.seeds - len(jobs))
        workers = _study_workers(cfg, len(jobs)) if use_cache else 1
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

    table1 = [Cell("table1", b, h, None, False) for b in backbones for h in cfg.heads]
    if cfg.finetune:  # fine-tuned rows beside the frozen ones, for every whole-image backbone that can be fine-tuned
        tunable = [b for b in backbones if _tunable(b)]
        table1 += [Cell("table1", f"{b}{FINETUNED}{cfg.finetune}", h, None, False) for b in tunable for h in cfg.heads]
    n_runs = (len(table1) + len(cfg.per_class) * len(cfg.augment_modes)) * cfg.seeds
    with rep.task("study", n_runs) as advance:
        for b in backbones:
            backbone_facts(b)
        run_cells(table1, advance)
        runs = log.frame()
        t2_backbone = cfg.table2_backbone
        if t2_backbone == "best":  # among frozen backbones: Table 2 is the seed's frozen-source protocol
            frozen = runs[(runs["table"] == "table1") & ~runs["backbone"].str.contains(FINETUNED, regex=False)]
            t1 = frozen[frozen["head"] == cfg.table2_head]
            if t1.empty:
                t1 = frozen
            t2_backbone = t1.groupby("backbone")["accuracy"].mean().idxmax()
        table2 = [Cell("table2", t2_backbone, cfg.table2_head, n, a) for n in cfg.per_class for a in cfg.augment_modes]
        backbone_facts(t2_backbone, augmented=any(cfg.augment_modes))
        run_cells(table2, advance)
    runs = log.frame()
    seconds = time.perf_counter() - t_start
    atomic_write_text(
        out / "facts.json", json.dumps({"backbones": facts, "skipped": skipped, "seconds": seconds}, indent=2)
    )
    report = write_study_report(out, cfg, runs, facts, skipped, t2_backbone, table, seconds)
    return StudyResult(out, report, runs, skipped, seconds)
