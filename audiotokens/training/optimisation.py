"""One device's training mechanics: AdamW + warm-up/decay schedule, AMP, accumulation, clipping, inference.

The trainer is given a model, an Objective and batches {"inputs", "mask", "targets", "indices"}; it knows
nothing about what the inputs are. Under torchrun it is one of several processes (distributed.py): training
steps go through the model's DDP wrapper with each loss weighted by the process's share of the global
batch, and every pass's scores are gathered from all processes. Scores and losses stay on the device during an epoch and are copied to
the host every `FLUSH_EVERY` batches, so the host does not wait for the GPU after every step.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..errors import UserError
from ..model.objectives import Objective
from ..pipeline import distributed
from ..pipeline.cpus import training_threads
from ..pipeline.distributed import ONE_PROCESS, DataParallelModel, Ranks

log = logging.getLogger("audiotokens")

FLUSH_EVERY = 64


def pick_device(name: str) -> torch.device:
    """'auto' takes CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": hasattr(torch.backends, "mps") and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        return torch.device(next(kind for kind, ok in available.items() if ok))
    if name not in available:
        raise UserError(f"'train.device' must be auto, cuda, mps or cpu, got '{name}'")
    if not available[name]:
        raise UserError(f"'train.device' is {name} but no {name} device is available; use train.device=auto")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """CUDA: bf16 where the GPU supports it (no scaler needed), else fp16. CPU: bf16 where the CPU multiplies
    it natively, else none (bf16 would be emulated there). No autocast elsewhere (MPS)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16() else None


def cpu_bf16() -> str:
    """The CPU feature that multiplies bf16 natively ("AMX", "AVX512-BF16"), or "" where there is none."""
    probes = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    return next((name for name, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()), "")


def describe_precision(device: torch.device, amp: bool, dtype: torch.dtype | None) -> str:
    """The precision in use and why, for the log (e.g. "bf16 autocast (train.amp; the CPU has AMX)")."""
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    if not amp:
        return f"{name} (train.amp off)"
    if device.type == "cpu":
        feature = cpu_bf16()
        return f"{name} (train.amp; the CPU has {feature})" if feature else \
            f"{name} (train.amp, but the CPU has no native bf16: neither AVX512-BF16 nor AMX)"
    return f"{name} (train.amp)" if dtype is not None else f"{name} (train.amp: no autocast on {device.type})"


def compile_model(model: nn.Module, device: torch.device) -> None:
    """torch.compile the model's forward in place (train.compile): its weights and state_dict keys stay as
    they are; the first steps of each new input shape pay the compilation. On a CPU the compiled kernels are
    C++, so a compiler must be there; without one the stage stops here in one line, not at the first step."""
    if not hasattr(model, "compile"):
        raise UserError(f"train.compile needs torch >= 2.2 (this is {torch.__version__}); set train.compile=false")
    if device.type == "cpu" and not cpp_compiler():
        raise UserError("train.compile on a CPU needs a C++ compiler (g++ or clang++, or the CXX environment "
                        "variable naming one); install one or set train.compile=false")
    model.compile()


def cpp_compiler() -> str:
    """The C++ compiler torch.compile would build CPU kernels with, or "" where it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: ask the shell for the usual names
        return next(filter(None, (shutil.which(name) for name in ("g++", "clang++", "c++"))), "")
    try:
        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 (torch raises its own InvalidCxxCompiler, moved between versions)
        return ""


