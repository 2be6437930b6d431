"""Models of faces: each photo a bag of face rows, the head wrapped in a
:class:`~transferlab.facebag.FaceBagClassifier` (which face carries the label, which face answers, who is a
stranger), photos without a face left to a whole-image fallback or answered "no face found"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._progress import Reporter
from ..backbones import face_areas, face_boxes, face_embeddings, face_landmarks, face_scores, get_backbone_cfg
from ..errors import TransferlabError
from ..features import Extractor, FeatureResult
from ..finetune import FinetuneResult
from ..fitted import FaceBagAnswers, FittedFaceBag
from ..gallery import Gallery
from ..predictions import Analysis, FaceFinding
from ._base import ModelKind, fit_head, kind_of, register_kind

if TYPE_CHECKING:  # pragma: no cover
    from ..facebag import FaceBagClassifier

# Which model makes the multiple-instance face choice. Measured on the bundled data (10 seeds, 75/25 splits, logreg
# head; BENCHMARKS.md): this regularised logistic regression on the raw embeddings held out 0.989; the configured
# head choosing in sample 0.986 (it confirms its own first choices); the configured head out of fold 0.990, within
# noise of this one. So the choice stays with this model and the figures stay as they were; FaceBagClassifier takes
# any other (``choice_estimator``, ``choice_folds``).
MIL_CHOICE: dict[str, Any] = {"choice_estimator": "logreg C=1", "choice_folds": None}  # built in make_head
# The open-set rule (benchmarks/accuracy.py, BENCHMARKS.md): similarity to the nearest of up to 4 prototypes of the
# predicted class, the threshold calibrated by 5-fold cross-validation (keep 98% of known people's faces, admit 1% of
# other classes' faces) and shrunk towards the embedder's own same-person similarity as if that were 20 faces.
OPEN_SET: dict[str, Any] = {"prototypes": 4, "keep": 0.98, "admit_others": 0.01}
CENTROIDS, PROTOTYPES, PROTOTYPE_CLASS = "open_set.centroids", "open_set.prototypes", "open_set.prototype_class"


def face_bags(res: FeatureResult, rows: Sequence[int]) -> tuple[list[np.ndarray], list[int]]:
    """The embeddings of each photo's faces, and the index of its largest face."""
    bags = [res.bags[i] for i in rows]
    return [face_embeddings(b) for b in bags], [int(np.argmax(face_areas(b))) for b in bags]


def _finding(row: np.ndarray, proba: np.ndarray, similarity: float, known: bool) -> FaceFinding:
    return FaceFinding(
        box=[round(float(v), 1) for v in face_boxes(row[None])[0]],
        landmarks=face_landmarks(row[None])[0].round(1).tolist(),
        face_score=round(float(face_scores(row[None])[0]), 4),
        proba=proba,
        similarity=float(similarity),
        known=bool(known),
    )


