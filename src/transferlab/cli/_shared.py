"""Helpers every command uses: one line to stdout, the model's options from a command's flags, a saved model loaded
with a command's runtime flags, the engine a command asked for, and a console for tables."""

from __future__ import annotations

import sys
from typing import Any

from ..choices import EngineName
from ..errors import TransferlabError


def write_line(text: str) -> None:
    """Print one line (or block) to stdout and flush, so pipes see it at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def options_from_flags(flags: dict[str, Any], **values: Any) -> Any:
    """The model's options from a command's flags: those named like an :class:`Options` field, and ``values``."""
    from ..options import Options, validate_options

    return validate_options(**{**{k: v for k, v in flags.items() if k in Options.model_fields}, **values})


def engine_from_flags(name: EngineName, master: str | None, partitions: int | None = None) -> Any:
    """The engine ``--engine``, ``--master`` and ``--partitions`` ask for."""
    from ..engines import get_engine

    if name != EngineName.spark and partitions is not None:
        raise TransferlabError("--partitions applies to --engine spark only")
    return get_engine(name.value, master, **({"partitions": partitions} if partitions is not None else {}))


def load_model(flags: dict[str, Any], **extra: Any) -> Any:
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


def console() -> Any:
    """Console for tables: at most 100 columns on a terminal (cells wrap), never truncated when piped."""
    import shutil

    from rich.console import Console

    if sys.stdout.isatty():
        return Console(width=min(100, shutil.get_terminal_size().columns))
    return Console(width=10_000, soft_wrap=True)


def licence_note(backbone: str) -> str | None:
    """One line when a backbone's weights may not be used commercially, else None."""
    from ..backbones import get_backbone_cfg

    cfg = get_backbone_cfg(backbone)
    if not cfg.noncommercial:
        return None
    return (
        f"note: {backbone}'s weights are licensed {cfg.license}: non-commercial use only, and so is a model made "
        "with them"
    )