@contextmanager
def intra_op_threads(requested: int) -> Iterator[None]:
    """torch's intra-op threads for one training run (pipeline/cpus.py chooses them; train.threads), logged,
    and put back afterwards."""
    choice = training_threads(requested)
    if choice is None:
        log.info("%d intra-op threads (OMP_NUM_THREADS=%s)", torch.get_num_threads(),
                 os.environ.get("OMP_NUM_THREADS"))
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    log.info("%d intra-op threads (%s)", choice.threads, choice.reason)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and LayerNorm weights (1-D) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupLinearSchedule:
    """LR factor: linear warm-up to 1 over `warmup` steps, then linear decay to 0 at step `total`.

    `extend` moves the horizon without a jump: from the step it is called at, the factor decays
    linearly from its value there to 0 at the new total. LambdaLR saves this object's attributes in
    its state dict, so a resumed run continues on the schedule it was on.
    """

    def __init__(self, *, warmup: int, total: int):
        self.warmup, self.total = warmup, total  # the first plan
        self.end = total  # where the lr reaches 0 (moved by extend)
        self.bend_step, self.bend_factor = -1, 1.0  # no bend until the horizon is moved

    def base_factor(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))

    def __call__(self, step: int) -> float:
        if self.bend_step < 0 or step < self.bend_step:
            return self.base_factor(step)
        return self.bend_factor * max(0.0, (self.end - step) / max(1, self.end - self.bend_step))

    def extend(self, step: int, end: int) -> None:
        self.bend_factor, self.bend_step, self.end = self(step), step, end


@dataclass
class PassResult:
    """One pass over a split: mean loss and the scores of every clip, in index order (an evaluation pass:
    each clip's or window's own loss too)."""

    loss: float
    targets: np.ndarray
    scores: np.ndarray
    samples: int
    seconds: float
    clip_losses: np.ndarray | None = None


class Optimisation:
    """The optimisation both training stages share: AdamW (decay on matrices only), the warm-up/decay
    schedule, autocast and the fp16 grad scaler, the step count, their state for checkpoints, and moving the
    schedule's horizon on resume."""

    def __init__(self, model: nn.Module, device: torch.device, *, learning_rate: float, weight_decay: float,
                 warmup_ratio: float, total_steps: int, amp: bool, grad_clip: float = 0.0):
        self.device, self.grad_clip = device, grad_clip
        self.parameters = list(model.parameters())
        self.amp_dtype = autocast_dtype(device, amp)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate,
                                           fused=device.type == "cuda")
        self.schedule = WarmupLinearSchedule(warmup=math.ceil(warmup_ratio * total_steps), total=total_steps)
        self.scheduler = LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.first_nonfinite_step: torch.Tensor | None = None  # on the device: the host never waits per step

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    @property
    def lr_factor(self) -> float:
        """Where the schedule stands: the factor the next optimizer step will use."""
        return self.schedule(self.step)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def optimizer_step(self) -> None:
        """Apply the accumulated (scaled) gradients, clipped when grad_clip is set, and advance the schedule."""
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def watch_loss(self, loss: torch.Tensor) -> None:
        """Remember the first optimizer step (1-based) whose loss was NaN or infinite, without a host sync."""
        if self.first_nonfinite_step is None:
            self.first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        first = self.first_nonfinite_step
        bad = ~torch.isfinite(loss.detach()) & (first < 0)
        self.first_nonfinite_step = torch.where(bad, self.step + 1, first)

    def nonfinite(self) -> tuple[str, int] | None:
        """("loss", step) when a watched loss was not finite, ("weights", step) when a weight is NaN or
        infinite now (the step the weights last changed); None while training is numerically sound."""
        if self.first_nonfinite_step is not None and (step := int(self.first_nonfinite_step.item())) >= 0:
            return "loss", step
        if not torch.stack([torch.isfinite(p).all() for p in self.parameters]).all():
            return "weights", self.step
        return None

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])  # restores the schedule's horizon too
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]

    def extend_schedule(self, total_steps: int, checkpoint: Path, restart: str) -> bool:
        """A resumed run planning another number of steps: the lr goes on from its current value to 0 at the
        new horizon, no jump (True when it moved). A schedule already at lr 0 would make further epochs change
        nothing: refused in one line naming the checkpoint and `restart`, the command that starts over."""
        if total_steps == self.schedule.end:
            return False
        if self.lr_factor == 0.0:
            raise UserError(f"{checkpoint} finished its learning-rate schedule (lr 0 after step {self.step}); "
                            f"more epochs would not change the weights; {restart} to start over")
        self.schedule.extend(self.step, total_steps)
        return True


