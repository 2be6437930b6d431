"""Command line: a thin layer over :mod:`transferlab.api` that parses flags and prints."""

from __future__ import annotations

import enum
import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .._runtime import hub_offline_unless_asked, tune_allocator
from ..errors import TransferlabError
from ..evaluate import seen_note
from ..options import EngineName, FaceChoice, FacesOutput, HeadName, Pool, Runtime
from ..report import summary_text
from ._shared import options_from_flags as _options
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
    Weights,
)
from .labels import check_labels

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without a "<bool>" column, paragraphs wrapped as written
    help="Turn a folder of labelled photos into an evaluated classifier: cached pretrained features + a small head.",
)


def _engine(name: EngineName, master: str | None, partitions: int | None = None) -> Any:
    from ..engines import get_engine

    if name != EngineName.spark and partitions is not None:
        raise TransferlabError("--partitions applies to --engine spark only")
    return get_engine(name.value, master, **({"partitions": partitions} if partitions is not None else {}))


def _console() -> Any:
    """Console for tables: terminal width on a terminal, never truncated when piped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 10_000, soft_wrap=True)


@app.command()
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
    """
    hub_offline_unless_asked(download)
    t = time.perf_counter()
    if epochs is not None and head != HeadName.mlp:
        raise TransferlabError(f"--epochs applies to the mlp head only, not {head.value!r}")
    head_params = {"epochs": epochs} if epochs is not None else {}
    opts = _options(locals(), head_params=head_params, use_cache=not no_cache, num_workers=workers, verbose=not quiet)
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
        engine=_engine(engine, master, partitions),
    )
    if as_json:
        _out(json.dumps(res.metrics))
        return
    _out(f"model: {res.out}  ({opts.backbone} + {opts.head.value}, {res.metrics['n']} held-out images)")
    _out(summary_text(res.metrics, group_by))
    st = res.feature_stats
    rate = f", {st['computed'] / st['seconds']:.0f} photos/s" if st["computed"] and st.get("seconds") else ""
    _out(f"features: {st['computed']} computed, {st['cached']} from cache{rate}")
    _out(f"report: {res.report_path}   total {time.perf_counter() - t:.1f} s")


def _load(flags: dict[str, Any], **extra: Any) -> Any:
    """Load ``flags["model"]`` with the runtime flags of the command (its ``locals()``); unless ``--quiet``, say in
    one line on stderr when features here are made differently from the model's training."""
    from ..pipeline import load

    clf = load(
        flags["model"],
        use_cache=not flags["no_cache"],
        runtime=flags["runtime"].value,
        weights=flags["weights"],
        cache_dir=flags["cache_dir"],
        verbose=not flags["quiet"] and not flags["as_json"],
        device=flags["device"],
        recipe=flags["recipe"],
        **extra,
    )
    if clf.recipe_note_ and not flags["quiet"]:
        sys.stderr.write(clf.recipe_note_ + "\n")
    return clf


@app.command()
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
    """Evaluate a saved model on every usable image under DATA."""
    hub_offline_unless_asked(False)
    clf = _load(locals())
    metrics = clf.evaluate(data, manifest=manifest, group_by=group_by)
    if (note := seen_note(metrics)) and not quiet:  # on stderr: stdout stays one JSON object with --json
        sys.stderr.write(note + "\n")
    _out(json.dumps(metrics) if as_json else summary_text(metrics, group_by))


