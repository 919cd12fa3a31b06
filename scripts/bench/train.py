"""Benchmark the train stage's step for every encoder: the seed's fp32 setting against AMP, and the data path.

    python scripts/bench/train.py              # CUDA, the seed's shape (12 x 768, 433 positions, 527 labels)
    python scripts/bench/train.py --compile    # the same with torch.compile rows (a few minutes more)
    python scripts/bench/train.py --tiny       # small models that run on a laptop CPU in a few minutes
    python scripts/bench/train.py --tiny --encoders bert --threads 1,2 --compile   # CPU: threads, bf16, compile
    python scripts/bench/train.py --recipe --encoders bert,cnn --classes 14 --threads 0,2   # the defaults' shapes

On a fresh GPU machine, from the checkout: `pip install -e . && python scripts/bench/train.py --compile`. The
script needs only the package's own dependencies (torch, numpy), makes its own data and installs nothing.

Part 1, for each encoder (bert and conformer read token ids, cnn reads 64-band mel frames; ssl, a local
speech model fine-tuned on waveforms, needs a model folder and is not measured here; the seed's shape
is 12 layers x 768 for bert and conformer, 4 PANNs blocks up to 512 channels for cnn), throughput and peak
memory of Trainer.train_epoch (the stage's own step code: forward, loss, backward, AdamW, schedule, score
collection) over batches already on the device:
  seed     fp32, eager attention, batch 16 (as the seed ran it)
  fp32     fp32, SDPA, batch 16 (the attention's share of the gain; token encoders only)
  amp      the stage's AMP (train.amp): CUDA bf16 where the GPU supports it (else fp16 + grad scaler); CPU bf16
           where the CPU multiplies it natively (AVX512-BF16, AMX), else fp32 (the precision column says
           which); SDPA, batch 16, 32, 64
  compile  (--compile) amp at batch 16 with torch.compile (train.compile); its warm-up column holds the
           compilation
On a CPU every row runs once per --threads count (0 = the train stage's automatic choice) and the rows'
timed passes alternate, so that a shared machine's load falls on all of them alike: compare the ratios of
one run, not figures across runs. On CUDA rows run one after the other (each its own peak memory).
Part 2, the full data path at the fastest AMP batch: token files in a temp dir read by the stage's
DataLoader (make_split_loader: memmap per worker, padding collate, pinned memory on CUDA) against the
same number of identical batches already on the device.
Figures are medians over --repeats timed runs (each after --warmup steps); the two data paths alternate.
Targets (CUDA): best AMP >= 7x the seed's samples/s, AMP batch 32 peak <= 8 GiB, data path within 5 %.
--recipe measures the recommended recipe's shapes instead of the seed's, read from the configuration's defaults
(configs/default.toml): the token encoder's layers x hidden, the tokenizer's codebooks, the pooling and the batch
size of every fp32 and seed row; the CNN at the same layers x hidden.
--positions and --classes shrink the clips for a quick check of the script (tests/test_bench_scripts.py).
"""
from __future__ import annotations

import argparse
import gc
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

from audiotokens.config import load_config
from audiotokens.data.sources.records import MULTILABEL
from audiotokens.model.inputs import pack_frames, pack_sequences
from audiotokens.model.objectives import objective_for
from audiotokens.model.parts import ENCODERS, EXTRA_POSITIONS, SPEECH_ENCODER, AudioClassifier, ModelSpec
from audiotokens.pipeline.cpus import training_threads
from audiotokens.pipeline.files import save_npy
from audiotokens.pipeline.stores import ClipIndex
from audiotokens.tokens.quantizer_kinds import KMeansSettings, kind_from_config
from audiotokens.training.optimisation import Trainer, compile_model, cpu_bf16, pick_device
from audiotokens.training.train import SplitStore, make_split_loader

SEED_SHAPE = {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072}
TINY_SHAPE = {"layers": 2, "hidden": 64, "heads": 2, "intermediate": 256}
CNN_SHAPES = {False: {"layers": 4, "hidden": 512}, True: {"layers": 2, "hidden": 32}}  # keyed by --tiny
MELS = 64
CLUSTERS = 50
GIB = 2**30
# every encoder but the speech model's, which needs a local model folder (spectrogram.ssl_model)
BENCH_ENCODERS = [name for name in ENCODERS if name != SPEECH_ENCODER]


