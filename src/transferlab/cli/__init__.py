"""Command line: a thin layer over the Python API that parses flags and prints. The commands live by group
(:mod:`.training`, :mod:`.answers`, :mod:`.data`); this module registers them and turns every user error into one
line and an exit status."""

from __future__ import annotations

import enum
import re
import sys

import typer

from .._runtime import tune_allocator
from ..errors import TransferlabError
from .answers import export, predict, serve
from .data import backbones, featurize, study
from .people import enroll, forget
from .training import check_labels, evaluate, train
from .weights import app as weights_app

# "\b" keeps Click from rewrapping the paragraph that follows it.
_EXAMPLES = """\b
Examples:
  transferlab train photos/ --out model/        photos/<class>/*.jpg in, model out
  transferlab evaluate model/ more_photos/      accuracy on photos it never saw
  transferlab predict model/ photo.jpg folder/  who is in each photo (--json)
  transferlab check-labels photos/ --out check/ photos whose label it doubts
  transferlab enroll model/ lincoln lincoln/    a new person, in seconds
  transferlab forget model/ lincoln             and gone again, from the cache too
  transferlab serve model/                      the page at http://127.0.0.1:8000/

Exit status: 0 done; 1 some inputs could not be used (each is reported); 2 a usage error or a missing input.
"""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without a "<bool>" column, paragraphs wrapped as written
    help="Turn a folder of labelled photos into an evaluated classifier: cached pretrained features + a small head.",
    epilog=_EXAMPLES,
    context_settings={"max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

        sys.stdout.write(f"transferlab {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Turn a folder of labelled photos into an evaluated classifier: cached pretrained features + a small head."""


# One line each in the command list (Click cuts longer ones at the terminal's width); `COMMAND --help` says more.
for _name, _command, _short in (
    ("train", train, "Train and evaluate a model on a folder of labelled photos."),
    ("evaluate", evaluate, "Accuracy of a saved model on other labelled photos."),
    ("check-labels", check_labels, "List the photos whose label the model doubts."),
    ("predict", predict, "Say who is in each photo (table, JSON or Parquet)."),
    ("featurize", featurize, "Write a Parquet table of features (local or Spark)."),
    ("study", study, "Run the seed's study: Tables 1 and 2 with intervals."),
    ("enroll", enroll, "Add photos of a person to a model, without retraining."),
    ("forget", forget, "Remove a person or a photo from a model and the cache."),
    ("serve", serve, "Serve the web page and JSON API for a model."),
    ("export", export, "Export a whole-image model as one ONNX graph."),
    ("backbones", backbones, "List backbones, their weights here and licences."),
):
    app.command(_name, short_help=_short)(_command)
app.add_typer(weights_app, name="weights", short_help="List, add or get model weights (e.g. EdgeFace).")


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