app.command("check-labels")(check_labels)  # defined in labels.py: this module is at its size limit


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Model directory written by `transferlab train`.")],
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Show only the K most probable classes.")] = None,
    faces: Annotated[
        FacesOutput, typer.Option("--faces", help="Face models: 'best' (one answer per image) or 'all' (one per face).")
    ] = FacesOutput.best,
    unknown_threshold: Annotated[
        float | None,
        typer.Option(
            "--unknown-threshold",
            help="Face models: similarity to the best class below which a face is 'unknown' "
            "(default: calibrated on the training data, stored in model.json).",
        ),
    ] = None,
    weights: Weights = None,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    device: Device = "auto",
    runtime: RuntimeOpt = Runtime.torch,
    recipe: RecipeOpt = None,
    quiet: Quiet = False,
    engine: Engine = EngineName.local,
    master: Master = None,
    partitions: Partitions = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write a Parquet predictions table (path, label, probabilities, error, box, face_score) to this "
            "folder instead of printing; with --engine spark the workers predict and write it.",
        ),
    ] = None,
) -> None:
    """Predict the class of each image; unusable files get an error line and the run continues.

    Face models answer with the face that most confidently matches a known class (other faces are 'unknown'
    unless --faces all), 'unknown' when no face is close enough to a class, and 'no face found' without a face.
    """
    hub_offline_unless_asked(False)
    from .._files import expand_paths
    from ..predictions import display_rows, prediction_counts

    files = expand_paths(paths)
    if not files:
        raise TransferlabError("no files found in the given paths")
    eng = _engine(engine, master, partitions)
    if out is not None and (faces != FacesOutput.best or unknown_threshold is not None or top_k is not None):
        raise TransferlabError("--out writes the best answer per image; drop --faces/--unknown-threshold/--top-k")
    clf = _load(locals(), engine=eng)
    if out is not None:
        summary = eng.predict_table(clf, files, out)
        if as_json:
            _out(json.dumps({"out": str(summary.out), "rows": summary.rows, "errors": summary.errors}))
        else:
            _out(f"predictions: {summary.out}  ({summary.rows} rows, {summary.errors} errors, {summary.seconds:.1f} s)")
        if summary.rows and summary.errors == summary.rows:
            raise typer.Exit(1)
        return
    preds = clf.predict_images(files, unknown_threshold=unknown_threshold)
    every_face = faces == FacesOutput.all
    if as_json:
        for p in preds:
            for line in p.face_dicts(top_k) if every_face else [p.to_dict(top_k)]:
                _out(json.dumps(line))
    else:
        from rich.table import Table

        table = Table("file", "label", "probabilities", "face box (x, y, w, h)", box=None, pad_edge=False)
        for cells in display_rows(preds, top_k or len(clf.classes_), every_face):
            table.add_row(*cells)
        _console().print(table)
    counts = prediction_counts(preds)
    if not quiet:  # on stderr: stdout stays one JSON object per image with --json
        skipped = ", ".join(f"{k} {v}" for k, v in counts["skipped"].items())
        sys.stderr.write(
            f"predict: {counts['found']} found, {counts['used']} used"
            + (f", skipped {sum(counts['skipped'].values())} ({skipped})" if skipped else "")
            + "\n"
        )
    if all(p.error for p in preds):
        raise typer.Exit(1)


@app.command()
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
    engine: Engine = EngineName.local,
    master: Master = None,
    partitions: Partitions = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """Compute features for every image of DATA into a Parquet table: path, content_hash, label, features, error.

    Both engines write the same table and share the feature cache. An unreadable image gets a row with its error
    and no features; the run continues.
    """
    hub_offline_unless_asked(download)
    verbose = not quiet and not as_json
    opts = _options(locals(), use_cache=not no_cache, num_workers=workers, verbose=verbose)
    eng = _engine(engine, master, partitions)
    from ..api import featurize_table

    summary = featurize_table(data, out, options=opts, engine=eng)
    doc = summary.to_dict(engine.value)
    if as_json:
        _out(json.dumps(doc))
        return
    counts = f", {summary.n_computed} computed, {summary.n_cached} from cache" if summary.n_computed is not None else ""
    _out(f"features: {summary.out}  ({summary.rows} rows, {summary.errors} errors{counts}; {summary.seconds:.1f} s)")


