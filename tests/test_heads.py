"""Heads: scikit-learn estimators whose fitted state round-trips through plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from transferlab.errors import TransferlabError
from transferlab.fitted import HEAD_SPECS, FittedHead
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


@pytest.mark.parametrize(("name", "k"), [(n, k) for n in HEADS for k in (2, 4)])
def test_a_saved_head_answers_exactly_as_the_fitted_estimator(name, k):
    """What a loaded model answers with (transferlab.fitted.FittedHead, no scikit-learn) gives the estimator's
    probabilities and labels bit for bit, saves the same state again, and refuses features of the wrong width."""
    X, y = blobs(k=k)
    head = make_head(name, **({"epochs": 5} if name == "mlp" else {})).fit(X, y)
    arrays, params = head.to_state()
    saved = FittedHead(name, arrays, params, arrays["classes_"])
    np.testing.assert_array_equal(saved.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(saved.predict(X), head.predict(X))
    again, again_params = saved.to_state()
    assert again_params == params and again.keys() == arrays.keys()
    assert saved.n_features_in_ == head.n_features_in_ == X.shape[1]
    with pytest.raises(TransferlabError, match=r"takes \(20,\) per row"):
        saved.predict_proba(X[:, :5])


@pytest.mark.parametrize("name", list(HEADS))
def test_each_heads_spec_names_its_parameters_and_arrays(name):
    """The head as data (what options are checked against without building a head) is the estimator's own."""
    assert set(HEAD_SPECS[name].params) == set(HEADS[name]().get_params())
    assert HEADS[name].spec is HEAD_SPECS[name]


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
    with pytest.raises(ValueError, match="got 1 class"):  # HeadInputError is both, as scikit-learn expects
        MLPHead(epochs=1).fit(np.zeros((3, 2)), [7, 7, 7])


# MLPHead(epochs=5) keeps the run short; every check passes with scikit-learn's own data, none is expected to fail.
@parametrize_with_checks([LogRegHead(), SVMHead(), MLPHead(epochs=5)])
def test_heads_pass_scikit_learns_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize(
    "labels",
    [np.array([3, 10, 7, -1]), np.array(["w", "x", "y", "z"], dtype=object), np.array(["b", "a", "d", "c"])],
    ids=["int", "object", "str"],
)
def test_any_label_type_is_kept_and_round_trips_as_strings(name, labels):
    X, letters = blobs(n=60)
    y = labels[np.searchsorted(np.array(list("abcd")), letters)]
    head = make_head(name, **({"epochs": 3} if name == "mlp" else {})).fit(X, y)
    assert head.classes_.dtype == labels.dtype
    np.testing.assert_array_equal(head.classes_, np.sort(labels))
    assert set(head.predict(X)) <= set(labels)
    arrays, params = head.to_state()
    again = HEADS[name].from_state(arrays, params)
    assert list(again.classes_) == [str(c) for c in head.classes_]
    assert again.n_features_in_ == head.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(head.predict_proba(X), again.predict_proba(X))
    np.testing.assert_array_equal(head.predict(X).astype(str), again.predict(X))


@pytest.mark.parametrize("name", ["logreg", "svm"])
@pytest.mark.parametrize("k", [2, 4])
def test_decision_function_follows_scikit_learns_convention(name, k):
    X, y = blobs(k=k)
    head = make_head(name).fit(X, y)
    scores = head.decision_function(X)
    if k == 2:
        assert scores.shape == (len(X),)
        np.testing.assert_array_equal(head.classes_[(scores > 0).astype(int)], head.predict(X))
        np.testing.assert_allclose(1 / (1 + np.exp(-scores)), head.predict_proba(X)[:, 1], rtol=1e-5, atol=1e-6)
    else:
        assert scores.shape == (len(X), k)
        np.testing.assert_array_equal(head.classes_[scores.argmax(axis=1)], head.predict(X))


def test_heads_filled_in_directly_like_the_spark_engine_does_still_predict():
    X, _ = blobs(d=6)
    rng = np.random.default_rng(0)
    lin = LogRegHead()
    lin.mean_, lin.scale_ = np.zeros(6, np.float32), np.ones(6, np.float32)
    lin.coef_, lin.intercept_ = rng.normal(size=(4, 6)).astype(np.float32), np.zeros(4, np.float32)
    mlp = MLPHead(hidden=5)
    mlp.activation = "sigmoid"
    mlp.w1_, mlp.b1_ = rng.normal(size=(5, 6)).astype(np.float32), np.zeros(5, np.float32)
    mlp.w2_, mlp.b2_ = rng.normal(size=(4, 5)).astype(np.float32), np.zeros(4, np.float32)
    for head in (lin, mlp):
        head.classes_ = np.array(list("abcd"))
        assert head.predict_proba(X).shape == (len(X), 4)
        assert set(head.predict(X)) <= set("abcd")
        with pytest.raises(ValueError, match="expecting 6 features"):
            head.predict(X[:, :5])
