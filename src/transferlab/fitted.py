"""What a saved model answers with: its head and face bag as plain arrays, and the arithmetic that answers.

The heads (:mod:`transferlab.heads`) and the face bag (:mod:`transferlab.facebag`) are scikit-learn estimators:
they fit, and their fitted state is a few arrays. Answering from those arrays is a few lines of NumPy, written once
here and used by both: the estimators answer through it after ``fit``, and a loaded model's head and face bag are the
plain :class:`FittedHead` and :class:`FittedFaceBag`, which never import scikit-learn. Importing scikit-learn costs
about a second (it imports SciPy and pandas), more than half of what a cold ``transferlab predict`` may take (issue
25), and a saved model that only answers has no use for it.

Each head's entry in :data:`HEAD_SPECS` is the head as data: its constructor parameters (checked when options are
validated, without building the estimator), its fitted arrays and its class scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TransferlabError

# -- vectors ----------------------------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of class scores ``(n, k)``."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # type: ignore[no-any-return]


def prototype_similarity(faces: np.ndarray, prototypes: np.ndarray, owner: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n, n_classes)``: each face's cosine similarity to the nearest prototype of each class."""
    sims = faces @ prototypes.T
    out = np.full((len(faces), n_classes), -2.0, dtype=np.float32)
    for j in range(n_classes):
        out[:, j] = sims[:, owner == j].max(axis=1)
    return out


# -- heads as data ----------------------------------------------------------------------------------------------------


