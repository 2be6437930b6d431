"""The face-bag meta-estimator on synthetic bags: which face carries a photo's label, which face answers, and who
is a stranger, with one threshold for both."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from transferlab.errors import TransferlabError
from transferlab.facebag import (
    FaceBagClassifier,
    calibrate_threshold_cv,
    class_centroids,
    class_prototypes,
    l2_normalise,
    prototype_similarity,
)
from transferlab.heads import LogRegHead, MLPHead, SVMHead

D = 32


def _people(k: int, seed: int) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=(k, D)))


def _faces(centres: np.ndarray, who: np.ndarray, rng: np.random.Generator, noise: float = 0.35) -> np.ndarray:
    return l2_normalise(centres[who] + rng.normal(0, noise / np.sqrt(D), (len(who), D)))


def photo_bags(n: int = 240, seed: int = 0, k: int = 4, bystanders: int = 20):
    """Photos of ``k`` people; most also show strangers (bystanders), and the labelled face is never first."""
    rng = np.random.default_rng(seed)
    people, strangers = _people(k, seed), _people(bystanders, seed + 100)
    y = rng.integers(0, k, n)
    bags, truth = [], []
    for label in y:
        others = int(rng.integers(0, 3))
        faces = np.vstack(
            [_faces(strangers, rng.integers(0, bystanders, others), rng), _faces(people, np.array([label]), rng)]
        )
        order = rng.permutation(len(faces))
        bags.append(faces[order])
        truth.append(int(np.flatnonzero(order == len(faces) - 1)[0]))
    return bags, np.array([f"p{c}" for c in y]), np.array(truth), people, strangers


@pytest.mark.parametrize("folds", [None, 5], ids=["in-sample", "out-of-fold"])
@pytest.mark.parametrize("head", [LogRegHead(), SVMHead(), MLPHead(epochs=10)], ids=["logreg", "svm", "mlp"])
def test_choice_converges_to_the_labelled_face(head, folds):
    bags, y, truth, *_ = photo_bags()
    several = np.array([len(b) > 1 for b in bags])
    bag = FaceBagClassifier(head, choice_folds=folds).fit(bags, y)  # starts from each first face: often a stranger
    assert (bag.chosen_[several] == truth[several]).mean() >= 0.95
    assert 1 <= bag.n_iter_ <= bag.max_iter
    assert bag.choice_stats_["bags_with_several_faces"] == several.sum()
    chooser = FaceBagClassifier(head, choice_estimator=LogisticRegression(C=1.0), choice_folds=folds).fit(bags, y)
    assert (chooser.chosen_[several] == truth[several]).mean() >= 0.95
    largest = FaceBagClassifier(head, face_choice="largest").fit(bags, y)
    assert (largest.chosen_ == 0).all() and largest.n_iter_ == 0


def test_it_fits_a_clone_and_composes_with_scikit_learn():
    bags, y, *_ = photo_bags(n=80)
    head = LogRegHead(C=0.3)
    bag = FaceBagClassifier(head, threshold=0.2)
    fitted = bag.fit(bags, y)
    assert not hasattr(head, "classes_") and fitted.estimator_ is not head  # the given estimator is untouched
    assert fitted.estimator_.get_params()["C"] == 0.3
    again = clone(bag)
    assert again.get_params()["estimator"].get_params() == head.get_params() and not hasattr(again, "estimator_")
    assert bag.get_params()["estimator__C"] == 0.3
    assert list(fitted.classes_) == sorted(set(y))


def test_the_unknown_threshold_keeps_the_requested_share_of_known_faces():
    """Calibrated on training faces alone (cross-validated), the threshold keeps about ``keep`` of new faces of the
    same people, and rejects faces of people the model never saw."""
    rng = np.random.default_rng(1)
    people = _people(4, 1)
    who = rng.integers(0, 4, 400)
    X, y = _faces(people, who, rng, noise=1.0), who
    classes = np.arange(4)
    protos, owner = class_prototypes(X, y, classes)
    for keep in (0.8, 0.95):
        thr = calibrate_threshold_cv(X, y, classes, keep=keep, admit_others=1.0)
        new = rng.integers(0, 4, 4000)
        sims = prototype_similarity(_faces(people, new, rng, noise=1.0), protos, owner, 4)[np.arange(4000), new]
        assert abs((sims >= thr).mean() - keep) < 0.03
    strangers = _faces(_people(10, 7), rng.integers(0, 10, 1000), rng, noise=1.0)
    thr = calibrate_threshold_cv(X, y, classes)
    assert (prototype_similarity(strangers, protos, owner, 4).max(axis=1) < thr).mean() > 0.97


def test_prototypes_are_means_of_several_faces_and_follow_a_person_who_changes():
    """A person photographed in two looks (young and old, say) gets prototypes near both; no prototype is one face."""
    rng = np.random.default_rng(3)
    looks = _people(2, 5)
    X = _faces(looks, np.repeat([0, 1], 40), rng, noise=0.5)
    y = np.zeros(80, dtype=int)
    protos, owner = class_prototypes(X, y, np.array([0]), per_class=4)
    assert 2 <= len(protos) <= 4 and (owner == 0).all()
    assert not any(np.isclose(X @ p, 1.0, atol=1e-6).any() for p in protos)
    assert (protos @ looks.T).max(axis=0).min() > 0.9  # each look has a prototype close to it
    mean = class_centroids(X, y, np.array([0]))
    fresh = _faces(looks, np.repeat([0, 1], 200), rng, noise=0.5)
    by_prototype = prototype_similarity(fresh, protos, owner, 1)[:, 0]
    assert by_prototype.mean() > (fresh @ mean[0]).mean() + 0.05
    few = class_prototypes(X[:7], y[:7], np.array([0]))[0]
    assert len(few) == 1  # under 10 faces: the class mean


def test_the_threshold_leans_on_the_prior_when_photos_are_few():
    """Shrinkage towards the embedder's prior: strong with few faces per class, slight with many."""
    for n in (24, 400):
        bags, y, *_ = photo_bags(n=n)
        free = FaceBagClassifier(LogRegHead()).fit(bags, y)
        shrunk = FaceBagClassifier(LogRegHead(), threshold_prior=0.1).fit(bags, y)
        smallest = min(int((y == c).sum()) for c in set(y))
        expected = (smallest * free.threshold_ + 20 * 0.1) / (smallest + 20)
        assert shrunk.threshold_ == pytest.approx(expected)
        pull = abs(shrunk.threshold_ - free.threshold_) / abs(free.threshold_ - 0.1)
        assert pull > 0.5 if n == 24 else pull < 0.25


