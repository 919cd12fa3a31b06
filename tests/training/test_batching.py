from __future__ import annotations

import numpy as np
import pytest
from stores import make_workdir
from torch.utils.data import DataLoader

from audiotokens.errors import UserError
from audiotokens.model.batching import (
    FrameBudgetSampler,
    length_ordered_batches,
    padded_fraction,
    worst_batch,
)
from audiotokens.model.objectives import objective_for
from audiotokens.training.datasets import TokenClipDataset
from audiotokens.training.train import read_split_tokens, read_vocabulary


def skewed_lengths(n: int = 600, seed: int = 0) -> np.ndarray:
    """Speech-like lengths: most clips short, a long tail (log-normal), plus [CLS]/[SEP]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=4.0, sigma=1.0, size=n), 3, 2000).astype(np.int64) + 2


def cost(batch, lengths) -> int:
    return max(lengths[i] for i in batch) * len(batch)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_stay_within_budget_and_cover_each_clip_once(shuffle):
    lengths = skewed_lengths()
    sampler = FrameBudgetSampler(lengths=lengths, batch_frames=1500, max_clips=32, seed=3, shuffle=shuffle)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            assert len(batch) <= 32
            assert cost(batch, lengths) <= 1500 or (len(batch) == 1 and lengths[batch[0]] > 1500)


def test_clip_longer_than_budget_gets_its_own_batch_and_is_reported():
    lengths = np.array([10, 10, 500, 10, 10, 700])
    sampler = FrameBudgetSampler(lengths=lengths, batch_frames=100, max_clips=8, seed=0)
    assert sampler.over_budget == [2, 5]
    batches = list(sampler)
    assert [2] in batches and [5] in batches
    assert sorted(i for b in batches for i in b) == list(range(6))


def test_max_clips_bounds_batches_of_short_clips():
    sampler = FrameBudgetSampler(lengths=np.full(50, 4), batch_frames=10_000, max_clips=8, seed=0)
    assert sorted(len(b) for b in sampler) == [2] + [8] * 6


def test_same_seed_and_epoch_give_the_same_batches_as_a_resumed_sampler():
    lengths = skewed_lengths()
    first = FrameBudgetSampler(lengths=lengths, batch_frames=2000, max_clips=16, seed=7)
    first.set_epoch(0)
    list(first)
    first.set_epoch(4)
    resumed = FrameBudgetSampler(lengths=lengths, batch_frames=2000, max_clips=16, seed=7)
    resumed.set_epoch(4)
    assert list(first) == list(resumed)
    other_epoch = FrameBudgetSampler(lengths=lengths, batch_frames=2000, max_clips=16, seed=7)
    other_epoch.set_epoch(5)
    assert list(other_epoch) != list(resumed)
    other_seed = FrameBudgetSampler(lengths=lengths, batch_frames=2000, max_clips=16, seed=8)
    other_seed.set_epoch(4)
    assert list(other_seed) != list(resumed)


def test_evaluation_order_is_longest_first_and_fixed():
    lengths = skewed_lengths(200)
    sampler = FrameBudgetSampler(lengths=lengths, batch_frames=1000, max_clips=16, shuffle=False)
    batches = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == batches
    flat = [i for b in batches for i in b]
    assert list(lengths[flat]) == sorted(lengths, reverse=True)


def test_length_ordered_batches_by_count_and_by_budget():
    lengths = [3, 9, 5, 9, 1]
    assert length_ordered_batches(lengths, batch_size=2) == [[1, 3], [2, 0], [4]]  # ties keep their order
    assert length_ordered_batches(lengths, batch_size=8, batch_frames=18) == [[1, 3], [2, 0, 4]]  # 2 x 9, 3 x 5


def test_less_padding_than_random_batches_of_the_same_clip_count():
    lengths = skewed_lengths(2000)
    sampler = FrameBudgetSampler(lengths=lengths, batch_frames=4000, max_clips=64, seed=1)
    batches = list(sampler)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(lengths))
    size = int(np.ceil(len(lengths) / len(batches)))  # as many batches as the budget made
    random_batches = [shuffled[i:i + size].tolist() for i in range(0, len(lengths), size)]
    bucketed, random = padded_fraction(batches, lengths), padded_fraction(random_batches, lengths)
    assert bucketed < 0.15
    assert random > 0.5


def test_worst_batch_is_the_longest_clip_with_what_fits_beside_it():
    lengths = [5, 40, 100, 12]
    assert worst_batch(lengths, batch_frames=350, max_clips=8) == (3, 100)
    assert worst_batch(lengths, batch_frames=50, max_clips=8) == (1, 100)
    assert worst_batch(lengths, batch_frames=None, max_clips=2) == (2, 100)


def test_bad_budget_is_a_user_error():
    with pytest.raises(UserError, match="train.batch_frames"):
        FrameBudgetSampler(lengths=[3, 4], batch_frames=0, max_clips=2)


def test_works_as_a_dataloader_batch_sampler_with_the_padding_collate(tmp_path):
    layout = make_workdir(tmp_path, n_train=12, n_validation=4)
    split = read_split_tokens(layout, "train", read_vocabulary(layout))
    clips = TokenClipDataset(store_path=split.path, index=split.index, max_frames=64,
                             objective=objective_for("multilabel"))
    sampler = FrameBudgetSampler(lengths=clips.lengths + 2, batch_frames=110, max_clips=4, seed=0)
    loader = DataLoader(clips, batch_sampler=sampler, collate_fn=clips.collate)
    seen = []
    for batch in loader:
        assert batch["inputs"].shape[0] * batch["inputs"].shape[1] <= 110
        seen += batch["indices"].tolist()
    assert sorted(seen) == list(range(12))
