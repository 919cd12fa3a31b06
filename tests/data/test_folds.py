"""k-fold assignment: disjoint folds covering every clip once, whole groups, classes in every fold."""
from __future__ import annotations

import numpy as np
import pytest

from audiotokens.data.folds import fold_split, kfold_sides
from audiotokens.errors import UserError


def _random_dataset(seed: int, n_groups: int = 24, n_classes: int = 6):
    """Speakers with 2-6 clips each; clips carry 1-3 of n_classes labels, some classes rare."""
    rng = np.random.default_rng(seed)
    labels, groups, ids = [], [], []
    weights = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])[:n_classes]
    for g in range(n_groups):
        for c in range(int(rng.integers(2, 7))):
            k = int(rng.integers(1, 4))
            labels.append(sorted(rng.choice(n_classes, size=k, replace=False, p=weights / weights.sum()).tolist()))
            groups.append(f"speaker{g}")
            ids.append(f"s{g}_c{c}")
    return labels, groups, ids


def test_folds_are_disjoint_cover_every_clip_and_keep_groups_whole():
    labels, groups, ids = _random_dataset(0)
    folds = 5
    fold_of_clip = kfold_sides(labels, 6, groups, ids, folds, seed=3)
    assert fold_of_clip.shape == (len(ids),)
    assert set(fold_of_clip.tolist()) == set(range(folds))
    for group in set(groups):
        assert len({int(f) for f, g in zip(fold_of_clip, groups) if g == group}) == 1
    validations = [fold_split(fold_of_clip, k)[1] for k in range(folds)]
    assert (np.sum(validations, axis=0) == 1).all()  # every clip held out exactly once
    for k in range(folds):
        train, validation = fold_split(fold_of_clip, k)
        assert not (train & validation).any() and (train | validation).all()
        held_out_groups = {g for g, v in zip(groups, validation) if v}
        assert not held_out_groups & {g for g, t in zip(groups, train) if t}


def test_every_class_with_enough_groups_is_in_every_fold():
    for seed in range(5):
        labels, groups, ids = _random_dataset(seed)
        folds = 4
        fold_of_clip = kfold_sides(labels, 6, groups, ids, folds, seed=seed)
        for c in range(6):
            holders = {g for g, clip_labels in zip(groups, labels) if c in clip_labels}
            folds_with_class = {int(f) for f, clip_labels in zip(fold_of_clip, labels) if c in clip_labels}
            if len(holders) >= folds:
                assert folds_with_class == set(range(folds)), (seed, c)


def test_rare_class_spread_without_groups():
    # 3 clips of class 1 among 30: a plain random 3-fold split would often put two in one fold
    labels = [[0]] * 27 + [[1]] * 3
    ids = [f"c{i}" for i in range(30)]
    for seed in range(10):
        fold_of_clip = kfold_sides(labels, 2, None, ids, 3, seed=seed)
        assert sorted(fold_of_clip[27:].tolist()) == [0, 1, 2]
        assert np.bincount(fold_of_clip).tolist() == [10, 10, 10]


def test_same_seed_same_folds_other_seed_other_folds():
    labels, groups, ids = _random_dataset(1)
    first = kfold_sides(labels, 6, groups, ids, 5, seed=7)
    assert np.array_equal(first, kfold_sides(labels, 6, groups, ids, 5, seed=7))
    assert not all(np.array_equal(first, kfold_sides(labels, 6, groups, ids, 5, seed=s)) for s in range(8, 12))


def test_clips_without_group_are_their_own_group():
    labels = [[0], [0], [1], [1], [0], [1]]
    groups = ["a", "a", None, None, "", "b"]
    fold_of_clip = kfold_sides(labels, 2, groups, [f"c{i}" for i in range(6)], 2, seed=0)
    assert fold_of_clip[0] == fold_of_clip[1]
    assert set(fold_of_clip.tolist()) == {0, 1}


@pytest.mark.parametrize("folds, groups, message", [
    (1, None, "at least 2"),
    (5, ["a", "a", "b", "b", "c", "c"], "only 3 groups"),
    (7, None, "only 6 clips"),
])
def test_bad_fold_counts_name_the_key(folds, groups, message):
    with pytest.raises(UserError, match=message) as error:
        kfold_sides([[0]] * 6, 1, groups, [f"c{i}" for i in range(6)], folds, seed=0)
    assert "split.folds" in str(error.value)


def test_fold_out_of_range_names_split_fold():
    with pytest.raises(UserError, match="split.fold"):
        fold_split(np.array([0, 1, 2, 0]), 3)


def test_repair_pass_moves_a_group_into_a_fold_lacking_a_class():
    from audiotokens.data.folds import _cover_every_fold

    # class 1 is held by groups 0-2, all in fold 0; fold 1 and 2 lack it
    counts = np.array([[0, 1], [0, 1], [0, 1], [1, 0], [1, 0], [1, 0]])
    fold_of_group = np.array([0, 0, 0, 0, 1, 2])
    _cover_every_fold(fold_of_group, counts, 3, np.random.default_rng(0))
    assert {int(fold_of_group[g]) for g in (0, 1, 2)} == {0, 1, 2}
    assert {int(fold_of_group[g]) for g in (3, 4, 5)} == {0, 1, 2}  # class 0 kept in every fold
