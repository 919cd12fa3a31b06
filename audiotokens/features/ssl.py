"""Frames from a pretrained speech model (spectrogram.features = "ssl"): one hidden-state layer per frame.

spectrogram.ssl_model is a local Hugging Face folder (wav2vec2, HuBERT, WavLM: anything transformers'
AutoModel loads and that returns hidden states); nothing is ever downloaded. A clip is decoded, mixed
down and resampled to the model's rate (its preprocessor_config.json, 16 kHz without one), normalised to
zero mean and unit variance when the model's feature extractor does so, and run through the model;
hidden_states[spectrogram.ssl_layer] (0 = the projected convolutional features, -1 = the last layer) are
the frames, one per conv-stride samples (320 at 16 kHz: 50 frames per second). The model runs on the GPU
when there is one, one clip per forward pass, in the stage's own process.

The frame spec records features "ssl", the model folder, the layer, the model's rate and stride, and a
digest of the model's config and weights, so frames of another checkpoint in the same folder are refused.
These frames then cluster, tokenize and train like mel frames.

spectrogram.features = "waveform" stores the model's input instead, for fine-tuning the model itself
(model.input = "waveform", model.encoder = "ssl"): the clip decoded, mixed down and resampled to the
model's rate, cut into rows of conv-stride samples (one row per output frame of the model; the samples
after the last whole row are dropped). Rows go through the frame store, split views, crops, evaluation
windows and frame budgets like frames. Its frame spec records the rate and stride, the model's receptive
field (a clip shorter than that gives the model no frame and is skipped as too short), the folder and its
digest; reading those rows back (predict, a bundle) needs the spec only, never the folder.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SpectrogramConfig, check_spectrogram
from ..data.audio import AudioError, load_mono
from ..errors import UserError
from ..pipeline.layout import HF_CONFIG, HF_PREPROCESSOR
from .frame_kind import AUGMENT, FrameKind, sample_rows

DEFAULT_RATE = 16000  # wav2vec2 / HuBERT / WavLM checkpoints without a preprocessor_config.json
WAVEFORM = "waveform"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DIGEST_CHUNK = 1 << 20


def model_dir(params: SpectrogramConfig) -> Path:
    """The local model folder, or a one-line error naming spectrogram.ssl_model."""
    if not params.ssl_model:
        raise UserError(f"spectrogram.features = {params.features} needs 'spectrogram.ssl_model', a local Hugging "
                        "Face model folder (wav2vec2, HuBERT or WavLM)")
    path = Path(params.ssl_model).expanduser()
    if not (path / HF_CONFIG).is_file():
        raise UserError(f"'spectrogram.ssl_model' ({path}) is not a local Hugging Face model folder (no "
                        f"{HF_CONFIG}); nothing is downloaded at run time: save the model there first")
    return path.absolute()


def _file_state(path: Path) -> tuple:
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in _model_files(path))


def _model_files(path: Path) -> list[Path]:
    return sorted([path / HF_CONFIG, *(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)])


def model_digest(path: Path) -> str:
    """Digest of the model's config and weight files (cached while their sizes and times stay)."""
    return _digest(path, _file_state(path))


