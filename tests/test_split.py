"""Split: stratified, seeded, duplicate groups never straddle, balanced per-class subsamples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transferlab.errors import TransferlabError
from transferlab.split import split_table


def table(n_per_class=40, classes="abcd", pairs=10):
    rows = []
    for c in classes:
        for _ in range(n_per_class):
            rows.append({"label": c, "group": len(rows)})
    df = pd.DataFrame(rows)
    # some near-duplicate pairs: consecutive rows share a group
    for k in range(pairs):
        df.loc[4 * k + 1, "group"] = df.loc[4 * k, "group"]
    return df


def test_stratified_and_reproducible():
    df = table()
    a = split_table(df, test_size=0.25, seed=3)
    b = split_table(df, test_size=0.25, seed=3)
    c = split_table(df, test_size=0.25, seed=4)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    counts = df.iloc[a.test]["label"].value_counts()
    assert set(counts) <= {9, 10, 11}
    assert len(np.intersect1d(a.train, a.test)) == 0
    assert len(a.train) + len(a.test) == len(df)


@pytest.mark.parametrize("seed", range(10))
def test_duplicate_groups_never_straddle(seed):
    df = table()
    s = split_table(df, test_size=0.3, seed=seed)
    train_groups = set(df.iloc[s.train]["group"])
    test_groups = set(df.iloc[s.test]["group"])
    assert not train_groups & test_groups


def test_per_class_takes_a_balanced_subsample_of_the_training_side():
    df = table()
    s = split_table(df, test_size=0.25, seed=0, per_class=5)
    assert df.iloc[s.train]["label"].value_counts().to_dict() == dict.fromkeys("abcd", 5)
    full = split_table(df, test_size=0.25, seed=0)
    np.testing.assert_array_equal(s.test, full.test)  # the test side does not change
    assert set(s.train) <= set(full.train)


def test_bad_parameters_are_clear_errors():
    with pytest.raises(TransferlabError, match="--test-size"):
        split_table(table(), test_size=1.5)
    with pytest.raises(TransferlabError, match="--per-class"):
        split_table(table(), per_class=0)
    with pytest.raises(TransferlabError, match="fewer than 2"):
        split_table(pd.DataFrame({"label": ["a", "a", "b"], "group": [0, 1, 2]}))
