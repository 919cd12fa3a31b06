#!/usr/bin/env python3
"""Tiny randomly initialised stand-ins for the token families' models, at the real models' rates.

Usage: scripts/standin_models.py OUT [--seed 0]

Writes OUT/wav2vec2 (a 3-layer wav2vec 2.0 of width 64: 16 kHz, one frame per 320 samples, as the real
base models), OUT/dac16 (a DAC at 16 kHz, hop 320, 8 codebooks of 1,024) and OUT/encodec24 (an EnCodec at
24 kHz, hop 320, 1.5 / 3 / 6 kbps = 2 / 4 / 8 codebooks of 1,024), each with save_pretrained. They let the
tokenizer sweep run every family where no checkpoint can be downloaded; being random, their figures prove
the plumbing and the bit rates, never what real units or codec codes keep.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import transformers as tf

    torch.manual_seed(args.seed)
    dac = tf.DacModel(tf.DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4, 5, 8], decoder_hidden_size=16,
                                   n_codebooks=8, codebook_size=1024, codebook_dim=8, hidden_size=32,
                                   sampling_rate=16000))
    dac.save_pretrained(args.out / "dac16")
    encodec = tf.EncodecModel(tf.EncodecConfig(
        sampling_rate=24000, num_filters=4, upsampling_ratios=[8, 5, 4, 2], codebook_size=1024, codebook_dim=16,
        hidden_size=16, num_residual_layers=1, num_lstm_layers=1, target_bandwidths=[1.5, 3.0, 6.0],
        chunk_length_s=None, normalize=False))
    for layer in encodec.quantizer.layers:  # a fresh EnCodec's codebooks are zeros: every code would be 0
        layer.codebook.embed.normal_()
    encodec.save_pretrained(args.out / "encodec24")
    wav2vec2 = tf.Wav2Vec2Model(tf.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4))
    wav2vec2.save_pretrained(args.out / "wav2vec2")
    tf.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(args.out / "wav2vec2")
    print(f"wrote {args.out}/dac16, {args.out}/encodec24, {args.out}/wav2vec2 (random stand-ins)")


if __name__ == "__main__":
    main()
