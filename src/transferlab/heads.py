"""Heads: scikit-learn-compatible classifiers on feature arrays (they never see images or backbones).

Every head follows the estimator contract (``__init__`` stores parameters; ``fit`` validates its input with
scikit-learn's own utilities and returns self; fitted state ends in ``_``) and passes scikit-learn's
``check_estimator``. Labels may be of any type (ints, strings, objects); ``classes_`` keeps their own values.

Every head can export its fitted state as plain arrays (``to_state``/``from_state``), so models are saved as
safetensors/npz + JSON and loading never unpickles anything. Saved class names are strings (``model.json`` keeps
them as strings), so a loaded head's ``classes_`` are the string form of the labels it was trained on.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import TransferlabError
from .fitted import HEAD_SPECS, HeadSpec, check_head_params, softmax


class HeadInputError(TransferlabError, ValueError):
    """Training data a head cannot learn from (a :class:`ValueError`, as scikit-learn expects)."""


def _one_row_per_class(coef: np.ndarray, intercept: np.ndarray, n_classes: int, scale: float) -> tuple:
    """scikit-learn stores one row for binary problems; expand to one row per class, ``(-scale·w, scale·w)``."""
    if n_classes == 2:
        coef, intercept = np.r_[-coef * scale, coef * scale], np.r_[-intercept * scale, intercept * scale]
    return coef.astype(np.float32), intercept.astype(np.float32)


class _Head(ClassifierMixin, BaseEstimator):
    """Input validation, prediction and export of fitted state as ``(arrays, json_params)``, shared by all heads.

    A subclass is one entry of :data:`~transferlab.fitted.HEAD_SPECS` (``spec``): its fitted arrays, and the class
    scores computed from them (one column per class, in ``classes_`` order; ``predict_proba`` is their softmax), the
    arithmetic a saved model answers with too (:class:`~transferlab.fitted.FittedHead`).
    """

    spec: ClassVar[HeadSpec]

    def _validate_fit(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``float32`` features and labels encoded as ``0..k-1``; sets ``classes_`` and ``n_features_in_``."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, yi = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            only = classes.tolist()[0]  # "1 class" is what scikit-learn's checks look for
            raise HeadInputError(
                f"need at least 2 classes to train a classifier, got 1 class ({only!r}) in {len(y)} labels"
            )
        self.classes_ = classes
        return X, yi

    def _validate_predict(self, X: Any) -> np.ndarray:
        """Validated ``float32`` features of a fitted head, with the number of features it was fitted on."""
        check_is_fitted(self)
        if not hasattr(self, "n_features_in_"):  # fitted arrays set directly (Spark engine): derive it from them
            self.n_features_in_ = self._n_features_from_arrays()
        return validate_data(self, X, reset=False, dtype=np.float32)

    def _n_features_from_arrays(self) -> int:
        return self.spec.n_features(vars(self))

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self.spec.logits(vars(self), X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        X
            Features, shape ``(n_samples, n_features)``.

        Returns
        -------
        numpy.ndarray
            Shape ``(n_samples, n_classes)``, columns in ``classes_`` order, rows summing to 1.
        """
        return softmax(self._logits(self._validate_predict(X)))

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class per row.

        Parameters
        ----------
        X
            Features, shape ``(n_samples, n_features)``.

        Returns
        -------
        numpy.ndarray
            Shape ``(n_samples,)``, values from ``classes_``.
        """
        logits = self._logits(self._validate_predict(X))
        return self.classes_[np.argmax(logits, axis=1)]

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fitted arrays (for safetensors/npz) and constructor parameters (for JSON).

        Returns
        -------
        tuple of (dict of str to numpy.ndarray, dict of str to Any)
            The arrays named in ``spec.arrays`` plus ``classes_`` (as strings), and ``get_params()``.
        """
        check_is_fitted(self)
        arrays = {k: np.asarray(getattr(self, k)) for k in self.spec.arrays}
        arrays["classes_"] = np.asarray(self.classes_).astype(str)
        return arrays, self.get_params()

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
        """Rebuild a fitted head from :meth:`to_state` output.

        Parameters
        ----------
        arrays
            Fitted arrays by name, including ``classes_``.
        params
            Constructor parameters.

        Returns
        -------
        _Head
            A fitted head of this class; its ``classes_`` are strings.
        """
        head = cls(**params)
        for k in cls.spec.arrays:
            setattr(head, k, arrays[k])
        head.classes_ = np.asarray(arrays["classes_"]).astype(str)
        head.n_features_in_ = head._n_features_from_arrays()
        return head


class _StandardisedLinear(_Head):
    """Shared by the linear heads: standardise features, then class scores ``x·Wᵀ + b`` (one row of W per class)."""

    def _fit_scaler(self, X: np.ndarray) -> np.ndarray:
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        return (X - self.mean_) / self.scale_

    def decision_function(self, X: Any) -> np.ndarray:
        """Confidence scores, following scikit-learn's convention; ``predict`` picks the highest.

        Parameters
        ----------
        X
            Features, shape ``(n_samples, n_features)``.

        Returns
        -------
        numpy.ndarray
            Binary problems: shape ``(n_samples,)``, the log-odds of ``classes_[1]`` (positive means it is
            predicted). Otherwise shape ``(n_samples, n_classes)``: logits whose softmax is ``predict_proba``.
        """
        z = self._logits(self._validate_predict(X))
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z


