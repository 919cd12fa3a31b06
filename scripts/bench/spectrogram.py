"""Time the spectrogram stage against its decoding bound and the seed's loop on the same clips, in one run.

    python scripts/bench/spectrogram.py AUDIO N [--repeats 3] [--workers 0] [--profile] [--seed-blas-threads 1]
                                        [--skip-seed] [--flac48]

AUDIO is a folder (searched recursively for audio files, sorted) or a CSV manifest whose first column is
a path relative to the manifest. The first N files are used; with --flac48 they are first converted (untimed)
to 48 kHz 24-bit FLAC, every second one stereo (a second channel 0.8x the first, 7 samples later), the
format the stage's target is stated for:
    python scripts/bench/spectrogram.py /work/data/bench600/audio 160 --flac48 --workers 2 --repeats 5 --skip-seed

Seed: one process, per file librosa.load(sr=22050) + melspectrogram + power_to_db + min-max scaling,
results pickled as a list of {filename, spectrogram}. Stage: SpectrogramProcessor on a split.json
listing the same files, in a fresh temporary workdir each repetition. Bound: what no spectrogram stage
can beat, decoding + mix-down + soxr resampling alone (audio.load_mono) over the same clips in the
stage's own worker pool with the same worker count, nothing sent back but a length. All sides are
warmed up first (librosa's numba kernels, imports, page cache), repetitions alternate, figures are
medians; on a shared machine compare the ratios of one run, not figures across runs.
--profile also prints where one process spends its time per clip on both paths.
"""
from __future__ import annotations

import argparse
import csv
import functools
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
from _workdir import clip_id, split_workdir
from threadpoolctl import threadpool_limits

from audiotokens.config import load_config
from audiotokens.data.audio import load_audio, load_mono, resample, to_mono
from audiotokens.features.spectrogram import (
    MelPower,
    SpectrogramProcessor,
    clip_frames,
    clip_map,
    compute_frames,
)
from audiotokens.pipeline.cpus import usable_cpus
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import open_store

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


def as_flac48(files: list[Path], folder: Path) -> list[Path]:
    """The files as 48 kHz 24-bit FLAC in `folder`, every second one stereo."""
    folder.mkdir(parents=True, exist_ok=True)
    converted = []
    for i, path in enumerate(files):
        mono = load_mono(str(path), 48000)
        samples = np.stack([mono, 0.8 * np.roll(mono, 7)], axis=1) if i % 2 else mono
        converted.append(folder / f"clip{i:05d}.flac")
        sf.write(converted[-1], samples, 48000, subtype="PCM_24")
    return converted


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


def stage_run(settings: list[str], workdir: Path, workers: int) -> None:
    """The spectrogram stage on a workdir the split stage prepared (split_workdir)."""
    config = load_config(None, [*settings, f"spectrogram.workers={workers}"], workdir)
    SpectrogramProcessor(config).run()


def decode_only(sample_rate: int, path: Path) -> int:
    """The stage's front end alone: decode, mix down, resample."""
    return len(load_mono(str(path), sample_rate))


def bound_run(files: list[Path], workers: int) -> None:
    work = functools.partial(decode_only, load_config().spectrogram.sample_rate)
    with clip_map(work, len(files), workers) as mapper:
        for _ in mapper(files):
            pass


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

    with threadpool_limits(1):
        for path in files:
            _profile_clip(path, params, timed)
    print(f"\nprofile, CPU ms per clip (median), one thread, {len(files)} clips:")
    for name, values in steps.items():
        print(f"  {name:44s} {statistics.median(values):7.2f}")


def _mel_power(y: np.ndarray, params) -> np.ndarray:
    mel = MelPower(length=len(y), params=params)
    mel.add(y, last=True)
    return mel.frames


