"""Latency of the frames-to-scores ONNX graph (`export --input frames`) against PyTorch, per 10 s clip.

    python scripts/bench/onnx_frames.py [--layers 3] [--hidden 128] [--classes 10] [--repeats 21]
                                        [--kinds frame,...]

For each quantizer kind with its default [cluster] settings (50 codes per codebook, fitted on random
frames in [0, 1]), a bundle with random weights of the given shape is exported with the quantizer in the
graph. One clip of 431 frames × 64 mels (10 s at the default settings) is then scored, after a warm-up,
`repeats` times each way; the medians are printed with the largest score difference. PyTorch:
AudioTokenizer.frames_to_tokens (faiss, single-threaded, as predict runs it) + Bundle.scores. Ids graph:
the same tokenization + the default export (token ids in) in onnxruntime. Frames graph: the frames packed
+ one onnxruntime session.run of `--input frames`. onnxruntime runs on the CPU with its default threads.
Frames themselves are computed by none of them.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from audiotokens.config import ClusterConfig, SpectrogramConfig
from audiotokens.features.spectrogram import params_to_dict
from audiotokens.model.audio_tokenizer import AudioTokenizer
from audiotokens.model.bundle import load_bundle, save_bundle
from audiotokens.model.export import export_onnx
from audiotokens.model.inputs import pack_sequences
from audiotokens.model.parts import EXTRA_POSITIONS, AudioClassifier, ModelSpec
from audiotokens.tokens.quantizer_kinds import KINDS, kind_from_config
from audiotokens.tokens.quantizers import fit_quantizer
from audiotokens.tokens.vocabulary import load_vocabulary, save_vocabulary

FRAMES = 431


def fitted_bundle(folder: Path, kind_name: str, args: argparse.Namespace) -> Path:
    spectrogram = params_to_dict(SpectrogramConfig())
    cluster = ClusterConfig(quantizer=kind_name)
    kind = kind_from_config(cluster)
    stack, _ = kind.geometry
    sample = np.random.default_rng(0).random((20000, spectrogram["n_mels"] * stack), dtype=np.float32)
    quantizer, _ = fit_quantizer(kind, sample, n_clusters=cluster.n_clusters, niter=10, seed=0)
    save_vocabulary(folder / "vocabulary", quantizer, spectrogram)
    classes = [f"class {i}" for i in range(args.classes)]
    torch.manual_seed(0)
    model = AudioClassifier(spec=ModelSpec(
        classes=classes, codebook_sizes=quantizer.codebook_sizes, hidden_size=args.hidden,
        max_positions=FRAMES + EXTRA_POSITIONS,
        encoder_params={"num_layers": args.layers, "num_heads": max(1, args.hidden // 64),
                        "intermediate_size": 4 * args.hidden}))
    save_bundle(model, folder / "model", classes=classes, task="multilabel", threshold=0.5, max_frames=FRAMES,
                vocabulary=load_vocabulary(folder / "vocabulary"), spectrogram=spectrogram, versions={})
    return folder / "model"


def median_ms(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def packed(frames: np.ndarray) -> dict[str, np.ndarray]:
    """One clip laid out as the graph reads it: [CLS] row, the frames, [SEP] row; mask all ones."""
    inputs = np.zeros((1, len(frames) + EXTRA_POSITIONS, frames.shape[1]), dtype=np.float32)
    inputs[0, 1:-1] = frames
    return {"frames": inputs, "attention_mask": np.ones(inputs.shape[:2], dtype=np.int64)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--kinds", default=",".join(KINDS), help="quantizer kinds, comma-separated")
    args = parser.parse_args()
    frames = np.random.default_rng(1).random((FRAMES, SpectrogramConfig().n_mels), dtype=np.float32)
    print(f"BERT {args.layers} × {args.hidden}, {args.classes} classes, one clip of {FRAMES} frames; "
          f"torch threads {torch.get_num_threads()}")
    print("| quantizer | tokens per clip | PyTorch ms | ids graph ms | frames graph ms | max abs score "
          "difference |")
    print("|---|---|---|---|---|---|")
    for kind_name in args.kinds.split(","):
        print(measure(kind_name, frames, args), flush=True)


def measure(kind_name: str, frames: np.ndarray, args: argparse.Namespace) -> str:
    """One table row: the kind, its tokens per clip, both medians and the largest score difference."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = fitted_bundle(Path(tmp), kind_name, args)
        session = ort.InferenceSession(str(export_onnx(bundle_dir, Path(tmp) / "frames.onnx", "frames")),
                                       providers=["CPUExecutionProvider"])
        ids_session = ort.InferenceSession(str(export_onnx(bundle_dir, Path(tmp) / "ids.onnx")),
                                           providers=["CPUExecutionProvider"])
        bundle = load_bundle(bundle_dir)
        tokenizer = AudioTokenizer.of_bundle(bundle)
        tokens = tokenizer.frames_to_tokens(frames)
        difference = np.abs(session.run(None, packed(frames))[0] - bundle.scores([tokens])).max()

        def ids_graph() -> None:
            ids, mask = pack_sequences([tokenizer.frames_to_tokens(frames)])
            ids_session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})

        torch_ms = median_ms(lambda: bundle.scores([tokenizer.frames_to_tokens(frames)]), args.repeats)
        ids_ms = median_ms(ids_graph, args.repeats)
        frames_ms = median_ms(lambda: session.run(None, packed(frames)), args.repeats)
    return (f"| {kind_name} | {tokens.shape[0]} × {tokens.shape[1]} | {torch_ms:.1f} | {ids_ms:.1f} | "
            f"{frames_ms:.1f} | {difference:.1e} |")

if __name__ == "__main__":
    main()
