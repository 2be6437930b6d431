"""Label check: every photo of a labelled folder answered by a model that never saw it (k-fold cross-validation),
so that the photos whose label the model doubts stand out: a wrong folder, a photo of someone else, a face hidden.

This is how ``benchmarks/presidents_audit.csv`` was made for the bundled data: the out-of-fold answers say which
photos to look at, and a person looks. The check never changes a label; it lists photos, most doubtful first.

    >>> from transferlab.label_check import check_labels                       # doctest: +SKIP
    >>> check = check_labels("photos/", backbone="sface")                      # doctest: +SKIP
    >>> check.doubted[["path", "label", "answer"]]                             # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import atomic_write_text
from ._progress import Reporter
from .errors import TransferlabError
from .options import Options, validate_options
from .pipeline import Classifier
from .predictions import Prediction
from .report import plot_mistakes

ANOTHER_CLASS, UNKNOWN, NO_FACE, AGREES = "another class", "unknown", "no face found", "agrees"
VERDICT_ORDER = {ANOTHER_CLASS: 0, UNKNOWN: 1, NO_FACE: 2, AGREES: 3}
GALLERY = 24  # photos in the gallery, most doubtful first


@dataclass
class LabelCheck:
    """Out-of-fold answers for every usable photo of a labelled folder.

    Attributes
    ----------
    rows
        One row per usable photo: ``path``, ``label``, ``answer`` (a class, ``unknown`` or ``no face found``),
        ``verdict`` (``agrees``, ``another class``, ``unknown`` or ``no face found``), ``most_probable`` (the
        closed-set class), ``confidence`` (its probability), ``similarity`` (face models: the answer face's
        similarity to the class, else NaN), ``n_faces``, ``box`` (face models: the answer face's ``[x, y, w, h]``)
        and ``fold``; most doubtful first.
    folds
        Folds used (fewer than asked when a class has fewer photos).
    found, skipped
        Files found, and files skipped by the intake by reason (never checked).
    draft
        The size photos are decoded at for the model (the gallery decodes them alike, so boxes line up).
    """

    rows: pd.DataFrame
    folds: int
    found: int
    skipped: dict[str, int] = field(default_factory=dict)
    draft: tuple[int, int] | None = None

    @property
    def doubted(self) -> pd.DataFrame:
        """The photos not answered with their own label, most doubtful first: answered as another class (most
        confident first), then ``unknown`` (least similar first), then those where no face was found."""
        return self.rows[self.rows["verdict"] != AGREES]

    def counts(self) -> dict[str, int]:
        """Photos per verdict."""
        got = Counter(self.rows["verdict"])
        return {v: int(got.get(v, 0)) for v in VERDICT_ORDER}

    def to_dict(self) -> dict[str, Any]:
        """The ``check-labels --json`` object."""
        doubted = self.doubted
        return {
            "n": len(self.rows),
            "found": self.found,
            "skipped": dict(self.skipped),
            "folds": self.folds,
            "counts": self.counts(),
            "doubted": [
                {
                    "path": r.path,
                    "label": r.label,
                    "answer": r.answer,
                    "most_probable": r.most_probable,
                    "confidence": None if pd.isna(r.confidence) else round(float(r.confidence), 4),
                    "similarity": None if pd.isna(r.similarity) else round(float(r.similarity), 4),
                    "n_faces": int(r.n_faces),
                    "box": r.box,
                }
                for r in doubted.itertuples()
            ],
        }

    def summary(self, model: str, show: int = 30, written: dict[str, Path] | None = None) -> str:
        """``check-labels``' text: the counts, the ``show`` most doubtful photos, and where the files went.

        Parameters
        ----------
        model
            What answered (e.g. ``"sface + logreg"``).
        show
            Doubted photos to list.
        written
            What :meth:`write` wrote, if it was called.
        """
        counts, doubted = self.counts(), self.doubted
        skipped = f", {sum(self.skipped.values())} skipped by the intake" if self.skipped else ""
        lines = [
            f"label check: {len(self.rows)} photos{skipped}, each answered by a model trained on the other "
            f"{self.folds - 1} of {self.folds} folds ({model})",
            f"{len(doubted)} not answered with their label: {counts[ANOTHER_CLASS]} as another class, "
            f"{counts[UNKNOWN]} unknown, {counts[NO_FACE]} no face found",
        ]
        if len(doubted) and show:
            top = doubted.head(show)
            table = pd.DataFrame(
                {
                    "file": top["path"],
                    "label": top["label"],
                    "answer": [
                        f"unknown (nearest {c})" if v == UNKNOWN else a
                        for a, v, c in zip(top["answer"], top["verdict"], top["most_probable"], strict=True)
                    ],
                    "p": top["confidence"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
                    "similarity": top["similarity"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
                }
            )
            cells = [list(table.columns), *table.astype(str).to_numpy().tolist()]
            widths = [max(len(row[j]) for row in cells) for j in range(len(cells[0]))]
            lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
            if len(doubted) > show:
                where = " (all in the CSV)" if written else " (--out DIR lists all)"
                lines.append(f"… and {len(doubted) - show} more{where}")
        if written:
            lines.append("written: " + "   ".join(str(v) for v in written.values()))
        elif len(doubted):
            lines.append("--out DIR writes every photo's answer (CSV) and a gallery of these photos")
        return "\n".join(lines)

    def write(self, out: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``label_check.csv`` (every photo's answer) and ``label_check.png`` (the most doubtful photos, when
        there are any) into ``out``; returns what was written."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = {"csv": out / "label_check.csv"}
        atomic_write_text(written["csv"], self.rows.to_csv(index=False))
        top = self.doubted.head(GALLERY)
        captions = [
            f"label {r.label}\n"
            + (
                f"answer {r.answer} (p {r.confidence:.2f})"
                if r.verdict == ANOTHER_CLASS
                else f"unknown, nearest {r.most_probable} (sim {r.similarity:.2f})"
                if r.verdict == UNKNOWN and not pd.isna(r.similarity)
                else str(r.answer)
            )
            for r in top.itertuples()
        ]
        if plot_mistakes(top.assign(caption=captions), out / "label_check.png", draft=self.draft):
            written["gallery"] = out / "label_check.png"
        return written


def _row(p: Prediction, label: str, fold: int) -> dict[str, Any]:
    """One photo's out-of-fold answer as a table row."""
    if p.error is not None:
        answer, verdict, closed, conf = p.error, NO_FACE if p.reason == "no face" else p.error, None, np.nan
    else:
        closed = max(p.probabilities, key=p.probabilities.__getitem__)
        conf = p.probabilities[closed]
        answer = str(p.label)
        verdict = AGREES if answer == label else UNKNOWN if answer == UNKNOWN else ANOTHER_CLASS
    answer_face = next((f for f in p.faces if f["answer"]), None)
    return {
        "path": p.path,
        "label": label,
        "answer": answer,
        "verdict": verdict,
        "most_probable": closed,
        "confidence": conf,
        "similarity": answer_face["similarity"] if answer_face is not None else np.nan,
        "n_faces": len(p.faces),
        "box": p.box,
        "fold": fold,
    }


def check_labels(
    data: str | os.PathLike[str],
    *,
    folds: int = 5,
    seed: int = 0,
    manifest: str | os.PathLike[str] | None = None,
    options: Options | None = None,
    **option_values: Any,
) -> LabelCheck:
    """Answer every usable photo of ``data`` with a model fitted on the other folds, as ``predict`` answers.

    Parameters
    ----------
    data
        A folder with one subfolder per class, or a CSV with ``path,label``.
    folds
        Folds (at least 2): stratified by label, duplicate groups never split, shuffled with ``seed``. Fewer are
        used when a class has fewer photos.
    seed
        Seed for the folds (and the head's ``random_state`` where it has one).
    manifest
        A CSV with extra columns, carried into the rows (e.g. ``kind``).
    options, **option_values
        The model's :class:`~transferlab.options.Options`, or its fields as keywords, as for
        :func:`transferlab.train`. Features are computed once and shared by the folds through the feature cache;
        with ``use_cache=False`` a temporary cache is used and deleted afterwards.

    Returns
    -------
    LabelCheck

    Raises
    ------
    TransferlabError
        When ``folds`` < 2, or a class has a single usable photo (nothing to check it against).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise TransferlabError(f"--folds {folds}: a label check needs at least 2 folds")
    opts = (options if options is not None else validate_options(**option_values)).seeded(seed)
    rep = Reporter(opts.verbose)
    with tempfile.TemporaryDirectory(prefix="transferlab-check-") as tmp:
        if not opts.use_cache:  # the folds share features through a cache: a temporary one, deleted afterwards
            opts = opts.model_copy(update={"use_cache": True, "cache_dir": tmp})
        clf = Classifier.from_options(opts)
        draft = clf.build_extractor(opts).backbone.draft_size  # fails fast on missing weights, before long work
        got = clf.read(data, manifest)
        table = got.table.reset_index(drop=True)
        labels = table["label"].astype(str).to_numpy()
        sizes = Counter(labels)
        small = sorted(c for c, n in sizes.items() if n < 2)
        if small:
            raise TransferlabError(
                f"class {small[0]!r} has {sizes[small[0]]} usable photo; a label check needs at least 2 per class "
                "(one to learn from while the other is checked)"
            )
        k = min(folds, min(sizes.values()))
        groups = table["group"].to_numpy() if "group" in table.columns else np.arange(len(table))
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        rows: list[dict[str, Any]] = []
        extra = [c for c in table.columns if c not in {"path", "label", "content_hash", "group", "width", "height"}]
        clf.featurize(table["path"].tolist(), table["content_hash"].tolist())  # once, with progress: folds read it
        quiet = opts.model_copy(update={"verbose": False})
        for fold, (train, test) in enumerate(splitter.split(np.zeros(len(table)), labels, groups)):
            rep.info(f"label check: fold {fold + 1}/{k}, fitting on {len(train)} photos, answering {len(test)}")
            model = Classifier.from_options(quiet)
            model.fit_sources(
                table["path"].iloc[train].tolist(), labels[train], table["content_hash"].iloc[train].tolist()
            )
            preds = model.predict_images(table["path"].iloc[test].tolist())
            for i, p in zip(test, preds, strict=True):
                rows.append({**_row(p, labels[i], fold), **{c: table.at[i, c] for c in extra}})
    frame = pd.DataFrame(rows)
    frame["path"] = frame["path"].astype(str)
    order = frame["verdict"].map(VERDICT_ORDER)
    # Most doubtful first: another class by confidence (high first), unknown by similarity (low first).
    key = np.where(frame["verdict"] == ANOTHER_CLASS, -frame["confidence"].fillna(0), frame["similarity"].fillna(0))
    frame = frame.assign(_o=order, _k=key).sort_values(["_o", "_k", "path"]).drop(columns=["_o", "_k"])
    found = sum(got.report.found.values())
    return LabelCheck(frame.reset_index(drop=True), k, found, got.report.skipped_counts(), draft)
