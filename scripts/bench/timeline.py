"""`audiotokens predict --timeline` on long recordings: seconds of audio per second and peak memory, per length.

    python scripts/bench/timeline.py [--minutes 10 60] [--rate 48000] [--layers 4] [--hidden 256]
                                     [--classes 527] [--clusters 50] [--threads 1] [--bundle DIR]

Writes one mono FLAC per length (a tone that changes every few seconds plus noise, block by block) and,
unless --bundle names one, a bundle with random weights of the given shape (scripts/bench/predict.py's:
10 s windows of 431 frames at 22,050 Hz, hop 5 s) to a temporary folder that is removed afterwards. Each
length runs in its own forked process, so its peak resident set is its own: the script prints, per length,
the windows scored, the events found (the one thing held that grows with the recording: random weights
find many), wall and CPU seconds (the process's, every thread), seconds of audio per wall and per
CPU second, and the increase of the peak resident set over the state just before the timeline started
(model loaded and warmed up).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from predict import write_bundle  # scripts/bench/predict.py: the bundle of random weights

from audiotokens.evaluation.predict import load_model
from audiotokens.evaluation.timeline import make_timeline, window_plan
from audiotokens.model.audio_tokenizer import AudioTokenizer

BLOCK_SECONDS = 60


def write_recording(path: Path, minutes: float, rate: int) -> None:
    """A tone whose pitch changes every 7 s, plus noise, written a minute at a time."""
    rng = np.random.default_rng(0)
    total = round(minutes * 60 * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as out:
        for first in range(0, total, BLOCK_SECONDS * rate):
            t = np.arange(first, min(total, first + BLOCK_SECONDS * rate)) / rate
            pitch = 200.0 + 150.0 * (np.floor(t / 7.0) % 9)
            noise = 0.02 * rng.standard_normal(len(t))
            out.write((0.3 * np.sin(2 * np.pi * pitch * t) + noise).astype(np.float32))


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(recording: Path, bundle_dir: Path, out_dir: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    bundle = load_model(bundle_dir, device="cpu")
    tokenizer = AudioTokenizer.of_bundle(bundle)
    plan = window_plan(bundle, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    warm = out_dir / "warm.flac"
    write_recording(warm, 0.5, 16000)
    make_timeline(str(warm), bundle, tokenizer, plan, out_dir=out_dir)  # kernels, matplotlib, caches
    before = rss_bytes()
    wall, cpu = time.perf_counter(), time.process_time()
    timeline = make_timeline(str(recording), bundle, tokenizer, plan, out_dir=out_dir)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(timeline.files["scores"]) as table:
        windows = sum(1 for _ in table) - 1
    return {"audio_s": round(timeline.duration, 1), "window_s": round(plan.seconds(plan.window), 3),
            "hop_s": round(plan.seconds(plan.hop), 3), "windows": windows, "events": len(timeline.events),
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "audio_s_per_wall_s": round(timeline.duration / wall, 1),
            "audio_s_per_cpu_s": round(timeline.duration / cpu, 1),
            "peak_rss_increase_mib": round((peak - before) / 2**20, 1), "rss_before_mib": round(before / 2**20, 1)}


def in_child(work, *args) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            with os.fdopen(write_end, "w") as out:
                out.write(json.dumps(work(*args)))
        except BaseException:  # noqa: BLE001 - the child says why before it exits
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        text = result.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"the measurement failed (wait status {status})")
    return json.loads(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--rate", type=int, default=48000, help="sample rate of the recordings")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    parser.add_argument("--bundle", default=None, help="an existing bundle instead of random weights")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="timeline-bench-") as tmp:
        folder = Path(tmp)
        bundle_dir = Path(args.bundle) if args.bundle else write_bundle(folder, args)
        for minutes in args.minutes:
            recording = folder / f"rec{minutes:g}.flac"
            start = time.perf_counter()
            write_recording(recording, minutes, args.rate)
            written = time.perf_counter() - start
            result = in_child(measure, recording, bundle_dir, folder / "out", args.threads)
            size = round(recording.stat().st_size / 2**20)
            print(json.dumps({"minutes": minutes, "rate": args.rate, "file_mib": size, "write_s": round(written, 1),
                              **result}), flush=True)
            recording.unlink()


if __name__ == "__main__":
    main()
