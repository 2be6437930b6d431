"""Commands that change a saved model's people: ``enroll`` (add photos of a person) and ``forget`` (remove a person
or a photo, and their cached features)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ._shared import write_line as _out
from .flags import CacheDir, Quiet


def _per_class(before: dict[str, int], after: dict[str, int]) -> str:
    names = sorted(set(before) | set(after))
    return "  ".join(
        f"{n} {before.get(n, 0)}→{after.get(n, 0)}" if before.get(n, 0) != after.get(n, 0) else f"{n} {after[n]}"
        for n in names
    )


def _threshold(d: dict[str, Any]) -> str:
    a, b = d["unknown_threshold_before"], d["unknown_threshold_after"]
    return "" if a is None else f"unknown threshold {a:.3f} → {b:.3f}"


def enroll(
    model: Annotated[Path, typer.Argument(help="Model directory written by `transferlab train`.")],
    name: Annotated[str, typer.Argument(help="The person: a class the model knows, or a new one.")],
    photos: Annotated[list[Path], typer.Argument(help="Photos of NAME: files and/or folders.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the enrolled model to this folder (default: replace MODEL atomically)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
) -> None:
    """Add photos of a person to a model without retraining from the training folder.

    Features are computed for these photos only; the head, the prototypes and the unknown threshold are refitted
    on the model's gallery plus them. Unreadable files, duplicates (of each other or of photos the model has) and
    photos without a face are skipped and listed. MODEL is replaced in one atomic step (a crash leaves the old or
    the new model); the training report beside it, which no longer describes it, is removed.

    \b
    Example:
      transferlab enroll runs/presidents lincoln photos/lincoln/
    """
    from ..enrolment import enroll_model

    done = enroll_model(model, name, photos, out=out, cache_dir=cache_dir, verbose=not quiet and not as_json)
    d = done.to_dict()
    if as_json:
        _out(json.dumps(d))
    else:
        skipped = ", ".join(f"{k} {v}" for k, v in d["skipped"].items())
        _out(
            f"enrolled {d['added']} photos of {name}"
            + (f" (skipped {skipped})" if skipped else "")
            + f" in {done.model}"
        )
        _out(f"  photos per class: {_per_class(d['per_class_before'], d['per_class_after'])}")
        if _threshold(d):
            _out(f"  {_threshold(d)}")
        for s in d["skipped_files"]:
            _out(f"  skipped {s['path']}: {s['reason']}" + (f" ({s['detail']})" if s["detail"] else ""))
        _out(f"  {d['total_seconds']:.1f} s (features and refit {d['seconds']:.1f} s)")
    unusable = [s for s in d["skipped_files"] if s["reason"] != "duplicate"]
    if unusable:  # exit 1: some inputs could not be used (each is listed); a duplicate is already enrolled
        if not quiet and not as_json:
            sys.stderr.write(f"enroll: {len(unusable)} of the photos could not be used (listed above)\n")
        raise typer.Exit(1)


def forget(
    model: Annotated[Path, typer.Argument(help="Model directory written by `transferlab train`.")],
    name: Annotated[str | None, typer.Argument(help="The person to forget.")] = None,
    photo: Annotated[
        list[Path] | None, typer.Option("--photo", help="Forget this photo (found by its pixels); repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
) -> None:
    """Remove a person, or one photo, from a model and purge their features from the cache.

    The model is refitted on the rest of its gallery and replaced in one atomic step; a forgotten person is never
    answered again. Every cache entry keyed by the photos' content hashes (every backbone and recipe, intake's
    records) is deleted, and the training report beside the model, which names them, is removed.

    \b
    Examples:
      transferlab forget runs/presidents clinton
      transferlab forget runs/presidents --photo photos/obama/0042.jpg
    """
    from ..enrolment import forget_model
    from ..errors import TransferlabError

    if name is not None and photo:
        raise TransferlabError("forget: give a NAME or --photo FILE, not both")
    done = forget_model(model, name, photo or (), cache_dir=cache_dir, verbose=not quiet and not as_json)
    d = done.to_dict()
    if as_json:
        _out(json.dumps(d))
        return
    who = name if name is not None else f"{d['removed_photos']} photo" + ("s" if d["removed_photos"] != 1 else "")
    _out(f"forgot {who}: {d['removed_photos']} gallery photos removed from {done.model}")
    _out(f"  photos per class: {_per_class(d['per_class_before'], d['per_class_after'])}")
    if _threshold(d):
        _out(f"  {_threshold(d)}")
    c = d["cache"]
    _out(
        f"  cache {c['dir']}: {c['feature_entries']} feature entries in {c['feature_spaces']} feature spaces and "
        f"{c['intake_rows']} intake records deleted"
    )
    if d["removed_files"]:
        _out(f"  removed the training report, which named them: {', '.join(d['removed_files'])}")
    _out(f"  {d['total_seconds']:.1f} s")
