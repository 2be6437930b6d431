"""Commands that build and judge models: ``train``, ``evaluate`` and ``check-labels``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .._runtime import hub_offline_unless_asked
from ..choices import EngineName, FaceChoice, HeadName, Pool, Runtime
from ..errors import TransferlabError
from ._shared import engine_from_flags, licence_note, load_model, options_from_flags
from ._shared import write_line as _out
from .flags import (
    BackboneOpt,
    CacheDir,
    Device,
    Download,
    Engine,
    GroupBy,
    HeadOpt,
    Manifest,
    Master,
    NoCache,
    Partitions,
    PoolOpt,
    Quiet,
    RecipeOpt,
    RuntimeOpt,
    SecondLook,
    Weights,
)


def train(
    data: Annotated[Path, typer.Argument(help="Folder with one subfolder per class, or a CSV with path,label.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (model.json, report.md, plots).")],
    backbone: BackboneOpt = "sface",
    head: HeadOpt = HeadName.logreg,
    pool: PoolOpt = Pool.avg,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs for the mlp head (default 30).")] = None,
    test_size: Annotated[float, typer.Option("--test-size", help="Fraction held out for evaluation.")] = 0.25,
    per_class: Annotated[
        int | None, typer.Option("--per-class", help="Use only N training images per class (balanced).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and the head.")] = 0,
    manifest: Manifest = None,
    group_by: GroupBy = None,
    weights: Weights = None,
    download: Download = False,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Featurization batch size (default: 32 on CPU, sized to GPU memory)."),
    ] = None,
    device: Device = "auto",
    runtime: RuntimeOpt = Runtime.torch,
    recipe: RecipeOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Image decoding processes (default: automatic); face backbones on the CPU: N single-thread "
            "processes run the whole face pipeline instead of one thread per core.",
        ),
    ] = None,
    face_choice: Annotated[
        FaceChoice,
        typer.Option(
            "--face-choice",
            help="Face backbones: 'mil' trains on the face that carries the label and answers with the most "
            "confident known face; 'largest' always uses the largest face.",
        ),
    ] = FaceChoice.mil,
    fallback: Annotated[
        str | None,
        typer.Option(
            "--fallback",
            help="Face backbones: a whole-image backbone (e.g. mobilenet_v2) that answers for photos without a "
            "detectable face, instead of skipping them.",
        ),
    ] = None,
    second_look: SecondLook = True,
    finetune: Annotated[
        int,
        typer.Option(
            min=0, help="Train the last N blocks of the network with the head (0: frozen); sface: its embedder's."
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the held-out metrics as JSON.")] = False,
    quiet: Quiet = False,
    engine: Engine = EngineName.local,
    master: Master = None,
    partitions: Partitions = None,
) -> None:
    """Train on the training side of DATA, evaluate on the held-out side, and save the model with report.md.

    With a face backbone (the default, sface) every photo goes through face detection: photos without a face are
    skipped with the reason 'no face', and with several faces the one that carries the label is learned.

    \b
    Example:
      transferlab train data/presidents --out runs/presidents --manifest data/presidents/manifest.csv --group-by kind
    """
    hub_offline_unless_asked(download)
    t = time.perf_counter()
    if epochs is not None and head != HeadName.mlp:
        raise TransferlabError(f"--epochs applies to the mlp head only, not {head.value!r}")
    head_params = {"epochs": epochs} if epochs is not None else {}
    opts = options_from_flags(
        locals(), head_params=head_params, use_cache=not no_cache, num_workers=workers, verbose=not quiet
    )
    from ..api import train as api_train

    res = api_train(
        data,
        out,
        options=opts,
        test_size=test_size,
        per_class=per_class,
        seed=seed,
        manifest=manifest,
        group_by=group_by,
        engine=engine_from_flags(engine, master, partitions),
    )
    if (note := licence_note(opts.backbone)) is not None:  # on stderr: stdout stays one JSON object with --json
        sys.stderr.write(note + "\n")
    if as_json:
        _out(json.dumps(res.metrics.to_dict()))
        return
    _out(f"model: {res.out}  ({opts.backbone} + {opts.head.value}, {res.metrics.n} held-out images)")
    from ..report import summary_text

    _out(summary_text(res.metrics, group_by))
    st = res.feature_stats
    rate = f", {st['computed'] / st['seconds']:.0f} photos/s" if st["computed"] and st.get("seconds") else ""
    if st.get("build_seconds", 0) >= 0.5:
        rate += f" (+ {st['build_seconds']:.1f} s building the networks, once)"
    _out(f"features: {st['computed']} computed, {st['cached']} from cache{rate}")
    _out(f"report: {res.report_path}   total {time.perf_counter() - t:.1f} s")


def evaluate(
    model: Annotated[Path, typer.Argument(help="Model directory written by `transferlab train`.")],
    data: Annotated[Path, typer.Argument(help="Folder with one subfolder per class (or a CSV with path,label).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    manifest: Manifest = None,
    group_by: GroupBy = None,
    weights: Weights = None,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    device: Device = "auto",
    runtime: RuntimeOpt = Runtime.torch,
    recipe: RecipeOpt = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a saved model on every usable image under DATA.

    \b
    Example:
      transferlab evaluate runs/presidents more_photos/ --json
    """
    hub_offline_unless_asked(False)
    clf = load_model(locals())
    metrics = clf.evaluate(data, manifest=manifest, group_by=group_by)
    from ..evaluate import seen_note

    if (note := seen_note(metrics)) and not quiet:  # on stderr: stdout stays one JSON object with --json
        sys.stderr.write(note + "\n")
    from ..report import summary_text

    _out(json.dumps(metrics.to_dict()) if as_json else summary_text(metrics, group_by))


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
    second_look: SecondLook = True,
    show: Annotated[int, typer.Option(min=0, help="Doubted photos to list (all are in --out's CSV).")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Quiet = False,
) -> None:
    """List the photos whose label the model doubts: each photo of DATA is answered by a model trained on the
    other folds, and those not answered with their own label are listed, most doubtful first (answered as another
    class, then `unknown`, then no face found). Nothing is relabelled: look at them, then fix the folder.

    \b
    Example:
      transferlab check-labels data/presidents --out runs/check
    """
    hub_offline_unless_asked(download)
    verbose = not quiet and not as_json
    opts = options_from_flags(locals(), use_cache=not no_cache, num_workers=workers, verbose=verbose)
    from ..label_check import check_labels as run_check

    check = run_check(data, folds=folds, seed=seed, manifest=manifest, options=opts)
    written = check.write(out) if out is not None else {}
    if as_json:
        _out(json.dumps({**check.to_dict(), "files": {k: str(v) for k, v in written.items()}}))
        return
    _out(check.summary(f"{opts.backbone} + {opts.head.value}", show, written))
