"""Frames for a neural codec (spectrogram.features = "codec"): rows of the samples one codec frame reads.

A clip is decoded, mixed down and resampled to spectrogram.sample_rate, then cut into rows of
spectrogram.hop_length samples; the samples after the last whole row are dropped (less than one codec
frame). The codec tokenizer (cluster.quantizer = codec) encodes a clip's rows joined back into its
waveform and gives one token per row, so the rate and hop must be the codec's own (the cluster stage says
which values when they are not). The frame spec records the rate, the hop and max_duration, nothing of the
codec: the rows are plain audio, made the same without the codec folder (predict, a bundle elsewhere).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..config import SpectrogramConfig
from ..data.audio import load_mono
from ..errors import UserError
from .frame_kind import AUGMENT, FrameKind, sample_rows

CODEC = "codec"
SPEC_KEYS = ("sample_rate", "hop_length", "max_duration")


def codec_rows(samples: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    """(rows, hop_length) float32: mono samples in rows of one codec frame; the rest is dropped."""
    hop = params.hop_length
    return sample_rows(samples, hop, hop, f"{len(samples)} samples at {params.sample_rate} Hz are less than one "
                       f"codec frame ({hop} samples)")


class CodecRows(FrameKind):
    """spectrogram.features = codec: rows of hop_length samples at sample_rate, one per codec frame."""

    name = CODEC

    def spec(self) -> dict[str, Any]:
        return {"features": self.name, **{key: getattr(self.params, key) for key in SPEC_KEYS}}

    @classmethod
    def params_from_spec(cls, spec: dict[str, Any]) -> SpectrogramConfig:
        missing = [key for key in SPEC_KEYS if key not in spec]
        unknown = sorted(set(spec) - {"features", AUGMENT, *SPEC_KEYS})
        if missing or unknown:
            raise UserError(f"a codec frame spec needs {', '.join(SPEC_KEYS)} (missing {missing}, unknown {unknown})")
        return replace(SpectrogramConfig(), features=CODEC, sample_rate=int(spec["sample_rate"]),
                       hop_length=int(spec["hop_length"]), max_duration=float(spec["max_duration"]))

    def check(self) -> None:
        for key in SPEC_KEYS:
            if getattr(self.params, key) < 0 or (key != "max_duration" and getattr(self.params, key) == 0):
                raise UserError(f"'spectrogram.{key}' must be positive, got {getattr(self.params, key)}")

    @property
    def width(self) -> int:
        return self.params.hop_length

    def frames_of(self, location: str) -> np.ndarray:
        return codec_rows(load_mono(location, self.params.sample_rate, self.params.max_duration), self.params)

    def frames_from_samples(self, mono: np.ndarray) -> np.ndarray:
        return codec_rows(mono, self.params)
