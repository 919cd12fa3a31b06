"""The training loop's handling of variable-length data: frame-budget batches and the memory check.

Owns how the train stage turns `train.batch_frames` into loaders (training: buckets shuffled by (seed,
epoch); evaluation: longest first), how many optimizer steps a run plans when the number of batches
changes between epochs, the peak-memory estimate for the worst batch before the first step (memory.py),
and the measured peak after each epoch. train.py calls these; batching.py and memory.py do the arithmetic.
"""
from __future__ import annotations

import logging
import math
import resource
import sys
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .batching import FrameBudgetSampler, worst_batch
from .memory import GIB, available_bytes, check_fits, describe, estimate_peak_bytes
from .modelparts import EXTRA_POSITIONS
from .token_dataset import ClipDataset

log = logging.getLogger("audiotokens")


def model_positions(dataset: ClipDataset) -> np.ndarray:
    """Positions each clip occupies in a batch: its frames as fed (already capped) plus [CLS] and [SEP]."""
    return np.asarray(dataset.lengths, dtype=np.int64) + EXTRA_POSITIONS


def make_budget_loader(dataset: ClipDataset, *, batch_frames: int, max_clips: int, shuffle_seed: int | None,
                       num_workers: int, pin_memory: bool, seed: int) -> DataLoader:
    """A loader whose batches hold at most `batch_frames` padded positions and `max_clips` clips.

    Training (`shuffle_seed` given) buckets by length and shuffles by (seed, epoch); evaluation goes longest
    first. Clips longer than the budget are served alone and named once in the log.
    """
    sampler = FrameBudgetSampler(lengths=model_positions(dataset), batch_frames=batch_frames, max_clips=max_clips,
                                 seed=shuffle_seed or 0, shuffle=shuffle_seed is not None)
    if sampler.over_budget:
        log.warning("%d clips are longer than train.batch_frames=%d positions; each is a batch of its own",
                    len(sampler.over_budget), batch_frames)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def epoch_sampler(loader: DataLoader):
    """The object whose order depends on the epoch: the batch sampler when batches are by budget."""
    return loader.batch_sampler if isinstance(loader.batch_sampler, FrameBudgetSampler) else loader.sampler


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    epoch_sampler(loader).set_epoch(epoch)


def planned_steps(loader: DataLoader, epochs: int, grad_accum: int) -> int:
    """Optimizer steps of `epochs` epochs. Budget batches are refilled every epoch, so their number can
    change from one epoch to the next; the schedule's horizon counts each epoch's own batches."""
    sampler = epoch_sampler(loader)
    if not isinstance(sampler, FrameBudgetSampler):
        return epochs * math.ceil(len(loader) / grad_accum)
    planner = FrameBudgetSampler(lengths=sampler.lengths, batch_frames=sampler.batch_frames,
                                 max_clips=sampler.max_clips, seed=sampler.seed, shuffle=sampler.shuffle)
    total = 0
    for epoch in range(epochs):
        planner.set_epoch(epoch)
        total += math.ceil(len(planner) / grad_accum)
    return total


# ---------------------------------------------------------------- memory


def longest_clip(dataset: ClipDataset, ids: list[str]) -> tuple[str, int]:
    """(id, frames as fed) of the clip with the most frames."""
    row = int(np.argmax(dataset.lengths))
    return ids[row], int(dataset.lengths[row])


def estimate_run_peak(*, model: torch.nn.Module, settings: Any, positions: np.ndarray, device: torch.device,
                      amp_dtype: torch.dtype | None, n_classes: int, input_features: int) -> dict[str, int]:
    """Bytes of one training step on the worst batch of this run (memory.estimate_peak_bytes's terms)."""
    clips, longest = worst_batch(positions.tolist(), batch_frames=settings.batch_frames or None,
                                 max_clips=settings.batch_size)
    parameters = list(model.parameters())
    return estimate_peak_bytes(
        n_parameters=sum(p.numel() for p in parameters),
        trainable_parameters=sum(p.numel() for p in parameters if p.requires_grad),
        batch_clips=clips, positions=longest, hidden=settings.hidden_size, layers=settings.num_layers,
        heads=settings.num_heads, intermediate=settings.intermediate_size, n_classes=n_classes,
        attention="sdpa", device_type=device.type, amp_dtype_bytes=2 if amp_dtype is not None else 4,
        attention_dropout=settings.dropout > 0, input_features=input_features)


def check_run_memory(*, model: torch.nn.Module, settings: Any, dataset: ClipDataset, ids: list[str],
                     device: torch.device, amp_dtype: torch.dtype | None, n_classes: int,
                     input_features: int) -> dict[str, int]:
    """Log the estimated peak for the worst training batch; stop with one line when it cannot fit."""
    started = time.perf_counter()
    estimate = estimate_run_peak(model=model, settings=settings, positions=model_positions(dataset),
                                 device=device, amp_dtype=amp_dtype, n_classes=n_classes,
                                 input_features=input_features)
    available = available_bytes(device)
    log.info("estimated peak %s for the worst batch; %.2f GiB available on %s (%.3f s)", describe(estimate),
             available / GIB, device.type, time.perf_counter() - started)
    clip, frames = longest_clip(dataset, ids)
    hint = (f"batch_frames={settings.batch_frames}, batch_size={settings.batch_size}, "
            f"max_length={settings.max_length}")
    check_fits(estimate, available, longest_clip_id=clip, longest_frames=frames, settings_hint=hint)
    return estimate


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """The peak so far: CUDA's allocated peak since the last reset, or the process's peak resident set
    (which never goes down, so on CPU it is the run's peak up to now)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)  # bytes on macOS, KiB on Linux


def record_peak_memory(row: dict[str, Any], device: torch.device) -> None:
    """Put the epoch's measured peak in its metrics row (metrics.jsonl) and log it, then start a new one."""
    peak = peak_memory_bytes(device)
    row["peak_memory_gib"] = round(peak / GIB, 4)
    log.info("measured peak memory %.2f GiB (%s)", peak / GIB,
             "allocated on the GPU" if device.type == "cuda" else "process resident set")
    reset_peak_memory(device)

