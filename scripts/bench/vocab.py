"""Benchmark the vocabulary stages against raw faiss on an AudioSet-bal_train-sized frames matrix.

    python scripts/bench/vocab.py [SOURCE] [--frames 8600000] [--ks 50,500] [--repeats 1]

SOURCE (optional) is a workdir, a processed/ folder or a processed/frames/frames.npy made by
`audiotokens spectrogram` from real (e.g. rendered) audio: its clips are resampled with replacement
until the matrix has --frames rows. Without SOURCE the frames are generated (smooth random spectra
in [0, 1], a few per clip, plus noise). A validation store of a tenth of that size is added.

For each k, four phases run in fresh subprocesses, so each has its own peak RSS (VmHWM):
  cluster   audiotokens ClusterCreator(config).run() on the workdir   vs
            faiss.Kmeans(d, k, niter, seed, max_points_per_centroid=all).train(matrix in RAM)
  tokenize  audiotokens SpecTokenizer(config).run() (train + validation)   vs
            faiss.IndexFlatL2 add(centroids) + search(train) + search(validation), matrices in RAM
Raw faiss is timed on matrices already loaded; the stages are timed end to end (reading the memmaps,
reports, token stores, statistics, plots). Figures are medians over --repeats, ours and raw alternating.
Targets: cluster <= 1.2x raw faiss, tokenize <= 1.3x raw faiss.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = {"cluster": 1.2, "tokenize": 1.3}
FRAMES_PER_CLIP = 431  # a 10 s clip at 22050 Hz, hop 512
CHUNK = 1_000_000


# ---------------------------------------------------------------- data


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generated_clips(n_frames: int, dim: int, seed: int):
    """(frames, lengths) blocks of smooth random spectra in [0, 1], a few per clip, with noise."""
    rng = np.random.default_rng(seed)
    prototypes = np.cumsum(rng.standard_normal((512, dim)), axis=1)
    prototypes = (prototypes - prototypes.min(1, keepdims=True)) / np.ptp(prototypes, axis=1, keepdims=True)
    done = 0
    while done < n_frames:
        n_clips = max(1, min(CHUNK, n_frames - done) // FRAMES_PER_CLIP)
        lengths = np.full(n_clips, FRAMES_PER_CLIP)
        lengths[-1] = min(CHUNK, n_frames - done) - FRAMES_PER_CLIP * (n_clips - 1)
        total = int(lengths.sum())
        per_clip = rng.integers(0, len(prototypes), (n_clips, 3))
        choice = per_clip[np.repeat(np.arange(n_clips), lengths), rng.integers(0, 3, total)]
        frames = prototypes[choice] + 0.05 * rng.standard_normal((total, dim))
        yield np.clip(frames, 0, 1).astype(np.float32), lengths
        done += total


def resampled_clips(source: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, n_frames: int, seed: int):
    """(frames, lengths) blocks of real clips drawn with replacement until n_frames rows."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_frames:
        picked, size = [], 0
        while size < min(CHUNK, n_frames - done):
            clip = int(rng.integers(len(lengths)))
            take = min(int(lengths[clip]), n_frames - done - size)
            picked.append((clip, take))
            size += take
        frames = np.concatenate([source[offsets[c]:offsets[c] + t] for c, t in picked]).astype(np.float32)
        yield frames, np.array([t for _, t in picked])
        done += size


def write_store(workdir: Path, splits: dict[str, tuple], dim: int) -> None:
    """The frames store (train clips, then validation clips), its frame spec and the split plan, as the
    split and spectrogram stages write them; `splits` maps a split to (blocks, n_frames)."""
    import dataclasses

    from audiotokens.config import SpectrogramConfig
    from audiotokens.data.sources.records import SINGLELABEL, Clip
    from audiotokens.features.spectrogram import params_to_dict
    from audiotokens.pipeline.files import atomic_path, create_npy
    from audiotokens.pipeline.layout import Layout
    from audiotokens.pipeline.stores import SplitPlan, write_frames_index

    layout = Layout(workdir)
    total = sum(n_frames for _, n_frames in splits.values())
    ids, lengths, members = [], [], {}
    with atomic_path(layout.frames) as tmp:
        out = create_npy(tmp, (total, dim), np.float32)
        start = 0
        for split, (blocks, _) in splits.items():
            members[split] = []
            for frames, clip_lengths in blocks:
                out[start:start + len(frames)] = frames
                start += len(frames)
                for length in clip_lengths.tolist():
                    members[split].append(f"{split}-{len(members[split]):06d}")
                    lengths.append(length)
            ids += members[split]
        out.flush()
        del out
    write_frames_index(layout, ids, lengths, params_to_dict(dataclasses.replace(SpectrogramConfig(), n_mels=dim)),
                       "float32")
    clips = [Clip(id=clip_id, audio="", labels=[i % 10]).to_json() for i, clip_id in enumerate(ids)]
    SplitPlan.new(source="bench", strategy="bench", task=SINGLELABEL, classes=[f"class{c}" for c in range(10)],
                  clips=clips, splits=members).save(layout)


