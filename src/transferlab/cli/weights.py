"""``transferlab weights``: the weights that no package ships (EdgeFace's), listed, added from a file, or fetched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._shared import console
from ._shared import write_line as _out

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Model weights: list what is here and its licence, add a file you have, or get one from its official address.",
)
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("list")
def list_weights(as_json: AsJson = False) -> None:
    """Every backbone's weights: here or not, where they come from, their licence.

    Example: transferlab weights list
    """
    from ..backbones import weights_rows

    rows = weights_rows()
    if as_json:
        _out(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("backbone", "here", "how to get them", "licence", box=None)
    for r in rows:
        licence = ("[yellow]non-commercial[/yellow] " if r["noncommercial"] else "") + r["license"]
        table.add_row(r["backbone"], "[green]yes[/green]" if r["here"] else "[yellow]no[/yellow]", r["how"], licence)
    console().print(table)


def _report(stored: Path, names: list[str], as_json: bool) -> None:
    from ..backbones import get_backbone_cfg

    cfg = get_backbone_cfg(names[0])
    if as_json:
        _out(json.dumps({"path": str(stored), "backbones": names, "license": cfg.license}))
        return
    _out(f"weights: {stored}  (for {', '.join(names)}; licence: {cfg.license})")
    if cfg.noncommercial:
        _out("note: these weights are licensed for non-commercial use only")


@app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help="A weights file, e.g. edgeface_xs_q.pt from its official address.")],
    as_json: AsJson = False,
) -> None:
    """Check FILE against the pinned sha256 of the backbones that use it and copy it into the weights store.

    Example: transferlab weights add ~/Downloads/edgeface_xs_q.pt   (then --backbone edgeface_xs works)
    """
    from ..backbones import add_weights

    stored, names = add_weights(file)
    _report(stored, names, as_json)


@app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="A backbone whose weights are one pinned file, e.g. edgeface_xs.")],
    as_json: AsJson = False,
) -> None:
    """Download NAME's weights file from its official address, check its sha256 and store it.

    Example: transferlab weights get edgeface_xs
    """
    from ..backbones import get_weights

    stored, names = get_weights(name)
    _report(stored, names, as_json)
