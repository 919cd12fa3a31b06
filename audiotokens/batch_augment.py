"""Training-batch augmentation as the train stage applies it: train.mask_time, mask_freq and mixup_alpha.

Owns which augmentations a run's settings turn on, the checks that they fit the input and the task, and
the random generator of each epoch, seeded by (seed, epoch) so a resumed run draws exactly what an
uninterrupted one did. The augmentations themselves are augment.py's pure functions. Mixup mixes frames
(train.input = "frames"); token ids cannot be mixed, and mixing token embeddings would need a hook inside
the model, so a tokens model refuses mixup_alpha.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from .augment import (
    apply_frame_mask,
    apply_token_mask,
    content_positions,
    mask_freq_bands,
    mask_time_spans,
    mix_masks,
    mixup,
)
from .errors import UserError
from .objectives import Objective

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
    def from_settings(cls, settings: Any, objective: Objective) -> BatchAugmenter:
        frames = settings.input == "frames"
        if settings.mask_freq and not frames:
            raise UserError("'train.mask_freq' masks mel bands and needs train.input=frames; set it to 0")
        if settings.mixup_alpha and not (frames and objective.uses_threshold):
            raise UserError("'train.mixup_alpha' mixes frames of multi-label clips: it needs "
                            f"train.input=frames and a multi-label task (this run: {settings.input}, "
                            f"{objective.task}); set it to 0")
        return cls(input_kind=settings.input, mask_time=settings.mask_time, mask_span=settings.mask_span,
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
