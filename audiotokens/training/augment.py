"""Training-time augmentation: pure functions on batches, and the BatchAugmenter the train stage applies.

Every random choice comes from a `torch.Generator` the caller passes in (seeded from the run's seed and the
epoch), so an augmented run resumes exactly and the global RNG that dropout uses is left alone.
Each augmentation is off unless its setting is given; the caller decides which ones run.

Shapes: token ids (batch, positions, codebooks) int64, frames (batch, positions, dim) float32, masks
(batch, positions). Positions include [CLS] at 0 and [SEP] at length-1; `maskable` marks the positions an
augmentation may touch (real content only), which the caller builds from the attention mask.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import UserError
from ..model.objectives import Objective
from ..model.parts import MASK


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


Batch = dict[str, torch.Tensor]


class BatchAugmenter:
    """Applies the augmentations that are on to each training batch (never to evaluation batches)."""

    def __init__(self, *, input_kind: str, mask_time: float = 0.0, mask_span: int = 1, mask_freq: int = 0,
                 mask_freq_width: int = 1, mixup_alpha: float = 0.0, seed: int = 0):
        self.input_kind, self.seed = input_kind, seed
        self.mask_time, self.mask_span = mask_time, mask_span
        self.mask_freq, self.mask_freq_width = mask_freq, mask_freq_width
        self.mixup_alpha = mixup_alpha

    @classmethod
    def from_settings(cls, settings: Any, input_kind: str, objective: Objective) -> BatchAugmenter:
        """The [train] augmentation keys for a model reading `input_kind` (model.input)."""
        frames = input_kind == "frames"
        if settings.mask_freq and not frames:
            raise UserError("'train.mask_freq' masks mel bands and needs model.input=frames; set it to 0")
        if settings.mixup_alpha and not (frames and objective.uses_threshold):
            raise UserError("'train.mixup_alpha' mixes frames of multi-label clips: it needs "
                            f"model.input=frames and a multi-label task (this run: {input_kind}, "
                            f"{objective.task}); set it to 0")
        return cls(input_kind=input_kind, mask_time=settings.mask_time, mask_span=settings.mask_span,
                   mask_freq=settings.mask_freq, mask_freq_width=settings.mask_freq_width,
                   mixup_alpha=settings.mixup_alpha, seed=settings.seed)

    @property
    def active(self) -> bool:
        return bool(self.mask_time or self.mask_freq or self.mixup_alpha)

    def epoch(self, batches: Iterable[Batch], epoch: int) -> Iterator[Batch]:
        """The epoch's batches, augmented with draws that depend only on (seed, epoch) and batch order."""
        if not self.active:
            yield from batches
            return
        seed = int(np.random.default_rng([self.seed, epoch, 2]).integers(2**62))
        generator = torch.Generator().manual_seed(seed)
        for batch in batches:
            yield self.apply(batch, generator)

    def apply(self, batch: Batch, generator: torch.Generator) -> Batch:
        inputs, mask, targets = batch["inputs"], batch["mask"], batch["targets"]
        if self.mask_time:
            where = mask_time_spans(content_positions(mask), span=self.mask_span, max_fraction=self.mask_time,
                                    generator=generator)
            masked = apply_token_mask if self.input_kind == "tokens" else apply_frame_mask
            inputs = masked(inputs, where)
        if self.mask_freq:
            inputs = mask_freq_bands(inputs, width=self.mask_freq_width, count=self.mask_freq,
                                     generator=generator)
        if self.mixup_alpha:
            inputs, targets, _, perm = mixup(inputs, targets, self.mixup_alpha, generator)
            mask = mix_masks(mask, perm)
        return {**batch, "inputs": inputs, "mask": mask, "targets": targets}