def divergence_hint(*, learning_rate: float, learning_rate_key: str, weight_decay: float,
                    grad_clip: float | None, precision: str) -> str:
    """The setting most likely to blame for a run whose numbers became NaN or infinite (grad_clip None: the
    run has no train.grad_clip to suggest)."""
    lr, decay = learning_rate, weight_decay
    if not math.isfinite(lr) or lr >= 1:  # an Adam step moves each weight by about lr
        return f"{learning_rate_key} ({lr:g}) is far too high; lower it (e.g. 1e-4)"
    if not math.isfinite(decay) or lr * decay >= 1:  # AdamW scales the weights by 1 - lr·decay each step
        return (f"train.weight_decay ({decay:g}) times {learning_rate_key} ({lr:g}) must stay well below 1; "
                "lower train.weight_decay")
    if precision == "fp16":
        return f"fp16 autocast overflowed, likely; set train.amp=false or lower {learning_rate_key}"
    clip = " or set train.grad_clip (e.g. 1.0)" if grad_clip == 0 else ""
    return f"{learning_rate_key} ({lr:g}) is likely too high; lower it{clip}"


def divergence_error(found: tuple[str, int], *, epoch: int, hint: str, kept: Path) -> UserError:
    """One line for a run stopped on NaN or infinite numbers: where, the likely setting, what was kept."""
    what, step = found
    return UserError(f"training diverged in epoch {epoch}, step {step}: the {what} became NaN or infinite; "
                     f"{hint}; {kept} was left as it was")


class Trainer(Optimisation):
    def __init__(
        self,
        *,
        model: nn.Module,
        objective: Objective,
        device: torch.device,
        learning_rate: float,
        weight_decay: float,
        warmup_ratio: float,
        total_steps: int,
        grad_clip: float = 0.0,
        grad_accum: int = 1,
        amp: bool = True,
        ranks: Ranks = ONE_PROCESS,
    ):
        self.model = model.to(device)
        super().__init__(self.model, device, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, total_steps=total_steps, amp=amp, grad_clip=grad_clip)
        self.ranks = ranks
        self.parallel = DataParallelModel(self.model, device, ranks)
        self.objective = objective
        self.grad_accum = grad_accum

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits, targets) of one batch, under autocast when AMP is on."""
        inputs = batch["inputs"].to(self.device, non_blocking=True)
        mask = batch["mask"].to(self.device, non_blocking=True)
        targets = batch["targets"].to(self.device, non_blocking=True)
        training = self.model.training
        network = self.parallel.network if training else self.model
        with self.autocast():
            # targets reach the model only in training: heads with a margin apply it there alone
            logits = network(inputs, mask, targets if training else None)
        logits = logits.float()  # the loss and the scores in fp32 whatever the autocast dtype
        loss = self.objective.loss(logits, targets)
        remove_margin = getattr(getattr(self.model, "head", None), "remove_margin", None)
        if self.model.training and remove_margin is not None:  # the margin is the loss's, not the scores'
            logits = remove_margin(logits, targets)
        return loss, logits, targets

    def train_epoch(self, batches: Iterable[dict[str, torch.Tensor]], n_batches: int) -> PassResult:
        """One epoch of optimizer steps; the scores are those of the training forward passes (dropout on)."""
        self.model.train()
        self.parallel.refresh()
        collector = ScoreCollector(self.objective, self.device, self.ranks)
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for position, batch in enumerate(batches):
            group_start = position - position % self.grad_accum
            group_size = min(self.grad_accum, n_batches - group_start)
            steps = position - group_start + 1 == group_size
            with self.parallel.accumulating(syncing=steps):
                loss, logits, targets = self.forward(batch)
                self.watch_loss(loss)
                self.scaler.scale(self.weighted(loss, batch["indices"]) / group_size).backward()
            if steps:
                self.optimizer_step()
            collector.add(loss.detach(), logits.detach(), targets, batch["indices"])
        return collector.result(started)

    def weighted(self, loss: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """This process's batch-mean loss times its share of the global batch (times the number of
        processes, as DDP averages): the averaged gradients are then exactly the global batch's."""
        if not self.ranks.active:
            return loss
        mine = int((indices >= 0).sum())
        return loss * (mine * self.ranks.world / distributed.total(mine, self.ranks, self.device))  # no host sync

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> PassResult:
        self.model.eval()
        collector = ScoreCollector(self.objective, self.device, self.ranks)
        started = time.perf_counter()
        for batch in batches:
            loss, logits, targets = self.forward(batch)
            clip_losses = self.objective.clip_losses(logits, targets)
            collector.add(loss, logits, targets, batch["indices"], clip_losses)
        return collector.result(started)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps a long epoch's loss sum exact enough; Apple MPS has no float64, so float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64


