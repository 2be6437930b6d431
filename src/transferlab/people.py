"""People as data, on a fitted classifier in memory: enrol photos of a person (new or known), forget a person or a
photo, and explain an answer with the training photos it resembles.

A model keeps its gallery (:mod:`transferlab.gallery`): per training photo, the features its head was fitted on.
Enrolling computes features for the new photos only and refits the head, the prototypes and the ``unknown``
threshold on the gallery plus the new photos; forgetting refits on the gallery without them. A gallery photo is a
bag of its one chosen row, so the face choice made when it was added stands and only new photos are chosen anew.
The classifier given is changed by attribute assignment only (new head, new gallery), never by mutating what it
held, so a shallow copy changed here leaves the original answering as before (the server swaps whole models).
"""

from __future__ import annotations

import datetime
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._progress import Reporter
from .decode import ImageRejected, as_rgb, content_hash
from .errors import TransferlabError
from .features import FeatureResult
from .gallery import Gallery
from .predictions import Analysis, Explanation

RESERVED = ("unknown", "no face", "no face found")


def check_name(name: str) -> str:
    """A person's name as a class label, or one line saying what is wrong with it.

    Examples
    --------
    >>> check_name("lincoln")
    'lincoln'
    """
    if not isinstance(name, str) or not name.strip():
        raise TransferlabError("the name is empty; give the person's name, e.g. lincoln")
    if name != name.strip():
        raise TransferlabError(f"name {name!r}: no spaces at either end, please")
    if name.casefold() in RESERVED:
        raise TransferlabError(f"name {name!r}: reserved (predict answers it for strangers); choose another name")
    bad = [c for c in name if c in "/\\" or unicodedata.category(c).startswith("C")]
    if bad or name in (".", "..") or len(name) > 100:
        raise TransferlabError(
            f"name {name!r}: not a valid label (at most 100 characters, no slashes or control characters; it names "
            "a folder of the person's photos)"
        )
    return name


@dataclass
class Change:
    """What an enrolment or a forget did to a model.

    Attributes
    ----------
    action
        ``"enroll"`` or ``"forget"``.
    name
        The person enrolled or forgotten (None when one photo was forgotten).
    before, after
        Gallery photos per class before and after.
    added
        Gallery paths of the photos added.
    removed_hashes
        Content hashes of the photos removed (what a forget purges from caches).
    skipped
        ``(path, reason, detail)`` of photos not added.
    threshold_before, threshold_after
        The ``unknown`` threshold before and after (face models).
    seconds
        Time for features and refitting.
    """

    action: str
    name: str | None
    before: dict[str, int]
    after: dict[str, int]
    added: list[str] = field(default_factory=list)
    removed_hashes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    threshold_before: float | None = None
    threshold_after: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object of ``enroll`` and ``forget`` (without what the command adds: model, caches)."""
        out: dict[str, Any] = {
            "action": self.action,
            "name": self.name,
            "per_class_before": self.before,
            "per_class_after": self.after,
            "unknown_threshold_before": _round(self.threshold_before),
            "unknown_threshold_after": _round(self.threshold_after),
            "seconds": round(self.seconds, 3),
        }
        if self.action == "enroll":
            out["added"] = len(self.added)
            out["skipped"] = dict(sorted(Counter(r for _, r, _ in self.skipped).items()))
            out["skipped_files"] = [{"path": p, "reason": r, "detail": d} for p, r, d in self.skipped]
        else:
            out["removed_photos"] = len(self.removed_hashes)
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _check_changeable(clf: Any, action: str) -> Gallery:
    where = getattr(clf, "model_dir_", "this model")
    if getattr(clf, "fallback", None) is not None:
        raise TransferlabError(
            f"{where}: has a whole-image fallback (--fallback {clf.fallback}), which keeps no gallery; {action} "
            "works on models without one: retrain without --fallback"
        )
    return clf.gallery()  # type: ignore[no-any-return]


def _refit(clf: Any, bags: list[np.ndarray], start: list[int], y: np.ndarray, engine: Any) -> tuple[Any, np.ndarray]:
    """A new head of the model's kind fitted on these bags; the classifier is not touched."""
    opts = clf.options_
    head = opts.kind.make_head(opts)
    reporter = Reporter(opts.verbose)
    picked = opts.kind.fit(head, bags, start, y, engine=engine, reporter=reporter)
    return head, picked


# What model.json said of the model as trained: its held-out evaluation, split and intake describe photos and a
# head that a changed model no longer has (a forgotten person's among them), so a change drops them.
_AS_TRAINED = ("split", "evaluation", "intake")