class LogRegHead(_StandardisedLinear):
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

    spec = HEAD_SPECS["logreg"]

    def __init__(self, C: float = 0.5, max_iter: int = 2000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> LogRegHead:
        """Fit on features and labels.

        Parameters
        ----------
        X
            Features, shape ``(n_samples, n_features)``.
        y
            Labels of any type, shape ``(n_samples,)``; at least 2 classes.

        Returns
        -------
        LogRegHead
            This head, fitted.
        """
        from sklearn.linear_model import LogisticRegression

        X, yi = self._validate_fit(X, y)
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self._fit_scaler(X), yi)
        self.n_iter_ = int(np.max(clf.n_iter_))
        # Binary: logits ±z/2 give softmax = sigmoid(z), the same probabilities as scikit-learn.
        self.coef_, self.intercept_ = _one_row_per_class(clf.coef_, clf.intercept_, len(self.classes_), 0.5)
        return self


class SVMHead(_StandardisedLinear):
    """Standardised features → linear SVM, with probabilities calibrated on held-out folds.

    scikit-learn's ``SVC(probability=True)`` and ``CalibratedClassifierCV`` cannot be saved without pickle, so the
    calibration is done here explicitly: a multinomial logistic regression fitted on out-of-fold SVM scores
    (Platt scaling generalised to several classes). All fitted state is plain arrays. ``predict`` and
    ``decision_function`` use the calibrated scores, so they agree with ``predict_proba``.

    Parameters
    ----------
    C
        SVM regularisation.
    cv
        Folds for the out-of-fold scores used in calibration.
    random_state
        Seed for the folds.
    """

    spec = HEAD_SPECS["svm"]

    def __init__(self, C: float = 0.05, cv: int = 5, random_state: int = 0) -> None:
        self.C = C
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> SVMHead:
        """Fit the SVM and its calibration on features and labels.

        Parameters
        ----------
        X
            Features, shape ``(n_samples, n_features)``.
        y
            Labels of any type, shape ``(n_samples,)``; at least 2 classes.

        Returns
        -------
        SVMHead
            This head, fitted.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.svm import LinearSVC

        X, yi = self._validate_fit(X, y)
        Xs = self._fit_scaler(X)
        # tol 1e-3 (scikit-learn: 1e-4): half the iterations and time on 600 x 1280 features, the same 5-fold
        # accuracy on the bundled photos (BENCHMARKS.md, the seed study); the SVM fits 6 times with calibration.
        svm = LinearSVC(C=self.C, tol=1e-3, max_iter=20000, random_state=self.random_state)
        folds = int(min(self.cv, np.bincount(yi).min()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            scores = cross_val_predict(svm, Xs, yi, cv=cv, method="decision_function")
        else:  # too few images per class for held-out scores: calibrate on training scores
            scores = svm.fit(Xs, yi).decision_function(Xs)
        svm.fit(Xs, yi)
        self.n_iter_ = int(svm.n_iter_)
        k = len(self.classes_)
        self.coef_, self.intercept_ = _one_row_per_class(svm.coef_, svm.intercept_, k, 1.0)
        if k == 2:
            scores = np.c_[-scores, scores]
        cal = LogisticRegression(C=1.0, max_iter=1000).fit(scores, yi)
        self.cal_coef_, self.cal_intercept_ = _one_row_per_class(cal.coef_, cal.intercept_, k, 0.5)
        return self


class MLPHead(_Head):
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

    spec = HEAD_SPECS["mlp"]

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
        """Trainable parameters for a given input size and number of classes.

        Parameters
        ----------
        n_features
            Input features.
        n_classes
            Output classes.

        Returns
        -------
        int
            Weights and biases of both layers.
        """
        return n_features * self.hidden + self.hidden + self.hidden * n_classes + n_classes

    def fit(self, X: Any, y: Any, progress: Any = None) -> MLPHead:
        """Train with Adam for ``epochs`` passes over ``X``.

        Parameters
        ----------
        X
            Features, shape ``(n_samples, n_features)``.
        y
            Labels of any type, shape ``(n_samples,)``; at least 2 classes.
        progress
            Optional callable, called with 1 after each epoch.

        Returns
        -------
        MLPHead
            This head, fitted.
        """
        import torch

        X, yi = self._validate_fit(X, y)
        gen = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        net = self._module(X.shape[1], len(self.classes_))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        Xt = torch.from_numpy(X if X.flags.writeable else X.copy())  # torch warns on read-only arrays
        yt = torch.from_numpy(yi.astype(np.int64))
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
        self.n_iter_ = int(self.epochs)
        return self


HEADS: dict[str, type[_Head]] = {"mlp": MLPHead, "logreg": LogRegHead, "svm": SVMHead}


def make_head(name: str, **params: Any) -> Any:
    """Create a head by name with validated parameters.

    Parameters
    ----------
    name
        ``mlp``, ``logreg`` or ``svm``.
    **params
        Constructor parameters of that head.

    Returns
    -------
    _Head
        An unfitted head.

    Raises
    ------
    TransferlabError
        Unknown name (the message lists the choices) or parameter (it lists the allowed ones).
    """
    check_head_params(name, params)  # the parameters as data: options check them without building a head
    return HEADS[name](**params)
