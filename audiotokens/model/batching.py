"""Batches by a budget of padded positions: length buckets, greedy filling, a (seed, epoch) batch order.

Self-attention cost grows with the longest sequence in a batch, so a fixed number of clips per batch either
wastes most of the compute on padding (skewed lengths) or runs out of memory on the batch that holds the
longest clips. Here a batch's cost is what it really occupies once padded, `longest x clips`, and batches
are filled up to `batch_frames` of it (fairseq's `max_tokens`, ESPnet's batch bins).

Lengths are in model positions (frames plus [CLS]/[SEP], or whatever the model adds): the caller converts.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import UserError

# Clips whose lengths differ by less than this fraction share a bucket; order inside a bucket is random each
# epoch, so batches change between epochs while padding stays within about this fraction of the batch.
BUCKET_WIDTH = 0.1


def padded_cost(batch: Sequence[int], lengths: np.ndarray) -> int:
    """Positions a batch occupies once padded to its longest clip."""
    return int(max(lengths[i] for i in batch)) * len(batch) if len(batch) else 0


def padded_fraction(batches: Sequence[Sequence[int]], lengths: np.ndarray) -> float:
    """Share of all padded positions that are padding (0 = no waste)."""
    lengths = np.asarray(lengths)
    total = sum(padded_cost(batch, lengths) for batch in batches)
    real = sum(int(lengths[i]) for batch in batches for i in batch)
    return 1.0 - real / total if total else 0.0


def length_buckets(lengths: np.ndarray, width: float = BUCKET_WIDTH) -> np.ndarray:
    """Bucket number per clip: geometric bins, so a bucket spans about `width` of its lengths."""
    return np.floor(np.log(np.maximum(lengths, 1)) / math.log1p(width)).astype(np.int64)


def fill_greedily(order: Sequence[int], lengths: np.ndarray, batch_frames: int, max_clips: int) -> list[list[int]]:
    """Consecutive clips of `order` in one batch while the padded cost stays within the budget.

    A clip that alone exceeds the budget still gets a batch of its own, so no clip is ever dropped.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        grown_longest = max(longest, int(lengths[i]))
        if batch and (grown_longest * (len(batch) + 1) > batch_frames or len(batch) >= max_clips):
            batches.append(batch)
            batch, grown_longest = [], int(lengths[i])
        batch.append(i)
        longest = grown_longest
    if batch:
        batches.append(batch)
    return batches


def longest_first(lengths: Sequence[int] | np.ndarray) -> list[int]:
    """Indices from the longest clip to the shortest, equal lengths in their own order: the evaluation order
    that keeps similar lengths together, so that little compute goes to padding."""
    return np.argsort(-np.asarray(lengths), kind="stable").tolist()


def length_ordered_batches(lengths: Sequence[int] | np.ndarray, batch_size: int,
                           batch_frames: int = 0) -> list[list[int]]:
    """Longest first, grouped into batches of at most `batch_size` clips and, when `batch_frames` is set, at
    most that many padded positions (fill_greedily). The same batches every time."""
    order = longest_first(lengths)
    if batch_frames:
        return fill_greedily(order, np.asarray(lengths), batch_frames, batch_size)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def worst_batch(lengths: Sequence[int], *, batch_frames: int | None, max_clips: int) -> tuple[int, int]:
    """(clips, positions) of the batch that needs the most memory: the longest clip with as many others as fit.

    Activations grow with clips x positions (capped by the budget) and attention with clips x positions²,
    so for a fixed budget the batch holding the longest clip is the largest one.
    """
    longest = int(max(lengths))
    if batch_frames is None:
        return min(max_clips, len(lengths)), longest
    return max(1, min(max_clips, batch_frames // longest, len(lengths))), longest


class FrameBudgetSampler(Sampler[list[int]]):
    """A batch sampler (DataLoader's `batch_sampler=`): lists of clip indices within a padded-position budget.

    Training (`shuffle=True`): clips are shuffled by (seed, epoch), sorted into length buckets (stable, so the
    shuffle survives inside a bucket), filled greedily up to `batch_frames`, and the batches are shuffled by
    (seed, epoch). Call `set_epoch(epoch)` before iterating; the batches depend on nothing else, so a resumed
    run sees exactly the same ones. Evaluation (`shuffle=False`): longest clips first, the same every time.
    `over_budget` lists clips longer than the budget; each is served alone (the caller should warn).
    """

    def __init__(
        self, *, lengths: Sequence[int] | np.ndarray, batch_frames: int, max_clips: int, seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_frames < 1:
            raise UserError(f"train.batch_frames must be a positive number of positions, not {batch_frames}")
        if max_clips < 1:
            raise UserError(f"train.batch_size must be at least 1, not {max_clips}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_frames, self.max_clips = int(batch_frames), int(max_clips)
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.over_budget: list[int] = np.flatnonzero(self.lengths > self.batch_frames).tolist()
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in the order they are served (computed once per epoch)."""
        key = self.epoch if self.shuffle else -1
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._training_batches() if self.shuffle else self._evaluation_batches())
        return self._cached[1]

    def _training_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled = rng.permutation(len(self.lengths))
        order = shuffled[np.argsort(length_buckets(self.lengths[shuffled]), kind="stable")]
        batches = fill_greedily(order.tolist(), self.lengths, self.batch_frames, self.max_clips)
        return [batches[b] for b in rng.permutation(len(batches))]

    def _evaluation_batches(self) -> list[list[int]]:
        return length_ordered_batches(self.lengths, self.max_clips, self.batch_frames)

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.batches()])