def _commit(clf: Any, head: Any, gallery: Gallery, hashes: list[str], change: dict[str, Any]) -> None:
    """Switch the classifier to the refitted head and gallery (attribute assignments only), and log the change in
    ``meta_['changes']`` (a forget names no one, and drops the entries that named a forgotten person)."""
    meta = {k: v for k, v in getattr(clf, "meta_", {}).items() if k not in _AS_TRAINED}
    people = set(gallery.labels.tolist())
    log = [c for c in meta.get("changes", []) if c.get("name") is None or c["name"] in people]
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    meta["changes"] = [*log, {**change, "at": at}]
    clf.meta_ = meta
    clf.head_ = head
    clf.classes_ = np.asarray(head.classes_).astype(str)
    clf.gallery_ = gallery
    clf.training_hashes_ = sorted(hashes)
    gallery_changed(clf)


def gallery_of(clf: Any) -> Gallery:
    """A fitted classifier's gallery: the one it was fitted with, or its saved one, read and checked against its
    hash (once)."""
    if getattr(clf, "gallery_", None) is None:
        saved = getattr(clf, "saved_gallery_", None)
        where = getattr(clf, "model_dir_", "this model")
        if saved is None:
            raise TransferlabError(
                f"{where}: saved without a gallery (by a transferlab from before models kept one); retrain it with "
                "this version to enrol, forget or explain"
            )
        clf.gallery_ = Gallery.from_state(*saved, where)
    return clf.gallery_  # type: ignore[no-any-return]


def gallery_changed(clf: Any, skipped: dict[str, int] | None = None) -> None:
    """Bring what a classifier says of its training photos (``fit_stats_``, ``meta_``'s ``training_data``) up to
    date with its gallery; ``skipped``: training's skipped photos by reason."""
    g = clf.gallery_
    clf.fit_stats_ = clf.options_.kind.stats(g)
    data = dict(getattr(clf, "meta_", {}).get("training_data", {}))
    data.update(n_images=len(g), per_class=g.counts())
    if skipped is not None:
        data["skipped"] = skipped
    clf.meta_ = {**getattr(clf, "meta_", {}), "training_data": data}


def enroll(
    clf: Any,
    name: str,
    sources: Sequence[Any],
    hashes: Sequence[str | None] | None = None,
    paths: Sequence[str] | None = None,
    *,
    engine: Any,
    skipped: Sequence[tuple[str, str, str]] = (),
) -> Change:
    """Add photos of ``name`` to a fitted classifier (see :meth:`transferlab.Classifier.enroll`).

    Photos already in the gallery (same content hash) and photos without a usable feature row (unreadable, no face)
    are skipped with their reason; when none is left the classifier is unchanged and one line says so.
    """
    name = check_name(name)
    gallery = _check_changeable(clf, "enrolment")
    t = time.perf_counter()
    kind = clf.options_.kind
    paths = list(paths) if paths is not None else [f"{name}/<image {i}>" for i in range(len(sources))]
    skipped = list(skipped)
    keys = list(hashes) if hashes is not None else [None] * len(sources)
    known = dict(zip(gallery.hashes, gallery.paths, strict=True))
    todo, seen = [], set()
    for i, src in enumerate(sources):
        if keys[i] is None:  # the gallery names photos by content hash, with or without a cache
            try:
                keys[i] = content_hash(as_rgb(src))
            except ImageRejected as exc:
                skipped.append((paths[i], exc.reason, exc.detail))
                continue
        if keys[i] in known or keys[i] in seen:
            skipped.append((paths[i], "duplicate", f"same pixels as {known.get(keys[i], 'another photo given')}"))
        else:
            todo.append(i)
            seen.add(keys[i])
    res: FeatureResult = clf.featurize([sources[i] for i in todo], [keys[i] for i in todo])
    rows = []
    for j, i in enumerate(todo):
        if j in res.errors:
            skipped.append((paths[i], *res.errors[j]))
        elif not len(res.bags[j]):
            skipped.append((paths[i], "no face", "no face found by the detector"))
        else:
            rows.append(j)
    if not rows:
        reasons = ", ".join(f"{n} {r}" for r, n in Counter(r for _, r, _ in skipped).items()) or "none given"
        raise TransferlabError(f"{name}: none of the photos can be used ({reasons}); nothing was changed")
    new_bags, new_start = kind.bags(res, rows)
    bags = [f[None] for f in gallery.features] + new_bags
    y = np.concatenate([gallery.labels, np.full(len(rows), name, dtype=object)]).astype(str)
    threshold_before = kind.threshold(clf.head_)
    head, picked = _refit(clf, bags, [0] * len(gallery) + list(new_start), y, engine)
    new_picked = picked[len(gallery) :]
    added = Gallery(
        np.stack([b[p] for b, p in zip(new_bags, new_picked, strict=True)]),
        np.full(len(rows), name, dtype=object),
        [keys[todo[j]] for j in rows],
        [paths[todo[j]] for j in rows],
        kind.gallery_columns(res, rows, new_start, new_picked),
    )
    before = gallery.counts()
    hashes_after = set(getattr(clf, "training_hashes_", ())) | set(added.hashes)
    _commit(
        clf, head, gallery.extended(added), list(hashes_after), {"action": "enroll", "name": name, "added": len(added)}
    )
    return Change(
        "enroll",
        name,
        before,
        clf.gallery_.counts(),
        added=added.paths,
        skipped=skipped,
        threshold_before=threshold_before,
        threshold_after=kind.threshold(head),
        seconds=time.perf_counter() - t,
    )


