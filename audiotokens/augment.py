"""Training-time augmentation and windowed evaluation, as pure functions on batches.

Every random choice comes from a `torch.Generator` the caller passes in (seeded from the run's seed and the
epoch), so an augmented run resumes exactly and the global RNG that dropout uses is left alone.
Each augmentation is off unless its setting is given; the caller decides which ones run.

Shapes: token ids (batch, positions, codebooks) int64, frames (batch, positions, dim) float32, masks
(batch, positions). Positions include [CLS] at 0 and [SEP] at length-1; `maskable` marks the positions an
augmentation may touch (real content only), which the caller builds from the attention mask.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from .modelparts import MASK


def content_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, positions) bool: real positions except [CLS] (first) and [SEP] (last real position)."""
    real = attention_mask.bool()
    lengths = real.sum(dim=1, keepdim=True)
    index = torch.arange(real.shape[1], device=real.device).unsqueeze(0)
    return real & (index > 0) & (index < lengths - 1)


def _span_starts(n: int, n_spans: int, span: int, generator: torch.Generator) -> torch.Tensor:
    """Starts of `n_spans` non-overlapping spans in n slots, uniform over all such placements.

    Choosing which n_spans of (n - n_spans*span + n_spans) items are spans (stars and bars) and spreading
    them out by span-1 gives every placement the same chance.
    """
    items = n - n_spans * span + n_spans
    chosen = torch.randperm(items, generator=generator)[:n_spans].sort().values
    return chosen + torch.arange(n_spans) * (span - 1)


def mask_time_spans(
    maskable: torch.Tensor, *, span: int, max_fraction: float, generator: torch.Generator,
) -> torch.Tensor:
    """(batch, positions) bool: non-overlapping spans of `span` maskable positions to mask.

    Per clip, floor(max_fraction * maskable / span) spans, so exactly that many times `span` positions are
    masked and never more than `max_fraction` of them; clips shorter than one span are left alone.
    Spans are counted over maskable positions only, so [CLS], [SEP] and padding are never chosen.
    """
    where = torch.zeros_like(maskable, dtype=torch.bool)
    for row in range(maskable.shape[0]):
        positions = torch.nonzero(maskable[row], as_tuple=True)[0]
        n_spans = int(max_fraction * len(positions)) // span
        if n_spans == 0:
            continue
        starts = _span_starts(len(positions), n_spans, span, generator)
        chosen = (starts.unsqueeze(1) + torch.arange(span)).reshape(-1)
        where[row, positions[chosen.to(positions.device)]] = True
    return where


def apply_token_mask(ids: torch.Tensor, where: torch.Tensor, mask_id: int = MASK) -> torch.Tensor:
    """Ids with every codebook at the masked positions replaced by [MASK] (a new tensor)."""
    masked = ids.clone()
    masked[where] = mask_id
    return masked


