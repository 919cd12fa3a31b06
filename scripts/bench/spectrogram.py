"""Time the spectrogram stage against the seed's loop on the same clips, in one run.

    python scripts/bench/spectrogram.py AUDIO N [--repeats 3] [--workers 0] [--profile] [--seed-blas-threads 1]

AUDIO is a folder (searched recursively for audio files, sorted) or a CSV manifest whose first column is
a path relative to the manifest. The first N files are used.

Seed: one process, per file librosa.load(sr=22050) + melspectrogram + power_to_db + min-max scaling,
results pickled as a list of {filename, spectrogram}. Stage: SpectrogramProcessor on a split.json
listing the same files, in a fresh temporary workdir each repetition. Both sides are warmed up first
(librosa's numba kernels, imports, page cache), repetitions alternate, figures are medians.
--profile also prints where one process spends its time per clip on both paths.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from threadpoolctl import threadpool_limits

from audiotokens.artifacts import Layout, open_store
from audiotokens.audio import load_audio, resample, to_mono
from audiotokens.config import load_config
from audiotokens.spectrogram import (
    SpectrogramProcessor,
    clip_frames,
    compute_frames,
    mel_filterbank,
    power_spectrogram,
)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf"}


def audio_files(source: Path, count: int) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    else:
        with source.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row]
        if rows and rows[0][0].strip().lower() == "path":
            rows = rows[1:]
        files = [(source.parent / row[0].strip()).resolve() for row in rows]
    if len(files) < count:
        sys.exit(f"{source} has {len(files)} audio files, {count} requested")
    return files[:count]


def seed_one(path: Path) -> np.ndarray:
    y, sr = librosa.load(path, sr=22050)
    spec = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=1024, hop_length=512, n_mels=64)
    spec = librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=80.0)
    return (spec - spec.min()) / (spec.max() - spec.min())


def seed_loop(files: list[Path], out: Path) -> list[dict]:
    """The seed's approach, as it ran: one process, librosa end to end, one pickle."""
    results = [{"filename": str(path), "spectrogram": seed_one(path)} for path in files]
    with open(out, "wb") as handle:
        pickle.dump(results, handle)
    return results


def stage_run(files: list[Path], workdir: Path, workers: int) -> None:
    clips = [{"id": f"c{i:06d}", "audio": str(path), "labels": [0], "group": None} for i, path in enumerate(files)]
    split = Layout(workdir).split_json
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(json.dumps({"source": "bench", "strategy": "bench", "task": "singlelabel", "classes": ["x"],
                                 "splits": {"train": clips}}))
    config = load_config(None, [f"spectrogram.workers={workers}"], workdir)
    SpectrogramProcessor(config).run()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the stage's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def warm_up(files: list[Path]) -> None:
    y, sr = librosa.load(files[0], sr=22050)
    librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=1024, hop_length=512, n_mels=64))
    config = load_config()
    compute_frames(y, config.spectrogram)
    for path in files:  # page cache: neither side should pay for the first read from disk
        path.read_bytes()


def profile(files: list[Path]) -> None:
    """CPU ms per clip of each step on one thread (numpy's BLAS limited to this thread meanwhile)."""
    params = load_config().spectrogram
    steps: dict[str, list[float]] = {}

    def timed(name, func, *args, **kwargs):
        start = time.thread_time()  # CPU time of this thread: steadier than wall time on a shared machine
        value = func(*args, **kwargs)
        steps.setdefault(name, []).append((time.thread_time() - start) * 1e3)
        return value

    mel = mel_filterbank(22050, 1024, 64, 0.0, 0.0)
    with threadpool_limits(1):
        for path in files:
            _profile_clip(path, params, mel, timed)
    print(f"\nprofile, CPU ms per clip (median), one thread, {len(files)} clips:")
    for name, values in steps.items():
        print(f"  {name:44s} {statistics.median(values):7.2f}")


