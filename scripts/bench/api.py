"""The Python API's predict against the CLI's, and the ONNX export against PyTorch, in one run.

    python scripts/bench/api.py [--files 100] [--seconds 1] [--layers 4] [--hidden 256] [--repeats 3]

Writes FILES short 16 kHz clips and a bundle with random weights (BERT of the given shape, 50 clusters,
10 classes, the default frame spec) to a temporary folder. Then, after one warm-up of each:
  1. files/s of audiotokens.load(...).predict(paths) and of `audiotokens predict --format json` run
     in-process through click's CliRunner (same process, same files, alternating, median of REPEATS);
  2. per-clip latency (batch of one 10 s clip, 431 tokens) of Bundle.scores in PyTorch and of the
     exported ONNX graph in onnxruntime, both on one CPU thread (median of 30 calls).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from click.testing import CliRunner

import audiotokens
from audiotokens.cli import main
from audiotokens.config import SpectrogramConfig
from audiotokens.features.spectrogram import params_to_dict
from audiotokens.model.bundle import load_bundle, save_bundle
from audiotokens.model.export import export_onnx
from audiotokens.model.inputs import pack_sequences
from audiotokens.model.parts import AudioClassifier, ModelSpec
from audiotokens.tokens.quantizers import Quantizer
from audiotokens.tokens.vocabulary import load_vocabulary, save_vocabulary

RATE = 16000
CLUSTERS, CLASSES, LONG_CLIP = 50, 10, 431


def write_clips(folder: Path, count: int, seconds: float) -> list[str]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    paths = []
    for i in range(count):
        path = folder / f"clip{i:04d}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(len(t)))
                 .astype(np.float32), RATE)
        paths.append(str(path))
    return paths


def write_bundle(folder: Path, layers: int, hidden: int) -> Path:
    spec_dict = params_to_dict(SpectrogramConfig())
    rng = np.random.default_rng(1)
    save_vocabulary(folder / "vocabulary", Quantizer(kind="frame", combine="concat", codebooks=[
        rng.random((CLUSTERS, spec_dict["n_mels"])).astype(np.float32)]), spec_dict)
    spec = ModelSpec(classes=[f"class {c}" for c in range(CLASSES)], input="tokens", codebook_sizes=[CLUSTERS],
                     input_dim=spec_dict["n_mels"], encoder="bert",
                     encoder_params={"num_layers": layers, "num_heads": 4, "intermediate_size": 4 * hidden},
                     hidden_size=hidden, dropout=0.0, pooling="cls", max_positions=LONG_CLIP + 2)
    torch.manual_seed(0)
    save_bundle(AudioClassifier(spec=spec).eval(), folder / "model", classes=spec.classes, task="multilabel",
                threshold=0.5, max_frames=LONG_CLIP, vocabulary=load_vocabulary(folder / "vocabulary"),
                spectrogram=spec_dict, versions={})
    return folder / "model"


def throughput(paths: list[str], bundle_dir: Path, repeats: int) -> tuple[float, float]:
    model = audiotokens.load(bundle_dir, device="cpu")
    runner = CliRunner()
    cli_args = ["predict", "--model", str(bundle_dir), "--format", "json", *paths]

    def api() -> None:
        model.predict(paths)

    def cli() -> None:
        result = runner.invoke(main, cli_args)
        assert result.exit_code == 0, result.output

    times: dict[str, list[float]] = {"api": [], "cli": []}
    api(), cli()  # warm-up
    for _ in range(repeats):
        for name, call in (("api", api), ("cli", cli)):
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return len(paths) / statistics.median(times["api"]), len(paths) / statistics.median(times["cli"])


def latency(bundle_dir: Path, out: Path, calls: int = 30) -> tuple[float, float]:
    import onnxruntime as ort

    torch.set_num_threads(1)
    bundle = load_bundle(bundle_dir)
    clip = np.random.default_rng(2).integers(0, CLUSTERS, size=(LONG_CLIP, 1))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(export_onnx(bundle_dir, out)), options, providers=["CPUExecutionProvider"])
    ids, mask = pack_sequences([clip])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    assert np.abs(session.run(None, feed)[0] - bundle.scores([clip])).max() < 1e-4

    def median_ms(call) -> float:
        call()
        spans = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            spans.append(time.perf_counter() - started)
        return 1000 * statistics.median(spans)

    return median_ms(lambda: bundle.scores([clip])), median_ms(lambda: session.run(None, feed))


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "audio").mkdir()
        paths = write_clips(folder / "audio", args.files, args.seconds)
        bundle_dir = write_bundle(folder, args.layers, args.hidden)
        api_rate, cli_rate = throughput(paths, bundle_dir, args.repeats)
        print(f"predict, {args.files} files of {args.seconds:g} s: API {api_rate:.1f} files/s, CLI (in-process, "
              f"CliRunner) {cli_rate:.1f} files/s, ratio API/CLI {api_rate / cli_rate:.2f}")
        torch_ms, onnx_ms = latency(bundle_dir, folder / "model.onnx")
        print(f"one {LONG_CLIP}-token clip, 1 thread, BERT {args.layers} x {args.hidden}: PyTorch {torch_ms:.2f} ms, "
              f"onnxruntime {onnx_ms:.2f} ms, ratio {torch_ms / onnx_ms:.2f}")


if __name__ == "__main__":
    main_bench()
