"""Helpers every command uses: one line to stdout, and the model's options from a command's flags."""

from __future__ import annotations

import sys
from typing import Any

from ..options import Options, validate_options


def write_line(text: str) -> None:
    """Print one line (or block) to stdout and flush, so pipes see it at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def options_from_flags(flags: dict[str, Any], **values: Any) -> Options:
    """The model's options from a command's flags: those named like an :class:`Options` field, and ``values``."""
    return validate_options(**{**{k: v for k, v in flags.items() if k in Options.model_fields}, **values})
