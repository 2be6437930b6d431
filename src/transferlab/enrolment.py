"""The jobs that change a saved model: :func:`enroll_model` (add photos of a person) and :func:`forget_model` (remove
a person or a photo, and purge their cached features).

A change reads the model directory, changes the classifier in memory (:mod:`transferlab.people`) and writes the
model back in one atomic step (:meth:`Classifier.save` with ``replace``): a crash leaves the old model or the new
one, never a mix. Nothing is written when the change is refused (one line says why). The training run's report
files in the directory (``report.md``, the plots, ``split.csv``, ``intake.json``, ``metrics.json``) describe the
model as trained, a forgotten person's photos among them, so a change removes them; ``model.json``'s ``changes``
lists what was done.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import people
from ._files import expand_paths
from .artifact import load_artifact
from .cache import default_cache_dir, purge
from .decode import ImageRejected, content_hash, read_rgb
from .engines import as_engine
from .errors import TransferlabError
from .intake import intake
from .pipeline import Classifier, load

# What `transferlab train` writes beside the model: the run's report, which describes the model as trained.
TRAIN_REPORT_FILES = (
    "report.md",
    "confusion.png",
    "per_class.png",
    "mistakes.png",
    "split.csv",
    "intake.json",
    "metrics.json",
)


@dataclass
class ModelChange:
    """What :func:`enroll_model` or :func:`forget_model` did.

    Attributes
    ----------
    change
        The change to the classifier (photos per class before and after, threshold, skipped photos).
    model
        The model directory written.
    removed_files
        Files removed from the model directory (the training run's report).
    purged
        Cache entries removed (``forget``): feature entries, feature spaces touched, intake rows; and the cache.
    seconds
        The whole job, loading and saving included.
    """

    change: people.Change
    model: Path
    removed_files: list[str] = field(default_factory=list)
    purged: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``enroll --json`` / ``forget --json`` object."""
        out = {"model": str(self.model), **self.change.to_dict(), "removed_files": self.removed_files}
        if self.purged is not None:
            out["cache"] = self.purged
        out["total_seconds"] = round(self.seconds, 3)
        return out


def _check_writable(model: Path, out: Path | None) -> Path:
    """The directory a change will write, checked before any work (one line when it cannot be written)."""
    if not (model / "model.json").is_file():  # one line saying what a model folder is; a damaged one: at load
        load_artifact(model)
    target = out if out is not None else model
    if out is not None and out.exists() and any(out.iterdir()) and not (out / "model.json").is_file():
        raise TransferlabError(f"--out {out}: a folder with other files in it; give a new or empty folder")
    probe = target if target.exists() else target.parent
    if not os.access(probe, os.W_OK):
        hint = "pass --out DIR to write the changed model elsewhere" if out is None else "choose another --out"
        raise TransferlabError(f"{target}: read-only; the model was not changed ({hint})")
    return target


@contextlib.contextmanager
def _one_change_at_a_time(model: Path) -> Iterator[None]:
    """Serialise changes to one model directory across processes (an advisory lock on the directory itself, so
    nothing is written and a read-only model can still be enrolled into ``--out``): a second `enroll` or `forget`
    waits, then reads the model the first one wrote, so neither change is lost."""
    import fcntl

    fd = os.open(model, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def commit(clf: Classifier, target: Path) -> list[str]:
    """Write the changed model (one atomic switch) and remove the training run's report from the directory."""
    clf.save(target, replace=True)
    removed = []
    for name in TRAIN_REPORT_FILES:
        f = target / name
        if f.is_file():
            f.unlink()
            removed.append(name)
    return removed


def _gallery_names(name: str, photos: Sequence[Path], files: list[str]) -> list[str]:
    """Gallery paths of enrolled photos, as a training folder would have them: ``NAME/<path within the folder
    given>`` (``NAME/<file name>`` for a file given by name)."""
    out = []
    for f in files:
        base = next((p for p in photos if p.is_dir() and Path(f).is_relative_to(p)), None)
        rel = Path(f).relative_to(base) if base is not None else Path(f).name
        out.append(f"{name}/{Path(rel).as_posix()}")
    return out


def enroll_model(
    model: str | os.PathLike[str],
    name: str,
    photos: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    verbose: bool = False,
    **load_options: Any,
) -> ModelChange:
    """Add the photos (files and folders) to class ``name`` of the model in ``model`` and save it (in place,
    atomically; or into ``out``).

    The photos go through train's intake (unreadable files, exact duplicates: skipped with their reason), then
    photos already in the gallery and (face models) photos without a face are skipped too; features are computed
    for the new photos only, and the head, prototypes and ``unknown`` threshold refitted on the gallery plus them.

    Parameters
    ----------
    model
        A model directory written by ``transferlab train`` (with a gallery).
    name
        The person: a class the model knows, or a new one (:func:`transferlab.people.check_name`).
    photos
        Files and folders of photos of ``name``; the gallery names them ``name/<path within the folder>``.
    out
        Write the enrolled model here instead of replacing ``model``.
    cache_dir, use_cache, verbose, **load_options
        As for :func:`transferlab.load`.

    Returns
    -------
    ModelChange
        What changed (photos per class, threshold, skipped photos) and where it was written.
    """
    t = time.perf_counter()
    name = people.check_name(name)
    model = Path(model)
    target = _check_writable(model, None if out is None else Path(out))
    given = [Path(p) for p in photos]
    missing = [str(p) for p in given if not p.exists()]
    if missing:
        raise TransferlabError(f"{missing[0]}: no such file or folder")
    files = expand_paths(given)
    if not files:
        raise TransferlabError(f"no files found in {', '.join(map(str, given))}; nothing was changed")
    cache = (cache_dir or default_cache_dir()) if use_cache else None
    got = intake([(f, name) for f in files], cache_dir=cache)
    names = dict(zip(files, _gallery_names(name, given, files), strict=True))
    skipped = [(names.get(s.path, s.path), s.reason, s.detail) for s in got.report.skipped]
    table = got.table
    with _one_change_at_a_time(model):
        clf = load(model, cache_dir=cache_dir, use_cache=use_cache, verbose=verbose, **load_options)
        clf.gallery()  # one line before any work when the model keeps none (or it does not match its hash)
        change = people.enroll(
            clf,
            name,
            table["path"].tolist(),
            table["content_hash"].tolist(),
            [names[p] for p in table["path"]],
            engine=as_engine(clf.engine),
            skipped=skipped,
        )
        removed = commit(clf, target)
    return ModelChange(change, target, removed, None, time.perf_counter() - t)


def forget_model(
    model: str | os.PathLike[str],
    name: str | None = None,
    photos: Sequence[str | os.PathLike[str]] = (),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verbose: bool = False,
    **load_options: Any,
) -> ModelChange:
    """Remove person ``name`` or the ``photos`` (found by content hash) from the model in ``model``, refit, save
    it in place, and purge those photos' entries from the cache (every feature space, intake's probes).

    The cache is purged first, then the model switched: a crash in between leaves the old model, and running the
    forget again finishes it.

    Parameters
    ----------
    model
        A model directory written by ``transferlab train`` (with a gallery), changed in place.
    name
        The person to forget, or None.
    photos
        Photo files to forget, found in the gallery by their pixels' hash.
    cache_dir
        The cache to purge (default: the user cache, ``$TRANSFERLAB_CACHE_DIR``).
    verbose, **load_options
        As for :func:`transferlab.load`.

    Returns
    -------
    ModelChange
        What was removed from the model and from the cache.
    """
    t = time.perf_counter()
    model = Path(model)
    if name is None and not photos:
        raise TransferlabError("forget: give a NAME or --photo FILE")
    target = _check_writable(model, None)
    hashes = []
    for p in photos:
        if not Path(p).is_file():
            raise TransferlabError(f"{p}: no such file")
        try:
            hashes.append(content_hash(read_rgb(p)))
        except (ImageRejected, OSError) as exc:
            raise TransferlabError(f"{p}: cannot read it ({exc}); nothing was forgotten") from None
    with _one_change_at_a_time(model):
        clf = load(model, cache_dir=cache_dir, verbose=verbose, **load_options)
        gallery = clf.gallery()
        missing = [str(p) for p, h in zip(photos, hashes, strict=True) if h not in set(gallery.hashes)]
        if missing:
            raise TransferlabError(
                f"{missing[0]}: not in {model}'s gallery (no photo with its pixels); nothing was forgotten"
            )
        change = people.forget(clf, name, hashes, engine=as_engine(clf.engine))
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        purged = {"dir": str(root), **purge(root, change.removed_hashes)}
        removed = commit(clf, target)
    return ModelChange(change, target, removed, purged, time.perf_counter() - t)
