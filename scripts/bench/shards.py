"""Time the sharded stages: per-clip cost of spectrogram and tokenize, and local vs a Dask local cluster.

    python scripts/bench/shards.py MANIFEST N [--shards 4 8] [--n-clusters 256]

The first N clips of MANIFEST (a CSV whose first column is a path relative to it). One process
(spectrogram.workers = 1) gives the per-clip cost of each stage; then the spectrogram stage is timed with
a local pool of 2 processes and on a dask LocalCluster of 2 single-thread workers with each --shards
count (fresh workdirs, the stores compared byte for byte). Overhead per shard = (dask - local pool) / N.
The dask figure includes starting the cluster. Figures are single runs: on a shared machine, noisy.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import shutil
import tempfile
import time
from pathlib import Path

from _workdir import split_workdir

from audiotokens.config import load_config
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.run import execute

SETTINGS = ["spectrogram.dtype=float16"]


def manifest_files(manifest: Path, n: int) -> list[Path]:
    """The first n clips of a CSV whose first column is a path relative to it (after a header row)."""
    with open(manifest, newline="") as handle:
        rows = list(csv.reader(handle))[1:n + 1]
    if len(rows) < n:
        raise SystemExit(f"{manifest} lists {len(rows)} clips, {n} requested")
    return [(manifest.parent / row[0]).resolve() for row in rows]


def timed(stage: str, workdir: Path, *overrides: str, **options) -> float:
    config = load_config(None, [*SETTINGS, *overrides], workdir)
    started = time.perf_counter()
    execute(stage, config, **options)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--n-clusters", type=int, default=256)
    args = parser.parse_args()

    files = manifest_files(args.manifest, args.n)
    root = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        base = root / "one"
        split = split_workdir(base, files)
        one = timed("spectrogram", base, *split, "spectrogram.workers=1")
        frames = Layout(base).frames.stat().st_size
        vocabulary = [f"cluster.n_clusters={args.n_clusters}", "cluster.max_frames=200000"]
        timed("cluster", base, *split, *vocabulary)
        tok = timed("tokenize", base, *split, *vocabulary)
        print(f"{args.n} clips, one process: spectrogram {one:.1f} s ({args.n / one:.2f} clips/s), "
              f"tokenize {tok:.2f} s ({args.n / tok:.1f} clips/s, vocabulary {args.n_clusters}); "
              f"frames.npy {frames / args.n:.0f} B/clip, tokens.npy "
              f"{Layout(base).tokens.stat().st_size / args.n:.0f} B/clip")
        pool = root / "pool"
        local = timed("spectrogram", pool, *split_workdir(pool, files), "spectrogram.workers=2")
        print(f"local pool of 2 processes: {local:.1f} s ({args.n / local:.2f} clips/s)")
        from dask.distributed import Client

        from audiotokens.pipeline.shards import local_cluster

        for count in args.shards:
            workdir = root / f"dask{count}"
            split = split_workdir(workdir, files)
            started = time.perf_counter()
            with local_cluster(2) as cluster, Client(cluster) as client:
                ready = time.perf_counter() - started
                client.run(importlib.import_module, "audiotokens.features.spectrogram")  # what a fresh worker pays once
                imports = time.perf_counter() - started - ready
                shards = timed("spectrogram", workdir, *split, executor="dask", scheduler=cluster.scheduler_address,
                               shards=count)
            wall = time.perf_counter() - started
            same = Layout(workdir).frames.read_bytes() == Layout(base).frames.read_bytes()
            print(f"dask LocalCluster 2 workers, {count} shards: {wall:.1f} s = {ready:.1f} s cluster start + "
                  f"{imports:.1f} s worker imports + {shards:.1f} s stage ({args.n / shards:.2f} clips/s); "
                  f"overhead per shard (stage - local pool) / N = {(shards - local) / count:.2f} s; "
                  f"frames identical to the one-process run: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
