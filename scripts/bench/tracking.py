"""What TensorBoard tracking costs per epoch: the same tiny training with train.tracking = none and tensorboard.

Usage: python scripts/bench/tracking.py WORKDIR [--pairs 5] [--epochs 6] [--clips 160]
Builds a synthetic token set (tests/stores.make_workdir), then trains the same small BERT alternately without
and with TensorBoard (pairs in turn none-first and tensorboard-first), in this one process on one thread.
Per run it measures the wall and CPU time from one epoch's end to the next's (training, validation and every
record: metrics.jsonl, curves.png, the trackers; CPU time counts only this process, so it suffers less from a
loaded machine) and the time spent in tracking itself (the epoch's scalars, and the per-class AP of a best
epoch), and prints the medians over epochs and runs side by side.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's package, whatever the working directory
MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=256",
         "train.num_workers=0", "train.device=cpu", "train.batch_size=16", "train.learning_rate=1e-3"]


class Timers:
    """Wall time between epoch records, and time inside the wrapped tracking calls."""

    def __init__(self):
        self.epoch_ends: list[tuple[float, float]] = []  # (wall, CPU time of the process, every thread)
        self.tracking = self.tracking_cpu = 0.0

    def wrap(self, owner, name: str, epoch_end: bool = False) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started, started_cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                now, now_cpu = time.perf_counter(), time.process_time()
                if epoch_end:
                    self.epoch_ends.append((now, now_cpu))
                else:
                    self.tracking += now - started
                    self.tracking_cpu += now_cpu - started_cpu

        setattr(owner, name, timed)


def one_run(workdir: Path, tracking: str, epochs: int) -> dict[str, float]:
    from audiotokens.config import load_config
    from audiotokens.training import train
    from audiotokens.training.epoch_log import TrainingLog
    from audiotokens.training.tracking import Tracking

    timers = Timers()
    saved = {(owner, name): getattr(owner, name) for owner, name in
             ((TrainingLog, "record"), (Tracking, "epoch"), (train, "class_average_precision"))}
    timers.wrap(Tracking, "epoch")
    timers.wrap(train, "class_average_precision")
    timers.wrap(TrainingLog, "record", epoch_end=True)
    try:
        started = time.perf_counter()
        config = load_config(overrides=[*MODEL, f"train.epochs={epochs}", f"train.tracking={tracking}"],
                             workdir=workdir)
        train.ModelBuilder(config).run()
        total = time.perf_counter() - started
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)
    ends = timers.epoch_ends  # intervals from epoch 2 on: warm
    return {"epoch_s": statistics.median(b[0] - a[0] for a, b in itertools.pairwise(ends)),
            "epoch_cpu_s": statistics.median(b[1] - a[1] for a, b in itertools.pairwise(ends)),
            "tracking_s_per_epoch": timers.tracking / epochs, "tracking_cpu_s_per_epoch": timers.tracking_cpu / epochs,
            "run_s": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--clips", type=int, default=160)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    from stores import make_workdir

    workdir = Path(args.workdir)
    make_workdir(workdir, n_train=args.clips, n_validation=args.clips // 4)
    results: dict[str, list[dict[str, float]]] = {"none": [], "tensorboard": []}
    for pair in range(args.pairs):
        for tracking in list(results)[::1 if pair % 2 == 0 else -1]:  # ABBA: no side always runs first
            results[tracking].append(one_run(workdir, tracking, args.epochs))
            print(f"pair {pair + 1} {tracking}: {json.dumps(results[tracking][-1])}", flush=True)
    medians = {tracking: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for tracking, runs in results.items()}
    off, on = medians["none"], medians["tensorboard"]
    for key, what in (("epoch_s", "wall"), ("epoch_cpu_s", "CPU time of the process")):
        paired = statistics.median(b[key] / a[key] - 1 for a, b in zip(results["none"], results["tensorboard"]))
        print(f"median epoch, end to end, {what}: none {off[key] * 1000:.1f} ms, tensorboard {on[key] * 1000:.1f} ms "
              f"({100 * (on[key] / off[key] - 1):+.2f} %; median of the pairs' differences {100 * paired:+.2f} %)")
    print(f"median time in tracking per epoch: {on['tracking_s_per_epoch'] * 1000:.2f} ms wall "
          f"({100 * on['tracking_s_per_epoch'] / on['epoch_s']:.2f} % of the epoch's), "
          f"{on['tracking_cpu_s_per_epoch'] * 1000:.2f} ms CPU "
          f"({100 * on['tracking_cpu_s_per_epoch'] / on['epoch_cpu_s']:.2f} % of the epoch's)")
    print(f"median whole run ({args.epochs} epochs): none {off['run_s']:.2f} s, tensorboard {on['run_s']:.2f} s")


if __name__ == "__main__":
    main()
