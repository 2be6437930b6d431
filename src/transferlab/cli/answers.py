"""Commands that use a saved model: ``predict``, ``serve`` (the web page and API) and ``export`` (ONNX)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .._runtime import hub_offline_unless_asked
from ..choices import EngineName, FacesOutput, Runtime
from ..errors import TransferlabError
from ._shared import console, engine_from_flags, load_model
from ._shared import write_line as _out
from .flags import CacheDir, Device, Engine, Master, NoCache, Partitions, Quiet, RecipeOpt, RuntimeOpt, Weights


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
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Say why: the nearest training photos, the similarity to each class and the margin to the "
            "unknown threshold.",
        ),
    ] = False,
    neighbours: Annotated[
        int, typer.Option("--neighbours", min=1, help="With --explain: how many nearest training photos.")
    ] = 3,
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

    \b
    Example:
      transferlab predict runs/presidents photo.jpg folder/ --faces all
    """
    hub_offline_unless_asked(False)
    from .._files import expand_paths
    from ..predictions import display_rows, prediction_counts

    if not (model / "model.json").is_file():  # the model first: its one-line error says what a model folder is
        from ..artifact import load_artifact

        load_artifact(model)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:  # a path that is not there is a usage error (exit 2), not an unreadable photo
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TransferlabError(f"{missing[0]}: no such file or folder{more}")
    files = expand_paths(paths)
    if not files:
        raise TransferlabError("no files found in the given paths")
    eng = engine_from_flags(engine, master, partitions)
    if out is not None and (faces != FacesOutput.best or unknown_threshold is not None or top_k is not None or explain):
        raise TransferlabError(
            "--out writes the best answer per image; drop --faces/--unknown-threshold/--top-k/--explain"
        )
    clf = load_model(locals(), engine=eng)
    if out is not None:
        summary = eng.predict_table(clf, files, out)
        if as_json:
            _out(json.dumps({"out": str(summary.out), "rows": summary.rows, "errors": summary.errors}))
        else:
            _out(f"predictions: {summary.out}  ({summary.rows} rows, {summary.errors} errors, {summary.seconds:.1f} s)")
        if summary.rows and summary.errors == summary.rows:
            raise typer.Exit(1)
        return
    preds = clf.predict_images(files, unknown_threshold=unknown_threshold, explain=neighbours if explain else 0)
    every_face = faces == FacesOutput.all
    if as_json:
        for p in preds:
            for line in p.face_dicts(top_k) if every_face else [p.to_dict(top_k)]:
                _out(json.dumps(line))
    else:
        from rich.table import Table

        from .._files import display_names

        columns = ["file", "answer", "probability" if not top_k else "probabilities", "why"]
        table = Table(*columns, *(["face (* answered): x, y, w, h"] if every_face else []), box=None, pad_edge=False)
        shown = display_names(paths, files)
        for cells in display_rows(preds, shown, top_k, every_face):
            table.add_row(*cells)
        console().print(table)
        for p, name in zip(preds, shown, strict=True):
            if p.explanation is not None:
                _out(f"{name} → {p.label}:\n" + "\n".join(f"  {line}" for line in p.explanation.lines()))
    counts = prediction_counts(preds)
    if not quiet:  # on stderr: stdout stays one JSON object per image with --json
        skipped = ", ".join(f"{k} {v}" for k, v in counts["skipped"].items())
        sys.stderr.write(
            f"predict: {counts['found']} found, {counts['used']} used"
            + (f", skipped {sum(counts['skipped'].values())} ({skipped})" if skipped else "")
            + "\n"
        )
    if any(p.error is not None and p.reason != "no face" for p in preds):
        raise typer.Exit(1)  # some inputs could not be used (each has its error line); "no face found" is an answer


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
    gallery: Annotated[
        Path | None,
        typer.Option(
            "--gallery",
            help="The folder the model was trained from: answers show the nearest training faces, read from here.",
        ),
    ] = None,
    admin_token_file: Annotated[
        Path | None,
        typer.Option(
            "--admin-token-file",
            help="Enable POST/DELETE /api/people/{name} (enrol, forget) for requests with this bearer token.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log errors only (no request log).")] = False,
) -> None:
    """Serve MODEL as the "Who's my President?" web page (/) and a JSON API (/api/predict, /api/model, /docs).

    The model is loaded once at start. Uploaded photos are processed in memory and never stored, cached or logged.

    \b
    Example:
      transferlab serve runs/presidents --port 8000
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
    web = create_app(
        model,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        weights=weights,
        gallery_dir=gallery,
        admin_token_file=admin_token_file,
    )
    if note := web.state.service.clf.recipe_note_:
        sys.stderr.write(note + "\n")
    sys.stderr.write(f"serving {model} at http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)\n")
    uvicorn.run(web, host=host, port=port, log_level="warning" if quiet else "info", server_header=False)


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
    """Export backbone + head as one ONNX graph, checked against the torch model with onnxruntime.

    \b
    Example:
      transferlab export runs/mobilenet --onnx model.onnx
    """
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