@dataclass(frozen=True)
class Sizes:
    """What every measurement shares: the model shape, the clips and the device."""

    shape: dict  # the token encoder's
    cnn: dict  # the CNN's layers and hidden width
    device: torch.device
    positions: int = 431  # frames per clip: a 10 s clip at 22050 Hz, hop 512 (433 with [CLS] and [SEP])
    classes: int = 527
    codebooks: tuple[int, ...] = (CLUSTERS,)  # ids per frame and each one's vocabulary
    pooling: str = "cls"
    batch: int = 16  # of the seed and fp32 rows


def recipe_sizes(device: torch.device, positions: int, classes: int) -> Sizes:
    """The recommended recipe's shapes, from the configuration's defaults. Its tokenizer is fitted on random
    frames (one k-means iteration): only the codebooks' count and sizes matter here."""
    config = load_config()
    model, cluster = config.model, config.cluster
    frames = np.random.default_rng(0).random((max(4096, 4 * cluster.n_clusters), config.spectrogram.n_mels),
                                             dtype=np.float32)
    books, _ = kind_from_config(cluster).fit(frames, KMeansSettings(cluster.n_clusters, niter=1, seed=0))
    shape = {"layers": model.num_layers, "hidden": model.hidden_size, "heads": model.num_heads,
             "intermediate": model.intermediate_size}
    return Sizes(shape=shape, cnn={"layers": model.num_layers, "hidden": model.hidden_size}, device=device,
                 positions=positions, classes=classes, codebooks=tuple(len(book) for book in books),
                 pooling=model.pooling, batch=config.train.batch_size)


@dataclass(frozen=True)
class Setting:
    """One row of part 1."""

    name: str
    attention: str
    amp: bool
    batch: int
    threads: int = 0  # intra-op threads on a CPU; 0 = the train stage's choice
    compiled: bool = False


@dataclass
class Row:
    encoder: str
    setting: Setting
    precision: str
    threads: int
    samples_per_s: float
    warmup_s: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None


def synthetic_clips(sizes: Sizes, n: int, seed: int) -> tuple[list[np.ndarray], list[list[int]]]:
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(0, min(sizes.codebooks), (sizes.positions, len(sizes.codebooks))).astype(np.int16)
                 for _ in range(n)]
    labels = [sorted(rng.choice(sizes.classes, size=int(rng.integers(1, 4)), replace=False).tolist())
              for _ in range(n)]
    return sequences, labels


def reads_frames(encoder: str) -> bool:
    return ENCODERS[encoder].reads_raw_frames


def device_batches(sizes: Sizes, sequences, labels, batch: int, frames: bool = False) -> list[dict[str, torch.Tensor]]:
    """What the DataLoader would yield, already moved to the device (frames: random mel of the same length)."""
    batches = []
    rng = np.random.default_rng(0)
    for start in range(0, len(sequences) - batch + 1, batch):
        clips = sequences[start:start + batch]
        if frames:
            inputs, mask = pack_frames([rng.random((len(c), MELS), dtype=np.float32) for c in clips])
        else:
            inputs, mask = pack_sequences(clips)
        targets = torch.zeros(batch, sizes.classes)
        for row, clip_labels in enumerate(labels[start:start + batch]):
            targets[row, clip_labels] = 1.0
        batches.append({"inputs": inputs.to(sizes.device), "mask": mask.to(sizes.device),
                        "targets": targets.to(sizes.device),
                        "indices": torch.arange(start, start + batch).to(sizes.device)})
    return batches


def model_spec(sizes: Sizes, encoder: str) -> ModelSpec:
    frames = reads_frames(encoder)
    shape = sizes.shape
    size = sizes.cnn if frames else shape
    params = {"num_layers": size["layers"]} if frames else {
        "num_layers": shape["layers"], "num_heads": shape["heads"], "intermediate_size": shape["intermediate"]}
    return ModelSpec(classes=[str(c) for c in range(sizes.classes)], input="frames" if frames else "tokens",
                     codebook_sizes=[] if frames else list(sizes.codebooks), input_dim=MELS, encoder=encoder,
                     encoder_params=params, hidden_size=size["hidden"], dropout=0.1,
                     pooling="mean" if frames else sizes.pooling, max_positions=sizes.positions + EXTRA_POSITIONS)