@app.command()
def study(
    config: Annotated[Path, typer.Argument(help="Study config (TOML), e.g. studies/seed.toml.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (runs.csv, report.md, plots); resumed if present.")],
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    quiet: Quiet = False,
) -> None:
    """Run the seed's study — Table 1 (source models × heads) and Table 2 (images per class × augmentation) —
    with repeated seeds and 95% intervals. Rerunning after an interruption skips finished runs."""
    hub_offline_unless_asked(False)
    from ..study import run_study

    res = run_study(config, out, cache_dir=cache_dir, use_cache=not no_cache, verbose=not quiet)
    _out(f"study: {len(res.runs)} runs in {res.seconds:.0f} s; report: {res.report}")
    if res.skipped_backbones:
        _out("skipped backbones: " + ", ".join(res.skipped_backbones))


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="Model directory written by `transferlab train`.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the page to your network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest photo accepted, in MB; larger uploads get HTTP 413.")
    ] = 10.0,
    weights: Weights = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log errors only (no request log).")] = False,
) -> None:
    """Serve MODEL as the "Who's my President?" web page (/) and a JSON API (/api/predict, /api/model, /docs).

    The model is loaded once at start. Uploaded photos are processed in memory and never stored, cached or logged.
    """
    hub_offline_unless_asked(False)
    if max_upload_mb <= 0:
        raise TransferlabError(f"--max-upload-mb {max_upload_mb:g}: must be positive")
    try:
        import uvicorn

        from ..serve import check_port_free, create_app
    except ImportError as exc:
        raise TransferlabError(
            f"transferlab serve needs {exc.name}; run `pip install -r requirements.txt` "
            "(or `pip install 'transferlab[serve]'`)"
        ) from None

    check_port_free(host, port)  # before the model loads, so a busy port fails in a second, in one line
    web = create_app(model, max_upload_bytes=int(max_upload_mb * 1024 * 1024), weights=weights)
    if note := web.state.service.clf.recipe_note_:
        sys.stderr.write(note + "\n")
    sys.stderr.write(f"serving {model} at http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)\n")
    uvicorn.run(web, host=host, port=port, log_level="warning" if quiet else "info", server_header=False)


@app.command()
def export(
    model: Annotated[
        Path, typer.Argument(help="Model directory written by `transferlab train` (whole-image backbone).")
    ],
    onnx: Annotated[
        Path, typer.Option("--onnx", help="ONNX file to write: uint8 pixels (N, H, W, 3) → probabilities.")
    ],
    weights: Weights = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Export backbone + head as one ONNX graph, checked against the torch model with onnxruntime."""
    hub_offline_unless_asked(False)
    from ..export import export_onnx

    res = export_onnx(model, onnx, weights=weights)
    info = res.to_dict()
    if as_json:
        _out(json.dumps(info))
        return
    _out(
        f"wrote {res.path} ({res.bytes / 1e6:.1f} MB): pixels uint8 {list(res.input_shape)} → probabilities "
        f"over {', '.join(res.classes)}"
    )
    _out(f"onnxruntime vs torch: max |difference| {res.max_abs_diff:.1e}; preprocessing is in the file's metadata")


@app.command()
def backbones(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List registered backbones: parameters, feature shape, and whether weights are available here."""
    hub_offline_unless_asked(False)
    from ..backbones import catalogue

    rows = catalogue()
    if as_json:
        _out(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("backbone", "params", "features (C×h×w)", "input", "weights here", "source", box=None)
    for r in rows:
        table.add_row(
            r["name"],
            f"{r['params']:,}" if r["params"] else "n/a",
            "×".join(map(str, r["feature_shape"])),
            f"{r['input_size'][-1]} px",
            "[green]yes[/green]" if r["weights_available"] else "[yellow]no[/yellow] (--weights FILE or --download)",
            r["weights_source"],
        )
    _console().print(table)


# What a wrong choice is called in its one-line error ("--head forest: unknown head; choose one of: ...").
_NOUNS = {"--face-choice": "face choice", "--faces": "--faces value"}


def _usage_error(exc: typer.TyperException) -> str:
    """One line for a command-line mistake: the option, the value and what is allowed."""
    param = getattr(exc, "param", None)
    kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        opt = max(param.opts, key=len)  # type: ignore[union-attr]
        found = re.search(r"(\S+) is not one of", str(getattr(exc, "message", "")))
        value = found.group(1).strip("'\"") if found else "?"
        noun = _NOUNS.get(opt, opt.removeprefix("--"))
        return f"{opt} {value}: unknown {noun}; choose one of: {', '.join(str(m.value) for m in kind)}"
    return str(exc.format_message()).replace("Value error, ", "")  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every user error becomes one line on stderr and exit status 2."""
    from typer.main import get_command

    tune_allocator()
    try:
        code = get_command(app).main(argv, prog_name="transferlab", standalone_mode=False)
    except TransferlabError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    except typer.TyperException as exc:  # a usage mistake: unknown option, bad value, missing argument
        sys.stderr.write(f"error: {_usage_error(exc)}\n")
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; finished features are cached and a rerun resumes from there\n")
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