class FaceKind(ModelKind):
    """A face backbone's model: the configured head in a face bag, with the MIL choice and the open set."""

    name = "faces"
    unit = "faces"
    rows_per_image = "one per face"
    answers_with_faces = True
    # The face embedder can be fine-tuned, but it overfits on a few hundred photos (BENCHMARKS.md): no study rows.
    finetune_in_study = False
    export_refusal = (
        "is a face model: its detector and the face choice are not one torch graph, so it cannot be exported as "
        "one; export a whole-image model (e.g. --backbone mobilenet_v2)"
    )

    def check(self, opts: Any) -> None:
        """A fallback must answer every photo it can read: a whole-image backbone."""
        if opts.fallback is not None and kind_of(opts.fallback).answers_with_faces:
            raise TransferlabError(f"--fallback {opts.fallback}: must be a whole-image backbone, e.g. mobilenet_v2")

    def bag_params(self, opts: Any) -> dict[str, Any]:
        """The face bag's parameters for these options (all but its estimators): the face choice and the open-set
        rule (see the constants). A saved model's bag is rebuilt with them, as in training."""
        prior = get_backbone_cfg(opts.backbone).face.same_person_cosine  # type: ignore[union-attr]
        rule = {"threshold_prior": prior, **OPEN_SET}  # a measurement may set the rule's prior too (accuracy.py)
        return {"face_choice": opts.face_choice.value, **rule, "choice_folds": MIL_CHOICE["choice_folds"]}

    def make_head(self, opts: Any) -> FaceBagClassifier:
        """The configured head in a face bag, with the MIL choice and the open-set rule, to fit."""
        from ..facebag import FaceBagClassifier  # scikit-learn: only where a model is fitted

        choice = MIL_CHOICE["choice_estimator"]
        if choice == "logreg C=1":
            from sklearn.linear_model import LogisticRegression

            choice = LogisticRegression(C=1.0, max_iter=2000)
        return FaceBagClassifier(opts.make_head(), choice_estimator=choice, **self.bag_params(opts))

    gallery_features = "the chosen face's embedding (biometric data)"

    def bags(self, res: FeatureResult, rows: Sequence[int]) -> tuple[list[np.ndarray], list[int]]:
        """Each photo's face embeddings, starting from its largest face."""
        return face_bags(res, rows)

    def fit(
        self,
        head: Any,
        bags: Sequence[np.ndarray],
        start: Sequence[int],
        y: np.ndarray,
        *,
        engine: Any,
        reporter: Reporter,
    ) -> np.ndarray:
        """Choose each photo's face and fit the bag; returns the chosen faces."""
        fit_head(head, list(bags), y, inner=head.estimator, engine=engine, reporter=reporter, start=list(start))
        return np.asarray(head.chosen_, dtype=int)

    def gallery_columns(
        self, res: FeatureResult, rows: Sequence[int], start: Sequence[int], picked: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The chosen face's box, the number of faces in the photo, and whether the chosen face is not the
        largest, where :meth:`bags` starts (the face choice's statistics come from these)."""
        bags = [res.bags[i] for i in rows]
        return {
            "box": np.asarray(
                [face_boxes(b[p][None])[0] for b, p in zip(bags, picked, strict=True)], np.float32
            ).reshape(-1, 4),
            "faces": np.asarray([len(b) for b in bags], np.int32),
            "not_largest": np.asarray([p != s for p, s in zip(picked, start, strict=True)], np.uint8),
        }

    def stats(self, gallery: Gallery) -> dict[str, int]:
        """The face choice's statistics over the gallery's photos."""
        several = gallery.columns["faces"] > 1
        return {
            "images_with_faces": len(gallery),
            "images_with_several_faces": int(several.sum()),
            "several_faces_not_largest_chosen": int((several & (gallery.columns["not_largest"] > 0)).sum()),
        }

    def query(self, res: FeatureResult, i: int, analysis: Analysis) -> np.ndarray:
        """The embedding of the face that answered."""
        return face_embeddings(res.bags[i])[analysis.answer or 0]

    def class_similarity(self, head: FaceBagAnswers, query: np.ndarray, gallery: Gallery) -> np.ndarray:
        """Similarity to the nearest of each class's prototypes (what the open set compares)."""
        return head.similarity(np.asarray(query, np.float32)[None])[0]

    def analyse(
        self, head: Any, res: FeatureResult, rows: Sequence[int], threshold: float | None = None
    ) -> list[Analysis]:
        """Every face's probabilities, similarity and known flag, and the face that answers."""
        bags, start = face_bags(res, rows)
        out = []
        for i, bag in zip(rows, head.analyse(bags, start=start, threshold=threshold), strict=True):
            faces = [_finding(r, bag.proba[k], bag.similarity[k], bag.known[k]) for k, r in enumerate(res.bags[i])]
            out.append(
                Analysis(bag.proba[bag.answer], faces=faces, answer=bag.answer, known=bool(bag.known[bag.answer]))
            )
        return out

    def finetune(
        self,
        extractor: Extractor,
        opts: Any,
        sources: Sequence[Any],
        hashes: list[str | None] | None,
        y: np.ndarray,
    ) -> FinetuneResult:
        """Train the embedder's top blocks on the face that carries each photo's label, chosen by the frozen
        model's multiple-instance step."""
        res = extractor.extract(sources, hashes, label=self.unit)
        used = [i for i in range(len(sources)) if i not in res.errors and len(res.bags[i])]
        if not used:
            raise TransferlabError("fine-tuning: no training photo has a detected face")
        bags, start = face_bags(res, used)
        chosen = self.make_head(opts).fit(bags, y[used], start=start).chosen_
        from ..finetune_faces import finetune_face_embedder

        return finetune_face_embedder(
            extractor.backbone,
            [sources[i] for i in used],
            [res.bags[i][c] for i, c in zip(used, chosen, strict=True)],
            y[used],
            opts.finetune_config(),
            reporter=extractor.reporter,
        )

    def inner(self, head: FaceBagAnswers) -> Any:
        """The fitted head on embeddings inside the bag."""
        return head.estimator_

    def save(
        self, head: FaceBagAnswers, opts: Any, stats: dict[str, int]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The open set's arrays, and ``model.json``'s ``faces`` entry: the threshold and how it was made."""
        arrays, params = head.to_state()
        prior = head.threshold_prior
        shrunk = f"; shrunk towards the embedder's same-person cosine {prior} as if {head.prior_strength:g} faces"
        no_face = (
            f"answered by the whole-image fallback model ({opts.fallback})"
            if opts.fallback is not None
            else "skipped in training and evaluation; predict says 'no face found'"
        )
        faces = {
            "unknown_threshold": params["threshold_"],
            "similarity": "cosine between the face embedding and the nearest prototype of its predicted class "
            "(k-means means of at least 5 training faces, up to 4 per class)",
            "calibration": f"5-fold cross-validation on the training faces; the higher of: keeps {head.keep:.0%} of "
            f"faces of their own class, admits {head.admit_others:.0%} of faces of the other classes"
            + (shrunk if prior else ""),
            "targets": {"keep_known": head.keep, "admit_others": head.admit_others, "prior": prior},
            "several_faces": "answer with the face that most confidently matches a known class",
            "no_face": no_face,
            **stats,
        }
        return {f"open_set.{k}": v for k, v in arrays.items()}, {"faces": faces}

    def restore(
        self, inner: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray], opts: Any, path: Any
    ) -> FittedFaceBag:
        """The bag around the restored head, with the saved open set (models from before prototypes compare with
        the class means)."""
        if CENTROIDS not in arrays or "faces" not in meta:
            raise TransferlabError(f"{path}: face model without class centroids; the model is damaged, retrain it")
        own = {k.removeprefix("open_set."): v for k, v in arrays.items() if k.startswith("open_set.")}
        threshold = float(meta["faces"]["unknown_threshold"])
        return FittedFaceBag(inner, own, threshold, self.bag_params(opts))  # answers; enrol fits a new one

    def threshold(self, head: FaceBagAnswers) -> float:
        """The calibrated ``unknown`` threshold."""
        return float(head.threshold_)

    def report_config(self, head: FaceBagAnswers, stats: dict[str, int]) -> dict[str, Any]:
        """The face choice's statistics and the threshold."""
        return {"faces": {**stats, "unknown_threshold": head.threshold_}}


register_kind(FaceKind())