def find_source(path: Path) -> tuple[Path, Path]:
    """frames.npy and index.json of a source: a workdir, its processed/ or processed/frames/, or the file."""
    from audiotokens.pipeline.layout import Layout

    for workdir in (path, *path.parents[:3]):
        layout = Layout(workdir)
        if path in (workdir, layout.processed, layout.frames_dir, layout.frames) and layout.frames.is_file():
            return layout.store("frames")
    raise SystemExit(f"{path}: no frames store found (give a workdir, processed/ or frames.npy)")


def prepare(workdir: Path, source: Path | None, n_frames: int, dim: int, seed: int) -> dict:
    from audiotokens.pipeline.stores import ClipIndex

    sizes = {"train": n_frames, "validation": max(1, n_frames // 10)}
    if source is None:
        write_store(workdir, {split: (generated_clips(size, dim, seed + i), size)
                              for i, (split, size) in enumerate(sizes.items())}, dim)
        return {"frames": "generated", "dim": dim}
    frames_path, index_path = find_source(source)
    frames = np.load(frames_path, mmap_mode="r")
    index = ClipIndex.load(index_path)
    write_store(workdir, {split: (resampled_clips(frames, index.offsets, index.lengths, size, seed + i), size)
                          for i, (split, size) in enumerate(sizes.items())}, int(frames.shape[1]))
    return {"frames": f"resampled from {frames_path} ({len(frames)} frames, {len(index)} clips)",
            "dim": int(frames.shape[1])}


def split_matrix(workdir: Path, split: str) -> np.ndarray:
    """One split's frames as one in-RAM matrix (what a raw faiss loop works on)."""
    from audiotokens.pipeline.layout import Layout
    from audiotokens.pipeline.stores import open_split

    frames, view = open_split(Layout(workdir), "frames", split)
    return np.concatenate([frames[o:o + n] for o, n in zip(view.offsets, view.lengths)]).astype(np.float32)


# ---------------------------------------------------------------- phases (each in its own process)


def stage_config(workdir: Path, k: int, niter: int, seed: int):
    from audiotokens.config import load_config

    # one k-means over whole frames: the search raw faiss is compared with
    overrides = ["cluster.quantizer=frame", f"cluster.n_clusters={k}", f"cluster.niter={niter}",
                 f"cluster.seed={seed}"]
    return load_config(None, overrides, workdir)


def phase_ours_cluster(workdir: Path, k: int, niter: int, seed: int) -> dict:
    from audiotokens.pipeline.layout import Layout
    from audiotokens.tokens.cluster import ClusterCreator

    config = stage_config(workdir, k, niter, seed)
    started = time.perf_counter()
    counts = ClusterCreator(config).run()
    seconds = time.perf_counter() - started
    book = json.loads(Layout(workdir).cluster_report.read_text())["codebooks"][0]
    return {"seconds": seconds, "frames": counts["frames_used"], "iterations": book["iterations_run"],
            "objective": book["objective"][-1]}


def phase_raw_cluster(workdir: Path, k: int, niter: int, seed: int) -> dict:
    import faiss

    x = split_matrix(workdir, "train")  # into RAM, untimed
    started = time.perf_counter()
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=len(x))
    kmeans.train(x)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": len(x), "iterations": len(kmeans.obj),
            "objective": float(kmeans.obj[-1])}


def phase_ours_tokenize(workdir: Path, k: int, niter: int, seed: int) -> dict:
    from audiotokens.tokens.tokenize import SpecTokenizer

    config = stage_config(workdir, k, niter, seed)
    started = time.perf_counter()
    counts = SpecTokenizer(config).run()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": counts["tokens"]}


