"""The training loop's handling of variable-length data: frame-budget batches, crops, evaluation windows
and the memory check.

Owns how the train stage turns `train.batch_frames`, `train.crop_frames`, `train.eval_window` and
`train.eval_hop` into loaders (training: shuffled by (seed, epoch), buckets of lengths when by budget, a
random crop per clip drawn from (seed, epoch), the clean clip or one of its corrupted copies (augment.copies)
drawn from (seed, epoch) too; evaluation: longest first, clips longer than the window
scored as the mean of their windows' scores), how many optimizer steps a run plans when the number of
batches changes between epochs, the peak-memory estimate for the worst batch before the first step
(memory.py) and the measured peak after each epoch. batching.py, windows.py, augment.py and memory.py do the
arithmetic.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from ..errors import UserError
from ..model.batching import FrameBudgetSampler, length_ordered_batches, worst_batch
from ..model.parts import EXTRA_POSITIONS, AudioClassifier, ModelSpec
from ..model.windows import clip_windows, first_windows, mean_over_windows
from ..pipeline.distributed import ONE_PROCESS, Ranks, RankShare, deal_batches
from .augment import BalancedSampler
from .datasets import ClipDataset, CopyChoice, EpochShuffleSampler
from .memory import GIB, available_bytes, check_fits, check_weights_fit, describe, estimate_peak_bytes
from .optimisation import PassResult, Trainer

log = logging.getLogger("audiotokens")


@dataclass(frozen=True, kw_only=True)
class LengthPlan:
    """How clips are cut into what the model reads: batch budget, training crop, evaluation windows."""

    batch_size: int
    batch_frames: int = 0  # padded positions per batch; 0 = batch_size clips
    crop_frames: int = 0  # training: a random crop of this many frames per clip; 0 = whole clips
    eval_window: int = 0  # evaluation: windows of this many frames; 0 = whole clips
    eval_hop: int = 0
    sampler: str = "shuffle"  # shuffle | balanced (augment.BalancedSampler)

    @classmethod
    def from_settings(cls, settings: Any) -> LengthPlan:
        """train.eval_window defaults to crop_frames and train.eval_hop to half the window."""
        window = settings.eval_window or settings.crop_frames
        return cls(batch_size=settings.batch_size, batch_frames=settings.batch_frames,
                   crop_frames=settings.crop_frames, eval_window=window,
                   eval_hop=(settings.eval_hop or max(1, window // 2)) if window else 0,
                   sampler=settings.sampler)

    @property
    def plain(self) -> bool:
        """Nothing set: the loaders of a run without any of these settings."""
        return not (self.batch_frames or self.crop_frames or self.eval_window or self.sampler != "shuffle")

    def model_frames(self, data_frames: int) -> int:
        """Frames the model must hold: with crops, the longest crop or window; else every frame fed
        (training then reads whole clips, even when evaluation reads windows)."""
        if not self.crop_frames:
            return data_frames
        return min(data_frames, max(self.crop_frames, self.eval_window))

    def within(self, model_frames: int) -> LengthPlan:
        """Evaluation windows no longer than the model holds, as the bundle cuts them (model/bundle.py)."""
        if self.eval_window <= model_frames:
            return self
        return dataclasses.replace(self, eval_window=model_frames)

    def training_lengths(self, lengths: np.ndarray) -> np.ndarray:
        return np.minimum(lengths, self.crop_frames) if self.crop_frames else np.asarray(lengths)


def positions(frames: np.ndarray) -> np.ndarray:
    """Positions a clip of `frames` frames occupies in a batch: its frames plus [CLS] and [SEP]."""
    return np.asarray(frames, dtype=np.int64) + EXTRA_POSITIONS


# ---------------------------------------------------------------- training batches


class CroppedBatches:
    """Batches of (clip, start, stop) items: each clip of the inner batch sampler cut to a random crop.

    The starts depend only on (seed, epoch), so a resumed run reads exactly the same frames.
    """

    def __init__(self, *, inner, lengths: np.ndarray, crop: int, seed: int):
        self.inner, self.lengths, self.crop, self.seed, self.epoch = inner, np.asarray(lengths), crop, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_batches_epoch(self.inner, epoch)

    def starts(self) -> np.ndarray:
        """One start per clip in [0, length - crop] (0 for clips no longer than the crop)."""
        room = np.maximum(self.lengths - self.crop, 0)
        uniform = np.random.default_rng([self.seed, self.epoch, 1]).random(len(room))
        return np.floor(uniform * (room + 1)).astype(int)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        starts = self.starts()
        for batch in self.inner:
            yield [(i, int(starts[i]), int(starts[i]) + min(int(self.lengths[i]), self.crop)) for i in batch]


def training_loader(dataset: ClipDataset, plan: LengthPlan, *, seed: int, num_workers: int,
                    pin_memory: bool, ranks: Ranks = ONE_PROCESS) -> DataLoader:
    """Shuffled by (seed, epoch): by frame budget (length buckets) or batch_size clips, crops when set, each
    clip's clean rows or one of its corrupted copies when the store has copies; under torchrun, this
    process's share of each of those global batches."""
    lengths = plan.training_lengths(dataset.lengths)
    if plan.sampler == "balanced":
        if plan.batch_frames:
            raise UserError("'train.sampler' = balanced draws batches of clips; set train.batch_frames=0 (or "
                            "train.sampler=shuffle)")
        balanced = BalancedSampler(labels=dataset.labels, n_classes=dataset.n_classes, n_samples=len(dataset),
                                   seed=seed)
        batches = BatchSampler(balanced, plan.batch_size, drop_last=False)
    elif plan.batch_frames:
        batches = FrameBudgetSampler(lengths=positions(lengths), batch_frames=plan.batch_frames,
                                     max_clips=plan.batch_size, seed=seed)
        warn_over_budget(batches, plan.batch_frames)
    else:
        batches = BatchSampler(EpochShuffleSampler(len(dataset), seed), plan.batch_size, drop_last=False)
    if plan.crop_frames:
        batches = CroppedBatches(inner=batches, lengths=dataset.lengths, crop=plan.crop_frames, seed=seed)
    if dataset.copies is not None:
        counts = dataset.copy_counts()
        log.info("each epoch reads every training clip clean or as one of its corrupted copies (%d copies of "
                 "%d of the %d clips)", int(counts.sum()), int((counts > 0).sum()), len(counts))
        batches = CopyChoice(inner=batches, copies=counts, seed=seed)
    if ranks.active:
        batches = RankShare(batches, ranks)
    return _loader(dataset, batches, num_workers, pin_memory, seed)


