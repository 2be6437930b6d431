"""Heads: scikit-learn estimators whose fitted state round-trips through plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from transferlab.errors import TransferlabError
from transferlab.heads import HEADS, LogRegHead, MLPHead, SVMHead, make_head


def blobs(n=120, d=20, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    y = rng.integers(0, k, n)
    X = centres[y] + rng.normal(0, 1, (n, d))
    return X.astype(np.float32), np.array(["abcd"[i] for i in y])


@pytest.mark.parametrize("name", list(HEADS))
def test_head_learns_separable_classes_and_composes_with_sklearn(name):
    X, y = blobs()
    head = make_head(name)
    scores = cross_val_score(clone(head), X, y, cv=3)
    assert scores.mean() > 0.9
    head.fit(X, y)
    proba = head.predict_proba(X)
    assert proba.shape == (len(X), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(head.classes_) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("name", list(HEADS))
def test_state_round_trip_gives_identical_probabilities(name):
    X, y = blobs()
    head = make_head(name).fit(X, y)
    arrays, params = head.to_state()
    again = HEADS[name].from_state(arrays, params)
    np.testing.assert_array_equal(head.predict_proba(X), again.predict_proba(X))


@pytest.mark.parametrize("name", list(HEADS))
def test_binary_problems_work(name):
    X, y = blobs(k=2)
    head = make_head(name).fit(X, y)
    assert head.predict_proba(X).shape == (len(X), 2)
    assert head.score(X, y) > 0.9


def test_mlp_has_the_seeds_trainable_parameter_counts():
    head = MLPHead()
    assert head.n_trainable_params(7 * 7 * 512, 4) == 6_423_812  # VGG16
    assert head.n_trainable_params(5 * 5 * 2048, 4) == 13_108_484  # Inception V3 at 299 px (Keras)
    assert head.n_trainable_params(2048, 4) == 525_572  # ResNet-50 pooled
    X = np.random.default_rng(0).normal(size=(8, 7 * 7 * 512)).astype(np.float32)
    y = np.array(list("abcd") * 2)
    head = MLPHead(epochs=1).fit(X, y)
    arrays, _ = head.to_state()
    assert sum(v.size for k, v in arrays.items() if k != "classes_") == 6_423_812


def test_mlp_is_reproducible_with_a_seed():
    X, y = blobs()
    a = MLPHead(epochs=3, random_state=1).fit(X, y).predict_proba(X)
    b = MLPHead(epochs=3, random_state=1).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_svm_probabilities_are_calibrated_not_saturated():
    X, y = blobs(d=5, seed=3)
    X += np.random.default_rng(1).normal(0, 3, X.shape).astype(np.float32)  # overlapping classes
    proba = SVMHead().fit(X, y).predict_proba(X)
    assert 0.3 < proba.max(axis=1).mean() < 0.99


def test_parameters_are_validated_with_the_allowed_values():
    with pytest.raises(TransferlabError, match="logreg"):
        make_head("forest")
    with pytest.raises(TransferlabError, match="epochs"):
        make_head("logreg", epochs=3)
    with pytest.raises(TransferlabError, match="2 classes"):
        LogRegHead().fit(np.zeros((3, 2)), ["a", "a", "a"])
