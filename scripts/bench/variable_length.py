"""Variable-length training with and without train.batch_frames: peak memory, clips/s, the estimate.

Usage: python scripts/bench/variable_length.py WORKDIR [--max-frames 600] [--clips 96]
Builds a synthetic token set (tests/stores.make_workdir) whose clip lengths spread from 10 frames to
--max-frames (like 1-60 s of speech at 10 frames/s), then trains the same small BERT for one epoch in a
fresh process per setting, and prints per setting the train stage's own figures: the estimated peak (log),
the measured peak resident set (metrics.jsonl) and clips/s.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's package, whatever the working directory
MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=256",
         "train.num_workers=0", "train.device=cpu", "train.epochs=1", "train.batch_size=16"]
SETTINGS = {"batch of 16 clips": [], "batch_frames=2048": ["train.batch_frames=2048"],
            "batch_frames=2048 + crop 200": ["train.batch_frames=2048", "train.crop_frames=200"]}


def one_run(workdir: str, overrides: list[str]) -> None:
    """Child process: train once, print the figures as JSON."""
    import torch

    from audiotokens.config import load_config
    from audiotokens.pipeline.layout import Layout
    from audiotokens.training.train import ModelBuilder

    torch.set_num_threads(1)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("audiotokens")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    counts = ModelBuilder(load_config(overrides=[*MODEL, *overrides], workdir=workdir)).run()
    row = json.loads(Layout(workdir).metrics.read_text().splitlines()[-1])
    estimate = next(line for line in lines if line.startswith("estimated peak"))
    print(json.dumps({"estimate": estimate, "peak_memory_gib": row["peak_memory_gib"],
                      "clips_per_s": counts["samples_per_s"]}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--max-frames", type=int, default=600)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child is not None:
        one_run(args.workdir, args.child)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from stores import make_workdir

    for name, overrides in SETTINGS.items():
        workdir = Path(args.workdir) / name.replace(" ", "_").replace("=", "").replace("+", "")
        make_workdir(workdir, n_train=args.clips, n_validation=16, lengths=(10, args.max_frames))
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, str(workdir), "--child", *overrides],
                               check=False, capture_output=True, text=True, cwd=ROOT)
        if child.returncode:
            sys.exit(f"{name} failed:\n{child.stderr[-3000:]}")
        out = child.stdout.strip().splitlines()[-1]
        print(f"{name}: {out} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