def make_trainer(sizes: Sizes, attention: str, amp: bool, total_steps: int, encoder: str = "bert",
                 compiled: bool = False) -> Trainer:
    torch.manual_seed(0)
    spec = model_spec(sizes, encoder)
    if not reads_frames(encoder):
        spec.encoder_params["attention"] = attention
    model = AudioClassifier(spec=spec)
    trainer = Trainer(model=model, objective=objective_for(MULTILABEL), device=sizes.device, learning_rate=5e-5,
                      weight_decay=0.01, warmup_ratio=0.1, total_steps=total_steps, amp=amp)
    if compiled:
        compile_model(model, sizes.device)
    return trainer


def timed(trainer: Trainer, batches: list) -> float:
    """Samples per second of one pass of train_epoch (which waits for the device before returning)."""
    result = trainer.train_epoch(batches, len(batches))
    return result.samples / result.seconds


def thread_count(requested: int) -> int:
    """The intra-op threads a setting runs with (0: what the train stage would choose now)."""
    choice = training_threads(requested)
    return choice.threads if choice is not None else torch.get_num_threads()


class Case:
    """One setting's trainer and batches, warmed up (the warm-up pass's seconds kept: compilation shows there)."""

    def __init__(self, sizes: Sizes, encoder: str, setting: Setting, steps: int, warmup: int, repeats: int):
        self.encoder, self.setting = encoder, setting
        self.threads = thread_count(setting.threads)
        sequences, labels = synthetic_clips(sizes, setting.batch * (steps + warmup), seed=setting.batch)
        self.batches = device_batches(sizes, sequences, labels, setting.batch, frames=reads_frames(encoder))
        self.trainer = make_trainer(sizes, setting.attention, setting.amp, (steps + warmup) * (repeats + 1),
                                    encoder, setting.compiled)
        self.warmup, self.rates = warmup, []
        started = time.perf_counter()
        self.run(self.batches[:warmup])
        self.warmup_s = time.perf_counter() - started

    def run(self, batches: list) -> float:
        torch.set_num_threads(self.threads)
        return timed(self.trainer, batches)

    def measure(self) -> None:
        try:
            self.rates.append(self.run(self.batches[self.warmup:]))
        except torch.OutOfMemoryError:
            self.rates.append(float("nan"))


def measure(sizes: Sizes, encoders: list[str], settings: list[Setting], steps: int, warmup: int,
            repeats: int) -> list[Row]:
    """Part 1. On CUDA each setting alone (its own peak memory); on a CPU all at once, passes alternating."""
    cuda = sizes.device.type == "cuda"
    rows = []
    for encoder in encoders:
        wanted = [s for s in settings if not (reads_frames(encoder) and s.name == "fp32")]  # no attention
        for group in [[s] for s in wanted] if cuda else [wanted]:
            rows += measure_group(sizes, encoder, group, steps, warmup, repeats)
    return rows


def measure_group(sizes: Sizes, encoder: str, group: list[Setting], steps: int, warmup: int,
                  repeats: int) -> list[Row]:
    """The rows of settings measured together, passes alternating. Whatever an earlier group held on the
    device was freed when its call returned, so on CUDA (one setting per group) the peak is the setting's own."""
    cuda = sizes.device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        cases = [Case(sizes, encoder, s, steps, warmup, repeats) for s in group]
    except torch.OutOfMemoryError:
        return [Row(encoder, s, "-", 0, float("nan"), float("nan"), None, None) for s in group]
    for _ in range(repeats):
        for case in cases:
            case.measure()
    peak = (torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB) if cuda \
        else (None, None)
    return [Row(encoder, c.setting, c.trainer.precision, c.threads, statistics.median(c.rates), c.warmup_s, *peak)
            for c in cases]


def data_path(sizes: Sizes, batch, steps, warmup, repeats, workers) -> tuple[float, float]:
    """(samples/s through the stage's DataLoader from token files, samples/s over on-device batches)."""
    sequences, labels = synthetic_clips(sizes, batch * steps, seed=7)
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "tokens.npy"
        save_npy(path, np.concatenate(sequences))
        classes = [str(c) for c in range(sizes.classes)]
        index = ClipIndex.from_lengths([str(i) for i in range(len(sequences))], [sizes.positions] * len(sequences),
                                       labels, classes, "multilabel", "train")
        split = SplitStore(name="train", path=path, index=index, columns=len(sizes.codebooks))
        loader = make_split_loader(split, "tokens", objective_for(MULTILABEL), sizes.positions, batch,
                                   shuffle_seed=0, num_workers=workers, pin_memory=sizes.device.type == "cuda")
        on_device = device_batches(sizes, sequences, labels, batch)
        trainer = make_trainer(sizes, "sdpa", True, (steps + warmup) * (2 * repeats + 2))
        timed(trainer, on_device[:warmup])
        timed(trainer, list(itertools.islice(loader, warmup)))  # starts the persistent workers
        loaded, resident = [], []
        for repeat in range(repeats):
            loader.sampler.set_epoch(repeat)
            loaded.append(timed(trainer, loader))
            resident.append(timed(trainer, on_device))
        del loader
    return statistics.median(loaded), statistics.median(resident)


