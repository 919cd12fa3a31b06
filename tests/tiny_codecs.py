"""Tiny randomly initialised neural codecs of each class transformers ships, saved to a folder in the test.

They are random and tiny: their codes prove the plumbing (folders, codes, codebooks, bundles), not that
codec tokens classify well. `direct_codes` calls each model's own encode as its documentation says, the
oracle the tool's codes are compared with; `direct_latent` is the codec's own dequantisation of codes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CODECS = ("encodec", "dac", "mimi", "xcodec")
# (sample rate, samples per codec frame) of each tiny codec below
FRAMES = {"encodec": (8000, 32), "dac": (8000, 32), "mimi": (8000, 32), "xcodec": (16000, 320)}
CODEBOOKS = {"encodec": 3, "dac": 3, "mimi": 3, "xcodec": 5}


def tiny_codec(kind: str, seed: int = 0):
    """A random tiny codec of `kind` in eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "encodec":  # 10-bit codebooks, 250 frames/s: 2.5 kbps per codebook
        config = tf.EncodecConfig(sampling_rate=8000, num_filters=4, upsampling_ratios=[8, 4], codebook_size=1024,
                                  codebook_dim=8, hidden_size=8, num_residual_layers=1, num_lstm_layers=1,
                                  target_bandwidths=[2.5, 5.0, 7.5], chunk_length_s=None, normalize=False)
        model = tf.EncodecModel(config)
        for layer in model.quantizer.layers:  # random codebooks (a fresh EnCodec's are zeros)
            layer.codebook.embed.normal_()
    elif kind == "dac":
        config = tf.DacConfig(encoder_hidden_size=4, downsampling_ratios=[4, 8], decoder_hidden_size=8, n_codebooks=3,
                              codebook_size=16, codebook_dim=4, hidden_size=8, sampling_rate=8000)
        model = tf.DacModel(config)
    elif kind == "mimi":
        config = tf.MimiConfig(sampling_rate=8000, frame_rate=None, audio_channels=1, hidden_size=8, num_filters=4,
                               num_residual_layers=1, upsampling_ratios=[8, 2], kernel_size=3, last_kernel_size=3,
                               residual_kernel_size=3, compress=2, codebook_size=16, codebook_dim=4, num_quantizers=3,
                               num_semantic_quantizers=1, vector_quantization_hidden_dimension=4, num_hidden_layers=1,
                               intermediate_size=16, num_attention_heads=2, num_key_value_heads=2, head_dim=4,
                               sliding_window=16, upsample_groups=8)
        model = tf.MimiModel(config)
        for rvq in (model.quantizer.semantic_residual_vector_quantizer, model.quantizer.acoustic_residual_vector_quantizer):
            for layer in rvq.layers:
                layer.codebook.embed_sum.normal_()
                layer.codebook._embed = None
    elif kind == "xcodec":  # a DAC acoustic model and a HuBERT semantic model, both of stride 320 at 16 kHz
        config = tf.XcodecConfig(
            target_bandwidths=[0.5, 1.0], sample_rate=16000, codebook_size=16, kernel_size=3,
            channel_ratios=(1, 1), strides=(1, 1), block_dilations=(1, 1), unit_kernel_size=3,
            acoustic_model_config={"encoder_hidden_size": 4, "downsampling_ratios": [2, 4, 5, 8],
                                   "decoder_hidden_size": 16, "hidden_size": 8, "codebook_dim": 4, "n_codebooks": 2,
                                   "codebook_size": 16},
            semantic_model_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "intermediate_size": 16, "conv_dim": (4,) * 7, "num_conv_pos_embeddings": 16,
                                   "num_conv_pos_embedding_groups": 2})
        model = tf.XcodecModel(config)
        for quantizer in model.quantizer.quantizers:
            quantizer.codebook.embed.normal_()
    else:
        raise ValueError(kind)
    return model.eval()


def save_tiny_codec(kind: str, folder: Path, seed: int = 0):
    model = tiny_codec(kind, seed)
    model.save_pretrained(folder)
    return model


def _bandwidth(model, codebooks: int) -> float:
    config = model.config
    rate = config.sampling_rate if hasattr(config, "sampling_rate") else config.sample_rate
    per_codebook = np.log2(config.codebook_size) * np.ceil(rate / config.hop_length) / 1000
    return next(b for b in config.target_bandwidths if int(b / per_codebook + 1e-9) == codebooks)


@torch.no_grad()
def direct_codes(kind: str, model, samples: np.ndarray, codebooks: int) -> np.ndarray:
    """(frames, codebooks) codes of one clip from the model's own encode."""
    x = torch.from_numpy(np.asarray(samples, dtype=np.float32))[None, None]
    if kind == "encodec":
        codes = model.encode(x, bandwidth=_bandwidth(model, codebooks)).audio_codes[0, 0]
    elif kind == "dac":
        codes = model.encode(x, n_quantizers=codebooks).audio_codes[0]
    elif kind == "mimi":
        codes = model.encode(x, num_quantizers=codebooks).audio_codes[0]
    else:
        codes = model.encode(x, bandwidth=_bandwidth(model, codebooks)).audio_codes[0]
    return codes.numpy().T


@torch.no_grad()
def direct_latent(kind: str, model, codes: np.ndarray) -> np.ndarray:
    """(frames, dim): the codec's own quantised latent of (frames, codebooks) codes."""
    c = torch.from_numpy(np.asarray(codes, dtype=np.int64).T)[None]  # (1, codebooks, frames)
    if kind == "encodec":
        latent = model.quantizer.decode(c.transpose(0, 1))
    elif kind == "dac":
        latent = model.quantizer.from_codes(c)[0]
    elif kind == "mimi":
        latent = model.quantizer.decode(c)
    else:
        latent = model.quantizer.decode(c.transpose(0, 1))
    return latent[0].numpy().T
