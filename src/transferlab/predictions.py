"""What a model says about each photo: an :class:`Analysis` (the numbers) and a :class:`Prediction` (the answer
as ``predict`` prints it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FaceFinding:
    """One detected face: where it is (box ``x, y, w, h``, 5 landmarks, detector score, in the photo's pixels),
    and what the model makes of it (class probabilities, similarity to the class, whether that is close enough)."""

    box: list[float]
    landmarks: list[list[float]]
    face_score: float
    proba: np.ndarray
    similarity: float
    known: bool


@dataclass
class Analysis:
    """The model's view of one photo: the answer's class probabilities (or why there is none) and, for face
    models, every face and which one answers."""

    proba: np.ndarray | None = None
    error: tuple[str, str] | None = None
    faces: list[FaceFinding] = field(default_factory=list)
    answer: int | None = None
    known: bool = True
    fallback: bool = False

    @property
    def usable(self) -> bool:
        """True when the photo got an answer."""
        return self.proba is not None


def _top(probabilities: dict[str, float], top_k: int | None) -> dict[str, float]:
    probs = sorted(probabilities.items(), key=lambda kv: -kv[1])
    return {k: round(v, 6) for k, v in (probs[:top_k] if top_k is not None else probs)}


def _named(classes: Sequence[str], proba: np.ndarray) -> dict[str, float]:
    return {str(c): float(v) for c, v in zip(classes, proba, strict=True)}


@dataclass
class Prediction:
    """One prediction for one input: a label and probabilities, or an error."""

    path: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    box: list[float] | None = None
    face_score: float | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False
    reason: str | None = None  # the skip reason alone (e.g. "truncated") when ``error`` is set

    @classmethod
    def from_analysis(
        cls, path: str, analysis: Analysis, classes: Sequence[str], unknown: str = "unknown"
    ) -> Prediction:
        """The answer for one photo: its most probable class, ``unknown`` when its answer face is a stranger."""
        p = cls(path=path)
        if analysis.proba is None:
            reason, detail = analysis.error or ("unreadable", "")
            p.reason = reason
            p.error = "no face found" if reason == "no face" else (f"{reason}: {detail}" if detail else reason)
            return p
        p.probabilities = _named(classes, analysis.proba)
        p.label = str(classes[int(np.argmax(analysis.proba))])
        p.fallback = analysis.fallback
        for k, f in enumerate(analysis.faces):
            p.faces.append(
                {
                    "box": f.box,
                    "face_score": f.face_score,
                    "label": str(classes[int(np.argmax(f.proba))]) if f.known else unknown,
                    "similarity": round(f.similarity, 4),
                    "probabilities": _named(classes, f.proba),
                    "answer": k == analysis.answer,
                }
            )
        if analysis.faces:
            answer = p.faces[int(analysis.answer or 0)]
            p.label, p.box, p.face_score = answer["label"], answer["box"], answer["face_score"]
        return p

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """The ``predict --json`` line for this input (face models add ``box`` and ``face_score``)."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "label": self.label, "probabilities": _top(self.probabilities, top_k)}
        if self.box is not None:
            out.update(box=self.box, face_score=self.face_score, n_faces=len(self.faces))
        if self.fallback:
            out.update(n_faces=0, fallback=True)
        return out

    def face_dicts(self, top_k: int | None = None) -> list[dict[str, Any]]:
        """One ``predict --faces all`` line per face (a single line without faces or on error)."""
        if self.error is not None or not self.faces:
            return [self.to_dict(top_k)]
        return [
            {
                "path": self.path,
                "face": k,
                "label": f["label"],
                "probabilities": _top(f["probabilities"], top_k),
                "box": f["box"],
                "face_score": f["face_score"],
            }
            for k, f in enumerate(self.faces)
        ]


def display_rows(predictions: Sequence[Prediction], top_k: int, every_face: bool = False) -> list[tuple[str, ...]]:
    """``predict``'s table: file, label (or a red ``error``), probabilities and face box, a row per answer."""
    rows: list[tuple[str, ...]] = []
    for p in predictions:
        if p.error:
            rows.append((p.path, "[red]error[/red]", p.error, ""))
            continue
        for line in p.face_dicts(top_k) if every_face else [p.to_dict(top_k)]:
            probs = "  ".join(f"{c} {v:.2f}" for c, v in line["probabilities"].items())
            box = ", ".join(f"{v:.0f}" for v in line["box"]) if "box" in line else ""
            rows.append((p.path, line["label"] or "", probs, box))
    return rows


def prediction_counts(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """``{"found", "used", "skipped": {reason: count}}`` for a list of predictions (``found = used + skipped``)."""
    skipped = Counter(p.reason or "unreadable" for p in predictions if p.error is not None)
    return {
        "found": len(predictions),
        "used": sum(p.error is None for p in predictions),
        "skipped": dict(sorted(skipped.items())),
    }