def _standardised_linear(s: Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    return ((X - s["mean_"]) / s["scale_"]) @ s["coef_"].T + s["intercept_"]  # type: ignore[no-any-return]


def _calibrated_linear(s: Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    return _standardised_linear(s, X) @ s["cal_coef_"].T + s["cal_intercept_"]  # type: ignore[no-any-return]


def _mlp(s: Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    z = X @ s["w1_"].T + s["b1_"]
    h = np.maximum(z, 0.0) if s.get("activation", "relu") == "relu" else 1.0 / (1.0 + np.exp(-z))
    return h @ s["w2_"].T + s["b2_"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class HeadSpec:
    """A head as data.

    Attributes
    ----------
    name
        Its registry name (``model.json``'s ``head.name``).
    params
        Its constructor parameters, in order.
    arrays
        Its fitted arrays (attribute names, saved under these names).
    features_of
        The array, and its axis, whose length is the number of input features.
    logits
        Class scores from the fitted state (arrays and parameters by name) and validated features; their softmax
        is ``predict_proba``.
    """

    name: str
    params: tuple[str, ...]
    arrays: tuple[str, ...]
    features_of: tuple[str, int]
    logits: Callable[[Mapping[str, Any], np.ndarray], np.ndarray]

    def n_features(self, state: Mapping[str, Any]) -> int:
        """Input features of a fitted head's state."""
        array, axis = self.features_of
        return int(np.shape(state[array])[axis])


_LINEAR = ("mean_", "scale_", "coef_", "intercept_")
HEAD_SPECS: dict[str, HeadSpec] = {
    "mlp": HeadSpec(
        "mlp",
        ("hidden", "dropout", "epochs", "lr", "batch_size", "random_state", "activation"),
        ("w1_", "b1_", "w2_", "b2_"),
        ("w1_", 1),
        _mlp,
    ),
    "logreg": HeadSpec("logreg", ("C", "max_iter"), _LINEAR, ("mean_", 0), _standardised_linear),
    "svm": HeadSpec(
        "svm", ("C", "cv", "random_state"), (*_LINEAR, "cal_coef_", "cal_intercept_"), ("mean_", 0), _calibrated_linear
    ),
}


def head_spec(name: str) -> HeadSpec:
    """The head registered as ``name`` (one line listing the choices otherwise)."""
    try:
        return HEAD_SPECS[name]
    except KeyError:
        raise TransferlabError(f"unknown head {name!r}; choose one of: {', '.join(HEAD_SPECS)}") from None


def check_head_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise one line naming the head's parameters when ``params`` has one it does not take."""
    valid = head_spec(name).params
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TransferlabError(
            f"head {name!r} has no parameter {', '.join(unknown)}; it takes: {', '.join(sorted(valid))}"
        )


class FittedHead:
    """A saved head: answers as the head it was saved from did (same arrays, same arithmetic), and saves again.

    Parameters
    ----------
    name
        The head's registry name.
    arrays
        Its fitted arrays by name (:attr:`HeadSpec.arrays`); each becomes an attribute, as on the estimator.
    params
        Its constructor parameters (JSON values); each becomes an attribute too.
    classes
        Class names, in the column order of its scores.

    Raises
    ------
    KeyError
        When an array the head needs is missing (the caller names the model file).
    """

    def __init__(
        self, name: str, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any], classes: Sequence[str]
    ) -> None:
        self.spec = head_spec(name)
        self.params = dict(params)
        self.__dict__.update(self.params)
        for k in self.spec.arrays:
            setattr(self, k, np.asarray(arrays[k]))
        self.classes_ = np.asarray(classes).astype(str)
        self.n_features_in_ = self.spec.n_features(vars(self))

    def _features(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise TransferlabError(
                f"features of shape {X.shape}: this {self.spec.name} head takes ({self.n_features_in_},) per row"
            )
        if not np.isfinite(X).all():
            raise TransferlabError("features contain NaN or infinity; the backbone's output is damaged")
        return X

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in ``classes_`` order."""
        return softmax(self.spec.logits(vars(self), self._features(X)))

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class per row."""
        return self.classes_[np.argmax(self.spec.logits(vars(self), self._features(X)), axis=1)]  # type: ignore[no-any-return]

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays (with ``classes_``) and parameters it was built from, as the estimator's ``to_state``."""
        arrays = {k: getattr(self, k) for k in self.spec.arrays}
        return {**arrays, "classes_": self.classes_}, dict(self.params)


# -- the face bag's answers -------------------------------------------------------------------------------------------


@dataclass
class BagAnswer:
    """What a fitted face bag says about one bag (one photo's faces).

    Attributes
    ----------
    proba
        Class probabilities per face, ``(k, n_classes)``.
    similarity
        Each face's cosine similarity to the nearest prototype of its most probable class.
    known
        Whether each face clears the unknown threshold.
    answer
        Index of the face that answers.
    """

    proba: np.ndarray
    similarity: np.ndarray
    known: np.ndarray
    answer: int


class FaceBagAnswers:
    """How a fitted face bag answers, from its fitted state: ``estimator_`` (a head), ``classes_``,
    ``centroids_``, ``prototypes_`` and ``prototype_class_`` (absent in models from before prototypes),
    ``threshold_``, ``face_choice`` and ``unknown_label``. Shared by the estimator and :class:`FittedFaceBag`."""

    def _check_answering(self) -> None:
        """Raise when the bag has no fitted state (the estimator says it in scikit-learn's words)."""

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
        self._check_answering()
        thr = self.threshold_ if threshold is None else float(threshold)  # type: ignore[attr-defined]
        bags = [np.asarray(b, dtype=np.float32) for b in bags]
        if not bags:
            return []
        offsets = np.cumsum([0] + [len(b) for b in bags])
        flat = np.concatenate(bags)
        n_classes = len(self.classes_)  # type: ignore[attr-defined]
        proba_all = self.estimator_.predict_proba(flat) if len(flat) else np.zeros((0, n_classes))  # type: ignore[attr-defined]
        out = []
        for i, bag in enumerate(bags):
            if len(bag) == 0:
                raise TransferlabError(f"bag {i} has no face; photos without faces are answered elsewhere")
            proba = proba_all[offsets[i] : offsets[i + 1]]
            sims = self.similarity(bag)[np.arange(len(bag)), np.argmax(proba, axis=1)]
            known = sims >= thr
            if self.face_choice == "mil":  # type: ignore[attr-defined]
                # Among faces that clear the threshold, the most confident; else the closest to a class.
                answer = int(np.argmax(np.where(known, proba.max(axis=1), -1.0 + sims)))
            else:
                answer = int(start[i]) if start is not None else 0
            out.append(BagAnswer(proba, sims, known, answer))
        return out

    def similarity(self, faces: np.ndarray) -> np.ndarray:
        """``(n, n_classes)``: each face's cosine similarity to the nearest prototype of each class."""
        self._check_answering()
        protos = getattr(self, "prototypes_", self.centroids_)  # type: ignore[attr-defined]
        owner = getattr(self, "prototype_class_", np.arange(len(self.centroids_)))  # type: ignore[attr-defined]
        return prototype_similarity(np.asarray(faces, np.float32), protos, owner, len(self.classes_))  # type: ignore[attr-defined]

    def predict_proba(self, bags: Sequence[np.ndarray], *, start: Sequence[int] | None = None) -> np.ndarray:
        """Class probabilities of each photo's answer face, ``(n, n_classes)`` (the closed-set view)."""
        answers = self.analyse(bags, start=start)
        return np.stack([a.proba[a.answer] for a in answers]) if answers else np.zeros((0, len(self.classes_)))  # type: ignore[attr-defined]

    def predict(
        self, bags: Sequence[np.ndarray], *, start: Sequence[int] | None = None, threshold: float | None = None
    ) -> np.ndarray:
        """Each photo's label: its answer face's class, or ``unknown_label`` when that face is unknown."""
        answers = self.analyse(bags, start=start, threshold=threshold)
        labels = [
            self.classes_[int(np.argmax(a.proba[a.answer]))] if a.known[a.answer] else self.unknown_label  # type: ignore[attr-defined]
            for a in answers
        ]
        return np.asarray(labels, dtype=object)

    def state_params(self) -> dict[str, Any]:
        """The bag's parameters that JSON can hold (all but its estimators)."""
        raise NotImplementedError

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The fitted open set as arrays (``centroids``, and ``prototypes`` with ``prototype_class``) and the
        parameters with the threshold in use (``threshold_``). The head inside saves itself (its own ``to_state``);
        a saved bag is read back as a :class:`FittedFaceBag`.

        Returns
        -------
        arrays, params
        """
        self._check_answering()
        arrays = {"centroids": np.asarray(self.centroids_, dtype=np.float32)}  # type: ignore[attr-defined]
        if hasattr(self, "prototypes_"):
            arrays["prototypes"] = np.asarray(self.prototypes_, dtype=np.float32)
            arrays["prototype_class"] = np.asarray(self.prototype_class_, dtype=np.int32)
        return arrays, {**self.state_params(), "threshold_": float(self.threshold_)}  # type: ignore[attr-defined]


# FaceBagClassifier's parameters and their defaults (all but its estimators); a saved bag starts from them too. A
# test holds the two equal.
BAG_DEFAULTS: dict[str, Any] = {
    "face_choice": "mil",
    "max_iter": 3,
    "threshold": None,
    "keep": 0.98,
    "admit_others": 0.01,
    "unknown_label": "unknown",
    "choice_folds": None,
    "prototypes": 4,
    "threshold_prior": None,
    "prior_strength": 20.0,
}


class FittedFaceBag(FaceBagAnswers):
    """A saved face bag: the saved head, open set and threshold, answering as the fitted bag did.

    Parameters
    ----------
    estimator_
        The saved head (:class:`FittedHead`).
    arrays
        The open set (``centroids``; ``prototypes`` and ``prototype_class`` where the model has them).
    threshold
        The calibrated ``unknown`` threshold.
    params
        The bag's parameters (:meth:`~transferlab.facebag.FaceBagClassifier.state_params`; those not given keep
        :data:`BAG_DEFAULTS`): how it answers (``face_choice``, ``unknown_label``) and how its threshold was made,
        which saving it again records.
    """

    def __init__(
        self, estimator_: Any, arrays: Mapping[str, np.ndarray], threshold: float, params: Mapping[str, Any]
    ) -> None:
        unknown = sorted(set(params) - set(BAG_DEFAULTS))
        if unknown:
            raise TransferlabError(f"face bag has no parameter {', '.join(unknown)}")
        self.params = {**BAG_DEFAULTS, **params}
        self.__dict__.update(self.params)
        self.estimator_, self.classes_ = estimator_, np.asarray(estimator_.classes_)
        self.centroids_ = np.asarray(arrays["centroids"], dtype=np.float32)
        if "prototypes" in arrays:
            self.prototypes_ = np.asarray(arrays["prototypes"], dtype=np.float32)
            self.prototype_class_ = np.asarray(arrays["prototype_class"], dtype=np.int64)
        self.threshold_ = float(threshold)

    def state_params(self) -> dict[str, Any]:
        """The bag's parameters, as the estimator's."""
        return dict(self.params)
