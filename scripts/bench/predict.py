"""Where `audiotokens predict` spends its time per 10 s clip, and its end-to-end rate, in one run.

    python scripts/bench/predict.py [--files 48] [--layers 12] [--hidden 768] [--classes 527] [--clusters 50]
                                    [--device cpu] [--repeats 3]

Writes FILES synthetic 10 s 48 kHz mono FLAC clips and a bundle with random weights of the given shape
(the seed's by default) to a temporary folder, warms every step up once, then prints per-clip medians of:
decode + resample, mel frames (with torch's default threads and with one, as predict runs it), token
assignment, the model (in batches of 32), and the whole predict_cli run (files/s, output discarded).
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiotokens.config import SpectrogramConfig
from audiotokens.data.audio import load_mono
from audiotokens.evaluation.predict import load_model, predict_cli
from audiotokens.features.spectrogram import compute_frames, params_to_dict
from audiotokens.model.audio_tokenizer import AudioTokenizer, single_threaded
from audiotokens.model.bundle import save_bundle
from audiotokens.model.parts import EXTRA_POSITIONS, AudioClassifier, ModelSpec
from audiotokens.tokens.quantizers import Quantizer
from audiotokens.tokens.vocabulary import load_vocabulary, save_vocabulary


def write_clips(folder: Path, count: int, rate: int = 48000) -> list[str]:
    rng = np.random.default_rng(0)
    t = np.arange(10 * rate) / rate
    paths = []
    for i in range(count):
        x = 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(len(t))
        path = folder / f"clip{i:04d}.flac"
        sf.write(path, x.astype(np.float32), rate)
        paths.append(str(path))
    return paths


def write_bundle(folder: Path, args: argparse.Namespace) -> Path:
    spectrogram = params_to_dict(SpectrogramConfig())
    centroids = np.random.default_rng(0).random((args.clusters, spectrogram["n_mels"]), dtype=np.float32)
    save_vocabulary(folder / "vocabulary", Quantizer(kind="frame", codebooks=[centroids], combine="concat"), spectrogram)
    vocabulary = load_vocabulary(folder / "vocabulary")
    classes = [f"class {i}" for i in range(args.classes)]
    torch.manual_seed(0)
    model = AudioClassifier(spec=ModelSpec(
        classes=classes, codebook_sizes=[args.clusters], hidden_size=args.hidden, max_positions=431 + EXTRA_POSITIONS,
        encoder_params={"num_layers": args.layers, "num_heads": max(1, args.hidden // 64),
                        "intermediate_size": 4 * args.hidden}))
    save_bundle(model, folder / "model", classes=classes, task="multilabel", threshold=0.5, max_frames=431,
                vocabulary=vocabulary, spectrogram=spectrogram, versions={})
    return folder / "model"


def per_clip_ms(step, items) -> float:
    times = []
    for item in items:
        started = time.perf_counter()
        step(item)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_clips(folder, args.files)
        model_dir = write_bundle(folder, args)
        bundle = load_model(model_dir, device=args.device)
        tokenizer = AudioTokenizer.of_bundle(bundle)
        params = tokenizer.params
        monos = [load_mono(p, params.sample_rate) for p in paths]
        frames = [compute_frames(m, params) for m in monos]
        tokens = [tokenizer.frames_to_tokens(f) for f in frames]
        bundle.scores(tokens[:32])  # warm-up

        batches = [tokens[i:i + 32] for i in range(0, len(tokens), 32)]
        model_ms = statistics.median(
            1000 * _timed(bundle.scores, batch) / len(batch) for batch in batches for _ in range(args.repeats))
        rows = {
            "decode + resample (48 kHz FLAC -> 22.05 kHz)": per_clip_ms(lambda p: load_mono(p, params.sample_rate),
                                                                       paths),
            f"mel frames (compute_frames, {torch.get_num_threads()} torch threads)":
                per_clip_ms(lambda m: compute_frames(m, params), monos),
            "mel frames (compute_frames, 1 thread, as predict runs it)":
                per_clip_ms(lambda m: _single(compute_frames, m, params), monos),
            "token assignment (nearest centroid, 1 thread)": per_clip_ms(tokenizer.frames_to_tokens, frames),
            f"model ({args.layers} layers x {args.hidden}, batch 32, {bundle.device})": model_ms,
        }
        runs = [_timed(predict_cli, paths, str(model_dir), ".", 5, None, "csv", io.StringIO())
                for _ in range(args.repeats)]
        print(f"{args.files} clips of 10 s, torch threads {torch.get_num_threads()}")
        for name, ms in rows.items():
            print(f"  {name:<58} {ms:9.2f} ms/clip")
        whole = statistics.median(runs)
        print(f"  {'predict_cli end to end (includes loading the bundle)':<58} {1000 * whole / args.files:9.2f} "
              f"ms/clip = {args.files / whole:.1f} files/s")


def _single(function, *args):
    with single_threaded():
        return function(*args)


def _timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
