from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from audiotokens.model.inputs import pack_sequences
from audiotokens.model.parts import CLS, MASK, PAD, SEP
from audiotokens.model.windows import clip_windows, eval_windows, mean_over_windows
from audiotokens.training.augment import (
    BalancedSampler,
    apply_frame_mask,
    apply_token_mask,
    content_positions,
    crop_starts,
    mask_freq_bands,
    mask_time_spans,
    mix_masks,
    mixup,
    random_crop,
)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def token_batch(lengths=(40, 7, 25, 1, 60)):
    rng = np.random.default_rng(0)
    return pack_sequences([rng.integers(0, 50, size=(n, 2)) for n in lengths])


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    padded = np.concatenate([[0], row.numpy().astype(int), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return (edges[1::2] - edges[::2]).tolist()


def test_content_positions_exclude_cls_sep_and_padding():
    ids, mask = token_batch()
    maskable = content_positions(mask)
    assert torch.equal(maskable.sum(1), torch.tensor([40, 7, 25, 1, 60]))
    special = (ids[..., 0] == CLS) | (ids[..., 0] == SEP) | (ids[..., 0] == PAD)
    assert not (maskable & special).any()


def test_time_spans_mask_the_stated_fraction_in_whole_spans_and_never_specials():
    ids, mask = token_batch()
    maskable = content_positions(mask)
    where = mask_time_spans(maskable, span=4, max_fraction=0.3, generator=seeded())
    assert not (where & ~maskable).any()
    for row, n in enumerate([40, 7, 25, 1, 60]):
        assert int(where[row].sum()) == int(0.3 * n) // 4 * 4
        assert all(run % 4 == 0 for run in runs(where[row]))
    masked = apply_token_mask(ids, where)
    assert (masked[where] == MASK).all()
    assert torch.equal(masked[~where], ids[~where])
    assert ids[where].ne(MASK).all()  # the input is left as it was


def test_time_spans_are_reproducible_and_spread_over_the_clip():
    maskable = content_positions(torch.ones(1, 102, dtype=torch.long))
    same = [mask_time_spans(maskable, span=5, max_fraction=0.2, generator=seeded(3)) for _ in range(2)]
    assert torch.equal(*same)
    hits = sum(mask_time_spans(maskable, span=5, max_fraction=0.2, generator=seeded(s)) for s in range(300))
    # Every content position can be masked, including the first and last; specials never.
    assert (hits[0, 1:101] > 0).all() and hits[0, 0] == 0 and hits[0, 101] == 0


def test_frame_mask_zeros_only_the_chosen_positions():
    frames = torch.randn(2, 10, 6)
    where = torch.zeros(2, 10, dtype=torch.bool)
    where[0, 3:5] = True
    masked = apply_frame_mask(frames, where)
    assert (masked[where] == 0).all() and torch.equal(masked[~where], frames[~where])


def test_freq_bands_zero_whole_channels_in_at_most_count_bands_of_width():
    frames = torch.rand(6, 20, 32) + 0.1
    masked = mask_freq_bands(frames, width=5, count=2, generator=seeded(1))
    zero = masked == 0
    assert torch.equal(zero.all(1), zero.any(1))  # a channel is masked at every position or none
    for row in range(6):
        channels = zero[row, 0]
        assert int(channels.sum()) <= 10 and len(runs(channels)) <= 2
        assert torch.equal(masked[row][:, ~channels], frames[row][:, ~channels])
    assert zero.any()
    assert len({tuple(zero[row, 0].tolist()) for row in range(6)}) > 1  # each clip draws its own bands


def test_crops_stay_in_bounds_and_reach_both_clip_ends():
    lengths = [5, 30, 100, 12]
    generator = seeded(2)
    starts = np.array([crop_starts(lengths, 12, generator) for _ in range(500)])
    for column, length in enumerate(lengths):
        kept = np.minimum(12, length)
        assert (starts[:, column] >= 0).all() and (starts[:, column] + kept <= length).all()
        assert starts[:, column].min() == 0 and starts[:, column].max() == length - kept
    assert random_crop(12, 12, generator) == 0


@pytest.mark.parametrize("length,window,hop", [(100, 30, 20), (90, 30, 30), (30, 30, 10), (7, 30, 10)])
def test_eval_windows_cover_the_clip_to_its_end(length, window, hop):
    windows = eval_windows(length, window, hop)
    assert windows[0][0] == 0 and windows[-1][1] == length
    assert all(stop - start == min(window, length) for start, stop in windows)
    covered = np.zeros(length, dtype=bool)
    for start, stop in windows:
        covered[start:stop] = True
    assert covered.all()
    assert len(set(windows)) == len(windows)


def test_window_averaged_scores_equal_the_mean_of_windows_scored_one_by_one():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4, 3))

    def score(window):  # mean pooling, softmax: probabilities of one window
        logits = window.mean(axis=0) @ weights
        return np.exp(logits) / np.exp(logits).sum()

    clips = [rng.normal(size=(length, 4)).astype(np.float32) for length in (101, 30, 7, 64)]
    items, counts = clip_windows([len(clip) for clip in clips], 30, 20)
    assert [i for i, _, _ in items] == sorted(i for i, _, _ in items)  # clip by clip
    window_scores = np.stack([score(clips[i][start:stop]) for i, start, stop in items]).astype(np.float32)
    averaged = mean_over_windows(window_scores, counts)
    one_by_one = [np.mean([score(clip[a:b]) for a, b in eval_windows(len(clip), 30, 20)], axis=0) for clip in clips]
    assert averaged.dtype == np.float32 and counts.tolist() == [5, 1, 1, 3]
    np.testing.assert_allclose(averaged, one_by_one, rtol=1e-6)
    whole, ones = clip_windows([101, 7], 0, 0)
    assert whole == [(0, 0, 101), (1, 0, 7)] and ones.tolist() == [1, 1]


