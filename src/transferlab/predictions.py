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
class Explanation:
    """Why an answer was given: the training photos the answer's features resemble most, the similarity to each
    class, and the margin to the ``unknown`` threshold.

    Attributes
    ----------
    neighbours
        The nearest gallery photos, most similar first: ``{"label", "similarity", "path"}`` (``path`` relative to
        the folder the model was trained from).
    class_similarity
        Cosine similarity to each class (a face model: to the class's nearest prototype; a whole-image model: to
        the class's mean training feature).
    margin
        The answer's similarity minus the ``unknown`` threshold (face models; negative: answered ``unknown``).
    face
        Index of the face that answered (face models).
    """

    neighbours: list[dict[str, Any]]
    class_similarity: dict[str, float]
    margin: float | None = None
    face: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``explanation`` entry of ``predict --explain --json``."""
        out: dict[str, Any] = {
            "neighbours": [
                {"label": n["label"], "similarity": round(float(n["similarity"]), 4), "path": n["path"]}
                for n in self.neighbours
            ],
            "class_similarity": {k: round(float(v), 4) for k, v in self.class_similarity.items()},
        }
        if self.margin is not None:
            out["margin"] = round(float(self.margin), 4)
        if self.face is not None:
            out["face"] = self.face
        return out

    def lines(self) -> list[str]:
        """The explanation as ``predict --explain`` prints it under an answer."""
        near = ", ".join(f"{n['label']} {n['similarity']:.2f} ({n['path']})" for n in self.neighbours)
        classes = "  ".join(f"{k} {v:.2f}" for k, v in sorted(self.class_similarity.items(), key=lambda kv: -kv[1]))
        out = [f"nearest training photos: {near}", f"similarity per class: {classes}"]
        if self.margin is not None:
            out.append(
                f"margin to the unknown threshold: {self.margin:+.2f}"
                + (f" (face {self.face})" if self.face is not None else "")
            )
        return out


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
    explanation: Explanation | None = None

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
    similarity: float | None = None  # the answer face's similarity to its class (face models)
    threshold: float | None = None  # the similarity below which a face is ``unknown`` (face models)
    explanation: Explanation | None = None  # why (``predict --explain``)

    @classmethod
    def from_analysis(
        cls,
        path: str,
        analysis: Analysis,
        classes: Sequence[str],
        unknown: str = "unknown",
        threshold: float | None = None,
    ) -> Prediction:
        """The answer for one photo: its most probable class, ``unknown`` when its answer face is a stranger
        (its similarity below ``threshold``, the model's open-set threshold)."""
        p = cls(path=path, threshold=threshold)
        if analysis.proba is None:
            reason, detail = analysis.error or ("unreadable", "")
            p.reason = reason
            p.error = "no face found" if reason == "no face" else (f"{reason}: {detail}" if detail else reason)
            return p
        p.probabilities = _named(classes, analysis.proba)
        p.label = str(classes[int(np.argmax(analysis.proba))])
        p.fallback = analysis.fallback
        p.explanation = analysis.explanation
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
            p.similarity = answer["similarity"]
        return p

    def why(self, face: dict[str, Any] | None = None) -> str:
        """The reason for an answer in words: a face's similarity to its class against the model's threshold
        (``face``: one of :meth:`face_dicts`' lines; default: the face that answered), or what else happened."""
        if self.error is not None:
            return self.error
        if self.fallback:
            return "no face found; the whole-image model answered"
        label, similarity = (face["label"], face.get("similarity")) if face else (self.label, self.similarity)
        if similarity is None or self.threshold is None:
            return ""
        if label == "unknown":
            return f"not close enough to anyone this model knows: similarity {similarity:.2f} < {self.threshold:.2f}"
        return f"similarity {similarity:.2f} ≥ {self.threshold:.2f}"

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """The ``predict --json`` line for this input (face models add ``box`` and ``face_score``)."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "label": self.label, "probabilities": _top(self.probabilities, top_k)}
        if self.box is not None:
            out.update(box=self.box, face_score=self.face_score, n_faces=len(self.faces))
            out.update(similarity=self.similarity, unknown_threshold=self.threshold)
        if self.fallback:
            out.update(n_faces=0, fallback=True)
        if self.explanation is not None:
            out["explanation"] = self.explanation.to_dict()
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
                "similarity": f["similarity"],
                "unknown_threshold": self.threshold,
                "answer": bool(f["answer"]),
                **({"explanation": self.explanation.to_dict()} if f["answer"] and self.explanation is not None else {}),
            }
            for k, f in enumerate(self.faces)
        ]


def display_rows(
    predictions: Sequence[Prediction],
    names: Sequence[str],
    top_k: int | None = None,
    every_face: bool = False,
) -> list[tuple[str, ...]]:
    """``predict``'s table, a row per answer (per face with ``every_face``): file (``names``: as the user sees it),
    answer, its probability (or the ``top_k`` classes), why (a face's similarity against the threshold, in words;
    an error), and with ``every_face`` the face's box, ``*`` marking the face that answered."""
    rows: list[tuple[str, ...]] = []
    for p, name in zip(predictions, names, strict=True):
        if p.error:
            rows.append(
                (name, "[red]error[/red]" if p.reason != "no face" else "no face", "", p.error, *("",) * every_face)
            )
            continue
        for line in p.face_dicts(top_k or 1) if every_face else [p.to_dict(top_k or 1)]:
            probs = "  ".join(f"{c} {v:.2f}" for c, v in line["probabilities"].items())
            why = p.why(line)
            extra = ()
            if every_face:
                box = ", ".join(f"{v:.0f}" for v in line["box"]) if "box" in line else ""
                extra = (("* " if line.get("answer") else "  ") + box,)
            rows.append((name, line["label"] or "", probs, why, *extra))
    return rows


def prediction_counts(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """``{"found", "used", "skipped": {reason: count}}`` for a list of predictions (``found = used + skipped``)."""
    skipped = Counter(p.reason or "unreadable" for p in predictions if p.error is not None)
    return {
        "found": len(predictions),
        "used": sum(p.error is None for p in predictions),
        "skipped": dict(sorted(skipped.items())),
    }
