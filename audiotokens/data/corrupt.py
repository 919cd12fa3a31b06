"""Corruptions applied to a clip's audio before its spectrogram: robustness tables and noisy training.

A spec names one corruption:
  noise:snr=20                  white Gaussian noise at 20 dB SNR
  noise:snr=5,kind=pink         pink (1/f power) noise, shaped in the frequency domain; kind=brown: 1/f^2
  noise:dir=PATH,snr=10         the user's noise recordings (one drawn per clip, looped or cropped)
  reverb:rt60=0.6               a synthetic room: exponentially decaying noise impulse response
  reverb:dir=PATH               the user's recorded impulse responses (one drawn per clip)
  gain:db=-6                    the whole clip 6 dB quieter
  eq:tilt=2                     a spectral tilt of +2 dB per octave around 1 kHz (a brighter microphone)
snr is bounded to [-60, 120] dB and rt60 to (0, 30] seconds (SNR_RANGE_DB, MAX_RT60: why beside them).
SNR is exact over the whole clip: 10 log10(mean(signal^2) / mean(noise^2)). Reverb is a causal
convolution (scipy.signal.fftconvolve) cropped to the input's length; every impulse response is
scaled to unit energy, so the level of broadband input is kept; the tilt keeps the clip's mean power too.
Everything random comes from the `seed` given to `apply`: the same clip and seed give the same signal.
Give each clip its own seed with clip_seed(seed, clip_id), so that clips do not share one noise draw and
the token model and the baselines hear the very same corrupted clip. A silent clip is returned unchanged.

RandomCorruption is the training side ([augment], the spectrogram stage's corrupted copies of training
clips): per seed it draws a chain of the corruptions above (room, tilt, noise, gain, each with its
probability and its value from a range) and applies them in that order, so the SNR is that of the noise
against what the microphone heard and the gain scales both.
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal

from ..config import AugmentConfig
from ..errors import UserError
from ..pipeline.stores import copy_id
from .audio import AudioError, load_mono
from .sources.audio_files import is_audio_file

NOISE_KINDS = ("white", "pink", "brown")
SPEC_KEYS = {"noise": ("snr", "kind", "dir"), "reverb": ("rt60", "dir"), "gain": ("db",), "eq": ("tilt",)}
DECAY_DB = 60.0  # RT60: the time the response takes to fall by 60 dB
# below -60 dB the noise swamps the clip by a factor of 1000 and its power overflows float32 spectrograms long
# before the float32 samples do; above 120 dB it is under float32's resolution of the clip, so nothing changes
SNR_RANGE_DB = (-60.0, 120.0)
# the longest reverberation of real rooms is around 10 s; the response is rt60 seconds of float64 samples
MAX_RT60 = 30.0
TILT_PIVOT_HZ = 1000.0  # eq: the frequency the tilt leaves as it is
TILT_FLOOR_HZ = 50.0  # eq: below this the tilt's gain stays that of this frequency (no boost towards DC)


@dataclass(kw_only=True)
class Corruption:
    """One parsed spec. Use parse_corruption to build it; `apply` corrupts one mono clip."""

    spec: str  # as the user wrote it
    kind: str  # noise | reverb | gain | eq
    snr: float | None = None  # noise: dB
    noise: str = "white"  # noise: white | pink | brown (when no dir)
    rt60: float | None = None  # reverb: seconds (when no dir)
    db: float | None = None  # gain: dB
    tilt: float | None = None  # eq: dB per octave
    folder: Path | None = None  # noise recordings or impulse responses
    files: list[Path] = field(default_factory=list)
    origin: str = ""  # what messages name (default: the --corrupt spec)
    _decoded: dict[tuple[Path, int], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """A short label for tables and file names, e.g. noise_pink_snr5, reverb_rt60_0.6, reverb_dir_rooms."""
        if self.kind == "noise":
            source = f"dir_{self.folder.name}" if self.folder else self.noise
            return f"noise_{source}_snr{self.snr:g}"
        if self.kind == "gain":
            return f"gain_db{self.db:g}"
        if self.kind == "eq":
            return f"eq_tilt{self.tilt:g}"
        return f"reverb_dir_{self.folder.name}" if self.folder else f"reverb_rt60_{self.rt60:g}"

    def apply(self, mono: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
        """The corrupted clip: same length and dtype as `mono` (float32 (n,) at sample_rate)."""
        rng = np.random.default_rng(seed)
        if self.kind == "noise":
            return add_noise(mono, self._noise(len(mono), sample_rate, rng), self.snr)
        if self.kind == "gain":
            return (np.asarray(mono, dtype=np.float64) * 10.0 ** (self.db / 20.0)).astype(mono.dtype)
        if self.kind == "eq":
            return tilt_spectrum(mono, self.tilt, sample_rate)
        response = self._recorded(sample_rate, rng) if self.folder else synthetic_response(self.rt60, sample_rate,
                                                                                           rng)
        return reverberate(mono, response)

    # -- sources of noise and impulse responses

    def _noise(self, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if self.folder is None:
            return COLOURED[self.noise](n, rng) if self.noise in COLOURED else rng.standard_normal(n)
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
        where = self.origin or f"--corrupt {self.spec}"
        try:
            samples = load_mono(str(path), sample_rate).astype(np.float64)
        except AudioError as exc:
            raise UserError(f"{where}: cannot read {path} ({exc})") from None
        if not np.any(samples):
            raise UserError(f"{where}: {path} is silent; remove it from {self.folder}")
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
    return _shaped_noise(n, rng, 0.5)


def brown_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power falls as 1/f^2 (Brownian, red): white noise's spectrum divided by f."""
    return _shaped_noise(n, rng, 1.0)