def phase_raw_tokenize(workdir: Path, k: int, niter: int, seed: int) -> dict:
    import faiss

    from audiotokens.pipeline.layout import Layout
    from audiotokens.tokens.vocabulary import load_vocabulary

    centroids = np.ascontiguousarray(load_vocabulary(Layout(workdir).vocabulary).quantizer.codebooks[0])
    matrices = [split_matrix(workdir, split) for split in ("train", "validation")]
    started = time.perf_counter()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    for x in matrices:
        index.search(x, 1)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": sum(len(x) for x in matrices)}


PHASES = {"ours_cluster": phase_ours_cluster, "raw_cluster": phase_raw_cluster,
          "ours_tokenize": phase_ours_tokenize, "raw_tokenize": phase_raw_tokenize}


def run_phase(name: str, workdir: Path, k: int, niter: int, seed: int) -> dict:
    command = [sys.executable, __file__, "--phase", name, "--workdir", str(workdir), "--ks", str(k),
               "--niter", str(niter), "--seed", str(seed)]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- driver


def bench_k(workdir: Path, k: int, niter: int, seed: int, repeats: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in PHASES}
    for repeat in range(repeats):
        for stage in ("cluster", "tokenize"):
            order = ("ours", "raw") if repeat % 2 == 0 else ("raw", "ours")
            for who in order:  # tokenize always reads the centroids of the latest ours_cluster
                name = f"{who}_{stage}"
                runs[name].append(run_phase(name, workdir, k, niter, seed))
                print(f"  k={k} repeat {repeat + 1}/{repeats} {name:14s} {runs[name][-1]['seconds']:8.2f} s  "
                      f"peak RSS {runs[name][-1]['peak_rss_mb']:7.0f} MB", flush=True)
    return runs


def summarise(results: dict[int, dict[str, list[dict]]]) -> None:
    print("\n k    stage     ours s   raw s   ratio  target  ours peak RSS  raw peak RSS  frames")
    for k, runs in results.items():
        for stage, target in TARGETS.items():
            ours = statistics.median(r["seconds"] for r in runs[f"ours_{stage}"])
            raw = statistics.median(r["seconds"] for r in runs[f"raw_{stage}"])
            ours_rss = max(r["peak_rss_mb"] for r in runs[f"ours_{stage}"])
            raw_rss = max(r["peak_rss_mb"] for r in runs[f"raw_{stage}"])
            ratio = ours / raw
            verdict = "ok" if ratio <= target else "MISSED"
            print(f"{k:4d}  {stage:9s} {ours:7.2f} {raw:7.2f}  {ratio:5.2f}x  <={target}x {verdict:6s} "
                  f"{ours_rss:7.0f} MB  {raw_rss:9.0f} MB   {runs[f'ours_{stage}'][0]['frames']}")
        ours_it = runs["ours_cluster"][0]
        raw_it = runs["raw_cluster"][0]
        print(f"      k-means iterations run: ours {ours_it['iterations']}, raw {raw_it['iterations']}; "
              f"final objective ours {ours_it['objective']:.6g}, raw {raw_it['objective']:.6g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", type=Path,
                        help="workdir / processed/ / frames.npy of real frames")
    parser.add_argument("--frames", type=int, default=8_600_000, help="training frames (bal_train: ~8.6 M)")
    parser.add_argument("--dim", type=int, default=64, help="frame dimension of generated frames")
    parser.add_argument("--ks", default="50,500", help="comma-separated vocabulary sizes")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    if args.phase:
        result = PHASES[args.phase](args.workdir, ks[0], args.niter, args.seed)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return

    import faiss

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vocab_bench_"))
    try:
        started = time.perf_counter()
        data = prepare(workdir, args.source, args.frames, args.dim, args.seed)
        print(f"frames: {args.frames} train + {args.frames // 10} validation, dim {data['dim']}, "
              f"{data['frames']}; prepared in {time.perf_counter() - started:.0f} s in {workdir}")
        print(f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, niter {args.niter}, repeats {args.repeats}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
        results = {k: bench_k(workdir, k, args.niter, args.seed, args.repeats) for k in ks}
        summarise(results)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