def test_mixup_mixes_targets_with_the_same_weights_as_inputs():
    inputs = torch.randn(8, 5, 3)
    targets = (torch.rand(8, 6) > 0.5).float()
    mixed, mixed_targets, lam, perm = mixup(inputs, targets, 0.4, seeded(5))
    assert ((lam >= 0) & (lam <= 1)).all() and sorted(perm.tolist()) == list(range(8))
    for i in range(8):
        j = int(perm[i])
        torch.testing.assert_close(mixed[i], lam[i] * inputs[i] + (1 - lam[i]) * inputs[j])
        torch.testing.assert_close(mixed_targets[i], lam[i] * targets[i] + (1 - lam[i]) * targets[j])
    again = mixup(inputs, targets, 0.4, seeded(5))
    assert torch.equal(again[2], lam) and torch.equal(again[3], perm)


def test_mixup_refuses_class_ids_and_masks_union():
    with pytest.raises(ValueError):
        mixup(torch.randn(2, 3, 4), torch.tensor([0, 1]), 0.4, seeded())
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(mix_masks(mask, torch.tensor([1, 0])), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]]))


def long_tailed_labels(n: int = 1000, n_classes: int = 10, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    prior = 0.5 ** np.arange(n_classes)  # class 0 is ~500x as common as class 9
    first, extra = rng.choice(n_classes, size=(2, n), p=prior / prior.sum())
    return [[int(a)] if rng.random() < 0.7 else sorted({int(a), int(b)}) for a, b in zip(first, extra)]


def test_balanced_sampler_draws_classes_uniformly_on_long_tailed_labels():
    labels = long_tailed_labels()
    sampler = BalancedSampler(labels=labels, n_classes=12, n_samples=2000, seed=1)  # classes 10, 11 empty
    draws = list(sampler)
    assert len(draws) == len(sampler) == 2000
    # Each draw carries the class it was drawn for among its labels; count clips of each rare class instead.
    per_class = Counter(label for clip in draws for label in labels[clip])
    rarest = min(per_class, key=per_class.get)
    assert per_class[rarest] >= 200 - 1  # drawn at least its round-robin share (2000 / 10 classes)
    natural = Counter(label for clip_labels in labels for label in clip_labels)
    assert natural[9] / len(labels) < 0.02 and per_class[9] / 2000 > 0.09


def test_balanced_sampler_is_exactly_round_robin_on_single_labels():
    labels = [[0]] * 90 + [[1]] * 9 + [[2]]
    draws = list(BalancedSampler(labels=labels, n_classes=3, n_samples=300, seed=0))
    counts = Counter(labels[clip][0] for clip in draws)
    assert counts == {0: 100, 1: 100, 2: 100}
    assert len(set(draws[:90 * 3])) > 80  # the common class cycles through its clips, not one clip


def test_balanced_sampler_depends_only_on_seed_and_epoch():
    labels = long_tailed_labels(200)

    def order(seed, epoch):
        sampler = BalancedSampler(labels=labels, n_classes=10, n_samples=300, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3) and order(1, 2) != order(2, 2)
