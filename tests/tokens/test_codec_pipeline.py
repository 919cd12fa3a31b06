"""Codec tokens through every stage: `audiotokens run` with a tiny random DAC saved in the test (8 kHz, 32 samples
per frame, 3 codebooks), decoded embeddings from its codebooks, then predict, evaluate and the Python API
through the bundle, the export's one line, and a changed codec folder refused in one line. The codec is
random: this proves the plumbing, not that codec tokens classify well."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from projects import clip_labels, write_tone
from tiny_codecs import direct_codes, save_tiny_codec

import audiotokens.api
from audiotokens.cli import main
from audiotokens.data.audio import load_mono
from audiotokens.errors import UserError
from audiotokens.model.bundle import load_bundle
from audiotokens.model.frames_graph import quantizer_graph
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import ClipIndex, read_frame_spec


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_project")
    model = save_tiny_codec("dac", root / "codec")
    rows = ["path,label"]
    for i in range(12):
        labels = clip_labels(i, "single")
        write_tone(root / "audio" / f"clip{i:02d}.wav", labels, i, seconds=0.25)
        rows.append(f"audio/clip{i:02d}.wav,{labels[0]}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "run.toml").write_text(f"""
[data]
manifest = "{root / 'manifest.csv'}"
[split]
strategy = "stratified"
validation_ratio = 0.25
test_ratio = 0.0
[spectrogram]
features = "codec"
sample_rate = 8000
hop_length = 32
workers = 1
[cluster]
quantizer = "codec"
codec_model = "{root / 'codec'}"
[model]
token_embedding = "decoded"
num_layers = 1
hidden_size = 16
num_heads = 2
intermediate_size = 32
[train]
epochs = 1
batch_size = 4
device = "cpu"
num_workers = 0
""")
    result = CliRunner().invoke(main, ["run", "--config", str(root / "run.toml"), "--workdir", str(root / "work"),
                                       "--to", "evaluate"])
    assert result.exit_code == 0, result.output
    return root, model


def test_the_token_store_holds_the_codecs_codes(project):
    root, model = project
    layout = Layout(root / "work")
    meta = json.loads((layout.vocabulary / "vocabulary.json").read_text())
    assert meta["quantizer"]["codec"]["model_type"] == "dac" and meta["quantizer"]["n_codebooks"] == 3
    tokens = np.load(layout.tokens)
    index = ClipIndex.load(layout.tokens_index)
    first = index.ids.index("audio/clip00.wav") if "audio/clip00.wav" in index.ids else 0
    samples = load_mono(str(root / "audio" / "clip00.wav"), 8000)
    expected = direct_codes("dac", model, samples[:len(samples) // 32 * 32], 3)
    offset, length = int(index.offsets[first]), int(index.lengths[first])
    np.testing.assert_array_equal(tokens[offset:offset + length], expected)
    stats = json.loads(layout.token_stats.read_text())
    assert len(stats["splits"]["train"]["codebooks"]) == 3


def test_the_bundle_embeds_with_the_codecs_vectors_and_scores_files(project):
    root, _ = project
    bundle_dir = Layout(root / "work").model_dir
    bundle = load_bundle(bundle_dir, "cpu")
    books = bundle.vocabulary.quantizer.codebooks
    embedder = bundle.model.embedder
    for c, book in enumerate(books):
        np.testing.assert_array_equal(embedder.decode_table(c).numpy(), book)
    assert Layout(root / "work").eval_dir("validation").is_dir()
    clip = str(root / "audio" / "clip01.wav")
    out = CliRunner().invoke(main, ["predict", "--model", str(bundle_dir), "--format", "json", clip])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    model = audiotokens.api.load(bundle_dir, device="cpu")
    api_scores = model.scores([clip])[0]
    assert len(rows) == 1 and rows[0]["top"]
    for row in rows[0]["top"]:
        assert row["score"] == pytest.approx(float(api_scores[model.classes.index(row["class"])]), abs=1e-5)
    with torch.no_grad(), pytest.raises(UserError, match="codec tokenizer's encoder .* stays in Python"):
        quantizer_graph(bundle.vocabulary.quantizer)


def test_a_changed_codec_folder_is_refused_by_the_bundle_in_one_line(project, tmp_path):
    root, _ = project
    bundle_dir = Layout(root / "work").model_dir
    save_tiny_codec("dac", root / "codec", seed=5)
    try:
        out = CliRunner().invoke(main, ["predict", "--model", str(bundle_dir), str(root / "audio" / "clip01.wav")])
        assert out.exit_code != 0 and "now holds another model" in out.output
        assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output
    finally:
        save_tiny_codec("dac", root / "codec")  # the original back, for the other tests of the module


@pytest.mark.parametrize("door", ["cli", "api"])
def test_a_codec_left_with_mel_frames_gets_its_own_rate_and_hop(project, tmp_path, door):
    root, _ = project
    config = (root / "run.toml").read_text()
    config = config.replace('features = "codec"\nsample_rate = 8000\nhop_length = 32\n', "")
    assert "hop_length" not in config  # the [spectrogram] settings are the defaults: mel, 22.05 kHz, hop 512
    (tmp_path / "run.toml").write_text(config)
    workdir = tmp_path / "work"
    if door == "cli":
        result = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "run.toml"), "--workdir", str(workdir),
                                           "--to", "spectrogram"])
        assert result.exit_code == 0, result.output
    else:
        audiotokens.api.run(tmp_path / "run.toml", stages=("split", "spectrogram"), workdir=workdir)
    spec = read_frame_spec(Layout(workdir))
    assert (spec["features"], spec["sample_rate"], spec["hop_length"]) == ("codec", 8000, 32)  # the tiny DAC's
