"""What a trained model ships with: the ONNX export (parity with the PyTorch bundle) and the model card."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from projects import trained_project
from stores import FRAME_DIM, N_CLUSTERS, frame_spec, make_frames_workdir, make_workdir

from audiotokens.cli import main
from audiotokens.errors import UserError
from audiotokens.model.audio_tokenizer import AudioTokenizer
from audiotokens.model.bundle import load_bundle, save_bundle
from audiotokens.model.export import export_onnx
from audiotokens.model.frames_graph import TokensFromFrames, quantizer_graph
from audiotokens.model.inputs import PACKERS
from audiotokens.model.parts import AudioClassifier, ModelSpec
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import open_store
from audiotokens.tokens.quantizer_kinds import quantizer_kind
from audiotokens.tokens.quantizers import fit_quantizer
from audiotokens.tokens.vocabulary import load_vocabulary, save_vocabulary

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'audiotokens[onnx]')")

PARITY = 1e-4


def clips_of(layout: Layout, kind: str, n: int = 12) -> list[np.ndarray]:
    """The first n clips of a store: fixture token ids or frames, of various lengths."""
    rows, index = open_store(*layout.store(kind))
    return [np.asarray(rows[o:o + length]) for o, length in zip(index.offsets[:n], index.lengths[:n])]


def random_bundle(root: Path, layout: Layout, *, encoder: str, input_kind: str, pooling: str, task: str) -> Path:
    spec = ModelSpec(classes=["a", "b", "c"], input=input_kind,
                     codebook_sizes=[N_CLUSTERS] if input_kind == "tokens" else [], input_dim=FRAME_DIM,
                     encoder=encoder, encoder_params={"num_layers": 1, "num_heads": 2, "intermediate_size": 32},
                     hidden_size=16, dropout=0.0, pooling=pooling, max_positions=64)
    torch.manual_seed(0)
    model = AudioClassifier(spec=spec).eval()
    with torch.no_grad():  # weights far from their initial scale, so the scores spread over [0, 1]
        for parameter in model.parameters():
            parameter.mul_(4.0)
    vocabulary = load_vocabulary(layout.vocabulary) if input_kind == "tokens" else None
    save_bundle(model, root, classes=spec.classes, task=task, threshold=0.5, max_frames=62, vocabulary=vocabulary,
                spectrogram=frame_spec(FRAME_DIM), versions={})
    return root


def onnx_scores(path: Path, bundle, clips: list[np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, mask = PACKERS[bundle.input]([bundle._as_rows(np.asarray(c)) for c in clips])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {names[0]: inputs.numpy(), names[1]: mask.numpy()})[0]


@pytest.mark.parametrize("encoder, input_kind, pooling, task", [
    ("bert", "tokens", "cls", "multilabel"), ("bert", "frames", "attention", "singlelabel"),
    ("conformer", "tokens", "mean", "multilabel"), ("cnn", "frames", "attention", "singlelabel")])
def test_onnx_scores_equal_the_bundle_scores(tmp_path, encoder, input_kind, pooling, task):
    make = make_workdir if input_kind == "tokens" else make_frames_workdir
    layout = make(tmp_path / "work", n_train=12, n_validation=4)
    bundle_dir = random_bundle(tmp_path / "model", layout, encoder=encoder, input_kind=input_kind, pooling=pooling,
                               task=task)
    out = export_onnx(bundle_dir, tmp_path / "export" / "model.onnx")
    bundle = load_bundle(bundle_dir)
    clips = clips_of(layout, input_kind)
    expected = bundle.scores(clips)
    assert expected.std() > 0.01  # the scores differ between clips and classes: a real comparison
    np.testing.assert_allclose(onnx_scores(out, bundle, clips), expected, atol=PARITY, rtol=0)
    meta = json.loads(out.with_name("model.onnx.json").read_text())
    assert meta["classes"] == bundle.classes and meta["inputs"][1] == "attention_mask"
    vocabulary_dir = out.with_name("model.vocabulary")
    assert vocabulary_dir.is_dir() == (input_kind == "tokens")
    if input_kind == "tokens":
        assert load_vocabulary(vocabulary_dir).digest == bundle.vocabulary.digest


def test_a_cnn_graph_pads_short_clips_as_the_bundle_does(tmp_path):
    """A CNN of 3 blocks reads at least 8 frames: the graph's padding to that follows each input's length."""
    spec = ModelSpec(classes=["a", "b", "c"], input="frames", input_dim=FRAME_DIM, encoder="cnn",
                     encoder_params={"num_layers": 3}, hidden_size=16, dropout=0.0, pooling="mean", max_positions=64)
    torch.manual_seed(0)
    model = AudioClassifier(spec=spec).eval()
    with torch.no_grad():  # weights far from their initial scale, so the scores spread over [0, 1]
        for parameter in model.parameters():
            parameter.mul_(2.5)
    save_bundle(model, tmp_path / "model", classes=spec.classes, task="singlelabel",
                threshold=0.5, max_frames=62, vocabulary=None, spectrogram=frame_spec(FRAME_DIM), versions={})
    out = export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    bundle = load_bundle(tmp_path / "model")
    rng = np.random.default_rng(0)
    for lengths in ([1], [2, 5], [3, 40], [60]):
        clips = [rng.random((n, FRAME_DIM)).astype(np.float32) for n in lengths]
        expected = bundle.scores(clips)
        np.testing.assert_allclose(onnx_scores(out, bundle, clips), expected, atol=PARITY, rtol=0)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "multilabel")


def test_export_command_on_a_trained_model(project, tmp_path):
    work = project / "work"
    out = tmp_path / "clf.onnx"
    result = CliRunner().invoke(main, ["export", "--format", "onnx", "--workdir", str(work), "--out", str(out)])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(work / "output/model")
    clips = clips_of(Layout(work), "tokens", n=24)
    np.testing.assert_allclose(onnx_scores(out, bundle, clips), bundle.scores(clips), atol=PARITY, rtol=0)


def test_missing_onnxruntime_is_one_line(project, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    result = CliRunner().invoke(main, ["export", "--workdir", str(project / "work"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "audiotokens[onnx]" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_out_must_be_an_onnx_file(project, tmp_path):
    with pytest.raises(UserError, match="should end in .onnx"):
        export_onnx(project / "work/output/model", tmp_path / "model.bin")


# ---------------------------------------------------------------- model card


def test_model_card_lists_the_recorded_metrics_and_data(project):
    work = project / "work"
    card = (work / "output/model/README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: audio-classification" in card
    lines = [json.loads(line) for line in (work / "output/metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if "validation" in line]
    best = [line for line in epochs if line.get("best")][-1]
    test = [line for line in lines if line.get("split") == "test"]
    for name, value in best["validation"].items():
        if name != "classes_excluded":
            assert f"| validation | {name} | {value:.4f} |" in card
    for name, value in (test[-1]["test"].items() if test else ()):
        if name != "classes_excluded":
            assert f"| test | {name} | {value:.4f} |" in card
    plan = json.loads((work / "processed/split.json").read_text())
    sizes = {split: len(plan["splits"][split]) for split in ("train", "validation")}
    for split, n in sizes.items():
        assert f"| {split} | {n} |" in card
    bundle = load_bundle(work / "output/model")
    assert all(f"`{name}`" in card for name in bundle.classes)
    for key in ("spectrogram.n_mels", "tokenizer.kind", "model.encoder", "train.learning_rate", "split.strategy"):
        assert f"| {key} |" in card
    settings = card.split("## Settings that shaped the model")[1].split("## Evaluation")[0]
    names = [line.split("|")[1].strip() for line in settings.splitlines() if line.startswith("| ")][1:]
    assert "model.num_layers" in names and "model.max_length" in names
    assert len(names) == len(set(names))  # a [model] key the spec holds too shows once
    assert "## Intended use and limits" in card and not re.search(r"\bnan\b", card, re.IGNORECASE)


# ---------------------------------------------------------------- one graph from frames to scores

FRAMES_CASES = {  # case -> (quantizer kind, its [cluster] settings, spherical)
    "frame": ("frame", {}, False),
    "stacked": ("stacked", {"stack": 3, "stack_stride": 2}, False),
    "subband": ("subband", {"bands": 3}, False),
    "subband-spherical": ("subband", {"bands": 3}, True),
    "residual": ("residual", {"stages": 3}, False),
    "scalar": ("scalar", {"levels": 16}, False),
}


def fitted_tokens_bundle(root: Path, case: str) -> Path:
    """A randomly initialised tokens model over a quantizer of the case's kind fitted on random frames."""
    kind_name, settings, spherical = FRAMES_CASES[case]
    kind = quantizer_kind(kind_name, **settings)
    stack, _ = kind.geometry
    sample = np.random.default_rng(1).random((600, FRAME_DIM * stack), dtype=np.float32)
    quantizer, _ = fit_quantizer(kind, sample, n_clusters=N_CLUSTERS, niter=5, seed=0, spherical=spherical)
    spectrogram = frame_spec(FRAME_DIM)
    save_vocabulary(root / "vocabulary", quantizer, spectrogram)
    spec = ModelSpec(classes=["a", "b", "c"], input="tokens", codebook_sizes=quantizer.codebook_sizes,
                     input_dim=FRAME_DIM, encoder="bert", hidden_size=16, dropout=0.0, pooling="mean",
                     encoder_params={"num_layers": 1, "num_heads": 2, "intermediate_size": 32}, max_positions=42)
    torch.manual_seed(0)
    model = AudioClassifier(spec=spec).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)
    save_bundle(model, root / "model", classes=spec.classes, task="multilabel", threshold=0.5, max_frames=40,
                vocabulary=load_vocabulary(root / "vocabulary"), spectrogram=spectrogram, versions={})
    return root / "model"