def _shaped_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n)
    shaping = np.zeros_like(frequencies)
    shaping[1:] = frequencies[1:] ** -exponent  # no DC: coloured noise has no offset
    return np.fft.irfft(spectrum * shaping, n)


COLOURED = {"pink": pink_noise, "brown": brown_noise}  # the noise kinds other than white


def tilt_spectrum(mono: np.ndarray, tilt_db: float, sample_rate: int) -> np.ndarray:
    """mono with its spectrum tilted by tilt_db per octave around TILT_PIVOT_HZ, at the same mean power.

    The gain at frequency f is tilt_db * log2(f / pivot) dB, held at its TILT_FLOOR_HZ value below that
    frequency; a zero-phase filter over the whole clip (one real FFT), so nothing is delayed.
    """
    signal = np.asarray(mono, dtype=np.float64)
    power = np.mean(signal ** 2)
    if power == 0:
        return np.array(mono, copy=True)
    frequencies = np.maximum(np.fft.rfftfreq(len(signal), 1.0 / sample_rate), TILT_FLOOR_HZ)
    gains = 10.0 ** (tilt_db * np.log2(frequencies / TILT_PIVOT_HZ) / 20.0)
    tilted = np.fft.irfft(np.fft.rfft(signal) * gains, len(signal))
    return (tilted * math.sqrt(power / np.mean(tilted ** 2))).astype(mono.dtype)


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
                        "(e.g. noise:snr=20, reverb:rt60=0.6, gain:db=-6, eq:tilt=2)")
    values = _key_values(spec, rest, SPEC_KEYS[kind])
    folder, files = _folder(f"--corrupt {spec}", values["dir"]) if "dir" in values else (None, [])
    if kind == "noise":
        return _noise_spec(spec, values, folder, files)
    if kind in ("gain", "eq"):
        key = SPEC_KEYS[kind][0]
        if key not in values:
            raise UserError(f"--corrupt {spec}: {kind} needs {key}=DB (e.g. gain:db=-6, eq:tilt=2)")
        return Corruption(spec=spec, kind=kind, **{key: _number(spec, key, values[key])})
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


def _folder(where: str, text: str) -> tuple[Path, list[Path]]:
    """The folder and its audio files; `where` starts the message (the --corrupt spec or the key)."""
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise UserError(f"{where}: dir {folder} is not a folder")
    files = sorted(path for path in folder.rglob("*") if path.is_file() and is_audio_file(path))
    if not files:
        raise UserError(f"{where}: dir {folder} holds no audio files")
    return folder, files


def _noise_spec(spec: str, values: dict[str, str], folder: Path | None, files: list[Path]) -> Corruption:
    if "snr" not in values:
        raise UserError(f"--corrupt {spec}: noise needs snr=DB (e.g. noise:snr=20)")
    noise = values.get("kind", "white")
    if noise not in NOISE_KINDS:
        raise UserError(f"--corrupt {spec}: kind must be one of {', '.join(NOISE_KINDS)}, got '{noise}'")
    if folder is not None and "kind" in values:
        raise UserError(f"--corrupt {spec}: give either kind or dir, not both")
    snr = _number(spec, "snr", values["snr"])
    low, high = SNR_RANGE_DB
    if not low <= snr <= high:
        raise UserError(f"--corrupt {spec}: snr must be in [{low:g}, {high:g}] dB, got {snr:g}")
    return Corruption(spec=spec, kind="noise", snr=snr, noise=noise, folder=folder, files=files)


