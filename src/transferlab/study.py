"""Study: the seed's Table 1 (source models × heads) and Table 2 (training images per class × augmentation),
with repeated seeds, 95% confidence intervals, plots, and resumption after an interruption.

Every run is one (cell, seed): a fresh stratified split for that seed, a head trained on cached features (plus
cached features of augmented copies), evaluated on the held-out side. Runs are appended to ``runs.csv`` one line
at a time, so a killed study resumes where it stopped and finished runs are never redone.
"""

from __future__ import annotations

import csv
import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import atomic_write_text
from ._progress import Reporter
from .augment import AugmentConfig, AugmentedImages
from .errors import TransferlabError

# The seed's published numbers (shared/docs/SEED.md), shown beside ours.
SEED_TABLE1 = {
    "vgg16": {"params": 14_714_688, "trainable": 6_423_812, "load_s": 1.01, "train_min": 12.276, "acc": 0.760},
    "inception_v3": {"params": 21_802_784, "trainable": 13_108_484, "load_s": 12.41, "train_min": 12.089, "acc": 0.440},
    "resnet50": {"params": 23_587_712, "trainable": 525_572, "load_s": 11.64, "train_min": 12.040, "acc": 0.260},
}
SEED_TABLE2 = {  # per class: (aug acc, aug loss, no-aug acc, no-aug loss)
    25: (0.580, 1.280, 0.345, 8.801),
    50: (0.620, 1.306, 0.570, 1.343),
    100: (0.710, 1.003, 0.690, 1.067),
    150: (0.760, 0.761, 0.760, 0.8935),
}


@dataclass
class StudyConfig:
    """A study, as read from TOML. Relative paths are relative to the config file's folder."""

    name: str
    data: Path
    manifest: Path | None = None
    group_by: str | None = None
    test_size: float = 0.25
    seeds: int = 5
    limit_per_class: int | None = None
    backbones: list[str] = field(default_factory=lambda: ["available"])
    heads: list[str] = field(default_factory=lambda: ["mlp", "logreg", "svm"])
    pool: str = "avg"
    epochs: int = 30
    table2_backbone: str = "best"
    table2_head: str = "mlp"
    per_class: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 25, 50, 100, 150])
    augment_modes: list[bool] = field(default_factory=lambda: [False, True])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weights: dict[str, str] = field(default_factory=dict)
    workers: int | None = None  # processes for the runs (None: one per core, at most 4)
    engine: str = "local"
    master: str | None = None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> StudyConfig:
        """Read and validate a study config; errors name the key and the allowed values."""
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise TransferlabError(f"{path}: no such study config") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TransferlabError(f"{path}: not valid TOML ({exc})") from None
        base = path.parent

        def rel(p: str | None) -> Path | None:
            return None if p is None else (Path(p) if os.path.isabs(p) else (base / p).resolve())

        known = {
            "name",
            "data",
            "manifest",
            "group_by",
            "test_size",
            "seeds",
            "limit_per_class",
            "table1",
            "table2",
            "augment",
            "weights",
            "workers",
            "engine",
            "master",
        }
        unknown = sorted(set(doc) - known)
        if unknown:
            raise TransferlabError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        if "data" not in doc:
            raise TransferlabError(f'{path}: needs data = "FOLDER"')
        t1, t2 = doc.get("table1", {}), doc.get("table2", {})
        cfg = cls(
            name=str(doc.get("name", path.stem)),
            data=rel(doc["data"]),  # type: ignore[arg-type]
            manifest=rel(doc.get("manifest")),
            group_by=doc.get("group_by"),
            test_size=float(doc.get("test_size", 0.25)),
            seeds=int(doc.get("seeds", 5)),
            limit_per_class=doc.get("limit_per_class"),
            backbones=list(t1.get("backbones", ["available"])),
            heads=list(t1.get("heads", ["mlp", "logreg", "svm"])),
            pool=str(t1.get("pool", "avg")),
            epochs=int(t1.get("epochs", 30)),
            table2_backbone=str(t2.get("backbone", "best")),
            table2_head=str(t2.get("head", "mlp")),
            per_class=[int(n) for n in t2.get("per_class", [1, 3, 5, 10, 25, 50, 100, 150])],
            augment_modes=[bool(a) for a in t2.get("augment", [False, True])],
            augment=AugmentConfig.from_dict(doc.get("augment", {})),
            weights={k: str(rel(v)) for k, v in doc.get("weights", {}).items()},
            workers=None if doc.get("workers", "auto") == "auto" else doc.get("workers"),
            engine=str(doc.get("engine", "local")),
            master=doc.get("master"),
        )
        if cfg.workers is not None and (not isinstance(cfg.workers, int) or cfg.workers < 1):
            raise TransferlabError(f'{path}: workers = {cfg.workers!r}; a positive number of processes, or "auto"')
        from .engines import ENGINES

        if cfg.engine not in ENGINES:
            raise TransferlabError(f"{path}: engine = {cfg.engine!r}; choose one of: {', '.join(ENGINES)}")
        if cfg.master is not None and cfg.engine != "spark":
            raise TransferlabError(f'{path}: master = {cfg.master!r} applies to engine = "spark" only')
        if cfg.seeds < 1:
            raise TransferlabError(f"{path}: seeds = {cfg.seeds}; need at least 1 (5 for the seed study)")
        from .heads import HEADS

        for h in [*cfg.heads, cfg.table2_head]:
            if h not in HEADS:
                raise TransferlabError(f"{path}: head {h!r} unknown; choose from {', '.join(HEADS)}")
        return cfg


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