def random_frame_clips(lengths=(1, 2, 3, 7, 20, 39, 40, 55), seed: int = 2) -> list[np.ndarray]:
    """Frames a little beyond the training range too (the scalar end levels), of lengths around every edge:
    shorter than a stacked window, exactly max_frames, longer than max_frames (cut as Bundle.scores cuts)."""
    rng = np.random.default_rng(seed)
    return [(rng.random((n, FRAME_DIM), dtype=np.float32) * 1.2 - 0.1) for n in lengths]


@pytest.mark.parametrize("case", list(FRAMES_CASES))
def test_frames_graph_equals_frames_tokenized_by_the_tool_then_the_model(tmp_path, case):
    bundle_dir = fitted_tokens_bundle(tmp_path, case)
    bundle = load_bundle(bundle_dir)
    tokenizer = AudioTokenizer.of_bundle(bundle)
    clips = random_frame_clips()
    tokens = [tokenizer.frames_to_tokens(frames) for frames in clips]
    # the in-graph quantizer gives the tool's own token batch, id for id
    frames, mask = PACKERS["frames"](clips)
    expected_ids, expected_mask = PACKERS["tokens"]([t[:bundle.max_frames] for t in tokens])
    ids, token_mask = TokensFromFrames(bundle.vocabulary.quantizer, bundle.max_frames)(frames, mask)
    assert torch.equal(ids, expected_ids) and torch.equal(token_mask, expected_mask)
    # and the exported graph scores the frames as the bundle scores the tool's tokens
    out = export_onnx(bundle_dir, tmp_path / "export" / "model.onnx", "frames")
    expected = bundle.scores(tokens)
    assert expected.std() > 0.01
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["frames", "attention_mask"]
    got = session.run(None, {"frames": frames.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=PARITY, rtol=0)
    one = session.run(None, {"frames": PACKERS["frames"](clips[4:5])[0].numpy(),
                             "attention_mask": PACKERS["frames"](clips[4:5])[1].numpy()})[0]
    np.testing.assert_allclose(one, expected[4:5], atol=PARITY, rtol=0)  # a batch of one: no padding at all
    meta = json.loads(out.with_name("model.onnx.json").read_text())
    assert meta["inputs"] == ["frames", "attention_mask"] and meta["quantizer_in_graph"] is True


@pytest.mark.parametrize("case", ["residual", "scalar", "subband-spherical"])
def test_quantizer_graph_ids_equal_quantizer_encode(tmp_path, case):
    bundle = load_bundle(fitted_tokens_bundle(tmp_path, case))
    quantizer = bundle.vocabulary.quantizer
    vectors = np.random.default_rng(5).random((5000, quantizer.input_dim), dtype=np.float32) * 1.2 - 0.1
    vectors[:16] = quantizer.decode(quantizer.encode(vectors[:16]))  # entries themselves (scalar: the levels)
    if case == "scalar":  # values exactly on a midpoint go to the lower level, as the tool's bisection does
        levels = quantizer.codebooks[0][:, 0]
        vectors[16:32] = ((levels[:-1] + levels[1:]) / 2)[np.arange(16 * quantizer.input_dim) % (len(levels) - 1)
                                                            ].reshape(16, -1)
    got = quantizer_graph(quantizer)(torch.from_numpy(vectors)).numpy()
    np.testing.assert_array_equal(got, quantizer.encode(vectors))


def test_frames_export_of_a_frames_model_is_its_own_graph_and_says_what_stays_outside(tmp_path, caplog):
    layout = make_frames_workdir(tmp_path / "work", n_train=12, n_validation=4)
    bundle_dir = random_bundle(tmp_path / "model", layout, encoder="bert", input_kind="frames",
                               pooling="mean", task="singlelabel")
    with caplog.at_level("INFO", logger="audiotokens"):
        out = export_onnx(bundle_dir, tmp_path / "m.onnx", "frames")
    bundle = load_bundle(bundle_dir)
    clips = clips_of(layout, "frames")
    np.testing.assert_allclose(onnx_scores(out, bundle, clips), bundle.scores(clips), atol=PARITY, rtol=0)
    assert any("mel frames" in r.getMessage() for r in caplog.records)
    with pytest.raises(UserError, match="reads frames, not token ids"):
        export_onnx(bundle_dir, tmp_path / "t.onnx", "tokens")


def test_frames_export_of_speech_model_frames_names_the_part_left_in_python(tmp_path, caplog):
    from audiotokens.model.export import frames_origin

    line = frames_origin({"features": "ssl", "ssl_model": "/models/hubert", "ssl_layer": 6})
    assert "\n" not in line and "/models/hubert" in line and "layer 6" in line and "stays in Python" in line


def test_export_command_with_frames_input(project, tmp_path):
    work = project / "work"
    out = tmp_path / "frames.onnx"
    result = CliRunner().invoke(main, ["export", "--workdir", str(work), "--out", str(out), "--input", "frames"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(work / "output/model")
    tokenizer = AudioTokenizer.of_bundle(bundle)
    clips = clips_of(Layout(work), "frames", n=8)
    expected = bundle.scores([tokenizer.frames_to_tokens(c) for c in clips])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    frames, mask = PACKERS["frames"](clips)
    got = session.run(None, {"frames": frames.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=PARITY, rtol=0)
