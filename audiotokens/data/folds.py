"""k-fold assignment for cross-validation: which fold each clip is held out in (split.strategy = "kfold").

Whole groups go to one fold (a speaker or recording never sits on both sides of a fold); a clip
without a group is a group of its own. Groups are placed by iterative stratification (Sechidis,
Tsoumakas, Vlahavas 2011) generalised to k folds and to groups as units: the rarest remaining class
is handled first, and each group holding it goes to the fold that still wants most of that class
(ties: the fold that still wants most clips, then a seeded draw). A final pass moves single groups so
that every class with at least `folds` groups appears in every fold. The same input and seed always
give the same folds; folds are numbered 0 … folds - 1.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def kfold_sides(labels: list[list[int]], n_classes: int, groups: list | None, ids: list[str], folds: int,
                seed: int) -> np.ndarray:
    """Fold number (0 … folds - 1) of every clip: group-aware and stratified by class where labels allow."""
    member, n_groups = _group_members(groups, ids)
    _check_folds(folds, n_groups, len(ids))
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)  # clips of each class in each group
    for clip, clip_labels in enumerate(labels):
        np.add.at(counts[member[clip]], np.asarray(clip_labels, dtype=np.int64), 1)
    sizes = np.bincount(member, minlength=n_groups)
    rng = np.random.default_rng(seed)
    fold_of_group = _stratify(counts, sizes, folds, rng)
    _cover_every_fold(fold_of_group, counts, folds, rng)
    return fold_of_group[member].astype(np.int64)


def fold_split(fold_of_clip: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train mask, validation mask) of fold `fold`: its own clips are validation, all others train."""
    fold_of_clip = np.asarray(fold_of_clip)
    folds = int(fold_of_clip.max()) + 1 if fold_of_clip.size else 0
    if not 0 <= fold < folds:
        raise UserError(f"'split.fold' must be between 0 and split.folds - 1 ({folds - 1}), got {fold}")
    validation = fold_of_clip == fold
    return ~validation, validation


def _group_members(groups: list | None, ids: list[str]) -> tuple[np.ndarray, int]:
    """Group number of every clip (first-appearance order) and the number of groups."""
    if groups is None:
        return np.arange(len(ids)), len(ids)
    keys = [g if g not in (None, "") else f"\0clip:{clip_id}" for g, clip_id in zip(groups, ids)]
    code: dict[str, int] = {}
    member = np.array([code.setdefault(key, len(code)) for key in keys], dtype=np.int64)
    return member, len(code)


def _check_folds(folds: int, n_groups: int, n_clips: int) -> None:
    if folds < 2:
        raise UserError(f"'split.folds' must be at least 2, got {folds}")
    if folds > n_groups:
        unit = "groups (a clip without a group counts as one)" if n_groups < n_clips else "clips"
        raise UserError(f"'split.folds' is {folds} but there are only {n_groups} {unit}; "
                        f"use split.folds <= {n_groups}")


def _stratify(counts: np.ndarray, sizes: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every group by iterative stratification over groups."""
    n_groups = counts.shape[0]
    wanted = np.tile(counts.sum(axis=0) / folds, (folds, 1)).astype(float)  # clips of each class per fold
    wanted_total = np.full(folds, sizes.sum() / folds)
    holds = counts > 0
    remaining = holds.sum(axis=0)  # unplaced groups holding each class
    fold_of_group = np.full(n_groups, -1, dtype=np.int64)

    def place(group: int, column: np.ndarray) -> None:
        # the fold wanting most of this class, then most clips, then a seeded draw
        keys = np.lexsort((rng.random(folds), -wanted_total, -column))
        fold = int(keys[0])
        fold_of_group[group] = fold
        wanted[fold] -= counts[group]
        wanted_total[fold] -= sizes[group]
        remaining[holds[group]] -= 1

    while (remaining > 0).any():
        live = np.flatnonzero(remaining > 0)
        rarest = live[remaining[live] == remaining[live].min()]
        label = int(rarest[rng.integers(len(rarest))])
        for group in rng.permutation(np.flatnonzero(holds[:, label])):
            if fold_of_group[group] < 0:
                place(int(group), wanted[:, label])
    for group in rng.permutation(np.flatnonzero(fold_of_group < 0)):  # groups without labels
        place(int(group), np.zeros(folds))
    return fold_of_group


def _cover_every_fold(fold_of_group: np.ndarray, counts: np.ndarray, folds: int,
                      rng: np.random.Generator) -> None:
    """Move single groups into folds that lack a class held by >= folds groups, never emptying a fold of
    another class (or of clips) that it would then lack."""
    holds = counts > 0
    present = np.zeros((folds, counts.shape[1]), dtype=np.int64)  # groups holding each class per fold
    np.add.at(present, fold_of_group, holds.astype(np.int64))
    groups_per_fold = np.bincount(fold_of_group, minlength=folds)
    for label in np.argsort(holds.sum(axis=0), kind="stable"):
        if holds[:, label].sum() < folds:
            continue
        for target in np.flatnonzero(present[:, label] == 0):
            movable = [g for g in np.flatnonzero(holds[:, label])
                       if present[fold_of_group[g], label] >= 2 and groups_per_fold[fold_of_group[g]] >= 2
                       and (present[fold_of_group[g], holds[g]] >= 2).all()]
            if not movable:
                continue
            # the group with the fewest classes disturbs the other classes least
            fewest = min(holds[g].sum() for g in movable)
            candidates = [g for g in movable if holds[g].sum() == fewest]
            group = int(candidates[rng.integers(len(candidates))])
            source = fold_of_group[group]
            present[source] -= holds[group]
            present[target] += holds[group]
            groups_per_fold[source] -= 1
            groups_per_fold[target] += 1
            fold_of_group[group] = target