def apply_frame_mask(frames: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Frames zeroed at the masked positions (zero is the mean of normalised frames; a new tensor)."""
    return frames.masked_fill(where.unsqueeze(-1), 0.0)


def mask_freq_bands(
    frames: torch.Tensor, *, width: int, count: int, generator: torch.Generator,
) -> torch.Tensor:
    """SpecAugment frequency masking: per clip, `count` bands of 0..width channels zeroed at every position."""
    batch, _, dim = frames.shape
    keep = torch.ones(batch, dim, dtype=torch.bool)
    for row in range(batch):
        for _ in range(count):
            band = int(torch.randint(0, min(width, dim) + 1, (1,), generator=generator))
            start = int(torch.randint(0, dim - band + 1, (1,), generator=generator))
            keep[row, start:start + band] = False
    return frames * keep.unsqueeze(1).to(frames.device, frames.dtype)


def random_crop(length: int, crop: int, generator: torch.Generator) -> int:
    """Start of a `crop`-long window inside a clip of `length` frames (0 when the clip is not longer)."""
    if length <= crop:
        return 0
    return int(torch.randint(0, length - crop + 1, (1,), generator=generator))


def crop_starts(lengths: Sequence[int], crop: int, generator: torch.Generator) -> list[int]:
    """One crop start per clip; the clip's frames [start, start + min(crop, length)) are kept."""
    return [random_crop(int(length), crop, generator) for length in lengths]


def eval_windows(length: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, stop) windows every `hop` frames, the last one aligned to the clip's end; one if it fits."""
    if length <= window:
        return [(0, length)]
    windows = [(start, start + window) for start in range(0, length - window + 1, hop)]
    if windows[-1][1] < length:
        windows.append((length - window, length))
    return windows


def mean_window_scores(
    score_fn: Callable[[list[torch.Tensor]], torch.Tensor], sequence: torch.Tensor, window: int, hop: int,
    *, windows_per_call: int = 16,
) -> torch.Tensor:
    """Mean over windows of `score_fn` for one clip's (frames, ...) sequence -> (n_classes,).

    `score_fn` takes a list of window slices (each (frames, ...)) and returns (len(list), n_classes) scores;
    give it probabilities so the mean is a mean of probabilities. Windows go to it in groups of
    `windows_per_call` so a long clip never becomes one huge batch.
    """
    slices = [sequence[start:stop] for start, stop in eval_windows(len(sequence), window, hop)]
    scores = [score_fn(slices[i:i + windows_per_call]) for i in range(0, len(slices), windows_per_call)]
    return torch.cat(scores).mean(dim=0)


def _beta(alpha: float, size: int, generator: torch.Generator) -> torch.Tensor:
    # torch's Beta distribution takes no generator; a numpy one seeded from ours keeps the draw reproducible.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=size)).float()


def mixup(
    inputs: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per clip i, lam_i·x_i + (1 - lam_i)·x_perm(i), and its targets mixed with the same lam_i.

    `inputs` are input embeddings or frames (batch, positions, dim), `targets` float (batch, n_classes)
    (multi-hot, or one-hot for single-label). lam ~ Beta(alpha, alpha) per clip. Returns (mixed inputs,
    mixed targets, lam (batch,), perm (batch,)). Clips of different lengths: pass the union of both masks
    to the model (`mix_masks`), so neither clip's content is hidden.
    """
    if not targets.is_floating_point():
        raise ValueError("mixup needs float (multi-hot or one-hot) targets to mix")
    batch = inputs.shape[0]
    lam = _beta(alpha, batch, generator).to(inputs.device)
    perm = torch.randperm(batch, generator=generator).to(inputs.device)
    mixed = _mix(inputs, lam, perm)
    return mixed, _mix(targets, lam.to(targets.device, targets.dtype), perm.to(targets.device)), lam, perm


def _mix(values: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    weight = lam.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return weight * values + (1 - weight) * values[perm]


def mix_masks(attention_mask: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Attention mask of mixed clips: a position is real when it is real in either clip."""
    return torch.maximum(attention_mask, attention_mask[perm])


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling (PANNs) for long-tailed, possibly multi-label data.

    Draws go round robin over the classes present, in a fresh random class order each round, so every class
    is drawn equally often (within one); each draw takes the next clip of that class from a shuffled list,
    reshuffled when used up. A clip with several labels can be drawn through any of them. Depends only on
    (seed, epoch): call `set_epoch` before iterating.
    """

    def __init__(self, *, labels: Sequence[Sequence[int]], n_classes: int, n_samples: int, seed: int):
        self.members = [[] for _ in range(n_classes)]
        for clip, clip_labels in enumerate(labels):
            for label in clip_labels:
                self.members[label].append(clip)
        self.present = [c for c in range(n_classes) if self.members[c]]
        if not self.present:
            raise ValueError("balanced sampling needs at least one labelled clip")
        self.n_samples, self.seed, self.epoch = n_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues = {c: [] for c in self.present}
        drawn: list[int] = []
        while len(drawn) < self.n_samples:
            for c in rng.permutation(self.present)[:self.n_samples - len(drawn)]:
                if not queues[c]:
                    queues[c] = rng.permutation(self.members[c]).tolist()
                drawn.append(queues[c].pop())
        return iter(drawn)
