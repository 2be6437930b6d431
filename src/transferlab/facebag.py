"""Face bags: a photo is a bag of face embeddings; which face carries its label, which face answers, and who is a
stranger.

:class:`FaceBagClassifier` is a meta-estimator in scikit-learn's style (like ``SelfTrainingClassifier`` or
``FixedThresholdClassifier``): it takes any classifier on embeddings, fits a clone of it on the face of each
training photo that carries the photo's label (multiple-instance learning), and adds the open-set rule: a face
whose cosine similarity to its predicted class's mean face is below one threshold is ``unknown``. The same
threshold decides which face answers for a photo and what that face is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from .errors import TransferlabError


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_centroids(X: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """L2-normalised mean embedding per class, in ``classes`` order."""
    return l2_normalise(np.stack([X[y == c].mean(axis=0) for c in classes]))


def calibrate_unknown_threshold(
    X: np.ndarray, y: np.ndarray, classes: np.ndarray, keep: float = 0.98, admit_others: float = 0.01
) -> float:
    """Cosine similarity (to the predicted class's centroid) below which a face is called ``unknown``.

    Two views of the training faces set it, and the stricter one wins:

    - *known people*: each face against its own class centroid computed without it (leave-one-out), i.e. how new
      photos of a known person score; the threshold keeps ``keep`` of them;
    - *other people*: each face against the centroids of the classes it does not belong to, a stand-in for the
      people the model has never seen; the threshold lets only ``admit_others`` of them through.

    Parameters
    ----------
    X
        L2-normalised embeddings of the chosen training faces.
    y
        Their labels.
    classes
        Class order of the centroids.
    keep, admit_others
        The two target rates.

    Returns
    -------
    float
    """
    own: list[np.ndarray] = []
    others: list[np.ndarray] = []
    centroids = class_centroids(X, y, classes)
    for k, c in enumerate(classes):
        Xc = X[y == c]
        if len(Xc) >= 2:
            loo = l2_normalise(Xc.sum(axis=0)[None, :] - Xc)
            own.append(np.sum(loo * Xc, axis=1))
        others.append(X[y != c] @ centroids[k])
    bounds = []
    if own:
        bounds.append(float(np.quantile(np.concatenate(own), 1.0 - keep)))
    if others and sum(len(o) for o in others):
        bounds.append(float(np.quantile(np.concatenate(others), 1.0 - admit_others)))
    return max(bounds) if bounds else 0.0


@dataclass
class BagAnswer:
    """What a fitted :class:`FaceBagClassifier` says about one bag (one photo's faces).

    Attributes
    ----------
    proba
        Class probabilities per face, ``(k, n_classes)``.
    similarity
        Each face's cosine similarity to its most probable class's mean face.
    known
        Whether each face clears the unknown threshold.
    answer
        Index of the face that answers for the photo.
    """

    proba: np.ndarray
    similarity: np.ndarray
    known: np.ndarray
    answer: int


class FaceBagClassifier(BaseEstimator):
    """Classify photos given as bags of face embeddings, with multiple-instance face choice and an open set.

    Parameters
    ----------
    estimator
        A scikit-learn classifier on embeddings (``fit``, ``predict_proba``, ``classes_``); a clone is fitted on
        the chosen faces into ``estimator_``. The MIL iterations use clones of it too, so the choice is made by
        the same kind of model that answers.
    face_choice
        ``"mil"``: train on the face of each photo that the model finds most typical of the photo's label (starting
        from ``start``, iterated until the choice stops changing or ``max_iter``), and answer with the most
        confident face that clears the threshold; ``"largest"``: always the ``start`` face (the caller passes the
        largest).
    max_iter
        Most MIL rounds.
    threshold
        Cosine similarity below which a face is ``unknown``; None calibrates it on the training faces
        (:func:`calibrate_unknown_threshold` with ``keep`` and ``admit_others``) into ``threshold_``.
    keep, admit_others
        Calibration targets: the share of known people's faces kept, and of other classes' faces admitted.
    unknown_label
        What :meth:`predict` answers for a photo whose answer face is unknown.
    choice_estimator
        The classifier that makes the MIL choice (default None: ``estimator``).
    choice_folds
        With a number, each training photo's face is chosen by a model fitted on the other folds (out of fold), so
        a photo's current choice cannot vote for itself; None chooses in sample.

    Attributes
    ----------
    estimator_
        The fitted clone.
    classes_, centroids_, threshold_
        Classes, their L2-normalised mean chosen faces, and the threshold in use.
    chosen_
        Index of the chosen face per training bag.
    n_iter_
        MIL rounds run.
    choice_stats_
        Bags, bags with several faces, and those where the chosen face is not the ``start`` face.
    """

    def __init__(
        self,
        estimator: Any = None,
        *,
        face_choice: str = "mil",
        max_iter: int = 3,
        threshold: float | None = None,
        keep: float = 0.98,
        admit_others: float = 0.01,
        unknown_label: str = "unknown",
        choice_estimator: Any = None,
        choice_folds: int | None = None,
    ) -> None:
        self.estimator = estimator
        self.choice_estimator = choice_estimator
        self.choice_folds = choice_folds
        self.face_choice = face_choice
        self.max_iter = max_iter
        self.threshold = threshold
        self.keep = keep
        self.admit_others = admit_others
        self.unknown_label = unknown_label

    def _base(self) -> Any:
        if self.estimator is not None:
            return self.estimator
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000)

    def _check_params(self) -> None:
        if self.face_choice not in ("mil", "largest"):
            raise TransferlabError(f"face choice {self.face_choice!r}: choose 'mil' or 'largest'")
        if not 0.0 < self.keep <= 1.0 or not 0.0 <= self.admit_others <= 1.0:
            raise TransferlabError(f"keep {self.keep} / admit_others {self.admit_others}: rates must be in (0, 1]")

    def fit(
        self, bags: Sequence[np.ndarray], y: Sequence[Any], *, start: Sequence[int] | None = None, **fit_params: Any
    ) -> FaceBagClassifier:
        """Choose each training photo's face, fit the estimator on those faces and calibrate the open set.

        Parameters
        ----------
        bags
            Per photo, its face embeddings ``(k, d)``, L2-normalised, ``k ≥ 1``.
        y
            Photo labels.
        start
            Per photo, the face to start from (default: the first).
        **fit_params
            Passed to the final estimator's ``fit`` (e.g. ``progress`` for the MLP head).

        Returns
        -------
        FaceBagClassifier
            self, fitted.
        """
        self._check_params()
        bags = [np.asarray(b, dtype=np.float32) for b in bags]
        y = np.asarray(y)
        if len(bags) != len(y):
            raise TransferlabError(f"{len(bags)} face bags but {len(y)} labels")
        if any(len(b) == 0 for b in bags):
            raise TransferlabError("every training bag needs at least one face; drop photos without faces first")
        chosen = np.zeros(len(bags), dtype=int) if start is None else np.asarray(start, dtype=int).copy()
        multi = [i for i, b in enumerate(bags) if len(b) > 1]
        self.n_iter_ = 0
        if self.face_choice == "mil" and multi and len(np.unique(y)) >= 2:
            for _ in range(self.max_iter):
                new = self._rechoose(bags, y, chosen, multi)
                self.n_iter_ += 1
                if np.array_equal(new, chosen):
                    break
                chosen = new
        X = _pick(bags, chosen)
        first = np.zeros(len(bags), dtype=int) if start is None else np.asarray(start, dtype=int)
        several = np.array([len(b) > 1 for b in bags])
        self.choice_stats_ = {
            "bags": len(bags),
            "bags_with_several_faces": int(several.sum()),
            "several_faces_not_start_chosen": int((several & (chosen != first)).sum()),
        }
        self.estimator_ = clone(self._base()).fit(X, y, **fit_params)
        self.classes_ = np.asarray(self.estimator_.classes_)
        self.chosen_ = chosen
        self.centroids_ = class_centroids(X, y, self.classes_)
        self.threshold_ = (
            float(self.threshold)
            if self.threshold is not None
            else calibrate_unknown_threshold(X, y, self.classes_, self.keep, self.admit_others)
        )
        return self

    def _rechoose(self, bags: list[np.ndarray], y: np.ndarray, chosen: np.ndarray, multi: list[int]) -> np.ndarray:
        """Re-pick, in every multi-face bag, the face most typical of the bag's label.

        Each bag is judged by a model fitted without it (out of fold): a model that has seen a bag's current
        choice tends to confirm it, whichever face it is.
        """
        from sklearn.model_selection import StratifiedKFold

        base = self.choice_estimator or self._base()
        _, counts = np.unique(y, return_counts=True)
        folds = int(min(self.choice_folds or 1, counts.min()))  # in sample when a class has too few photos
        new = chosen.copy()
        X = _pick(bags, chosen)
        splits = (
            StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y)
            if folds >= 2
            else [(np.arange(len(y)), np.arange(len(y)))]
        )
        is_multi = np.zeros(len(y), dtype=bool)
        is_multi[multi] = True
        for fit_idx, judge_idx in splits:
            judge = [i for i in judge_idx if is_multi[i]]
            if not judge:
                continue
            est = clone(base).fit(X[fit_idx], y[fit_idx])
            col = {c: k for k, c in enumerate(est.classes_)}
            offsets = np.cumsum([0] + [len(bags[i]) for i in judge])
            p = est.predict_proba(np.concatenate([bags[i] for i in judge]))
            for j, i in enumerate(judge):
                if y[i] in col:
                    new[i] = int(np.argmax(p[offsets[j] : offsets[j + 1], col[y[i]]]))
        return new

    def analyse(
        self, bags: Sequence[np.ndarray], *, start: Sequence[int] | None = None, threshold: float | None = None
    ) -> list[BagAnswer]:
        """Per bag: every face's probabilities, similarity and known flag, and the face that answers.

        Parameters
        ----------
        bags
            Per photo, its face embeddings (at least one face each).
        start
            Per photo, the face ``face_choice="largest"`` answers with (default: the first).
        threshold
            Overrides ``threshold_`` for this call; it decides both the answer face and whether it is known.

        Returns
        -------
        list of BagAnswer
        """
        check_is_fitted(self)
        thr = self.threshold_ if threshold is None else float(threshold)
        bags = [np.asarray(b, dtype=np.float32) for b in bags]
        if not bags:
            return []
        offsets = np.cumsum([0] + [len(b) for b in bags])
        flat = np.concatenate(bags)
        proba_all = self.estimator_.predict_proba(flat) if len(flat) else np.zeros((0, len(self.classes_)))
        out = []
        for i, bag in enumerate(bags):
            if len(bag) == 0:
                raise TransferlabError(f"bag {i} has no face; photos without faces are answered elsewhere")
            proba = proba_all[offsets[i] : offsets[i + 1]]
            sims = np.sum(bag * self.centroids_[np.argmax(proba, axis=1)], axis=1)
            known = sims >= thr
            if self.face_choice == "mil":
                # Among faces that clear the threshold, the most confident; else the closest to a class.
                answer = int(np.argmax(np.where(known, proba.max(axis=1), -1.0 + sims)))
            else:
                answer = int(start[i]) if start is not None else 0
            out.append(BagAnswer(proba, sims, known, answer))
        return out

    def predict_proba(self, bags: Sequence[np.ndarray], *, start: Sequence[int] | None = None) -> np.ndarray:
        """Class probabilities of each photo's answer face, ``(n, n_classes)`` (the closed-set view)."""
        answers = self.analyse(bags, start=start)
        return np.stack([a.proba[a.answer] for a in answers]) if answers else np.zeros((0, len(self.classes_)))

    def predict(
        self, bags: Sequence[np.ndarray], *, start: Sequence[int] | None = None, threshold: float | None = None
    ) -> np.ndarray:
        """Each photo's label: its answer face's class, or ``unknown_label`` when that face is unknown."""
        answers = self.analyse(bags, start=start, threshold=threshold)
        labels = [
            self.classes_[int(np.argmax(a.proba[a.answer]))] if a.known[a.answer] else self.unknown_label
            for a in answers
        ]
        return np.asarray(labels, dtype=object)


def _pick(bags: Sequence[np.ndarray], chosen: np.ndarray) -> np.ndarray:
    return np.stack([b[c] for b, c in zip(bags, chosen, strict=True)])