class ScoreCollector:
    """Gathers per-clip scores and targets by clip index, flushing device tensors to the host in chunks.

    Rows with a negative index (distributed padding items) are not recorded. Under torchrun, `result`
    gathers every process's rows and orders them as one process would have: by clip, then by the batch
    each came from (a clip read as several evaluation windows has them in pass order).
    """

    def __init__(self, objective: Objective, device: torch.device, ranks: Ranks = ONE_PROCESS):
        self.objective, self.device, self.ranks = objective, device, ranks
        self.pending: list[tuple[torch.Tensor, ...]] = []
        self.chunks: list[tuple[np.ndarray, ...]] = []
        self.loss_sum = torch.zeros((), device=device, dtype=accumulation_dtype(device))
        self.samples = 0
        self.batches = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor,
            clip_losses: torch.Tensor | None = None):
        """One batch; `clip_losses` (each row's loss) are kept when given, for every batch of the pass."""
        if self.ranks.active:
            real = indices >= 0
            logits, targets, indices = logits[real.to(logits.device)], targets[real.to(targets.device)], indices[real]
            if clip_losses is not None:
                clip_losses = clip_losses[real.to(clip_losses.device)]
        self.loss_sum += loss.to(self.loss_sum.dtype) * len(indices)
        self.samples += len(indices)
        batch = torch.full((len(indices),), self.batches, dtype=torch.long)
        self.batches += 1
        rows = (self.objective.scores(logits), targets, indices, batch)
        self.pending.append(rows if clip_losses is None else (*rows, clip_losses.to(self.loss_sum.dtype)))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.chunks.append(tuple(torch.cat(parts).cpu().numpy() for parts in zip(*self.pending)))
            self.pending = []

    def result(self, started: float) -> PassResult:
        """Everything in clip-index order; the time includes waiting for the device to finish."""
        self.flush()
        rows = [np.concatenate(parts) for parts in zip(*self.chunks)]  # scores, targets, indices, batches
        loss_sum, samples = float(self.loss_sum.item()), self.samples
        if self.ranks.active:  # a process can have had no batch of a small pass
            if rows:
                rows[3] = distributed.global_batch_numbers(rows[3], self.ranks)
            parts = distributed.gather((loss_sum, samples, rows), self.ranks)
            loss_sum, samples = sum(p[0] for p in parts), sum(p[1] for p in parts)
            rows = [np.concatenate(column) for column in zip(*(p[2] for p in parts if p[2]))]
        scores, targets, indices, batches, *clip_losses = rows
        order = np.lexsort((batches, indices))  # by clip, then by pass order (a clip's windows)
        seconds = time.perf_counter() - started
        return PassResult(loss_sum / max(samples, 1), targets[order], scores[order], samples, seconds,
                          clip_losses[0][order] if clip_losses else None)
