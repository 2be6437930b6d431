"""``transferlab check-labels``: the photos whose label the model doubts (:mod:`transferlab.label_check`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .._runtime import hub_offline_unless_asked
from ..options import HeadName, Pool, Runtime
from ._shared import options_from_flags as _options
from ._shared import write_line as _out
from .flags import (
    BackboneOpt,
    CacheDir,
    Device,
    Download,
    HeadOpt,
    Manifest,
    NoCache,
    PoolOpt,
    Quiet,
    RecipeOpt,
    RuntimeOpt,
    Weights,
)


def check_labels(
    data: Annotated[Path, typer.Argument(help="Folder with one subfolder per class, or a CSV with path,label.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for label_check.csv (every photo's answer) and label_check.png."),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="Folds: each photo is answered by a model fitted on the rest.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the folds and the head.")] = 0,
    backbone: BackboneOpt = "sface",
    head: HeadOpt = HeadName.logreg,
    pool: PoolOpt = Pool.avg,
    manifest: Manifest = None,
    weights: Weights = None,
    download: Download = False,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    device: Device = "auto",
    runtime: RuntimeOpt = Runtime.torch,
    recipe: RecipeOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="As for train: decoding processes; face backbones on the CPU: pipeline processes."),
    ] = None,
    show: Annotated[int, typer.Option(min=0, help="Doubted photos to list (all are in --out's CSV).")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Quiet = False,
) -> None:
    """List the photos whose label the model doubts: each photo of DATA is answered by a model trained on the
    other folds, and those not answered with their own label are listed, most doubtful first (answered as another
    class, then `unknown`, then no face found). Nothing is relabelled: look at them, then fix the folder."""
    hub_offline_unless_asked(download)
    verbose = not quiet and not as_json
    opts = _options(locals(), use_cache=not no_cache, num_workers=workers, verbose=verbose)
    from ..label_check import check_labels as run_check

    check = run_check(data, folds=folds, seed=seed, manifest=manifest, options=opts)
    written = check.write(out) if out is not None else {}
    if as_json:
        _out(json.dumps({**check.to_dict(), "files": {k: str(v) for k, v in written.items()}}))
        return
    _out(check.summary(f"{opts.backbone} + {opts.head.value}", show, written))
