"""Benchmark the train stage's step: the seed's fp32 setting against AMP, and the data path against none.

    python scripts/bench/train.py              # CUDA, the seed's shape (12 x 768, 433 positions, 527 labels)
    python scripts/bench/train.py --tiny       # a 2 x 64 model that runs on a laptop CPU in a minute

Part 1, throughput and peak memory of Trainer.train_epoch (the stage's own step code: forward, loss,
backward, AdamW, schedule, score collection) over batches already on the device:
  seed   fp32, eager attention, batch 16 (as the seed ran it)
  amp    bf16 where the GPU supports it (else fp16 + grad scaler), SDPA, batch 16, 32, 64
Off CUDA the stage does not autocast, so the "amp" rows run fp32 with SDPA (the precision column says so).
Part 2, the full data path at the fastest AMP batch: token files in a temp dir read by the stage's
DataLoader (make_split_loader: memmap per worker, padding collate, pinned memory on CUDA) against the
same number of identical batches already on the device.
Figures are medians over --repeats timed runs (each after --warmup steps); the two data paths alternate.
Targets (CUDA): best AMP >= 7x the seed's samples/s, AMP batch 32 peak <= 8 GiB, data path within 5 %.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from audiotokens.artifacts import ClipIndex, Layout, save_npy
from audiotokens.classifier import AudioTokenClassifier, classifier_config
from audiotokens.train import make_split_loader, read_split_tokens
from audiotokens.token_dataset import pack_sequences
from audiotokens.trainer import Trainer, pick_device

SEED_SHAPE = {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072}
TINY_SHAPE = {"layers": 2, "hidden": 64, "heads": 2, "intermediate": 256}
FRAMES = 431  # a 10 s clip at 22050 Hz, hop 512: 433 positions with [CLS] and [SEP]
CLASSES = 527
CLUSTERS = 50
GIB = 2**30


@dataclass
class Row:
    name: str
    precision: str
    attention: str
    batch: int
    samples_per_s: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None


def synthetic_clips(n: int, seed: int) -> tuple[list[np.ndarray], list[list[int]]]:
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(0, CLUSTERS, FRAMES).astype(np.int16) for _ in range(n)]
    labels = [sorted(rng.choice(CLASSES, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(n)]
    return sequences, labels


def device_batches(sequences, labels, batch: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """What the DataLoader would yield, already moved to the device."""
    batches = []
    for start in range(0, len(sequences) - batch + 1, batch):
        input_ids, attention_mask = pack_sequences(sequences[start:start + batch])
        targets = torch.zeros(batch, CLASSES)
        for row, clip_labels in enumerate(labels[start:start + batch]):
            targets[row, clip_labels] = 1.0
        batches.append({"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
                        "targets": targets.to(device), "indices": torch.arange(start, start + batch).to(device)})
    return batches


def make_trainer(shape: dict, device: torch.device, attention: str, amp: bool, total_steps: int) -> Trainer:
    torch.manual_seed(0)
    config = classifier_config(CLUSTERS, 1, [str(c) for c in range(CLASSES)], "multilabel", FRAMES,
                               shape["layers"], shape["hidden"], shape["heads"], shape["intermediate"], 0.1,
                               attention=attention)
    return Trainer(AudioTokenClassifier(config), "multilabel", device, 5e-5, 0.01, 0.1, total_steps, amp=amp)


def timed(trainer: Trainer, batches: list) -> float:
    """Samples per second of one pass of train_epoch (which waits for the device before returning)."""
    result = trainer.train_epoch(batches, len(batches))
    return result.samples / result.seconds


def measure(shape, device, name, attention, amp, batch, steps, warmup, repeats) -> Row:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sequences, labels = synthetic_clips(batch * (steps + warmup), seed=batch)
    batches = device_batches(sequences, labels, batch, device)
    trainer = make_trainer(shape, device, attention, amp, (steps + warmup) * (repeats + 1))
    timed(trainer, batches[:warmup])
    rates = [timed(trainer, batches[warmup:]) for _ in range(repeats)]
    peak = (torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB) \
        if device.type == "cuda" else (None, None)
    row = Row(name, trainer.precision, attention, batch, statistics.median(rates), *peak)
    del trainer, batches
    return row


def data_path(shape, device, batch, steps, warmup, repeats, workers) -> tuple[float, float]:
    """(samples/s through the stage's DataLoader from token files, samples/s over on-device batches)."""
    sequences, labels = synthetic_clips(batch * steps, seed=7)
    with tempfile.TemporaryDirectory() as root:
        layout = Layout(root)
        save_npy(layout.tokens("train"), np.concatenate(sequences)[:, None])
        ClipIndex.from_lengths([str(i) for i in range(len(sequences))], [FRAMES] * len(sequences), labels,
                               [str(c) for c in range(CLASSES)], "multilabel", "train").save(layout.tokens_index("train"))
        split = read_split_tokens(layout, "train", CLUSTERS)
        loader = make_split_loader(split, FRAMES, batch, shuffle_seed=0, num_workers=workers,
                                   pin_memory=device.type == "cuda")
        on_device = device_batches(sequences, labels, batch, device)
        trainer = make_trainer(shape, device, "sdpa", True, (steps + warmup) * (2 * repeats + 2))
        timed(trainer, on_device[:warmup])
        timed(trainer, list(itertools.islice(loader, warmup)))  # starts the persistent workers
        loaded, resident = [], []
        for repeat in range(repeats):
            loader.sampler.set_epoch(repeat)
            loaded.append(timed(trainer, loader))
            resident.append(timed(trainer, on_device))
        del loader
    return statistics.median(loaded), statistics.median(resident)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2 layers x 64 hidden (CPU check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 1 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="16,32,64", help="AMP batch sizes")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers for the data-path run")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup or (5 if cuda else 1)
    shape = TINY_SHAPE if args.tiny else SEED_SHAPE
    what = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {what}; torch {torch.__version__}; shape {shape}, {FRAMES + 2} positions, {CLASSES} labels; "
          f"{steps} timed steps x {args.repeats} repeats after {warmup} warm-up steps")
    if not cuda:
        print("NOTE: no CUDA device - CPU figures; AMP rows run fp32 (the stage autocasts on CUDA only)")

    started = time.perf_counter()
    rows = [measure(shape, device, "seed", "eager", False, 16, steps, warmup, args.repeats)]
    for batch in (int(b) for b in args.batches.split(",")):
        rows.append(measure(shape, device, "amp", "sdpa", True, batch, steps, warmup, args.repeats))
    base = rows[0].samples_per_s
    print(f"\n{'setting':8} {'precision':9} {'attention':9} {'batch':>5} {'samples/s':>10} {'x seed':>7} "
          f"{'peak alloc GiB':>14} {'peak reserved GiB':>17}")
    for row in rows:
        alloc = f"{row.peak_allocated_gib:.2f}" if row.peak_allocated_gib is not None else "n/a"
        reserved = f"{row.peak_reserved_gib:.2f}" if row.peak_reserved_gib is not None else "n/a"
        print(f"{row.name:8} {row.precision:9} {row.attention:9} {row.batch:>5} {row.samples_per_s:>10.1f} "
              f"{row.samples_per_s / base:>7.2f} {alloc:>14} {reserved:>17}")

    best = max(rows[1:], key=lambda row: row.samples_per_s)
    loaded, resident = data_path(shape, device, best.batch, steps, warmup, args.repeats, args.workers)
    gap = 100 * (resident - loaded) / resident
    print(f"\ndata path at batch {best.batch} ({args.workers} workers): DataLoader from token files "
          f"{loaded:.1f} samples/s, batches already on {device.type} {resident:.1f} samples/s, gap {gap:+.1f} %")

    if cuda:
        batch32 = next((row for row in rows[1:] if row.batch == 32), None)
        print("\ntargets:")
        print(f"  best AMP / seed = {best.samples_per_s / base:.2f}x (>= 7x): "
              f"{'met' if best.samples_per_s >= 7 * base else 'NOT met'}")
        if batch32:
            print(f"  AMP batch 32 peak allocated {batch32.peak_allocated_gib:.2f} GiB (<= 8): "
                  f"{'met' if batch32.peak_allocated_gib <= 8 else 'NOT met'}")
        print(f"  data path gap {gap:+.1f} % (<= 5 %): {'met' if gap <= 5 else 'NOT met'}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
