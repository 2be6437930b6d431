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
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from .errors import TransferlabError
from .fitted import BagAnswer, FaceBagAnswers, l2_normalise, prototype_similarity

__all__ = [
    "BagAnswer",
    "FaceBagClassifier",
    "calibrate_threshold_cv",
    "class_centroids",
    "class_prototypes",
    "l2_normalise",
    "prototype_similarity",
]


def class_centroids(X: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """L2-normalised mean embedding per class, in ``classes`` order."""
    return l2_normalise(np.stack([X[y == c].mean(axis=0) for c in classes]))


def class_prototypes(
    X: np.ndarray, y: np.ndarray, classes: np.ndarray, per_class: int = 4, min_faces: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """A few L2-normalised prototypes per class: k-means means of its faces, each the mean of about ``min_faces``
    faces or more (``k = min(per_class, n // min_faces)``, at least one: the class mean).

    A person looks different across years, lighting and poses; the nearest of a few prototypes follows that better
    than one mean. No prototype is a single face's embedding (unless the class has one face).

    Returns
    -------
    prototypes, owner
        ``(p, d)`` prototypes and the index into ``classes`` of each one's class.
    """
    from sklearn.cluster import KMeans

    protos, owner = [], []
    for j, c in enumerate(classes):
        Xc = X[y == c]
        k = max(1, min(per_class, len(Xc) // min_faces))
        centres = (
            Xc.mean(axis=0, keepdims=True) if k == 1 else KMeans(k, n_init=4, random_state=0).fit(Xc).cluster_centers_
        )
        protos.append(l2_normalise(centres))
        owner += [j] * len(centres)
    return np.concatenate(protos).astype(np.float32), np.asarray(owner)


def calibrate_threshold_cv(
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    *,
    per_class: int = 4,
    keep: float = 0.98,
    admit_others: float = 0.01,
    folds: int = 5,
) -> float:
    """The unknown threshold on prototype similarity, calibrated by cross-validation on the training faces.

    Each fold's faces are scored against prototypes built from the other folds: against their own class's (how a
    new photo of a known person scores; the threshold keeps ``keep`` of them) and against every other class's (a
    stand-in for people the model never saw; it admits only ``admit_others`` of them). The stricter bound wins.
    """
    rng = np.random.default_rng(0)
    fold = rng.permutation(len(X)) % max(2, min(folds, len(X)))
    own, others = [], []
    for f in np.unique(fold):
        fit, held = fold != f, fold == f
        present = np.asarray([c for c in classes if (y[fit] == c).any()])
        if len(present) == 0:
            continue
        protos, owner = class_prototypes(X[fit], y[fit], present, per_class)
        sims = prototype_similarity(X[held], protos, owner, len(present))
        yh = y[held]
        for j, c in enumerate(present):
            own.append(sims[yh == c, j])
            others.append(sims[yh != c, j])
    bounds = []
    own_all, others_all = np.concatenate(own) if own else [], np.concatenate(others) if others else []
    if len(own_all):
        bounds.append(float(np.quantile(own_all, 1.0 - keep)))
    if len(others_all):
        bounds.append(float(np.quantile(others_all, 1.0 - admit_others)))
    return max(bounds) if bounds else 0.0


class FaceBagClassifier(FaceBagAnswers, BaseEstimator):
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
        Cosine similarity (to the nearest prototype of the face's most probable class) below which a face is
        ``unknown``; None calibrates it on the training faces by cross-validation
        (:func:`calibrate_threshold_cv` with ``keep`` and ``admit_others``) into ``threshold_``.
    keep, admit_others
        Calibration targets: the share of known people's faces kept, and of other classes' faces admitted.
    unknown_label
        What :meth:`predict` answers for a photo whose answer face is unknown.
    choice_estimator
        The classifier that makes the MIL choice (default None: ``estimator``).
    choice_folds
        With a number, each training photo's face is chosen by a model fitted on the other folds (out of fold), so
        a photo's current choice cannot vote for itself; None chooses in sample.
    prototypes
        Prototypes per class for the open set (:func:`class_prototypes`); 1 is the class mean.
    threshold_prior, prior_strength
        A threshold known before any training photo is seen (the embedder's own same-person similarity; SFace:
        0.363), and how many faces it is worth: the calibrated threshold is shrunk towards it, ``(n·t + s·prior) /
        (n + s)`` with ``n`` the smallest class's face count. With 3 photos per class the calibration alone set
        0.68 once and answered ``unknown`` for a quarter of known people; with hundreds it barely moves.

    Attributes
    ----------
    estimator_
        The fitted clone.
    classes_, centroids_, threshold_
        Classes, their L2-normalised mean chosen faces, and the threshold in use.
    prototypes_, prototype_class_
        The open set's prototypes and the index of each one's class.
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
        prototypes: int = 4,
        threshold_prior: float | None = None,
        prior_strength: float = 20.0,
    ) -> None:
        self.estimator = estimator
        self.choice_estimator = choice_estimator
        self.choice_folds = choice_folds
        self.prototypes = prototypes
        self.threshold_prior = threshold_prior
        self.prior_strength = prior_strength
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
        self.prototypes_, self.prototype_class_ = class_prototypes(X, y, self.classes_, self.prototypes)
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            t = calibrate_threshold_cv(
                X, y, self.classes_, per_class=self.prototypes, keep=self.keep, admit_others=self.admit_others
            )
            if self.threshold_prior is not None:
                n = min(int((y == c).sum()) for c in self.classes_)
                t = (n * t + self.prior_strength * self.threshold_prior) / (n + self.prior_strength)
            self.threshold_ = float(t)
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

    def _check_answering(self) -> None:
        check_is_fitted(self)

    # -- saving: like the heads, the bag's fitted state is plain arrays and parameters -----------------------------
    # (answering and to_state are FaceBagAnswers': a saved bag answers and saves the same way)
    _OBJECTS = ("estimator", "choice_estimator")  # estimators save themselves; the rest of the parameters is JSON

    def state_params(self) -> dict[str, Any]:
        """The bag's parameters that JSON can hold (all but the estimators)."""
        return {k: v for k, v in self.get_params(deep=False).items() if k not in self._OBJECTS}


def _pick(bags: Sequence[np.ndarray], chosen: np.ndarray) -> np.ndarray:
    return np.stack([b[c] for b, c in zip(bags, chosen, strict=True)])