def print_rows(rows: list[Row], cpu: bool) -> None:
    threads = f" {'threads':>7}" if cpu else ""
    print(f"\n{'encoder':9} {'setting':8} {'precision':9} {'attention':9} {'batch':>5}{threads} {'samples/s':>10} "
          f"{'x seed':>7} {'warm-up s':>9} {'peak alloc GiB':>14} {'peak reserved GiB':>17}")
    for row in rows:
        base = next(r for r in rows if r.encoder == row.encoder and r.setting.name == "seed"
                    and r.threads == row.threads).samples_per_s
        alloc = f"{row.peak_allocated_gib:.2f}" if row.peak_allocated_gib is not None else "n/a"
        reserved = f"{row.peak_reserved_gib:.2f}" if row.peak_reserved_gib is not None else "n/a"
        attention = row.setting.attention if not reads_frames(row.encoder) else "-"
        threads = f" {row.threads:>7}" if cpu else ""
        print(f"{row.encoder:9} {row.setting.name:8} {row.precision:9} {attention:9} {row.setting.batch:>5}{threads} "
              f"{row.samples_per_s:>10.1f} {row.samples_per_s / base:>7.2f} {row.warmup_s:>9.2f} {alloc:>14} "
              f"{reserved:>17}")


def print_cpu_ratios(rows: list[Row], base_batch: int) -> None:
    """The CPU comparisons the rows make: AMP (bf16 where the CPU has it) vs fp32, and each thread count vs the
    first, per encoder (ratios of one run's medians)."""
    print("\nratios (same run, same load):")
    for encoder in dict.fromkeys(row.encoder for row in rows):
        mine = {(r.setting.name, r.setting.batch, r.threads): r for r in rows if r.encoder == encoder}
        for count in dict.fromkeys(r.threads for r in mine.values()):
            fp32 = mine.get(("fp32", base_batch, count)) or mine.get(("seed", base_batch, count))
            amp = mine.get(("amp", base_batch, count))
            if fp32 and amp and amp.precision != fp32.precision:
                print(f"  {encoder}, {count} threads: {amp.precision} / fp32 at batch {base_batch} = "
                      f"{amp.samples_per_s / fp32.samples_per_s:.2f}x")
            compiled = mine.get(("compile", base_batch, count))
            if compiled and amp:
                print(f"  {encoder}, {count} threads: compiled / eager ({amp.precision}, batch {base_batch}) = "
                      f"{compiled.samples_per_s / amp.samples_per_s:.2f}x; compilation about "
                      f"{compiled.warmup_s - amp.warmup_s:.1f} s")
        counts = sorted(dict.fromkeys(r.threads for r in mine.values()))
        for name, batch in dict.fromkeys((r.setting.name, r.setting.batch) for r in mine.values()):
            if len(counts) > 1 and all((name, batch, c) in mine for c in counts):
                first = mine[(name, batch, counts[0])].samples_per_s
                print(f"  {encoder} {name} batch {batch}: " + ", ".join(
                    f"{c} threads {mine[(name, batch, c)].samples_per_s / first:.2f}x" for c in counts)
                      + f" of {counts[0]} thread{'s' * (counts[0] > 1)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2 layers x 64 hidden, a 2-block CNN (CPU check)")
    parser.add_argument("--recipe", action="store_true", help="the recommended recipe's shapes (configs/default.toml)")
    parser.add_argument("--encoders", default=",".join(BENCH_ENCODERS), help="encoders to measure, comma-separated")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 1 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="16,32,64", help="AMP batch sizes")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers for the data-path run")
    parser.add_argument("--threads", default="0", help="CPU: intra-op thread counts to compare, comma-separated "
                                                          "(0 = the train stage's automatic choice)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (train.compile)")
    parser.add_argument("--positions", type=int, default=431, help="frames per clip")
    parser.add_argument("--classes", type=int, default=527, help="labels")
    args = parser.parse_args(argv)
    encoders = args.encoders.split(",")
    for encoder in encoders:
        if encoder not in BENCH_ENCODERS:
            parser.error(f"--encoders: {encoder!r} is not one this script measures; it measures "
                         f"{', '.join(BENCH_ENCODERS)} ({SPEECH_ENCODER} needs a local speech model)")

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    threads = [int(t) for t in args.threads.split(",")] if not cuda else [0]
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup or (5 if cuda else 1)
    if args.tiny and args.recipe:
        parser.error("--tiny and --recipe are two different shapes; pick one")
    sizes = recipe_sizes(device, args.positions, args.classes) if args.recipe else \
        Sizes(shape=TINY_SHAPE if args.tiny else SEED_SHAPE, cnn=CNN_SHAPES[args.tiny], device=device,
              positions=args.positions, classes=args.classes)
    what = torch.cuda.get_device_name(device) if cuda else \
        f"CPU ({os.cpu_count()} cores, native bf16: {cpu_bf16() or 'none'}; load {os.getloadavg()[0]:.1f})"
    print(f"device: {what}; torch {torch.__version__}; shape {sizes.shape}, codebooks {list(sizes.codebooks)}, "
          f"{sizes.pooling} pooling, CNN {sizes.cnn}; {sizes.positions + 2} positions, {sizes.classes} labels; "
          f"{steps} timed steps x {args.repeats} repeats after {warmup} warm-up steps")
    if not cuda:
        print("NOTE: no CUDA device - CPU figures; the GPU part (peak GPU memory, the 8 GiB check, the targets) "
              "is skipped")

    started = time.perf_counter()
    settings = [Setting("seed", "eager", False, sizes.batch, t) for t in threads]
    settings += [Setting("fp32", "sdpa", False, sizes.batch, t) for t in threads]
    settings += [Setting("amp", "sdpa", True, int(b), t) for b in args.batches.split(",") for t in threads]
    if args.compile:
        settings += [Setting("compile", "sdpa", True, sizes.batch, t, compiled=True) for t in threads]
    rows = measure(sizes, encoders, settings, steps, warmup, args.repeats)
    print_rows(rows, cpu=not cuda)
    if not cuda:
        print_cpu_ratios(rows, sizes.batch)
    if cuda:
        for row in rows:
            if row.setting.name == "amp" and row.setting.batch == 32 and row.peak_allocated_gib is not None:
                print(f"{row.encoder}: AMP batch 32 peak allocated {row.peak_allocated_gib:.2f} GiB, "
                      f"{'fits' if row.peak_allocated_gib <= 8 else 'does NOT fit'} in 8 GiB")
    if "bert" not in encoders:
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return 0
    rows = [row for row in rows if row.encoder == "bert" and row.threads == rows[0].threads]  # the seed's model
    base = rows[0].samples_per_s
    amp_rows = [row for row in rows if row.setting.name == "amp"]

    best = max(amp_rows, key=lambda row: row.samples_per_s)
    torch.set_num_threads(best.threads)
    loaded, resident = data_path(sizes, best.setting.batch, steps, warmup, args.repeats, args.workers)
    gap = 100 * (resident - loaded) / resident
    print(f"\ndata path at batch {best.setting.batch} ({args.workers} workers): DataLoader from token files "
          f"{loaded:.1f} samples/s, batches already on {device.type} {resident:.1f} samples/s, gap {gap:+.1f} %")

    if cuda:
        batch32 = next((row for row in amp_rows if row.setting.batch == 32), None)
        print("\ntargets:")
        print(f"  best AMP / seed = {best.samples_per_s / base:.2f}x (>= 7x): "
              f"{'met' if best.samples_per_s >= 7 * base else 'NOT met'}")
        if batch32 and batch32.peak_allocated_gib is not None:
            print(f"  AMP batch 32 peak allocated {batch32.peak_allocated_gib:.2f} GiB (<= 8): "
                  f"{'met' if batch32.peak_allocated_gib <= 8 else 'NOT met'}")
        print(f"  data path gap {gap:+.1f} % (<= 5 %): {'met' if gap <= 5 else 'NOT met'}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