@functools.lru_cache(maxsize=4)
def _digest(path: Path, state: tuple) -> str:
    digest = hashlib.sha256()
    for file in _model_files(path):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(DIGEST_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _model_facts(path: Path) -> dict[str, Any]:
    """Rate, stride, hidden size, layers and normalisation of the model, from its config files."""
    config = json.loads((path / HF_CONFIG).read_text())
    preprocessor = path / HF_PREPROCESSOR
    extractor = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
    if "conv_stride" not in config or "hidden_size" not in config:
        raise UserError(f"'spectrogram.ssl_model' ({path}) is not a wav2vec2-style speech model (its config.json "
                        "has no conv_stride); use a wav2vec2, HuBERT or WavLM folder")
    kernels, strides = config.get("conv_kernel", [400]), config["conv_stride"]
    return {"rate": int(extractor.get("sampling_rate", DEFAULT_RATE)), "hop": math.prod(strides),
            "kernel": kernels, "receptive_field": receptive_field(kernels, strides),
            "width": int(config["hidden_size"]), "layers": int(config["num_hidden_layers"]),
            "normalize": bool(extractor.get("do_normalize", True))}


def receptive_field(kernels, strides) -> int:
    """Samples under the first output frame of a stack of unpadded convolutions: the fewest that give one."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field, jump = field + (kernel - 1) * jump, jump * stride
    return field


def model_config(path: Path) -> dict[str, Any]:
    """The speech model's config.json and whether its feature extractor normalises each clip (do_normalize)."""
    return json.loads((path / HF_CONFIG).read_text()), _model_facts(path)["normalize"]


def check_layer(params: SpectrogramConfig, layers: int) -> int:
    """ssl_layer as an index into the model's layers + 1 hidden states."""
    if not -(layers + 1) <= params.ssl_layer <= layers:
        raise UserError(f"'spectrogram.ssl_layer' ({params.ssl_layer}) is outside the model's hidden states "
                        f"0..{layers} (or -1..-{layers + 1} from the last)")
    return params.ssl_layer % (layers + 1)


def ssl_width(params: SpectrogramConfig) -> int:
    return _model_facts(model_dir(params))["width"]


def ssl_frame_spec(params: SpectrogramConfig) -> dict[str, Any]:
    path = model_dir(params)
    facts = _model_facts(path)
    return {"features": "ssl", "ssl_model": str(path), "ssl_layer": check_layer(params, facts["layers"]),
            "ssl_digest": model_digest(path), "sample_rate": facts["rate"], "hop_length": facts["hop"],
            "max_duration": params.max_duration}


def ssl_params_from_spec(spec: dict[str, Any]) -> SpectrogramConfig:
    """The settings of a recorded ssl frame spec; refused when the folder now holds another model.

    The model's rate stays in sample_rate, so audio in memory is resampled to it before the model runs."""
    values = {k: v for k, v in spec.items() if k not in ("features", "ssl_digest")}
    params = replace(SpectrogramConfig(), features="ssl", **values)
    digest = model_digest(model_dir(params))
    if digest != spec.get("ssl_digest"):
        raise UserError(f"'spectrogram.ssl_model' ({params.ssl_model}) now holds another model (digest {digest}, "
                        f"frames made with {spec.get('ssl_digest')}); restore that model or re-run the pipeline")
    return params


@functools.lru_cache(maxsize=2)
def load_model(path: Path, device: str, digest: str):
    """The model in eval mode; `digest` keys the cache, so a model replaced in its folder is read again."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval()


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def ssl_clip_frames(location: str, params: SpectrogramConfig) -> np.ndarray:
    """(frames, hidden) float32 of one clip: the chosen hidden state of the speech model."""
    path = model_dir(params)
    facts = _model_facts(path)
    samples = load_mono(location, facts["rate"], params.max_duration)
    return ssl_frames_of(samples, path, params.ssl_layer)


@torch.no_grad()
def ssl_frames_of(samples: np.ndarray, path: Path, layer: int) -> np.ndarray:
    """The hidden state `layer` of the model at `path` for mono samples at its rate."""
    facts = _model_facts(path)
    index = check_layer(replace(SpectrogramConfig(), ssl_layer=layer), facts["layers"])
    if len(samples) < facts["kernel"][0]:
        raise AudioError("too short", f"{len(samples)} samples < the model's first kernel {facts['kernel'][0]}")
    wave = torch.from_numpy(np.asarray(samples, dtype=np.float32))
    if facts["normalize"]:
        wave = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
    device = device_name()
    outputs = load_model(path, device, model_digest(path))(wave[None].to(device), output_hidden_states=True)
    frames = outputs.hidden_states[index][0].float().cpu().numpy()
    if not np.isfinite(frames).all():
        raise AudioError("non-finite frames", "the speech model gave NaN or infinite values")
    return np.ascontiguousarray(frames, dtype=np.float32)


# ---------------------------------------------------------------- waveform rows (fine-tuning the model)


def waveform_params(params: SpectrogramConfig) -> SpectrogramConfig:
    """The settings with the model's rate, stride and receptive field as sample_rate, hop_length and n_fft
    (n_fft as for mel frames: the fewest samples that make a frame), read from the model folder."""
    facts = _model_facts(model_dir(params))
    return replace(params, sample_rate=facts["rate"], hop_length=facts["hop"], n_fft=facts["receptive_field"])


def waveform_frame_spec(params: SpectrogramConfig) -> dict[str, Any]:
    path = model_dir(params)
    facts = _model_facts(path)
    return {"features": WAVEFORM, "ssl_model": str(path), "ssl_digest": model_digest(path),
            "sample_rate": facts["rate"], "hop_length": facts["hop"], "receptive_field": facts["receptive_field"],
            "max_duration": params.max_duration}


def waveform_params_from_spec(spec: dict[str, Any]) -> SpectrogramConfig:
    """The settings of a recorded waveform spec, without the model folder (a bundle carries its own weights)."""
    keys = ("ssl_model", "sample_rate", "hop_length", "receptive_field", "max_duration")
    missing = [key for key in keys if key not in spec]
    unknown = sorted(set(spec) - {"features", "ssl_digest", AUGMENT, *keys})
    if missing or unknown:
        raise UserError(f"a waveform frame spec needs {', '.join(keys)} (missing {missing}, unknown {unknown})")
    return replace(SpectrogramConfig(), features=WAVEFORM, ssl_model=spec["ssl_model"],
                   sample_rate=int(spec["sample_rate"]), hop_length=int(spec["hop_length"]),
                   n_fft=int(spec["receptive_field"]), max_duration=float(spec["max_duration"]))


def waveform_rows(samples: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    """(rows, stride) float32: mono samples at the model's rate in rows of hop_length; the rest is dropped."""
    stride = params.hop_length
    return sample_rows(samples, stride, params.n_fft,
                       f"{len(samples)} samples at {params.sample_rate} Hz give no frame of the speech model (its "
                       f"receptive field is {params.n_fft} samples, rows of {stride})")


def waveform_clip_rows(location: str, params: SpectrogramConfig) -> np.ndarray:
    return waveform_rows(load_mono(location, params.sample_rate, params.max_duration), params)


# ---------------------------------------------------------------- the two frame kinds of a speech model


class SpeechModelFrames(FrameKind):
    """spectrogram.features = ssl: one hidden-state layer of a local speech model per frame."""

    name = "ssl"
    in_process = True  # the model runs in the stage's own process (on the GPU when there is one)

    def spec(self) -> dict[str, Any]:
        return ssl_frame_spec(self.params)

    @classmethod
    def params_from_spec(cls, spec: dict[str, Any]) -> SpectrogramConfig:
        return ssl_params_from_spec(spec)

    def check(self) -> None:
        check_spectrogram(self.params)
        self.spec()  # the model folder and the layer exist, before any clip is read

    @property
    def width(self) -> int:
        return ssl_width(self.params)

    def frames_of(self, location: str) -> np.ndarray:
        return ssl_clip_frames(location, self.params)

    def frames_from_samples(self, mono: np.ndarray) -> np.ndarray:
        return ssl_frames_of(mono, model_dir(self.params), self.params.ssl_layer)


class WaveformRows(FrameKind):
    """spectrogram.features = waveform: the speech model's input in rows of its stride, for fine-tuning it."""

    name = WAVEFORM

    def spec(self) -> dict[str, Any]:
        return waveform_frame_spec(self.params)

    @classmethod
    def params_from_spec(cls, spec: dict[str, Any]) -> SpectrogramConfig:
        return waveform_params_from_spec(spec)

    def resolved(self) -> SpectrogramConfig:
        return waveform_params(self.params)

    def check(self) -> None:
        self.spec()  # no mel settings to check; the model folder exists, before any clip is read

    @property
    def width(self) -> int:
        return self.params.hop_length  # resolved: the model's stride

    def frames_of(self, location: str) -> np.ndarray:
        return waveform_clip_rows(location, self.params)

    def frames_from_samples(self, mono: np.ndarray) -> np.ndarray:
        return waveform_rows(mono, self.params)
