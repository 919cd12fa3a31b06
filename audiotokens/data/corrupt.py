"""Corruptions applied to a clip's audio before its spectrogram, for robustness tables.

A spec names one corruption:
  noise:snr=20                  white Gaussian noise at 20 dB SNR
  noise:snr=5,kind=pink         pink (1/f power) noise, shaped in the frequency domain
  noise:dir=PATH,snr=10         the user's noise recordings (one drawn per clip, looped or cropped)
  reverb:rt60=0.6               a synthetic room: exponentially decaying noise impulse response
  reverb:dir=PATH               the user's recorded impulse responses (one drawn per clip)
SNR is exact over the whole clip: 10 log10(mean(signal^2) / mean(noise^2)). Reverb is a causal
convolution (scipy.signal.fftconvolve) cropped to the input's length; every impulse response is
scaled to unit energy, so the level of broadband input is kept. Everything random comes from the
`seed` given to `apply`: the same clip and seed give the same signal. Give each clip its own seed with
clip_seed(seed, clip_id), so that clips do not share one noise draw and the token model and the
baselines hear the very same corrupted clip. A silent clip is returned unchanged.
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal

from ..errors import UserError
from .audio import AudioError, load_mono
from .sources.audio_files import is_audio_file

NOISE_KINDS = ("white", "pink")
SPEC_KEYS = {"noise": ("snr", "kind", "dir"), "reverb": ("rt60", "dir")}
DECAY_DB = 60.0  # RT60: the time the response takes to fall by 60 dB


@dataclass(kw_only=True)
class Corruption:
    """One parsed spec. Use parse_corruption to build it; `apply` corrupts one mono clip."""

    spec: str  # as the user wrote it
    kind: str  # noise | reverb
    snr: float | None = None  # noise: dB
    noise: str = "white"  # noise: white | pink (when no dir)
    rt60: float | None = None  # reverb: seconds (when no dir)
    folder: Path | None = None  # noise recordings or impulse responses
    files: list[Path] = field(default_factory=list)
    _decoded: dict[tuple[Path, int], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """A short label for tables and file names, e.g. noise_pink_snr5, reverb_rt60_0.6, reverb_dir_rooms."""
        if self.kind == "noise":
            source = f"dir_{self.folder.name}" if self.folder else self.noise
            return f"noise_{source}_snr{self.snr:g}"
        return f"reverb_dir_{self.folder.name}" if self.folder else f"reverb_rt60_{self.rt60:g}"

    def apply(self, mono: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
        """The corrupted clip: same length and dtype as `mono` (float32 (n,) at sample_rate)."""
        rng = np.random.default_rng(seed)
        if self.kind == "noise":
            return add_noise(mono, self._noise(len(mono), sample_rate, rng), self.snr)
        response = self._recorded(sample_rate, rng) if self.folder else synthetic_response(self.rt60, sample_rate,
                                                                                           rng)
        return reverberate(mono, response)

    # -- sources of noise and impulse responses

    def _noise(self, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if self.folder is None:
            return pink_noise(n, rng) if self.noise == "pink" else rng.standard_normal(n)
        recording = self._recorded(sample_rate, rng)
        start = int(rng.integers(len(recording)))
        return np.resize(np.roll(recording, -start), n)  # looped when shorter than the clip, else cropped

    def _recorded(self, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        path = self.files[int(rng.integers(len(self.files)))]
        key = (path, sample_rate)
        if key not in self._decoded:
            self._decoded[key] = self._decode(path, sample_rate)
        return self._decoded[key]

    def _decode(self, path: Path, sample_rate: int) -> np.ndarray:
        try:
            samples = load_mono(str(path), sample_rate).astype(np.float64)
        except AudioError as exc:
            raise UserError(f"--corrupt {self.spec}: cannot read {path} ({exc})") from None
        if not np.any(samples):
            raise UserError(f"--corrupt {self.spec}: {path} is silent; remove it from {self.folder}")
        if self.kind == "reverb":
            # a recorded response starts with silence before the direct sound: start at its peak, so the
            # corrupted clip is not delayed against its labels
            samples = samples[int(np.argmax(np.abs(samples))):]
            samples = samples / np.sqrt(np.sum(samples ** 2))
        return samples


NOISE_NAME = re.compile(r"noise_(?P<source>.+)_snr(?P<snr>-?[0-9.e+-]+)")  # Corruption.name of a noise


def noise_of(name: str) -> tuple[str, float] | None:
    """(noise source, SNR in dB) of a noise condition's name (Corruption.name); None for any other name."""
    match = NOISE_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return match["source"], float(match["snr"])
    except ValueError:
        return None


def clip_seed(seed: int, clip_id: str) -> int:
    """The seed of one clip's corruption: fixed by the run's seed and the clip id, whatever the clip order."""
    return zlib.crc32(f"{seed}:{clip_id}".encode())