def _profile_clip(path: Path, params, timed) -> None:
    """One clip through each step of both paths."""
    samples, rate = timed("decode (soundfile)", load_audio, str(path))
    timed("seed: librosa.load (decode+mono+resample)", librosa.load, path, sr=22050)
    timed("seed: np.mean mono", np.mean, samples, axis=0)
    mono = timed("mono (row sum)", to_mono, samples)
    y = timed("resample (soxr_hq)", resample, mono, rate, 22050)
    timed("seed: librosa melspectrogram", librosa.feature.melspectrogram, y=y, sr=22050, n_fft=1024,
          hop_length=512, n_mels=64)
    timed("mel power (STFT f64 + mel product)", _mel_power, y, params)
    frames = timed("compute_frames (all)", compute_frames, y, params)
    timed("clip_frames (a worker's whole job)", clip_frames, str(path), params)
    timed("seed: whole job", seed_one, path)
    timed("pickle frames (IPC cost)", pickle.dumps, frames, protocol=pickle.HIGHEST_PROTOCOL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, help="folder of audio files or CSV manifest")
    parser.add_argument("n", type=int, help="number of clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="stage workers (0 = one per usable CPU, as the stage)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--seed-blas-threads", type=int, default=0,
                        help="limit numpy's BLAS threads in the seed loop (0 = library default, as the seed ran; "
                             "1 is faster for it on a busy machine)")
    parser.add_argument("--skip-seed", action="store_true", help="time only the bound and the stage")
    parser.add_argument("--flac48", action="store_true",
                        help="convert the clips to 48 kHz 24-bit FLAC, every second one stereo, first")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the benchmark's own process never needs torch threads (workers set theirs)
    files = audio_files(args.audio, args.n)
    with tempfile.TemporaryDirectory(prefix="bench-flac48-") as converted:
        if args.flac48:
            files = as_flac48(files, Path(converted))
        run_benchmark(args, files)


def run_benchmark(args: argparse.Namespace, files: list[Path]) -> None:
    info = sf.info(str(files[0]))
    seconds = sum(sf.info(str(p)).duration for p in files)
    print(f"{len(files)} clips, {seconds:.0f} s of audio (first: {info.samplerate} Hz, {info.channels} ch, "
          f"{info.format} {info.subtype}), {args.repeats} repetitions; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    warm_up(files)
    if args.profile:
        profile(files[:min(len(files), 40)])

    runs = {"bound": lambda tmp, rep: bound_run(files, args.workers),
            "stage": lambda tmp, rep: stage_run(settings, tmp / f"stage{rep}", args.workers)}
    seed_results: list[dict] = []
    if not args.skip_seed:
        def seed(tmp: Path, rep: int) -> None:
            with threadpool_limits(args.seed_blas_threads or None):
                seed_results[:] = seed_loop(files, tmp / "specs.pkl")
        runs["seed"] = seed
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="bench-spectrogram-") as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeats):  # untimed: a fresh workdir per repetition, split by the split stage
            settings = split_workdir(tmp / f"stage{rep}", files)
        for rep in range(args.repeats):
            for name, run in runs.items():
                start, used = time.perf_counter(), cpu_seconds()
                run(tmp, rep)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(cpu_seconds() - used)
            print(f"  repetition {rep + 1}: " + ", ".join(f"{name} {wall[name][-1]:.2f} s" for name in runs) +
                  f"; stage / bound: clips/s {wall['bound'][-1] / wall['stage'][-1]:.1%}, "
                  f"CPU {cpu['bound'][-1] / cpu['stage'][-1]:.1%}; load {os.getloadavg()[0]:.1f}", flush=True)
        frames, index = open_store(*Layout(tmp / f"stage{args.repeats - 1}").store("frames"))
        assert len(index) == len(files), "the stage skipped clips; see its report.json"
        if not args.skip_seed:
            row = index.row_of()
            worst = max(float(np.abs(frames[index.offsets[i]:index.offsets[i] + index.lengths[i]]
                                      - item["spectrogram"].T).max())
                        for item in seed_results for i in [row[clip_id(Path(item["filename"]))]])
    _print_table(args, len(files), wall, cpu)
    if not args.skip_seed:
        print(f"largest |stage - seed|: {worst:.3g}")


def _print_table(args, n_clips: int, wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    """clips/s and CPU ms per clip (all processes: does not depend on what else runs) of each side."""
    workers = args.workers or usable_cpus()  # what the stage and the bound's pool start with 0
    blas = f", BLAS threads {args.seed_blas_threads}" if args.seed_blas_threads else ""
    labels = {"bound": f"bound: decode + mono + resample ({workers} workers)",
              "stage": f"spectrogram stage ({workers} workers)",
              "seed": f"seed loop (1 process{blas})"}
    print(f"\n{'':48s} {'clips/s':>8s} {'CPU ms/clip':>12s}   (medians of {args.repeats})")
    for name, seconds in wall.items():
        rate = n_clips / statistics.median(seconds)
        print(f"{labels[name]:48s} {rate:8.1f} {statistics.median(cpu[name]) / n_clips * 1e3:12.2f}")
    for measure, seconds in (("clips/s", wall), ("CPU per clip", cpu)):
        ratios = [bound / stage for bound, stage in zip(seconds["bound"], seconds["stage"])]
        print(f"stage / bound ({measure}): {statistics.median(ratios):.1%} (median of the repetitions' ratios; "
              f"range {min(ratios):.1%}-{max(ratios):.1%})")
    if "seed" in wall:
        print(f"stage / seed (clips/s):  {statistics.median(wall['seed']) / statistics.median(wall['stage']):.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