def _reverb_spec(spec: str, values: dict[str, str], folder: Path | None, files: list[Path]) -> Corruption:
    if ("rt60" in values) == (folder is not None):
        raise UserError(f"--corrupt {spec}: reverb needs exactly one of rt60=SECONDS or dir=PATH")
    if folder is not None:
        return Corruption(spec=spec, kind="reverb", folder=folder, files=files)
    rt60 = _number(spec, "rt60", values["rt60"])
    if not 0 < rt60 <= MAX_RT60:
        raise UserError(f"--corrupt {spec}: rt60 must be in (0, {MAX_RT60:g}] seconds, got {rt60:g}")
    return Corruption(spec=spec, kind="reverb", rt60=rt60)


# ---------------------------------------------------------------- random chains (noisy training)


@dataclass
class RandomCorruption:
    """The [augment] settings as a draw: `chain(seed)` is the corruptions one copy of a clip gets.

    Every uniform number of a draw is taken whatever the probabilities decide, in a fixed order, so changing
    one probability or range leaves the other choices of every copy as they were.
    """

    settings: AugmentConfig
    noises: list[Corruption]  # one template per noise source (kinds, then the recordings), snr set per draw
    rooms: Corruption  # the recorded responses (augment.ir_dir) or a synthetic room, rt60 set per draw

    @classmethod
    def from_settings(cls, settings: AugmentConfig) -> RandomCorruption:
        """Checked settings (one-line UserErrors naming the augment key), the recordings' folders listed."""
        kinds = [kind.strip() for kind in settings.noise_kinds.split(",") if kind.strip()]
        unknown = [kind for kind in kinds if kind not in NOISE_KINDS]
        if unknown:
            raise UserError(f"'augment.noise_kinds' lists {unknown[0]!r}; use a comma-separated list of "
                            f"{', '.join(NOISE_KINDS)} (or \"\" with augment.noise_dir)")
        noises = [Corruption(spec=f"noise:kind={kind}", kind="noise", snr=0.0, noise=kind) for kind in kinds]
        if settings.noise_dir:
            folder, files = _folder("'augment.noise_dir'", settings.noise_dir)
            noises.append(Corruption(spec=f"noise:dir={folder}", kind="noise", snr=0.0, folder=folder,
                                     files=files, origin="'augment.noise_dir'"))
        if not noises and settings.noise_probability > 0:
            raise UserError("'augment.noise_probability' > 0 needs a noise source: augment.noise_kinds "
                            f"(any of {', '.join(NOISE_KINDS)}) or augment.noise_dir")
        rooms = Corruption(spec="reverb:rt60", kind="reverb", rt60=settings.rt60_low)
        if settings.ir_dir:
            folder, files = _folder("'augment.ir_dir'", settings.ir_dir)
            rooms = Corruption(spec=f"reverb:dir={folder}", kind="reverb", folder=folder, files=files,
                               origin="'augment.ir_dir'")
        return cls(settings, noises, rooms)

    def chain(self, seed: int) -> list[tuple[Corruption, int]]:
        """The corruptions of one copy with the seed each is applied with, in the order they are applied."""
        s = self.settings
        rng = np.random.default_rng(seed)
        happens, amount, seeds = rng.random(4), rng.random(4), rng.integers(2**63, size=4)
        noise = self.noises[int(rng.integers(len(self.noises)))] if self.noises else None
        rt60, tilt, snr, db = (_between(low, high, u) for (low, high), u in zip(
            ((s.rt60_low, s.rt60_high), (s.tilt_low, s.tilt_high), (s.snr_low, s.snr_high),
             (s.gain_low, s.gain_high)), amount))
        room = self.rooms if self.rooms.folder else dataclasses.replace(self.rooms, rt60=rt60)
        steps = [
            (s.reverb_probability, room),
            (s.eq_probability, Corruption(spec=f"eq:tilt={tilt:g}", kind="eq", tilt=tilt)),
            (s.noise_probability, noise and dataclasses.replace(noise, snr=snr)),
            (s.gain_probability, Corruption(spec=f"gain:db={db:g}", kind="gain", db=db)),
        ]
        return [(corruption, int(seeds[k])) for k, (probability, corruption) in enumerate(steps)
                if happens[k] < probability]

    def apply(self, mono: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
        """One corrupted copy of mono (same length and dtype), fixed by seed."""
        for corruption, step_seed in self.chain(seed):
            mono = corruption.apply(mono, sample_rate, step_seed)
        return mono

    def copy_seed(self, clip_id: str, number: int) -> int:
        """The seed of copy `number` (1, 2, ...) of a clip: fixed by augment.seed, the number and the clip."""
        return clip_seed(self.settings.seed, copy_id(clip_id, number))

    def record(self) -> dict[str, Any]:
        """What the frame spec records of these settings (every [augment] key)."""
        return dataclasses.asdict(self.settings)


def _between(low: float, high: float, uniform: float) -> float:
    return low + (high - low) * uniform