def _profile_clip(path: Path, params, mel, timed) -> None:
    """One clip through each step of both paths."""
    samples, rate = timed("decode (soundfile)", load_audio, str(path))
    timed("seed: librosa.load (decode+mono+resample)", librosa.load, path, sr=22050)
    timed("seed: np.mean mono", np.mean, samples, axis=0)
    mono = timed("mono (row sum)", to_mono, samples)
    y = timed("resample (soxr_hq)", resample, mono, rate, 22050)
    timed("seed: librosa melspectrogram", librosa.feature.melspectrogram, y=y, sr=22050, n_fft=1024,
          hop_length=512, n_mels=64)
    power = timed("power spectrum (torch.stft f64)", power_spectrogram, y, 1024, 512)
    timed("mel product (torch)", lambda p: (torch.from_numpy(p) @ mel).numpy(), power)
    frames = timed("compute_frames (all)", compute_frames, y, params)
    timed("clip_frames (a worker's whole job)", clip_frames, str(path), params)
    timed("seed: whole job", seed_one, path)
    timed("pickle frames (IPC cost)", pickle.dumps, frames, protocol=pickle.HIGHEST_PROTOCOL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, help="folder of audio files or CSV manifest")
    parser.add_argument("n", type=int, help="number of clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="stage workers (0 = number of cores)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--seed-blas-threads", type=int, default=0,
                        help="limit numpy's BLAS threads in the seed loop (0 = library default, as the seed ran; "
                             "1 is faster for it on a busy machine)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the benchmark's own process never needs torch threads (workers set theirs)
    files = audio_files(args.audio, args.n)
    info = sf.info(str(files[0]))
    seconds = sum(sf.info(str(p)).duration for p in files)
    print(f"{len(files)} clips, {seconds:.0f} s of audio (first: {info.samplerate} Hz, {info.channels} ch, "
          f"{info.format}), {args.repeats} repetitions")
    warm_up(files)
    if args.profile:
        profile(files[:min(len(files), 40)])

    seed_times, stage_times, seed_cpu, stage_cpu = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-spectrogram-") as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeats):
            start, cpu = time.perf_counter(), cpu_seconds()
            with threadpool_limits(args.seed_blas_threads or None):
                seed = seed_loop(files, tmp / "specs.pkl")
            seed_times.append(time.perf_counter() - start)
            seed_cpu.append(cpu_seconds() - cpu)
            workdir = tmp / f"stage{rep}"
            start, cpu = time.perf_counter(), cpu_seconds()
            stage_run(files, workdir, args.workers)
            stage_times.append(time.perf_counter() - start)
            stage_cpu.append(cpu_seconds() - cpu)
            print(f"  repetition {rep + 1}: seed {seed_times[-1]:.2f} s, stage {stage_times[-1]:.2f} s", flush=True)
        frames, index = open_store(Layout(workdir).frames("train"), Layout(workdir).frames_index("train"))
        assert len(index) == len(files), "the stage skipped clips; see its report.json"
        worst = max(float(np.abs(frames[off:off + n] - item["spectrogram"].T).max())
                    for item, off, n in zip(seed, index.offsets, index.lengths))

    seed_rate = len(files) / statistics.median(seed_times)
    stage_rate = len(files) / statistics.median(stage_times)
    blas = f", BLAS threads {args.seed_blas_threads}" if args.seed_blas_threads else ""
    print(f"\nseed loop (1 process{blas}):        {seed_rate:8.1f} clips/s  (median of {args.repeats})")
    print(f"spectrogram stage ({args.workers or 'all'} workers): {stage_rate:8.1f} clips/s")
    print(f"ratio stage / seed:           {stage_rate / seed_rate:8.2f}x")
    print(f"largest |stage - seed|:       {worst:.3g}")
    # CPU time (this process + its workers) does not depend on what else runs on the machine
    seed_ms = statistics.median(seed_cpu) / len(files) * 1e3
    stage_ms = statistics.median(stage_cpu) / len(files) * 1e3
    print(f"CPU per clip: seed {seed_ms:.2f} ms, stage {stage_ms:.2f} ms (all processes); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