def test_one_threshold_picks_the_answer_face_and_names_it():
    bags, y, _, people, strangers = photo_bags(n=200)
    bag = FaceBagClassifier(LogRegHead()).fit(bags, y)
    photo = l2_normalise(np.vstack([strangers[0], people[2]]))  # a stranger and p2, both exact
    (answer,) = bag.analyse([photo])
    assert answer.answer == 1 and bool(answer.known[1]) and not answer.known[0]
    assert bag.predict([photo])[0] == "p2"
    # Above every face's similarity: nobody is known, and the answer is the face closest to a class, still p2.
    (strict,) = bag.analyse([photo], threshold=1.01)
    assert not strict.known.any() and strict.answer == 1
    assert bag.predict([photo], threshold=1.01)[0] == "unknown"
    # At -1 every face is known: the answer is the most confident face, and its label is given.
    (loose,) = bag.analyse([photo], threshold=-1.0)
    assert loose.known.all()
    assert bag.predict([photo], threshold=-1.0)[0] == bag.classes_[np.argmax(loose.proba[loose.answer])]
    np.testing.assert_allclose(bag.predict_proba([photo])[0], answer.proba[answer.answer])


def test_a_saved_bag_answers_exactly_as_the_fitted_one():
    """A loaded face model's bag (transferlab.fitted.FittedFaceBag: the saved head, open set and threshold, no
    scikit-learn) gives the fitted bag's answers bit for bit, at its threshold and at another, and saves the same
    state again; its parameters start from the estimator's defaults."""
    from transferlab.fitted import BAG_DEFAULTS, FittedFaceBag, FittedHead

    assert FaceBagClassifier().state_params() == BAG_DEFAULTS
    bags, y, _, people, strangers = photo_bags(n=200)
    bag = FaceBagClassifier(LogRegHead(), face_choice="mil", threshold_prior=0.3).fit(bags, y)
    head_arrays, head_params = bag.estimator_.to_state()
    arrays, params = bag.to_state()
    threshold = params.pop("threshold_")
    saved = FittedFaceBag(FittedHead("logreg", head_arrays, head_params, bag.classes_), arrays, threshold, params)
    photos = [*bags[:40], l2_normalise(np.vstack([strangers[0], people[2]]))]
    for thr in (None, 1.01, -1.0):
        for a, b in zip(bag.analyse(photos, threshold=thr), saved.analyse(photos, threshold=thr), strict=True):
            np.testing.assert_array_equal(a.proba, b.proba)
            np.testing.assert_array_equal(a.similarity, b.similarity)
            assert a.answer == b.answer and np.array_equal(a.known, b.known)
        assert list(bag.predict(photos, threshold=thr)) == list(saved.predict(photos, threshold=thr))
    again_arrays, again_params = saved.to_state()
    assert again_params == {**params, "threshold_": threshold} and again_arrays.keys() == arrays.keys()
    with pytest.raises(TransferlabError, match="no parameter colour"):
        FittedFaceBag(saved.estimator_, arrays, threshold, {"colour": 1})


def test_bad_bags_are_clear_errors():
    with pytest.raises(TransferlabError, match="at least one face"):
        FaceBagClassifier(LogisticRegression()).fit([np.zeros((0, D)), _people(1, 0)], ["a", "b"])
    with pytest.raises(TransferlabError, match="2 face bags but 3 labels"):
        FaceBagClassifier(LogisticRegression()).fit([_people(1, 0), _people(1, 1)], ["a", "b", "c"])
    with pytest.raises(TransferlabError, match="choose 'mil' or 'largest'"):
        FaceBagClassifier(LogisticRegression(), face_choice="any").fit([_people(1, 0), _people(1, 1)], ["a", "b"])
