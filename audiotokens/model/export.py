"""`audiotokens export --format onnx`: a model bundle's classifier as an ONNX graph, with its vocabulary beside it.

The graph takes exactly what Bundle.scores packs (inputs.PACKERS): for a tokens model `input_ids`
(batch, positions, codebooks) int64 laid out as [CLS] ids+offset [SEP] [PAD]..., for a frames model
`frames` (batch, positions, n_mels) float32 with zero rows at [CLS], [SEP] and padding; both with
`attention_mask` (batch, positions) int64. It returns `scores` (batch, classes): sigmoid or softmax
probabilities, the same numbers as `audiotokens predict`. Batch and positions are dynamic; positions
must not exceed the model's max_frames + 2. Beside the .onnx file: `<name>.vocabulary/` (tokens models)
and `<name>.onnx.json` with the classes, task, threshold, token layout and frame spec a runtime needs.

`--input frames` puts a tokens model's quantizer in front of it (frames_graph.py): the graph then reads
`frames` laid out as for a frames model, so a deployment computes frames as the frame spec says and calls
one graph. Frames that are a speech model's hidden states (spectrogram.features = ssl) still come from
that model in Python; the export says so.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..pipeline.files import atomic_path, write_json
from ..pipeline.layout import ONNX_GRAPH, ONNX_METADATA, ONNX_VOCABULARY
from .bundle import load_bundle
from .frames_graph import TokensFromFrames
from .inputs import PACKERS

log = logging.getLogger("audiotokens")

FORMATS = ("onnx",)
OPSET = 17
OUTPUT = "scores"
MASK = "attention_mask"
INPUT_NAMES = {"tokens": "input_ids", "frames": "frames"}
EXAMPLE_LENGTHS = (5, 3)  # two clips of different lengths, so padding is traced as padding


def require_onnx() -> None:
    """One line, not an ImportError, when the optional extra is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise UserError(f"ONNX export needs the optional packages onnx and onnxruntime ({exc.name} is missing); "
                        "install them with `pip install 'audiotokens[onnx]'`") from None


class ScoringGraph(torch.nn.Module):
    """The classifier followed by the objective's probabilities: what gets traced."""

    def __init__(self, bundle):
        super().__init__()
        self.model = bundle.model
        self.objective = bundle.objective

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.objective.scores(self.model(inputs, mask))


class FramesScoringGraph(torch.nn.Module):
    """The quantizer, then the classifier and its probabilities: frames in, scores out."""

    def __init__(self, bundle):
        super().__init__()
        self.tokens = TokensFromFrames(bundle.vocabulary.quantizer, bundle.max_frames)
        self.scoring = ScoringGraph(bundle)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.scoring(*self.tokens(frames, mask))


def example_inputs(bundle, graph_input: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A small packed batch of what the graph reads (valid ids or frames)."""
    spec = bundle.spec
    lengths = [min(n, bundle.max_frames) for n in EXAMPLE_LENGTHS]
    if graph_input == "tokens":
        clips = [np.zeros((n, len(spec.codebook_sizes)), dtype=np.int64) for n in lengths]
    else:
        width = bundle.vocabulary.quantizer.n_mels if bundle.input == "tokens" else spec.input_dim
        clips = [np.zeros((n, width), dtype=np.float32) for n in lengths]
    return PACKERS[graph_input](clips)


def scoring_graph(bundle, model_dir: str | Path, graph_input: str | None) -> tuple[torch.nn.Module, str]:
    """The module to trace and what it reads: the model's own input, or frames before a tokens model."""
    if bundle.input not in INPUT_NAMES:
        raise UserError(f"{model_dir} is a fine-tuned speech model ({bundle.input} input); ONNX export covers "
                        f"{' and '.join(INPUT_NAMES)} models only: the speech model stays in Python")
    graph_input = graph_input or bundle.input
    if graph_input not in INPUT_NAMES:
        raise UserError(f"--input {graph_input}: choose {' or '.join(INPUT_NAMES)}")
    if graph_input == "tokens" and bundle.input == "frames":
        raise UserError(f"{model_dir} reads frames, not token ids; export it with --input frames "
                        "(the default)")
    if graph_input == "frames":
        log.info(frames_origin(bundle.spectrogram))
    if graph_input == "frames" and bundle.input == "tokens":
        return FramesScoringGraph(bundle).eval(), graph_input
    return ScoringGraph(bundle).eval(), graph_input


def frames_origin(frame_spec: dict[str, Any]) -> str:
    """One line: which part of making the graph's input stays outside the graph."""
    if frame_spec.get("features") == "ssl":
        return (f"the graph reads hidden states (layer {frame_spec.get('ssl_layer')}) of the speech model "
                f"{frame_spec.get('ssl_model')}: that model stays in Python (AudioTokenizer.frames computes them)")
    return ("the graph reads mel frames made as the frame spec in the .onnx.json says (AudioTokenizer.frames "
            "in Python); everything after them is in the graph")


def export_onnx(model_dir: str | Path, out_path: str | Path, graph_input: str | None = None) -> Path:
    """Write the ONNX graph to out_path (atomically), the vocabulary and a metadata file beside it.

    graph_input: what the graph reads — the model's own input (None), or "frames" for a tokens model,
    whose quantizer then runs in the graph."""
    require_onnx()

    bundle = load_bundle(model_dir, "cpu")
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise UserError(f"--out {out_path} should end in .onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    graph, graph_input = scoring_graph(bundle, model_dir, graph_input)
    input_name = INPUT_NAMES[graph_input]
    with atomic_path(out_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow are not the user's concern
        try:
            torch.onnx.export(
                graph, example_inputs(bundle, graph_input), str(tmp), input_names=[input_name, MASK],
                output_names=[OUTPUT],
                dynamic_axes={input_name: {0: "batch", 1: "positions"}, MASK: {0: "batch", 1: "positions"},
                              OUTPUT: {0: "batch"}},
                opset_version=OPSET, dynamo=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the part that failed
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"the {bundle.spec.encoder} encoder of {model_dir} cannot be exported to ONNX "
                            f"({type(exc).__name__}: {first[:200]})") from None
    _write_companions(bundle, out_path, input_name)
    return out_path


def _write_companions(bundle, out_path: Path, input_name: str) -> None:
    vocabulary_dir = out_path.with_name(ONNX_VOCABULARY.format(stem=out_path.stem))
    if vocabulary_dir.exists():
        shutil.rmtree(vocabulary_dir)
    if bundle.vocabulary is not None:
        shutil.copytree(bundle.vocabulary.path, vocabulary_dir)
    write_json(out_path.with_name(ONNX_METADATA.format(name=out_path.name)),
               companion_metadata(bundle, input_name, vocabulary_dir))


def companion_metadata(bundle, input_name: str, vocabulary_dir: Path) -> dict[str, Any]:
    keys = ("classes", "task", "threshold", "input", "special_tokens", "token_offset", "sequence",
            "max_frames", "spectrogram", "vocabulary_digest")
    return {**{key: bundle.metadata.get(key) for key in keys},
            "inputs": [input_name, MASK], "output": OUTPUT, "opset": OPSET,
            "max_positions": bundle.max_frames + 2,
            "quantizer_in_graph": input_name == INPUT_NAMES["frames"] and bundle.input == "tokens",
            "vocabulary": vocabulary_dir.name if bundle.vocabulary is not None else None}


def export_model(fmt: str, model_dir: str | Path, out_path: str | Path | None,
                 graph_input: str | None = None) -> Path:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    out = Path(out_path) if out_path else Path(model_dir).parent / ONNX_GRAPH
    return export_onnx(model_dir, out, graph_input)
