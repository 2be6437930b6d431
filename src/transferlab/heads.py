"""Heads: scikit-learn-compatible classifiers on feature arrays (they never see images or backbones).

Every head follows the estimator contract (``__init__`` stores parameters; ``fit`` returns self; fitted state ends
in ``_``) and can export its fitted state as plain arrays (``to_state``/``from_state``), so models are saved as
safetensors/npz + JSON and loading never unpickles anything.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .errors import TransferlabError


class _StateMixin:
    """Export/import of fitted state as ``(arrays, json_params)``."""

    _state_arrays: ClassVar[tuple[str, ...]] = ()

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fitted arrays (for safetensors/npz) and constructor parameters (for JSON)."""
        check_is_fitted(self)
        arrays = {k: np.asarray(getattr(self, k)) for k in self._state_arrays}
        arrays["classes_"] = np.asarray(self.classes_).astype(str)  # type: ignore[attr-defined]
        return arrays, self.get_params()  # type: ignore[attr-defined]

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
        """Rebuild a fitted head from :meth:`to_state` output."""
        head = cls(**params)
        for k in cls._state_arrays:
            setattr(head, k, arrays[k])
        head.classes_ = np.asarray(arrays["classes_"]).astype(str)
        return head

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class per row."""
        proba = self.predict_proba(X)  # type: ignore[attr-defined]
        return self.classes_[np.argmax(proba, axis=1)]  # type: ignore[attr-defined]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    y = np.asarray(y).astype(str)
    if len(X) != len(y):
        raise TransferlabError(f"{len(X)} feature rows but {len(y)} labels")
    if len(np.unique(y)) < 2:
        raise TransferlabError("need at least 2 classes to train a classifier")
    if not np.isfinite(X).all():
        raise TransferlabError("features contain NaN or infinity; drop images that failed featurization first")
    return X, y


def _one_row_per_class(coef: np.ndarray, intercept: np.ndarray, n_classes: int, scale: float) -> tuple:
    """scikit-learn stores one row for binary problems; expand to one row per class, ``(-scale·w, scale·w)``."""
    if n_classes == 2:
        coef, intercept = np.r_[-coef * scale, coef * scale], np.r_[-intercept * scale, intercept * scale]
    return coef.astype(np.float32), intercept.astype(np.float32)


class _StandardisedLinear:
    """Shared by the linear heads: standardise features, then class scores ``x·Wᵀ + b``."""

    def _fit_scaler(self, X: np.ndarray) -> np.ndarray:
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        return (X - self.mean_) / self.scale_

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores, one column per class."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        return ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_  # type: ignore[attr-defined]


class LogRegHead(_StandardisedLinear, _StateMixin, ClassifierMixin, BaseEstimator):
    """Standardised features → multinomial logistic regression.

    Parameters
    ----------
    C
        Inverse L2 regularisation strength.
    max_iter
        L-BFGS iterations.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((5, 3)), np.ones((5, 3))]; y = ["a"] * 5 + ["b"] * 5
    >>> LogRegHead().fit(X, y).predict(X[:1])[0]
    'a'
    """

    _state_arrays = ("mean_", "scale_", "coef_", "intercept_")

    def __init__(self, C: float = 0.5, max_iter: int = 2000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogRegHead:
        """Fit on features ``X`` (n, d) and labels ``y``."""
        from sklearn.linear_model import LogisticRegression

        X, y = _check_xy(X, y)
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self._fit_scaler(X), y)
        self.classes_ = clf.classes_.astype(str)
        # Binary: logits ±z/2 give softmax = sigmoid(z), the same probabilities as scikit-learn.
        self.coef_, self.intercept_ = _one_row_per_class(clf.coef_, clf.intercept_, len(self.classes_), 0.5)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        return _softmax(self.decision_function(X))


class SVMHead(_StandardisedLinear, _StateMixin, ClassifierMixin, BaseEstimator):
    """Standardised features → linear SVM, with probabilities calibrated on held-out folds.

    scikit-learn's ``SVC(probability=True)`` and ``CalibratedClassifierCV`` cannot be saved without pickle, so the
    calibration is done here explicitly: a multinomial logistic regression fitted on out-of-fold SVM scores
    (Platt scaling generalised to several classes). All fitted state is plain arrays.

    Parameters
    ----------
    C
        SVM regularisation.
    cv
        Folds for the out-of-fold scores used in calibration.
    random_state
        Seed for the folds.
    """

    _state_arrays = ("mean_", "scale_", "coef_", "intercept_", "cal_coef_", "cal_intercept_")

    def __init__(self, C: float = 0.05, cv: int = 5, random_state: int = 0) -> None:
        self.C = C
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> SVMHead:
        """Fit on features ``X`` (n, d) and labels ``y``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.svm import LinearSVC

        X, y = _check_xy(X, y)
        Xs = self._fit_scaler(X)
        svm = LinearSVC(C=self.C, max_iter=20000, random_state=self.random_state)
        _, counts = np.unique(y, return_counts=True)
        folds = int(min(self.cv, counts.min()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            scores = cross_val_predict(svm, Xs, y, cv=cv, method="decision_function")
        else:  # too few images per class for held-out scores: calibrate on training scores
            scores = svm.fit(Xs, y).decision_function(Xs)
        svm.fit(Xs, y)
        self.classes_ = svm.classes_.astype(str)
        k = len(self.classes_)
        self.coef_, self.intercept_ = _one_row_per_class(svm.coef_, svm.intercept_, k, 1.0)
        if k == 2:
            scores = np.c_[-scores, scores]
        cal = LogisticRegression(C=1.0, max_iter=1000).fit(scores, y)
        self.cal_coef_, self.cal_intercept_ = _one_row_per_class(cal.coef_, cal.intercept_, k, 0.5)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities."""
        return _softmax(self.decision_function(X) @ self.cal_coef_.T + self.cal_intercept_)


class MLPHead(_StateMixin, ClassifierMixin, BaseEstimator):
    """The seed's head: flatten → Dense(hidden, ReLU) → Dropout → Dense(n_classes, softmax), Adam, cross-entropy.

    With the seed's inputs its trainable parameter count equals the seed's Table 1: VGG16's 7×7×512 feature map
    gives 25,088 × 256 + 256 + 256 × 4 + 4 = 6,423,812.

    Parameters
    ----------
    hidden
        Units of the hidden layer.
    dropout
        Dropout rate after the hidden layer.
    epochs
        Passes over the (cached) features.
    lr
        Adam learning rate.
    batch_size
        Mini-batch size.
    random_state
        Seed for initialisation and shuffling.
    activation
        Hidden-layer activation: ``"relu"`` (the seed's) or ``"sigmoid"`` (what Spark ML's multilayer perceptron
        uses; set when the Spark engine fits this head).
    """

    _state_arrays = ("w1_", "b1_", "w2_", "b2_")

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.5,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 32,
        random_state: int = 0,
        activation: str = "relu",
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state
        self.activation = activation

    def _module(self, d: int, k: int) -> Any:
        import torch

        if self.activation not in ("relu", "sigmoid"):
            raise TransferlabError(f"mlp activation {self.activation!r}: choose 'relu' or 'sigmoid'")
        return torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(d, self.hidden),
            torch.nn.ReLU() if self.activation == "relu" else torch.nn.Sigmoid(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, k),
        )

    def n_trainable_params(self, n_features: int, n_classes: int) -> int:
        """Trainable parameters for a given input size and number of classes."""
        return n_features * self.hidden + self.hidden + self.hidden * n_classes + n_classes

    def fit(self, X: np.ndarray, y: np.ndarray, progress: Any = None) -> MLPHead:
        """Train with Adam for ``epochs`` passes over ``X``."""
        import torch

        X, y = _check_xy(X, y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        gen = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        net = self._module(X.shape[1], len(self.classes_))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        Xt, yt = torch.from_numpy(X), torch.from_numpy(yi.astype(np.int64))
        net.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(Xt), generator=gen)
            for start in range(0, len(Xt), self.batch_size):
                b = order[start : start + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(Xt[b]), yt[b])
                loss.backward()
                opt.step()
            if progress is not None:
                progress(1)
        lin1, lin2 = net[1], net[4]
        self.w1_ = lin1.weight.detach().numpy().copy()
        self.b1_ = lin1.bias.detach().numpy().copy()
        self.w2_ = lin2.weight.detach().numpy().copy()
        self.b2_ = lin2.bias.detach().numpy().copy()
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (dropout off)."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        z = X @ self.w1_.T + self.b1_
        h = np.maximum(z, 0.0) if self.activation == "relu" else 1.0 / (1.0 + np.exp(-z))
        return _softmax(h @ self.w2_.T + self.b2_)


HEADS: dict[str, type[_StateMixin]] = {"mlp": MLPHead, "logreg": LogRegHead, "svm": SVMHead}


def make_head(name: str, **params: Any) -> Any:
    """Create a head by name (``mlp``, ``logreg``, ``svm``) with validated parameters."""
    if name not in HEADS:
        raise TransferlabError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    cls = HEADS[name]
    valid = cls().get_params()  # type: ignore[call-arg,attr-defined]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TransferlabError(
            f"head {name!r} has no parameter {', '.join(unknown)}; it takes: {', '.join(sorted(valid))}"
        )
    return cls(**params)  # type: ignore[call-arg]


def head_name(head: Any) -> str:
    """Registry name of a head instance."""
    for name, cls in HEADS.items():
        if type(head) is cls:
            return name
    raise TransferlabError(f"{type(head).__name__} is not a transferlab head")
