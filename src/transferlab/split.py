"""Split: stratified, seeded, group-aware train/test split and balanced per-class subsampling."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .errors import TransferlabError


@dataclass(frozen=True)
class Split:
    """Row indices of the training and test sides, and how they were drawn."""

    train: np.ndarray
    test: np.ndarray
    seed: int
    test_size: float
    per_class: int | None

    def params(self) -> dict[str, object]:
        """The parameters that reproduce this split (saved in model.json)."""
        d = asdict(self)
        d.pop("train")
        d.pop("test")
        return d


def split_table(
    table: pd.DataFrame,
    *,
    test_size: float = 0.25,
    seed: int = 0,
    per_class: int | None = None,
    label_col: str = "label",
    group_col: str = "group",
) -> Split:
    """Split rows into train and test, stratified by label, never splitting a duplicate group.

    scikit-learn has ``StratifiedGroupKFold`` but no group-aware *shuffle* split with an arbitrary test
    fraction, so we draw whole groups per class until each class's test quota is met.

    Parameters
    ----------
    table
        Intake table with label and group columns.
    test_size
        Fraction of each class held out, in (0, 1).
    seed
        Random seed; the same table and seed give the same split.
    per_class
        If given, keep only this many training images per class (a balanced subsample of the training side).

    Returns
    -------
    Split
    """
    if not 0.0 < test_size < 1.0:
        raise TransferlabError(f"--test-size {test_size}: must be between 0 and 1 (e.g. 0.25)")
    if per_class is not None and per_class < 1:
        raise TransferlabError(f"--per-class {per_class}: must be a positive number of images")
    rng = np.random.default_rng(seed)
    labels = table[label_col].to_numpy()
    groups = table[group_col].to_numpy() if group_col in table.columns else np.arange(len(table))
    counts = pd.Series(labels).value_counts()
    too_few = counts[counts < 2]
    if len(too_few):
        names = ", ".join(f"{k} ({v})" for k, v in too_few.items())
        raise TransferlabError(
            f"classes with fewer than 2 usable images cannot be split: {names}; add photos or remove the class"
        )
    # A group belongs to the class most of its members carry.
    group_size = pd.Series(groups).value_counts()
    # (Singletons, nearly every group, take their own label directly: a per-group value_counts costs ~0.2 s per
    # split on 800 photos, which a study with hundreds of splits feels.)
    first = pd.Series(labels).groupby(groups).first()
    multi = group_size.index[group_size.to_numpy() > 1]
    if len(multi):
        in_multi = np.isin(groups, multi)
        modes = pd.Series(labels[in_multi]).groupby(groups[in_multi]).agg(lambda s: s.value_counts().index[0])
        first.loc[modes.index] = modes
    group_label = first
    test_groups: list[int] = []
    for label in sorted(counts.index):
        gs = group_label[group_label == label].index.to_numpy()
        gs = gs[rng.permutation(len(gs))]
        quota = max(1, round(test_size * counts[label]))
        taken = 0
        for g in gs:
            if taken >= quota:
                break
            if taken + group_size[g] > quota and taken > 0 and group_size[g] > 1:
                continue  # a large group would overshoot: try smaller ones first
            test_groups.append(g)
            taken += group_size[g]
    is_test = np.isin(groups, test_groups)
    test = np.flatnonzero(is_test)
    train = np.flatnonzero(~is_test)
    if per_class is not None:
        keep: list[np.ndarray] = []
        for label in sorted(counts.index):
            idx = train[labels[train] == label]
            keep.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
        train = np.sort(np.concatenate(keep))
    if len(set(labels[train])) < 2:
        raise TransferlabError("the training side has fewer than 2 classes; add photos or lower --test-size")
    return Split(train=train, test=test, seed=seed, test_size=test_size, per_class=per_class)