def mean_ci(values: Any) -> tuple[float, float, float]:
    """Mean and 95% t-interval (lower, upper) of repeated-seed results."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return (float("nan"),) * 3
    m = float(a.mean())
    if len(a) < 2 or a.std(ddof=1) == 0:
        return m, m, m
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return m, m - half, m + half


def _fmt_ci(values: Any) -> str:
    m, lo, hi = mean_ci(values)
    return "—" if np.isnan(m) else f"{m:.3f} ± {(hi - lo) / 2:.3f}"


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
    from .intake import attach_manifest, intake

    got = intake(cfg.data, cache_dir=cache_root, progress=reporter.wrap)
    table = got.table
    if cfg.manifest is not None:
        table = attach_manifest(table, cfg.manifest, got.root)
    if cfg.group_by is not None and cfg.group_by not in table.columns:
        raise TransferlabError(f"group_by = {cfg.group_by!r}: no such column; add a manifest with it")
    if cfg.limit_per_class:
        table = table.sort_values("path").groupby("label", group_keys=False).head(cfg.limit_per_class)
        table = table.reset_index(drop=True)
    return table


def _resolve_backbones(cfg: StudyConfig) -> tuple[list[str], dict[str, str]]:
    from .backbones import get_backbone_cfg, list_backbones

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
) -> Any:
    from .api import Classifier

    params: dict[str, Any] = {"random_state": seed} if head in ("mlp", "svm") else {}
    if head == "mlp":
        params["epochs"] = cfg.epochs
    return Classifier(
        backbone,
        head,
        pool=cfg.pool,
        head_params=params,
        weights=cfg.weights.get(backbone),
        cache_dir=cache_dir,
        use_cache=use_cache,
        verbose=verbose,
        engine=engine,
    )


def _run_one(
    cfg: StudyConfig, table: pd.DataFrame, cell: Cell, seed: int, cache_dir: Any, use_cache: bool
) -> dict[str, Any]:
    """One (cell, seed): a fresh split, a head fitted on cached features, evaluated on the held-out side."""
    from .api import fit_evaluate
    from .split import split_table

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

    from ._runtime import tune_allocator

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
    from .cache import default_cache_dir

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
    from .engines import get_engine

    engine = get_engine(cfg.engine, cfg.master)  # one engine (one SparkSession) for every run of the study

    featurizers: dict[str, Any] = {}  # one classifier per backbone: its network is built once, for both passes

    def backbone_facts(backbone: str, augmented: bool = False) -> dict[str, Any]:
        if backbone not in featurizers:
            featurizers[backbone] = _classifier(
                cfg, backbone, "logreg", 0, cache_dir, use_cache, verbose=verbose, engine=engine
            )
        clf = featurizers[backbone]
        if backbone not in facts:
            t = time.perf_counter()
            bb = clf.backbone_()
            _ = bb.module
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            featurize = clf.featurize_faces if clf.is_face_model else clf.featurize
            featurize(table["path"].tolist(), table["content_hash"].tolist())
            facts[backbone] = {
                "params": bb.cfg.num_params,
                "feature_dim": bb.cfg.feature_shape[0]
                if cfg.pool == "avg" or clf.is_face_model
                else int(np.prod(bb.cfg.feature_shape)),
                "load_s": load_s,
                "featurize_s": time.perf_counter() - t,
                **clf.last_feature_stats,
            }
            rep.info(
                f"{backbone}: features {facts[backbone]['computed']} computed, "
                f"{facts[backbone]['cached']} cached ({facts[backbone]['featurize_s']:.1f} s)"
            )
        if augmented and "augmented_s" not in facts[backbone] and use_cache:
            # Every photo's augmented copies, once: each seed's training side is a subset of them.
            aug = AugmentedImages(table["path"].tolist(), table["content_hash"].tolist(), cfg.augment)
            t = time.perf_counter()
            (clf.featurize_faces if clf.is_face_model else clf.featurize)(aug, aug.keys())
            facts[backbone]["augmented_s"] = time.perf_counter() - t
            st = clf.last_feature_stats
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
        import multiprocessing as mp

        # spawn, not fork: forking a process whose OpenCV/OpenMP threads hold locks deadlocks the children.
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(cfg, table, cache_dir, use_cache)) as pool:
            for row in pool.imap_unordered(_worker_run, jobs):
                log.add(row)
                advance(1)

    table1 = [Cell("table1", b, h, None, False) for b in backbones for h in cfg.heads]
    n_runs = (len(table1) + len(cfg.per_class) * len(cfg.augment_modes)) * cfg.seeds
    with rep.task("study", n_runs) as advance:
        for b in backbones:
            backbone_facts(b)
        run_cells(table1, advance)
        runs = log.frame()
        t2_backbone = cfg.table2_backbone
        if t2_backbone == "best":
            t1 = runs[(runs["table"] == "table1") & (runs["head"] == cfg.table2_head)]
            if t1.empty:
                t1 = runs[runs["table"] == "table1"]
            t2_backbone = t1.groupby("backbone")["accuracy"].mean().idxmax()
        table2 = [Cell("table2", t2_backbone, cfg.table2_head, n, a) for n in cfg.per_class for a in cfg.augment_modes]
        backbone_facts(t2_backbone, augmented=any(cfg.augment_modes))
        run_cells(table2, advance)
    runs = log.frame()
    seconds = time.perf_counter() - t_start
    atomic_write_text(
        out / "facts.json", json.dumps({"backbones": facts, "skipped": skipped, "seconds": seconds}, indent=2)
    )
    from .study_report import write_study_report

    report = write_study_report(out, cfg, runs, facts, skipped, t2_backbone, table, seconds)
    return StudyResult(out, report, runs, skipped, seconds)
