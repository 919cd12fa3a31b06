"""Benchmark the train stage's step for every encoder: the seed's fp32 setting against AMP, and the data path.

    python scripts/bench/train.py              # CUDA, the seed's shape (12 x 768, 433 positions, 527 labels)
    python scripts/bench/train.py --tiny       # small models that run on a laptop CPU in a few minutes
    python scripts/bench/train.py --encoders conformer

Part 1, for each encoder (bert and conformer read token ids, cnn reads 64-band mel frames; the seed's shape
is 12 layers x 768 for bert and conformer, 4 PANNs blocks up to 512 channels for cnn), throughput and peak
memory of Trainer.train_epoch (the stage's own step code: forward, loss, backward, AdamW, schedule, score
collection) over batches already on the device:
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
from pathlib import Path

import numpy as np
import torch

from audiotokens.pipeline.stores import ClipIndex
from audiotokens.pipeline.files import save_npy
from audiotokens.model.parts import ENCODERS, EXTRA_POSITIONS, AudioClassifier, ModelSpec
from audiotokens.model.objectives import objective_for
from audiotokens.data.sources.records import MULTILABEL
from audiotokens.model.inputs import pack_frames, pack_sequences
from audiotokens.training.train import SplitStore, make_split_loader
from audiotokens.training.optimisation import Trainer, pick_device

SEED_SHAPE = {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072}
TINY_SHAPE = {"layers": 2, "hidden": 64, "heads": 2, "intermediate": 256}
CNN_SHAPES = {False: {"layers": 4, "hidden": 512}, True: {"layers": 2, "hidden": 32}}  # keyed by --tiny
MELS = 64
FRAMES = 431  # a 10 s clip at 22050 Hz, hop 512: 433 positions with [CLS] and [SEP]
CLASSES = 527
CLUSTERS = 50
GIB = 2**30


@dataclass
class Row:
    encoder: str
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


def reads_frames(encoder: str) -> bool:
    return ENCODERS[encoder].reads_raw_frames


def device_batches(sequences, labels, batch: int, device: torch.device,
                   frames: bool = False) -> list[dict[str, torch.Tensor]]:
    """What the DataLoader would yield, already moved to the device (frames: random mel of the same length)."""
    batches = []
    rng = np.random.default_rng(0)
    for start in range(0, len(sequences) - batch + 1, batch):
        clips = sequences[start:start + batch]
        if frames:
            inputs, mask = pack_frames([rng.random((len(c), MELS), dtype=np.float32) for c in clips])
        else:
            inputs, mask = pack_sequences(clips)
        targets = torch.zeros(batch, CLASSES)
        for row, clip_labels in enumerate(labels[start:start + batch]):
            targets[row, clip_labels] = 1.0
        batches.append({"inputs": inputs.to(device), "mask": mask.to(device),
                        "targets": targets.to(device), "indices": torch.arange(start, start + batch).to(device)})
    return batches


def model_spec(shape: dict, encoder: str, tiny: bool) -> ModelSpec:
    frames = reads_frames(encoder)
    size = CNN_SHAPES[tiny] if frames else shape
    params = {"num_layers": size["layers"]} if frames else {
        "num_layers": shape["layers"], "num_heads": shape["heads"], "intermediate_size": shape["intermediate"]}
    return ModelSpec(classes=[str(c) for c in range(CLASSES)], input="frames" if frames else "tokens",
                     codebook_sizes=[] if frames else [CLUSTERS], input_dim=MELS, encoder=encoder,
                     encoder_params=params, hidden_size=size["hidden"], dropout=0.1,
                     pooling="mean" if frames else "cls", max_positions=FRAMES + EXTRA_POSITIONS)


def make_trainer(shape: dict, device: torch.device, attention: str, amp: bool, total_steps: int,
                 encoder: str = "bert", tiny: bool = False) -> Trainer:
    torch.manual_seed(0)
    spec = model_spec(shape, encoder, tiny)
    if not reads_frames(encoder):
        spec.encoder_params["attention"] = attention
    return Trainer(model=AudioClassifier(spec=spec), objective=objective_for(MULTILABEL), device=device,
                   learning_rate=5e-5, weight_decay=0.01, warmup_ratio=0.1, total_steps=total_steps, amp=amp)


def timed(trainer: Trainer, batches: list) -> float:
    """Samples per second of one pass of train_epoch (which waits for the device before returning)."""
    result = trainer.train_epoch(batches, len(batches))
    return result.samples / result.seconds


def measure(shape, device, encoder, tiny, name, attention, amp, batch, steps, warmup, repeats) -> Row:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sequences, labels = synthetic_clips(batch * (steps + warmup), seed=batch)
    batches = device_batches(sequences, labels, batch, device, frames=reads_frames(encoder))
    trainer = make_trainer(shape, device, attention, amp, (steps + warmup) * (repeats + 1), encoder, tiny)
    try:
        timed(trainer, batches[:warmup])
        rates = [timed(trainer, batches[warmup:]) for _ in range(repeats)]
    except torch.OutOfMemoryError:
        rates = [float("nan")]
    peak = (torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB) \
        if device.type == "cuda" else (None, None)
    row = Row(encoder, name, trainer.precision, attention if not reads_frames(encoder) else "-", batch,
              statistics.median(rates), *peak)
    del trainer, batches
    return row


def data_path(shape, device, batch, steps, warmup, repeats, workers) -> tuple[float, float]:
    """(samples/s through the stage's DataLoader from token files, samples/s over on-device batches)."""
    sequences, labels = synthetic_clips(batch * steps, seed=7)
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "tokens.npy"
        save_npy(path, np.concatenate(sequences)[:, None])
        index = ClipIndex.from_lengths([str(i) for i in range(len(sequences))], [FRAMES] * len(sequences), labels,
                                       [str(c) for c in range(CLASSES)], "multilabel", "train")
        split = SplitStore(name="train", path=path, index=index, columns=1)
        loader = make_split_loader(split, "tokens", objective_for(MULTILABEL), FRAMES, batch, shuffle_seed=0,
                                   num_workers=workers, pin_memory=device.type == "cuda")
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
    parser.add_argument("--tiny", action="store_true", help="2 layers x 64 hidden, a 2-block CNN (CPU check)")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="encoders to measure, comma-separated")
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
    rows = []
    for encoder in args.encoders.split(","):
        if encoder not in ENCODERS:
            parser.error(f"--encoders: unknown encoder {encoder!r}; known: {', '.join(ENCODERS)}")
        per_encoder = [measure(shape, device, encoder, args.tiny, "seed", "eager", False, 16, steps, warmup,
                               args.repeats)]
        for batch in (int(b) for b in args.batches.split(",")):
            per_encoder.append(measure(shape, device, encoder, args.tiny, "amp", "sdpa", True, batch, steps,
                                       warmup, args.repeats))
        rows += per_encoder
    print(f"\n{'encoder':9} {'setting':8} {'precision':9} {'attention':9} {'batch':>5} {'samples/s':>10} "
          f"{'x seed':>7} {'peak alloc GiB':>14} {'peak reserved GiB':>17}")
    for row in rows:
        base = next(r for r in rows if r.encoder == row.encoder and r.name == "seed").samples_per_s
        alloc = f"{row.peak_allocated_gib:.2f}" if row.peak_allocated_gib is not None else "n/a"
        reserved = f"{row.peak_reserved_gib:.2f}" if row.peak_reserved_gib is not None else "n/a"
        print(f"{row.encoder:9} {row.name:8} {row.precision:9} {row.attention:9} {row.batch:>5} "
              f"{row.samples_per_s:>10.1f} {row.samples_per_s / base:>7.2f} {alloc:>14} {reserved:>17}")
    if cuda:
        for row in rows:
            if row.name == "amp" and row.batch == 32 and row.peak_allocated_gib is not None:
                print(f"{row.encoder}: AMP batch 32 peak allocated {row.peak_allocated_gib:.2f} GiB, "
                      f"{'fits' if row.peak_allocated_gib <= 8 else 'does NOT fit'} in 8 GiB")
    if "bert" not in args.encoders.split(","):
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return 0
    rows = [row for row in rows if row.encoder == "bert"]  # the data-path check and targets: the seed's model
    base = rows[0].samples_per_s

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