def forget(clf: Any, name: str | None = None, hashes: Sequence[str] = (), *, engine: Any) -> Change:
    """Remove a person (``name``) or photos (by content hash) from a fitted classifier and refit (see
    :meth:`transferlab.Classifier.forget`); one line, and the classifier unchanged, when there is nothing to remove
    or too little would be left."""
    gallery = _check_changeable(clf, "forgetting")
    where = getattr(clf, "model_dir_", "this model")
    if getattr(clf, "finetune", 0):
        raise TransferlabError(
            f"{where}: its network was fine-tuned on the training photos, so forgetting cannot remove what the network "
            "learnt from them; retrain without them (transferlab train)"
        )
    t = time.perf_counter()
    drop = np.zeros(len(gallery), dtype=bool)
    if name is not None:
        if name not in set(gallery.labels.tolist()):
            raise TransferlabError(
                f"{name}: not a person this model knows (it knows {', '.join(gallery.counts())}); nothing was forgotten"
            )
        drop |= gallery.labels == name
    wanted = set(hashes)
    drop |= np.asarray([h in wanted for h in gallery.hashes], dtype=bool)
    if not drop.any():
        raise TransferlabError("the photo is not in this model's gallery; nothing was forgotten")
    left = gallery.select(~drop)
    people = sorted(set(left.labels.tolist()))
    if len(people) < 2:
        raise TransferlabError(
            f"forgetting would leave the model knowing only {people[0] if people else 'nobody'}; a model needs two "
            "people: enrol someone else first, or delete the model"
        )
    threshold_before = clf.options_.kind.threshold(clf.head_)
    removed = [h for h, d in zip(gallery.hashes, drop, strict=True) if d]
    head, _ = _refit(clf, [f[None] for f in left.features], [0] * len(left), left.labels, engine)
    gone = set(removed)
    kept = [h for h in getattr(clf, "training_hashes_", ()) if h not in gone]
    _commit(clf, head, left, kept, {"action": "forget", "removed_photos": len(removed)})
    return Change(
        "forget",
        name,
        gallery.counts(),
        left.counts(),
        removed_hashes=removed,
        threshold_before=threshold_before,
        threshold_after=clf.options_.kind.threshold(head),
        seconds=time.perf_counter() - t,
    )


def explain(clf: Any, res: FeatureResult, analyses: list[Analysis], k: int = 5) -> None:
    """Add an :class:`~transferlab.predictions.Explanation` to each answered analysis of ``res``'s photos (photos
    answered by the whole-image fallback have none: the gallery holds the face model's features)."""
    gallery = clf.gallery()
    kind = clf.options_.kind
    classes = [str(c) for c in clf.classes_]
    threshold = kind.threshold(clf.head_)
    for i, a in enumerate(analyses):
        if a.proba is None or a.fallback:
            continue
        q = kind.query(res, i, a)
        idx, sims = gallery.nearest(q[None], k)
        per_class = kind.class_similarity(clf.head_, q, gallery)
        best = int(np.argmax(a.proba))
        a.explanation = Explanation(
            neighbours=[
                {"label": str(gallery.labels[j]), "similarity": float(s), "path": gallery.paths[j]}
                for j, s in zip(idx[0], sims[0], strict=True)
            ],
            class_similarity={c: float(v) for c, v in zip(classes, per_class, strict=True)},
            margin=None if threshold is None else float(per_class[best]) - float(threshold),
            face=a.answer if a.faces else None,
        )
