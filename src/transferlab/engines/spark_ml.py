"""Spark ML heads: a logreg or mlp head fitted by Spark ML when the training matrix is too big to collect, saved
as the usual head (its fitted arrays), so every engine and ``predict`` use it alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TransferlabError
from ..heads import LogRegHead, MLPHead


def fit_spark_head(head: Any, df: Any, classes: np.ndarray) -> Any:
    """Fit a logreg or mlp head with Spark ML on a DataFrame (``features`` vector, ``label`` = class index).

    The fitted Spark model becomes the head's own fitted state, so the saved artifact is the usual one and local
    ``predict`` gives the Spark model's probabilities.

    - ``logreg`` → ``LogisticRegression(family="multinomial")`` with the same L2 strength: scikit-learn minimises
      ``C·Σ loss + ½‖w‖²``, Spark ``mean loss + λ/2‖w‖²`` on standardised features, so ``λ = 1/(n·C)``. Spark
      reports coefficients on the original scale, so the head stores mean 0 and scale 1.
    - ``mlp`` → ``MultilayerPerceptronClassifier`` with layers ``[d, hidden, k]``. Spark's hidden layer is a
      sigmoid (no ReLU, no dropout), so the head is saved with ``activation="sigmoid"``.
    """
    n = df.count()
    d = len(df.first()["features"])
    k = len(classes)
    if isinstance(head, LogRegHead):
        from pyspark.ml.classification import LogisticRegression

        model = LogisticRegression(
            family="multinomial",
            regParam=1.0 / (n * head.C),
            elasticNetParam=0.0,
            standardization=True,
            maxIter=head.max_iter,
            tol=1e-6,
        ).fit(df)
        head.mean_ = np.zeros(d, dtype=np.float32)
        head.scale_ = np.ones(d, dtype=np.float32)
        head.coef_ = model.coefficientMatrix.toArray().astype(np.float32)
        head.intercept_ = model.interceptVector.toArray().astype(np.float32)
    elif isinstance(head, MLPHead):
        from pyspark.ml.classification import MultilayerPerceptronClassifier

        model = MultilayerPerceptronClassifier(
            layers=[d, head.hidden, k], maxIter=max(100, head.epochs), seed=head.random_state, stepSize=head.lr
        ).fit(df)
        w = model.weights.toArray()
        # Spark's affine layer stores W (out × in) column-major, then the bias: layer by layer.
        w1, w = w[: d * head.hidden].reshape(d, head.hidden).T, w[d * head.hidden :]
        b1, w = w[: head.hidden], w[head.hidden :]
        w2, w = w[: head.hidden * k].reshape(head.hidden, k).T, w[head.hidden * k :]
        b2 = w[:k]
        head.activation = "sigmoid"
        head.w1_, head.b1_, head.w2_, head.b2_ = (a.astype(np.float32) for a in (w1, b1, w2, b2))
    else:  # pragma: no cover - guarded by SparkEngine.fit_head
        raise TransferlabError(f"{type(head).__name__}: no Spark ML counterpart")
    head.classes_ = np.asarray(classes).astype(str)
    head.spark_model_ = model
    return head
