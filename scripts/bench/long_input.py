"""Peak memory of the spectrogram stage on one long recording, with and without spectrogram.max_duration.

    python scripts/bench/long_input.py [--seconds 3600] [--rate 48000] [--channels 2] [--format FLAC]
                                       [--max-durations 0,600,10] [--repeats 1] [--keep FILE]

Writes one recording (a drifting tone plus noise, written block by block) to a temporary folder, or
reuses --keep FILE when it exists. Each setting runs in a fresh Python process that runs the spectrogram
stage in-process (workers = 1) on a split holding only that recording and reports its own peak RSS
(getrusage ru_maxrss), its RSS after the imports (the baseline every run pays), the wall time and the
frame count. Settings alternate across repetitions; figures are medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from audiotokens.data.sources.records import SINGLELABEL, Clip
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import SplitPlan

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from audiotokens.config import load_config
from audiotokens.features.spectrogram import SpectrogramProcessor
import audiotokens.data.audio, audiotokens.features.spectrogram  # noqa: F401  (baseline includes every import)
workdir, max_duration = Path(sys.argv[1]), sys.argv[2]
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
config = load_config(None, ["spectrogram.workers=1", f"spectrogram.max_duration={max_duration}"], workdir)
started = time.perf_counter()
counts = SpectrogramProcessor(config).run()
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_kb": baseline, "peak_kb": peak, "seconds": seconds, "frames": counts["frames"],
                  "skipped": counts["skipped"]}))
"""


def write_recording(path: Path, seconds: int, rate: int, channels: int, fmt: str) -> None:
    block = rate * 10
    rng = np.random.default_rng(0)
    phase = 0.0
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format=fmt, subtype="PCM_16") as out:
        for start in range(0, seconds * rate, block):
            n = min(block, seconds * rate - start)
            freq = 200.0 + 1800.0 * (start / (seconds * rate))
            steps = phase + 2 * np.pi * freq * np.arange(1, n + 1) / rate
            phase = float(steps[-1])
            x = 0.3 * np.sin(steps)[:, None] * np.linspace(1.0, 0.6, channels)[None, :]
            out.write((x + 0.01 * rng.standard_normal((n, channels))).astype(np.float32))


def run_once(audio: Path, max_duration: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = Clip(id="long", audio=str(audio.resolve()), labels=[0])  # one clip: the split stage needs two
        SplitPlan.new(source="bench", strategy="bench", task=SINGLELABEL, classes=["a"], clips=[clip.to_json()],
                      splits={"train": [clip.id]}).save(Layout(workdir))
        done = subprocess.run([sys.executable, "-c", CHILD, str(workdir), str(max_duration)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1], "rc": done.returncode}
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3600)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--format", default="FLAC", choices=["FLAC", "WAV"])
    parser.add_argument("--max-durations", default="0,600,10", help="comma-separated seconds; 0 = whole file")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="write the recording here / reuse it")
    args = parser.parse_args()
    settings = [float(s) for s in args.max_durations.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        audio = args.keep or Path(tmp) / f"long.{args.format.lower()}"
        if not audio.is_file():
            started = time.perf_counter()
            write_recording(audio, args.seconds, args.rate, args.channels, args.format)
            print(f"wrote {audio} ({audio.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s")
        info = sf.info(str(audio))
        decoded = info.frames * info.channels * 4 / 2**20
        print(f"{info.duration:.0f} s, {info.samplerate} Hz, {info.channels} ch, {info.format}; "
              f"whole file as float32 = {decoded:.0f} MiB")
        results: dict[float, list[dict]] = {s: [] for s in settings}
        for _ in range(args.repeats):
            for setting in settings:
                results[setting].append(run_once(audio, setting))
    print(f"\n{'max_duration':>13} {'peak RSS MiB':>13} {'baseline MiB':>13} {'above MiB':>10} {'wall s':>8} "
          f"{'frames':>9}")
    for setting, runs in results.items():
        failed = [r for r in runs if "error" in r]
        if failed:
            print(f"{setting:>13g}  failed: {failed[0]}")
            continue
        peak = statistics.median(r["peak_kb"] for r in runs) / 1024
        base = statistics.median(r["baseline_kb"] for r in runs) / 1024
        wall = statistics.median(r["seconds"] for r in runs)
        print(f"{setting:>13g} {peak:>13.0f} {base:>13.0f} {peak - base:>10.0f} {wall:>8.2f} {runs[0]['frames']:>9}")


if __name__ == "__main__":
    main()