# ---------------------------------------------------------------- signal work


def add_noise(mono: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """mono + noise scaled so that 10 log10(mean(mono^2) / mean(noise^2)) is exactly snr_db."""
    signal = np.asarray(mono, dtype=np.float64)
    signal_power = np.mean(signal ** 2)
    noise_power = np.mean(noise ** 2)
    if signal_power == 0 or noise_power == 0:  # SNR undefined for silence: nothing to scale against
        return np.array(mono, copy=True)
    gain = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (signal + gain * noise).astype(mono.dtype)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power falls as 1/f: white noise's spectrum divided by sqrt(f)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n)
    shaping = np.zeros_like(frequencies)
    shaping[1:] = 1.0 / np.sqrt(frequencies[1:])  # no DC: pink noise has no offset
    return np.fft.irfft(spectrum * shaping, n)


def synthetic_response(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: a unit direct path, then Gaussian noise decaying by 60 dB over rt60 seconds.

    Unit energy in all, rt60 seconds long (at least 2 samples).
    """
    length = max(round(rt60 * sample_rate), 2)
    t = np.arange(length) / sample_rate
    envelope = 10.0 ** (-DECAY_DB / 20.0 * t / rt60)
    response = rng.standard_normal(length) * envelope
    response[0] = 1.0  # the direct sound
    return response / np.sqrt(np.sum(response ** 2))


def reverberate(mono: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Causal convolution of mono with response, cropped to len(mono): output[n] uses input[<= n] only."""
    wet = scipy.signal.fftconvolve(np.asarray(mono, dtype=np.float64), response, mode="full")[:len(mono)]
    return wet.astype(mono.dtype)


# ---------------------------------------------------------------- specs


def parse_corruption(spec: str) -> Corruption:
    """A Corruption from spec text; UserError naming the spec when it cannot be used."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in SPEC_KEYS:
        raise UserError(f"--corrupt {spec}: unknown corruption '{kind}'; use one of {', '.join(SPEC_KEYS)} "
                        "(e.g. noise:snr=20, reverb:rt60=0.6)")
    values = _key_values(spec, rest, SPEC_KEYS[kind])
    folder, files = _folder(spec, values["dir"]) if "dir" in values else (None, [])
    if kind == "noise":
        return _noise_spec(spec, values, folder, files)
    return _reverb_spec(spec, values, folder, files)


def _key_values(spec: str, text: str, keys: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise UserError(f"--corrupt {spec}: '{item}' is not key=value")
        if key not in keys:
            raise UserError(f"--corrupt {spec}: unknown key '{key}'; valid keys: {', '.join(keys)}")
        if key in values:
            raise UserError(f"--corrupt {spec}: '{key}' is given twice")
        values[key] = value
    return values


def _number(spec: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--corrupt {spec}: {key} must be a number, got '{text}'") from None
    if not math.isfinite(value):
        raise UserError(f"--corrupt {spec}: {key} must be finite, got '{text}'")
    return value


def _folder(spec: str, text: str) -> tuple[Path, list[Path]]:
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise UserError(f"--corrupt {spec}: dir {folder} is not a folder")
    files = sorted(path for path in folder.rglob("*") if path.is_file() and is_audio_file(path))
    if not files:
        raise UserError(f"--corrupt {spec}: dir {folder} holds no audio files")
    return folder, files


def _noise_spec(spec: str, values: dict[str, str], folder: Path | None, files: list[Path]) -> Corruption:
    if "snr" not in values:
        raise UserError(f"--corrupt {spec}: noise needs snr=DB (e.g. noise:snr=20)")
    noise = values.get("kind", "white")
    if noise not in NOISE_KINDS:
        raise UserError(f"--corrupt {spec}: kind must be one of {', '.join(NOISE_KINDS)}, got '{noise}'")
    if folder is not None and "kind" in values:
        raise UserError(f"--corrupt {spec}: give either kind or dir, not both")
    return Corruption(spec=spec, kind="noise", snr=_number(spec, "snr", values["snr"]), noise=noise,
                      folder=folder, files=files)


def _reverb_spec(spec: str, values: dict[str, str], folder: Path | None, files: list[Path]) -> Corruption:
    if ("rt60" in values) == (folder is not None):
        raise UserError(f"--corrupt {spec}: reverb needs exactly one of rt60=SECONDS or dir=PATH")
    if folder is not None:
        return Corruption(spec=spec, kind="reverb", folder=folder, files=files)
    rt60 = _number(spec, "rt60", values["rt60"])
    if rt60 <= 0:
        raise UserError(f"--corrupt {spec}: rt60 must be positive, got {rt60:g}")
    return Corruption(spec=spec, kind="reverb", rt60=rt60)
