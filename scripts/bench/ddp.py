"""Data-parallel training against one process: the train stage as users run it, side by side.

    python scripts/bench/ddp.py --config configs/bench_small.toml --workdir runs/bench [--nproc 2]
        [--epochs 3] [--set model.input=frames ...]

The workdir must hold what train reads (split, tokens or frames). The stage runs `--rounds` times in each
form, alternating: `audiotokens train` in one process with torch's default threads, the same with one
thread (OMP_NUM_THREADS=1), and `torchrun --nproc_per_node N -m audiotokens.cli train` (N processes,
torchrun's one thread each, gloo on the CPU or NCCL on GPUs). On a CPU the one-thread row separates what
the processes gain from what threads lose (to waiting, on a loaded machine). Reported per form: median training samples/s over every epoch after the first (from
output/metrics.jsonl; every process's clips counted once), median wall time of the stage, and the last
validation figure (the forms should agree to about 1e-5 when model.dropout = 0). Each run overwrites the
workdir's output/ (model, checkpoints, metrics).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def train_command(args: argparse.Namespace, processes: int) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                 str(processes)] if processes > 1 else [sys.executable])
    options = ["--config", args.config, "--workdir", args.workdir, "--set", f"train.epochs={args.epochs}"]
    options += [part for setting in args.set for part in ("--set", setting)]
    return [*launcher, "-m", "audiotokens.cli", "train", *options]


def one_run(args: argparse.Namespace, processes: int, threads: int | None) -> dict:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.perf_counter()
    done = subprocess.run(train_command(args, processes), capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"train with {processes} process(es) failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (Path(args.workdir) / "output" / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if "epoch" in row and "train" in row]
    return {"samples_per_s": [row["train_samples_per_s"] for row in epochs[1:] or epochs], "wall_s": wall,
            "validation": epochs[-1]["validation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    forms = {"1 process": (1, None), "1 process, 1 thread": (1, 1), f"{args.nproc} processes": (args.nproc, None)}
    results: dict[str, list[dict]] = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, (processes, threads) in forms.items():
            results[name].append(one_run(args, processes, threads))
    speeds = {name: statistics.median(s for run in runs for s in run["samples_per_s"]) for name, runs in results.items()}
    base = speeds["1 process"]
    print(f"{'form':>20}  {'samples/s':>10}  {'vs 1':>6}  {'wall s':>7}  last validation")
    for name, runs in results.items():
        wall = statistics.median(run["wall_s"] for run in runs)
        figures = ", ".join(f"{k} {v:.5f}" for k, v in runs[-1]["validation"].items()
                            if isinstance(v, float) and k in ("loss", "mAP", "accuracy", "macro_f1"))
        print(f"{name:>20}  {speeds[name]:>10.1f}  {speeds[name] / base:>6.2f}  {wall:>7.1f}  {figures}")


if __name__ == "__main__":
    main()
