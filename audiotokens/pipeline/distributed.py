"""Data-parallel training under torchrun: which process this is, its share of the work, and gathering.

`torchrun --nproc_per_node N -m audiotokens.cli train …` starts N copies of the train stage; torchrun's
RANK, WORLD_SIZE and LOCAL_RANK say which one each is. Every process builds the same model and the same
sequence of global batches from (seed, epoch); each takes every N-th item of each global batch
(`RankShare`), so `train.batch_size` stays the global batch whatever N is and N processes follow one
process's optimisation up to floating-point summation order. Each loss is scaled by the process's share of
the batch, so the gradients DDP averages are those of the global batch even when the shares differ.
Evaluation batches are dealt out whole (batch b to process b mod N) and every process's scores are
gathered, so validation and test metrics equal the one-process ones. Process 0 alone writes checkpoints,
logs, curves, the bundle and the provenance record; the others only compute.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError

log = logging.getLogger("audiotokens")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one training run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Only this process writes artifacts, logs and records."""
        return self.rank == 0


ONE_PROCESS = Ranks()


def launched() -> Ranks:
    """The ranks torchrun set in the environment, or one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return Ranks(rank=int(os.environ.get("RANK", "0")), world=world,
                     local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); unset them "
                        "to train in one process") from None


def check_stage(stage: str, data_parallel: bool) -> None:
    """Under torchrun with more than one process, only a data-parallel stage may run."""
    if launched().active and not data_parallel:
        raise UserError(f"`audiotokens {stage}` runs in one process; only `train` runs under torchrun "
                        "with --nproc_per_node above 1")


def join(device: torch.device, ranks: Ranks) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on the CPU); returns this process's device."""
    if not ranks.active:
        return device
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
        device = torch.device("cuda", ranks.local_rank)
    elif device.type != "cpu":
        raise UserError(f"data-parallel training runs on CUDA or the CPU, not {device.type}; set "
                        "train.device=cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    log.info("data-parallel training: %d processes (%s)", ranks.world, dist.get_backend())
    return device


def leave(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


def gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every process's `obj`, in rank order ([obj] in one process)."""
    if not ranks.active:
        return [obj]
    gathered: list[Any] = [None] * ranks.world
    dist.all_gather_object(gathered, obj)
    return gathered


def total(value: int, ranks: Ranks, device: torch.device) -> torch.Tensor:
    """The sum of an integer over every process, as a tensor on `device`: reading it on the host would make
    every training step wait for the GPU."""
    tensor = torch.tensor(value, dtype=torch.float32, device=device)
    if ranks.active:
        dist.all_reduce(tensor)
    return tensor


# ---------------------------------------------------------------- each process's share of the batches


def padding_item(item):
    """An item that stands for nothing: `item`'s clip with a negative index (the dataset returns index -1).

    A process whose share of a small global batch is empty still has to take part in the gradient
    all-reduce, so it reads one clip whose loss is weighted 0 and whose scores are not recorded.
    """
    if isinstance(item, tuple):
        return (-1 - item[0], *item[1:])
    return -1 - item


def real_clip(item):
    """(clip, is_padding) of a dataset item."""
    clip = item[0] if isinstance(item, tuple) else item
    return (-1 - clip, True) if clip < 0 else (clip, False)


class RankShare:
    """Training: every N-th item of each global batch the inner batch sampler yields, from this rank on."""

    def __init__(self, inner, ranks: Ranks):
        self.inner, self.ranks = inner, ranks

    def set_epoch(self, epoch: int) -> None:
        (self.inner if hasattr(self.inner, "set_epoch") else self.inner.sampler).set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list]:
        for batch in self.inner:
            share = list(batch)[self.ranks.rank::self.ranks.world]
            yield share or [padding_item(batch[0])]


def deal_batches(batches: list[list], ranks: Ranks) -> list[list]:
    """Evaluation: whole batches, batch b to rank b mod N, so each batch is composed as in one process."""
    return batches[ranks.rank::ranks.world] if ranks.active else batches


def global_batch_numbers(local_batches: np.ndarray, ranks: Ranks) -> np.ndarray:
    """The position in the whole pass of this rank's k-th batch (as dealt by deal_batches)."""
    return local_batches * ranks.world + ranks.rank


# ---------------------------------------------------------------- the model


class DataParallelModel:
    """A model's DistributedDataParallel wrapper, rebuilt when the set of trainable parameters changes
    (train.unfreeze_after): DDP only all-reduces the gradients of parameters trainable when it was built."""

    def __init__(self, model: torch.nn.Module, device: torch.device, ranks: Ranks):
        self.model, self.device, self.ranks = model, device, ranks
        self._wrapper, self._trainable = None, None

    def refresh(self) -> None:
        """Before each epoch (train.unfreeze_after changes what trains only then): build the wrapper, or
        rebuild it when the set of trainable parameters changed."""
        if not self.ranks.active:
            return
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self._wrapper is None or trainable != self._trainable:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            skips = getattr(getattr(self.model, "encoder", None), "skips_parameters", False)
            self._wrapper = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=skips)
            self._trainable = trainable

    @property
    def network(self) -> torch.nn.Module:
        """What training steps call: the DDP wrapper under torchrun (after refresh), else the model."""
        return self._wrapper if self._wrapper is not None else self.model

    def accumulating(self, syncing: bool):
        """No gradient all-reduce on the micro-batches before the last of an accumulation group."""
        if syncing or not self.ranks.active:
            return contextlib.nullcontext()
        return self.network.no_sync()