def warn_over_budget(sampler: FrameBudgetSampler, batch_frames: int) -> None:
    if sampler.over_budget:
        log.warning("%d clips are longer than train.batch_frames=%d positions; each is a batch of its own",
                    len(sampler.over_budget), batch_frames)


def _loader(dataset: ClipDataset, batch_sampler, num_workers: int, pin_memory: bool, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=dataset.collate,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- evaluation batches


def evaluation_loader(dataset: ClipDataset, plan: LengthPlan, *, seed: int, num_workers: int,
                      pin_memory: bool, ranks: Ranks = ONE_PROCESS) -> DataLoader:
    """Longest first; clips longer than the window read as windows (`loader.window_counts` per clip);
    under torchrun, this process's whole batches (the pass's scores are gathered afterwards)."""
    items, counts = clip_windows(dataset.lengths, plan.eval_window, plan.eval_hop)
    piece_lengths = np.array([stop - start for _, start, stop in items], dtype=np.int64)
    batches = [[items[k] for k in batch]
               for batch in length_ordered_batches(positions(piece_lengths), plan.batch_size, plan.batch_frames)]
    batches = deal_batches(batches, ranks)
    loader = _loader(dataset, batches, num_workers, pin_memory, seed)
    loader.window_counts = counts
    return loader


def evaluate_split(trainer: Trainer, loader: DataLoader) -> PassResult:
    """One eval pass; a clip read as windows gets the mean of its windows' scores and of their losses, and
    the pass's loss is the mean over clips."""
    result = trainer.evaluate(loader)
    counts = getattr(loader, "window_counts", None)
    if counts is None or (counts == 1).all():
        return result
    # the pass returns pieces sorted by clip index (stable), so each clip's windows are consecutive
    clip_losses = mean_over_windows(result.clip_losses[:, None], counts)[:, 0]
    return PassResult(float(clip_losses.mean()), result.targets[first_windows(counts)],
                      mean_over_windows(result.scores, counts), len(counts), result.seconds, clip_losses)


# ---------------------------------------------------------------- steps and epochs


def epoch_sampler(loader: DataLoader):
    """The object whose order depends on the epoch."""
    batches = loader.batch_sampler
    if hasattr(batches, "set_epoch"):
        return batches
    return batches.sampler if isinstance(batches, BatchSampler) else loader.sampler


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    epoch_sampler(loader).set_epoch(epoch)


def set_batches_epoch(batches, epoch: int) -> None:
    """A batch sampler's epoch: its own, or that of the clip sampler a BatchSampler draws from."""
    (batches if hasattr(batches, "set_epoch") else batches.sampler).set_epoch(epoch)


def planned_steps(loader: DataLoader, epochs: int, grad_accum: int) -> int:
    """Optimizer steps of `epochs` epochs. Budget batches are refilled every epoch, so their number can
    change from one epoch to the next; the schedule's horizon counts each epoch's own batches."""
    if not hasattr(loader.batch_sampler, "set_epoch"):
        return epochs * math.ceil(len(loader) / grad_accum)
    planner = copy.deepcopy(loader.batch_sampler)
    total = 0
    for epoch in range(epochs):
        planner.set_epoch(epoch)
        total += math.ceil(len(planner) / grad_accum)
    return total


# ---------------------------------------------------------------- memory


def estimate_run_peak(*, model: torch.nn.Module, settings: Any, positions: np.ndarray, device: torch.device,
                      amp_dtype: torch.dtype | None, n_classes: int, input_features: int) -> dict[str, int]:
    """Bytes of one training step on the worst batch of this run (memory.estimate_peak_bytes's terms)."""
    clips, longest = worst_batch(positions.tolist(), batch_frames=settings.batch_frames or None,
                                 max_clips=settings.batch_size)
    parameters = list(model.parameters())
    return estimate_peak_bytes(
        n_parameters=sum(p.numel() for p in parameters),
        trainable_parameters=sum(p.numel() for p in parameters if p.requires_grad),
        batch_clips=clips, positions=longest, **encoder_shape(model.spec), n_classes=n_classes,
        attention="sdpa", device_type=device.type, amp_dtype_bytes=2 if amp_dtype is not None else 4,
        attention_dropout=model.spec.dropout > 0, input_features=input_features)


def encoder_shape(spec: ModelSpec) -> dict[str, int]:
    """Width, depth, heads and feed-forward size of the encoder: a speech model's own (its config in the model
    spec; its frozen convolutional feature encoder keeps no activations), else the model.* sizes in the spec."""
    speech = spec.encoder_params.get("speech_config")
    if speech:
        return {"hidden": speech["hidden_size"], "layers": speech["num_hidden_layers"],
                "heads": speech["num_attention_heads"], "intermediate": speech["intermediate_size"]}
    return {"hidden": spec.hidden_size, "layers": spec.encoder_params["num_layers"],
            "heads": spec.encoder_params["num_heads"], "intermediate": spec.encoder_params["intermediate_size"]}


def check_model_size(*, spec: ModelSpec, tables: list[np.ndarray], device: torch.device, network: Any) -> None:
    """Before any weight exists: stop with one line when the model's weights alone cannot fit on `device`.

    The model is built on the meta device (shapes, no storage) to count its parameters, so sizes such as
    model.hidden_size = 2**20 or model.max_length = 10**9 are refused instead of failing inside an allocation.
    """
    with torch.device("meta"):
        shapes = AudioClassifier(spec=spec, decode_tables=[torch.from_numpy(t) for t in tables])
    n_parameters = sum(p.numel() for p in shapes.parameters())
    hint = (f"hidden_size={network.hidden_size}, intermediate_size={network.intermediate_size}, "
            f"num_layers={network.num_layers}, max_length={network.max_length}")
    check_weights_fit(n_parameters, available_bytes(device), settings_hint=hint)


def check_run_memory(*, model: torch.nn.Module, settings: Any, max_length: int, dataset: ClipDataset,
                     ids: list[str], device: torch.device, amp_dtype: torch.dtype | None, n_classes: int,
                     input_features: int) -> dict[str, int]:
    """Log the estimated peak for the worst training batch; stop with one line when it cannot fit."""
    started = time.perf_counter()
    fed = LengthPlan.from_settings(settings).training_lengths(dataset.lengths)
    estimate = estimate_run_peak(model=model, settings=settings, positions=positions(fed), device=device,
                                 amp_dtype=amp_dtype, n_classes=n_classes, input_features=input_features)
    available = available_bytes(device)
    log.info("estimated peak %s for the worst batch; %.2f GiB available on %s (%.3f s)", describe(estimate),
             available / GIB, device.type, time.perf_counter() - started)
    row = int(np.argmax(dataset.lengths))
    hint = (f"batch_frames={settings.batch_frames}, batch_size={settings.batch_size}, "
            f"max_length={max_length}, crop_frames={settings.crop_frames}")
    check_fits(estimate, available, longest_clip_id=ids[row], longest_frames=int(dataset.lengths[row]),
               settings_hint=hint)
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
