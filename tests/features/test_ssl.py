"""Frames from local speech models: tiny randomly initialised wav2vec2 / HuBERT saved inside the test.

These models are random: they prove the plumbing (shapes, rates, layers, provenance), not feature quality.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from stores import write_plan

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.features.spectrogram import SpectrogramProcessor, params_from_dict
from audiotokens.pipeline.layout import Layout

RATE = 16000
STRIDES, KERNELS = (5, 4), (10, 4)
TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
        "conv_dim": (8, 8), "conv_stride": STRIDES, "conv_kernel": KERNELS, "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2}


def save_tiny(kind: str, folder):
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    config_class, model_class = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
                                 "hubert": (HubertConfig, HubertModel)}[kind]
    torch.manual_seed(0)
    model = model_class(config_class(**TINY)).eval()
    model.save_pretrained(folder)
    return model


def expected_frames(n_samples: int) -> int:
    """Output length of the convolution stack (no padding): the oracle for the frame count."""
    for kernel, stride in zip(KERNELS, STRIDES):
        n_samples = (n_samples - kernel) // stride + 1
    return n_samples


def write_clips(root, n=3, seconds=0.5):
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(n)]
    write_plan(root, {"train": ids}, {i: [0] for i in ids}, ["x"])
    plan = json.loads(Layout(root).split_json.read_text())
    for clip in plan["clips"]:
        path = root / f"{clip['id']}.wav"
        sf.write(path, rng.normal(scale=0.1, size=int(seconds * 22050)).astype(np.float32), 22050)
        clip["audio"] = str(path)
    Layout(root).split_json.write_text(json.dumps(plan))
    return ids


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_frames_have_the_layer_shape_and_rate(tmp_path, kind):
    model = save_tiny(kind, tmp_path / "model")
    write_clips(tmp_path)
    config = load_config(overrides=["spectrogram.features=ssl", f"spectrogram.ssl_model={tmp_path / 'model'}",
                                    "spectrogram.ssl_layer=1"], workdir=tmp_path)
    SpectrogramProcessor(config).run()
    layout = Layout(tmp_path)
    frames = np.load(layout.frames)
    index = json.loads(layout.frames_index.read_text())
    spec = json.loads(layout.frame_spec.read_text())
    per_clip = expected_frames(int(0.5 * RATE))  # resampled from 22050 Hz to the model's 16 kHz
    assert index["lengths"] == [per_clip] * 3 and frames.shape == (3 * per_clip, TINY["hidden_size"])
    assert spec["features"] == "ssl" and spec["sample_rate"] == RATE and spec["hop_length"] == 20
    assert spec["ssl_layer"] == 1 and len(spec["ssl_digest"]) == 16

    # the stored frames are transformers' own hidden state 1 of the normalised wave
    from audiotokens.data.audio import load_mono
    wave = torch.from_numpy(load_mono(str(tmp_path / "c0.wav"), RATE))
    wave = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        reference = model(wave[None], output_hidden_states=True).hidden_states[1][0].numpy()
    np.testing.assert_allclose(frames[:per_clip], reference, atol=1e-5)

    # the recorded spec rebuilds the settings; another model in the same folder is refused
    assert params_from_dict(spec).ssl_layer == 1
    torch.manual_seed(1)
    save_tiny_other = type(model)(model.config)
    save_tiny_other.save_pretrained(tmp_path / "model")
    with pytest.raises(UserError, match="another model"):
        params_from_dict(spec)


def test_missing_model_folder_is_one_line_naming_the_key(tmp_path):
    write_clips(tmp_path, n=1)
    config = load_config(overrides=["spectrogram.features=ssl", f"spectrogram.ssl_model={tmp_path / 'absent'}"],
                         workdir=tmp_path)
    with pytest.raises(UserError, match="spectrogram.ssl_model") as caught:
        SpectrogramProcessor(config).run()
    assert "\n" not in str(caught.value)
    unset = load_config(overrides=["spectrogram.features=ssl"], workdir=tmp_path)
    with pytest.raises(UserError, match="spectrogram.ssl_model"):
        SpectrogramProcessor(unset)


def test_layer_outside_the_model_is_refused(tmp_path):
    save_tiny("wav2vec2", tmp_path / "model")
    config = load_config(overrides=["spectrogram.features=ssl", f"spectrogram.ssl_model={tmp_path / 'model'}",
                                    "spectrogram.ssl_layer=3"], workdir=tmp_path)
    with pytest.raises(UserError, match="spectrogram.ssl_layer"):
        SpectrogramProcessor(config)
