"""Mel-spectrogram frames of every clip, once per clip: processed/frames/ (frames.npy, index.json, spec.json).

What a frame is made of is the frame kind that spectrogram.features names, looked up in FRAME_KINDS: `mel`
(MelFrames, here), `ssl` and `waveform` (a speech model's hidden states or its input rows, ssl.py), `codec`
(rows of the samples of one neural-codec frame, codec_rows.py);
frame_kind.py says what every kind provides.

`compute_frames` is the one definition of a frame (also used by predict): librosa's melspectrogram
(Hann window, center=True with zero padding, power 2, Slaney mel filterbank) -> the scaling that
spectrogram.normalize names (SCALINGS): clip = power_to_db (ref 1.0, amin 1e-10, top_db) -> min-max
scaling of the whole clip to [0, 1]; fixed = power_to_db (ref 1.0, amin 1e-10) clipped to the absolute
range [floor_db, ceiling_db] and mapped linearly to [0, 1], so a frame's values do not depend on the
rest of its clip; pcen = librosa.pcen with its documented defaults (PCEN) on the mel magnitude (power 1)
of samples scaled to 32-bit integer range, as its documentation asks; none = power_to_db (top_db) only.
The STFT is librosa's computation (float64 FFT stored as complex64); `MelPower` runs it in blocks of
frames. `clip_frames` decodes, resamples and transforms a file block by block, so memory does not grow
with a recording's length beyond its mel frames; its frames equal those of `compute_frames` on the whole
decoded clip.

The stage works through the clip catalogue of processed/split.json, whatever the split, in shards
(shards.py: processed/frames/shards/N-K/, N = 1 unless asked) and within a shard in parts of consecutive
clips; a finished part is kept on disk, so an interrupted run resumes after the last finished part.
Parts carry a key of the frame parameters and the clip list and are discarded when either changes.
The store is assembled from every shard's parts in catalogue order, so it is the same whatever N. Each
frame is written once: appended to its shard's frames.partial as its clip arrives, which becomes the store
(the first shard's file, the others' rows appended to it) under its .npy header (PartStore).
Splits are views over the one store (artifacts.open_split), so a new split never recomputes frames.

With augment.copies = K > 0 each training clip also gets K corrupted copies (data/corrupt.py's
RandomCorruption, seeded by augment.seed, the copy's number and the clip id), framed like the clip from its
decoded audio and stored right after it (stores.copy_id names them); the frame spec records the [augment]
settings. Clips of other splits are computed exactly as without copies.
"""
from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: pipes keep their default size
    fcntl = None

import librosa
import numpy as np
import scipy.signal
import torch
from tqdm import tqdm

from ..config import Config, SpectrogramConfig, check_spectrogram, current_value, frame_keys
from ..data.audio import BLOCK_FRAMES, AudioError, AudioStream, load_mono
from ..data.corrupt import RandomCorruption
from ..errors import UserError
from ..pipeline.cpus import usable_cpus
from ..pipeline.files import (
    read_json_or_none,
    remove_stale_temps,
    save_npy,
    temp_prefix,
    write_error,
    write_json,
)
from ..pipeline.layout import PART_FRAMES, PART_KEY, PART_META, SHARDS_DIR, Layout
from ..pipeline.shards import (
    Execution,
    Shard,
    all_shards,
    choose_count,
    finish_shards,
    stale_shards,
)
from ..pipeline.stores import COPY_MARK, ClipIndex, SplitPlan, copy_id, spec_digest
from .codec_rows import CodecRows
from .frame_kind import AUGMENT, FrameKind
from .ssl import SpeechModelFrames, WaveformRows

log = logging.getLogger("audiotokens")

STAGE = "spectrogram"  # the stage table's name of this stage (shard locks, messages)

AMIN = 1e-10  # power floor before log10, as librosa.power_to_db
FFT_BLOCK = 128  # frames per FFT and mel product call (see MelPower); ~1 MiB of float64 windows
RESULT_PIPE_BYTES = 2**20  # workers' result pipe (Linux's limit for unprivileged processes)
MEL_GROUPS = 4  # products the mel filterbank is cut into (see _mel_groups): fewer multiply more zeros
# normalize = pcen: librosa.pcen's documented defaults, fixed here so a librosa release cannot change a frame;
# its input is the mel magnitude of samples scaled from [-1, 1] to 32-bit integers (PCEN_INPUT_SCALE)
PCEN = {"gain": 0.98, "bias": 2.0, "power": 0.5, "time_constant": 0.4, "eps": 1e-6}
PCEN_INPUT_SCALE = 2.0 ** 31
NPY_HEADER_BYTES = 128  # room for the .npy header of any 2-D store (numpy pads headers to a multiple of 64)
COPY_BYTES = 2**24  # a shard's frames are appended to the store in reads of this size
PART_FORMAT = 6  # bump when the part files' layout or the frame computation changes, so old parts are discarded


# ---------------------------------------------------------------- parameters


SSL_KEYS = ("ssl_model", "ssl_layer")  # frame keys that only speech-model frames have
# frame keys a mel frame does not depend on under each spectrogram.normalize: left out of its frame spec
UNUSED_KEYS = {"clip": ("floor_db", "ceiling_db"), "none": ("floor_db", "ceiling_db"),
               "fixed": ("top_db",), "pcen": ("db", "top_db", "floor_db", "ceiling_db")}


class MelFrames(FrameKind):
    """spectrogram.features = mel: the mel-spectrogram frames of `compute_frames`, n_mels values each."""

    name = "mel"

    def spec(self) -> dict[str, Any]:
        values = asdict(self.params)
        unused = (*SSL_KEYS, *UNUSED_KEYS.get(self.params.normalize, ()))
        return {"features": self.name, **{key: values[key] for key in frame_keys() if key not in unused}}

    @classmethod
    def params_from_spec(cls, spec: dict[str, Any]) -> SpectrogramConfig:
        # a spec written before normalize became a choice says true or false
        values = {key: current_value(f"spectrogram.{key}", value)
                  for key, value in spec.items() if key != "features"}
        known = {f.name for f in fields(SpectrogramConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown spectrogram parameters {unknown}; valid: {', '.join(sorted(known))}")
        params = SpectrogramConfig(**values)
        check_params(params)
        return params

    def check(self) -> None:
        check_spectrogram(self.params)

    @property
    def width(self) -> int:
        return self.params.n_mels

    def frames_of(self, location: str) -> np.ndarray:
        return clip_frames(location, self.params)

    def frames_from_samples(self, mono: np.ndarray) -> np.ndarray:
        return compute_frames(mono, self.params)

    def prepare(self) -> None:
        p = self.params
        _mel_groups(p.sample_rate, p.n_fft, p.n_mels, p.fmin, p.fmax)


# spectrogram.features -> its frame kind; config's check on spectrogram.features lists the same names
FRAME_KINDS: dict[str, type[FrameKind]] = {kind.name: kind for kind in (MelFrames, SpeechModelFrames, WaveformRows,
                                                                         CodecRows)}


def frame_kind(params: SpectrogramConfig) -> FrameKind:
    """The kind of frame spectrogram.features names, bound to these settings."""
    if params.features not in FRAME_KINDS:
        raise UserError(f"'spectrogram.features' must be one of {', '.join(FRAME_KINDS)}, got {params.features!r}")
    return FRAME_KINDS[params.features](params)


def params_to_dict(params: SpectrogramConfig) -> dict[str, Any]:
    """The frame spec: what a frame is made of and exactly the parameters that define it (config.frame_keys)."""
    return frame_kind(params).spec()


def params_from_dict(values: dict[str, Any]) -> SpectrogramConfig:
    """Inverse of params_to_dict (other keys keep their defaults); rejects unknown keys. A spec without
    "features" is of mel frames (the frame spec before other kinds existed)."""
    values = {key: value for key, value in values.items() if key != AUGMENT}  # how training copies were made
    features = values.get("features", MelFrames.name)
    if features not in FRAME_KINDS:
        first, *others = FRAME_KINDS
        raise UserError(f"frames of kind '{features}' cannot be computed here (only '{first}', "
                        f"{' or '.join(repr(kind) for kind in others)})")
    return FRAME_KINDS[features].params_from_spec(dict(values))


def resolve_params(params: SpectrogramConfig) -> SpectrogramConfig:
    """The configured settings, with what the frame kind fixes itself (waveform rows: the speech model's
    rate and stride)."""
    return frame_kind(params).resolved()


def check_params(params: SpectrogramConfig) -> None:
    """Reject values that would otherwise fail deep inside librosa or torch (a bundle's settings too)."""
    for key in ("top_db", "max_duration", "workers"):
        if getattr(params, key) < 0:
            raise UserError(f"'spectrogram.{key}' must be >= 0, got {getattr(params, key)}")
    if params.dtype not in ("float32", "float16"):
        raise UserError(f"'spectrogram.dtype' must be float32 or float16, got '{params.dtype}'")
    if params.normalize not in SCALINGS:
        raise UserError(f"'spectrogram.normalize' must be one of {', '.join(SCALINGS)}, "
                        f"got {params.normalize!r}")
    frame_kind(params).check()


def frames_of(location: str, params: SpectrogramConfig) -> np.ndarray:
    """A clip's frames of the configured kind (resolved params)."""
    return frame_kind(params).frames_of(location)


def frames_from_samples(mono: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    """frames_of for mono samples already at params.sample_rate (audio in memory)."""
    return frame_kind(params).frames_from_samples(mono)


def frame_width(params: SpectrogramConfig) -> int:
    """Values per frame: mel bands, the speech model's hidden size, or its stride (waveform rows)."""
    return frame_kind(params).width


# ---------------------------------------------------------------- frames


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """librosa's Slaney mel filterbank, transposed to (1 + n_fft // 2, n_mels) float32.

    Mel bands narrower than one FFT bin are empty (always zero); librosa warns with its own source path,
    so the warning is said here once, in the tool's words.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                                  fmax=fmax or sample_rate / 2)
    empty = int((mel.max(axis=1) == 0).sum())
    if empty or caught:
        log.warning("spectrogram.n_mels = %d with n_fft = %d gives %d empty mel bands (narrower than one FFT "
                    "bin: their frames are always 0); lower spectrogram.n_mels or raise spectrogram.n_fft",
                    n_mels, n_fft, empty)
    return torch.from_numpy(np.ascontiguousarray(mel.T))


@functools.lru_cache(maxsize=8)
def _mel_groups(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                fmax: float) -> tuple[tuple[slice, slice, torch.Tensor], ...]:
    """The filterbank as MEL_GROUPS products of adjacent mel bands with only the FFT bins they weight.

    Each (bins, bands, weights) multiplies power[:, bins] @ weights into mel[:, bands]. Slaney filters are
    triangles a few bins wide, so the groups hold ~1/4 of the dense matrix; the products are the dense
    one's but for float32 rounding (the zeros they skip add nothing).
    """
    mel = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).numpy()
    groups = []
    for bands in np.array_split(np.arange(n_mels), min(MEL_GROUPS, n_mels)):
        weighted = np.flatnonzero(mel[:, bands].any(axis=1))
        bins = slice(int(weighted[0]), int(weighted[-1]) + 1) if weighted.size else slice(0, 1)  # empty filters
        columns = slice(int(bands[0]), int(bands[-1]) + 1)
        groups.append((bins, columns, torch.from_numpy(np.ascontiguousarray(mel[bins, columns]))))
    return tuple(groups)


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> torch.Tensor:
    return torch.from_numpy(scipy.signal.get_window("hann", n_fft, fftbins=True))  # librosa's periodic Hann, float64


def power_to_db(power: np.ndarray, top_db: float) -> np.ndarray:
    """10 log10(max(power, amin)) (ref 1.0), floored at top_db below the peak when top_db > 0."""
    db = 10.0 * np.log10(np.maximum(power, np.float32(AMIN)))
    if top_db > 0:
        np.maximum(db, db.max() - np.float32(top_db), out=db)
    return db


def scale_to_unit(values: np.ndarray) -> np.ndarray:
    """Min-max scaling of the whole array to [0, 1]; a constant array becomes zeros, never NaN."""
    low, high = values.min(), values.max()
    span = high - low
    if not span > 0:
        return np.zeros_like(values)
    return (values - low) / span


def fixed_range(power: np.ndarray, floor_db: float, ceiling_db: float) -> np.ndarray:
    """normalize = fixed: 10 log10(max(power, amin)) (ref 1.0) in [floor_db, ceiling_db], mapped to [0, 1]."""
    db = power_to_db(power, top_db=0.0)
    np.clip(db, np.float32(floor_db), np.float32(ceiling_db), out=db)
    return (db - np.float32(floor_db)) / np.float32(ceiling_db - floor_db)


def pcen(magnitude: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    """normalize = pcen: librosa.pcen (PCEN) over time of the mel magnitude (frames, n_mels)."""
    return librosa.pcen(magnitude * np.float32(PCEN_INPUT_SCALE), sr=params.sample_rate,
                        hop_length=params.hop_length, axis=0, **PCEN)


def _scale_clip(power: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    return scale_to_unit(power_to_db(power, params.top_db) if params.db else power)


def _scale_none(power: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    return power_to_db(power, params.top_db) if params.db else power


# spectrogram.normalize -> mel power (pcen: magnitude) of a whole clip -> its stored values
SCALINGS: dict[str, Callable[[np.ndarray, SpectrogramConfig], np.ndarray]] = {
    "clip": _scale_clip,
    "fixed": lambda power, params: fixed_range(power, params.floor_db, params.ceiling_db),
    "pcen": pcen,
    "none": _scale_none,
}


def mel_magnitude(params: SpectrogramConfig) -> bool:
    """Whether the frames start from the mel magnitude (power 1) rather than the mel power (power 2)."""
    return params.normalize == "pcen"


def compute_frames(mono: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    """Frames of one mono clip at params.sample_rate: (frames, n_mels) float32.

    Raises AudioError when the clip is shorter than n_fft or the result is not finite.
    """
    if mono.shape[-1] < params.n_fft:
        raise AudioError("too short", f"{mono.shape[-1]} samples at {params.sample_rate} Hz < n_fft {params.n_fft}")
    mel = MelPower(length=mono.shape[-1], params=params, magnitude=mel_magnitude(params))
    mel.add(mono, last=True)
    return finish_frames(mel.frames, params)


def finish_frames(frames: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    """Mel power (pcen: magnitude) of a whole clip -> stored frames, scaled as spectrogram.normalize says."""
    frames = SCALINGS[params.normalize](frames, params)
    if not np.isfinite(frames).all():
        raise AudioError("non-finite frames", "the spectrogram holds NaN or infinite values")
    return np.ascontiguousarray(frames, dtype=np.float32)


def clip_frames(location: str, params: SpectrogramConfig, block_frames: int = BLOCK_FRAMES) -> np.ndarray:
    """Decode, mix down, resample and compute the frames of one clip, block_frames samples at a time.

    Equal to compute_frames(load_mono(location, ...)) bit for bit: mixing is per sample, soxr's stream
    gives its one-shot output, and MelPower makes the same calls whichever way its samples arrive.
    """
    stream = AudioStream(location, params.max_duration)
    try:
        return finish_frames(_streamed_mel_power(stream, params, block_frames), params)
    finally:
        stream.close()


def _streamed_mel_power(stream: AudioStream, params: SpectrogramConfig, block_frames: int) -> np.ndarray:
    rate = params.sample_rate
    # librosa.resample's length, ceil(n * ratio); a short stream is padded with zeros, a long one cut
    length = stream.length_at(rate)
    mel = MelPower(length=length, params=params, magnitude=mel_magnitude(params))
    for mono in stream.mono_blocks(rate, block_frames):
        mel.add(mono, last=stream.read == stream.frames)
    if length < params.n_fft:  # after decoding: a damaged file is reported as such, not as short
        raise AudioError("too short", f"{length} samples at {rate} Hz < n_fft {params.n_fft}")
    return mel.frames


class MelPower:
    """Mel power (frames, n_mels) float32 of one clip, computed FFT_BLOCK frames at a time as samples arrive.

    compute_frames adds a whole clip at once, clip_frames the resampled decoder blocks. Both make the same
    calls on the same blocks of frames (counted from frame 0), and that is what makes their frames
    bit-identical: a BLAS call may round a row differently depending on how many rows it multiplies and
    how its operands are aligned (torch 2.13's MKL sgemm rounds a 2- or 3-row product differently from a
    long one; older builds only a 1-row one), so equal samples under each window are not enough.
    A block is librosa.stft + melspectrogram: Hann-windowed frames and their real FFT in float64 (a float32
    FFT shifts quiet bins by up to ~1e-4 after dB scaling and normalisation), stored as complex64, squared
    float32 magnitude, float32 mel product (_mel_groups). The FFT is torch's (MKL) where librosa uses numpy's; rounded
    to complex64 the two agree but for rare one-ulp differences. With magnitude=True the magnitude is not
    squared: the mel magnitude, librosa's melspectrogram with power=1.
    """

    def __init__(self, *, length: int, params: SpectrogramConfig, magnitude: bool = False):
        self.length = length  # samples of the clip; more are cut, fewer padded with zeros
        self.received = 0
        self._squared = not magnitude
        self._n_fft, self._hop = params.n_fft, params.hop_length
        self._mel = _mel_groups(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
        # allocated once: small pieces kept between large temporaries would fragment the heap and grow the
        # process by several times the frames' size
        self.frames = np.empty((frame_count(length, self._n_fft, self._hop), params.n_mels), dtype=np.float32)
        self._power = _aligned_empty((min(FFT_BLOCK, len(self.frames)), 1 + self._n_fft // 2), np.float32)
        self._pending = np.zeros(self._n_fft // 2)  # float64 samples from padded position _start
        self._start = 0
        self._done = 0  # frames computed

    def add(self, samples: np.ndarray, *, last: bool = False) -> None:
        """The clip's next samples; with last=True, the clip is complete and every frame is computed."""
        samples = samples[:self.length - self.received]
        self.received += len(samples)
        pieces = [self._pending, samples]
        if last:  # center=True's zero padding after the clip, and zeros for samples never received
            pieces.append(np.zeros(self.length - self.received + self._n_fft // 2))
        # float64 as librosa.stft windows its frames; converted here, once per sample, because torch
        # multiplies float32 frames by the float64 window ~4x slower than float64 ones
        self._pending = np.concatenate(pieces)
        while self._done < len(self.frames):
            stop = min(self._done + FFT_BLOCK, len(self.frames))
            if (stop - 1) * self._hop + self._n_fft - self._start > len(self._pending):
                break  # the block's last window is not complete yet
            self._block(self._done, stop)
            self._done = stop
        if last and self._done < len(self.frames):  # frames is np.empty: an uncomputed row would be garbage
            raise RuntimeError(f"MelPower computed {self._done} of {len(self.frames)} frames")
        cut = self._done * self._hop - self._start
        self._pending, self._start = self._pending[cut:], self._start + cut

    def _block(self, first: int, stop: int) -> None:
        n_fft, hop = self._n_fft, self._hop
        offset = first * hop - self._start
        span = torch.from_numpy(self._pending[offset:offset + (stop - first - 1) * hop + n_fft])
        # torch, not numpy: its thread count is set per worker (numpy's BLAS would spawn threads), and
        # its float64 FFT with the windowing is ~30 % faster than numpy's here
        spectrum = torch.fft.rfft(span.unfold(0, n_fft, hop) * _hann(n_fft), dim=1).numpy().astype(np.complex64)
        power = np.abs(spectrum, out=self._power[:stop - first])  # numpy's complex64 abs, as librosa's
        if self._squared:
            np.square(power, out=power)
        power = torch.from_numpy(power)
        for bins, bands, weights in self._mel:
            self.frames[first:stop, bands] = torch.mm(power[:, bins], weights).numpy()


def frame_count(length: int, n_fft: int, hop: int) -> int:
    """Frames of librosa.stft with center=True: windows of n_fft every hop over the clip padded by n_fft // 2
    on each side; one fewer than 1 + length // hop for an odd n_fft when the hop divides the length."""
    return 1 + (length + 2 * (n_fft // 2) - n_fft) // hop


def _aligned_empty(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """An uninitialised C-ordered array starting on a 64-byte boundary, so BLAS takes the same path each time."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + 64, dtype=np.uint8)
    offset = -raw.__array_interface__["data"][0] % 64
    return raw[offset:offset + size].view(dtype).reshape(shape)


# ---------------------------------------------------------------- per-clip work (runs in worker processes)


@dataclass
class ClipResult:
    position: int  # index of the clip in the split's list
    clip_id: str
    frames: np.ndarray | None
    reason: str = ""  # AudioError.kind when skipped
    detail: str = ""
    copies: list[np.ndarray] = field(default_factory=list)  # frames of its corrupted copies, copy 1 first
    copies_reason: str = ""  # AudioError.kind when its copies could not be made (the clip itself is kept)
    copies_detail: str = ""


def process_clip(params: SpectrogramConfig, task: tuple[int, str, str, int],
                 augment: RandomCorruption | None = None) -> ClipResult:
    """Frames of one clip in the storage dtype (and of `copies` corrupted copies of it), or the reason it is
    skipped. No state outlives a call."""
    position, clip_id, location, copies = task
    try:
        result = ClipResult(position, clip_id, _storable(frames_of(location, params), params))
    except AudioError as exc:
        return ClipResult(position, clip_id, None, exc.kind, exc.detail)
    except Exception as exc:  # noqa: BLE001 - an odd file must cost one clip, not the whole run
        return ClipResult(position, clip_id, None, "unexpected error", f"{type(exc).__name__}: {exc}")
    if copies:
        try:  # a UserError (an unreadable noise recording) is the same for every clip: it stops the stage
            result.copies = corrupted_copies(params, augment, clip_id, location, copies, len(result.frames))
        except AudioError as exc:
            result.copies_reason, result.copies_detail = exc.kind, exc.detail
    return result


def corrupted_copies(params: SpectrogramConfig, augment: RandomCorruption, clip_id: str, location: str,
                     count: int, length: int) -> list[np.ndarray]:
    """Frames of copies 1..count of a clip: its decoded audio through augment's chain for each copy's seed,
    framed as the clean clip (`length` frames)."""
    mono = load_mono(location, params.sample_rate, params.max_duration)
    copies = []
    for number in range(1, count + 1):
        corrupted = augment.apply(mono, params.sample_rate, augment.copy_seed(clip_id, number))
        frames = _storable(frames_from_samples(corrupted, params), params)
        if len(frames) != length:
            raise AudioError("copy length", f"a copy has {len(frames)} frames, the clip {length}")
        copies.append(frames)
    return copies


def _storable(frames: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    """Frames in the storage dtype; AudioError when they overflow it."""
    with np.errstate(over="ignore"):  # an overflow to inf is caught just below
        frames = frames.astype(params.dtype, copy=False)
    if not np.isfinite(frames).all():
        raise AudioError("non-finite frames", f"values overflow {params.dtype}; use dtype float32")
    return frames


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core already
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool


@contextmanager
def clip_map(work: Callable[[Any], Any], n_tasks: int, workers: int = 0) -> Iterator[Callable[[Iterable], Iterator]]:
    """An ordered map of work over tasks: a process pool (workers = 0: one per usable CPU), in-process for one.

    The stage's pool; scripts/bench/spectrogram.py runs its decode-only bound through it too.
    """
    workers = min(workers or _cpu_count(), max(n_tasks, 1))
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-clip tensors are too small to gain from threads
        try:
            yield lambda tasks: map(work, tasks)
        finally:
            torch.set_num_threads(threads)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    # each message costs the parent ~1 ms of CPU, so clips go in chunks; not so large that one worker
    # is left alone with a long last chunk
    chunksize = max(1, min(12, n_tasks // (workers * 8)))
    # created before any progress bar: forking after tqdm starts its monitor thread is unsafe
    pool = _Pool(workers, initializer=_init_worker, context=context)
    try:
        yield lambda tasks: pool.imap(work, tasks, chunksize=chunksize)
    finally:
        _stop_pool(pool)


POOL_STOP_S = 30.0  # a clean terminate takes well under a second


def _stop_pool(pool: multiprocessing.pool.Pool) -> None:
    """Terminate the pool; when that has not finished after POOL_STOP_S, kill its workers and go on.

    Pool.terminate joins the thread that feeds tasks to the workers; after an error in the middle of a map
    that thread was once seen waiting on the task queue's lock for minutes, so the stage's error (or
    Ctrl-C) never reached the user. The waiting thread is a daemon: it cannot keep the process alive.
    """
    stopper = threading.Thread(target=pool.terminate, name="pool-terminate", daemon=True)
    stopper.start()
    stopper.join(POOL_STOP_S)
    if stopper.is_alive():
        for worker in list(getattr(pool, "_pool", [])):  # the pool's processes (no public handle)
            with suppress(OSError, ValueError):
                worker.kill()
        log.warning("the spectrogram worker pool did not stop within %.0f s; its workers were killed", POOL_STOP_S)


class _Pool(multiprocessing.pool.Pool):
    """multiprocessing's Pool with a larger result pipe, whose worker-maintenance thread does not watch it.

    A clip's frames (~110 KB for 10 s) outgrow Linux's default 64 KiB pipe: a worker then waits, idle,
    until the parent's result thread is scheduled to read each piece. And CPython's maintenance thread
    wakes whenever that pipe is readable and loops until the result thread has read it all, which cost
    ~0.4 ms of the parent's CPU per clip on a core shared with the workers. A worker that exits and the
    pool's own notifier (close, terminate, all results in) still wake that thread; no worker exits on its
    own here (no maxtasksperchild), and a dead one is still replaced.
    """

    def _setup_queues(self) -> None:
        super()._setup_queues()
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
            with suppress(OSError):  # a lower system limit keeps the default
                fcntl.fcntl(self._outqueue._writer.fileno(), fcntl.F_SETPIPE_SZ, RESULT_PIPE_BYTES)

    def _get_sentinels(self) -> list:
        return [self._change_notifier._reader]


# ---------------------------------------------------------------- resumable parts


class PartStore:
    """Finished parts of one shard of the catalogue: frames.partial (the frames of every finished part's
    kept clips, each followed by its corrupted copies, in catalogue order) + part-NNNNN.json per part.

    Parts cover consecutive clips from the shard's first one (`first`) and are written in order, so the
    finished ones always form a prefix of the shard: a re-run continues after the last one. A clip's frames
    are appended to frames.partial as they arrive; a part is finished once they are on disk (one fsync per
    part) and its json is written. Rows after the last finished part (a killed run's) are cut off by `open`.
    frames.partial has room for a .npy header from the start, written when the store is assembled: the store
    is then this very file (the first shard's), so a frame is written once.
    """

    def __init__(self, folder: Path, key: str, first: int = 0, width: int = 0, dtype: str = "float32"):
        self.folder = folder
        self.key = key
        self.first = first  # catalogue position of the shard's first clip
        self.row_bytes = width * np.dtype(dtype).itemsize
        self._frames = None  # frames.partial, open for appending between open() and close()

    def matches_key(self) -> bool:
        """Whether the folder holds parts written under this key (without touching it)."""
        stored = read_json_or_none(self.folder / PART_KEY)
        return bool(stored) and stored.get("key") == self.key

    def has_other_key(self) -> bool:
        """Whether the folder holds parts written under another key (a folder without a key is unfinished)."""
        stored = read_json_or_none(self.folder / PART_KEY)
        return bool(stored) and stored.get("key") != self.key

    def open(self) -> list[dict[str, Any]]:
        """Keep parts written under the same key, discard everything else; frames.partial is opened for appending
        after the finished parts. Returns their metadata (as `finished`)."""
        key_file = self.folder / PART_KEY
        if self.folder.is_dir() and not self.matches_key():
            log.info("discarding %s: frame parameters or the split changed since it was written", self.folder)
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        if not key_file.is_file():
            write_json(key_file, {"key": self.key})
        finished = self.finished()
        self.close()
        try:
            # open until close(): clips are appended one call at a time, unbuffered, so a full disk is
            # refused at the clip's own write (named) and never at a later flush or close
            self._frames = open(self.frames_path, "r+b" if self.frames_path.is_file() else "w+b",  # noqa: SIM115
                                buffering=0)
            self._frames.truncate(NPY_HEADER_BYTES + self.rows(finished) * self.row_bytes)
            self._frames.seek(0, os.SEEK_END)
        except OSError as exc:
            self.close()
            raise write_error(self.frames_path, exc) from None
        return finished

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None

    def done_until(self, metas: list[dict[str, Any]]) -> int:
        """The catalogue position after the last finished clip of the shard."""
        return metas[-1]["stop"] if metas else self.first

    @property
    def frames_path(self) -> Path:
        return self.folder / PART_FRAMES

    def meta_path(self, number: int) -> Path:
        return self.folder / PART_META.format(number=number)

    @staticmethod
    def rows(metas: list[dict[str, Any]]) -> int:
        """Rows of frames.partial that these parts hold."""
        return sum(n * (1 + c) for meta in metas for n, c in zip(meta["lengths"], part_copies(meta)))

    def finished(self) -> list[dict[str, Any]]:
        """Metadata of the finished parts, in order: each starts where the previous one stopped, and
        frames.partial holds the rows of all of them."""
        try:
            size = self.frames_path.stat().st_size
        except OSError:
            return []
        metas: list[dict[str, Any]] = []
        while True:
            number = len(metas)
            meta = read_json_or_none(self.meta_path(number))
            if not meta or meta.get("start") != self.done_until(metas) \
                    or NPY_HEADER_BYTES + self.rows([*metas, meta]) * self.row_bytes > size:
                return metas
            metas.append(meta)

    def append(self, result: ClipResult) -> None:
        """A clip's frames and its copies' after the rows written so far (nothing for a skipped clip)."""
        if result.frames is None:
            return
        try:
            for frames in (result.frames, *result.copies):
                _check_finite(frames, self.frames_path)
                self._frames.write(memoryview(np.ascontiguousarray(frames)).cast("B"))
        except OSError as exc:
            raise write_error(self.frames_path, exc) from None

    def write(self, number: int, results: list[ClipResult], n_mels: int, dtype: str) -> None:
        """Finish part `number` of these (appended) results: their frames onto the disk, then the json that
        marks the part finished."""
        try:
            self._frames.flush()
            os.fsync(self._frames.fileno())
        except OSError as exc:
            raise write_error(self.frames_path, exc) from None
        kept = [r for r in results if r.frames is not None]
        write_json(self.meta_path(number), {
            "start": results[0].position, "stop": results[-1].position + 1,
            "positions": [r.position for r in kept],
            "lengths": [int(r.frames.shape[0]) for r in kept],
            "copies": [len(r.copies) for r in kept],
            "copies_skipped": [{"position": r.position, "id": r.clip_id, "reason": r.copies_reason,
                                "detail": r.copies_detail} for r in kept if r.copies_reason],
            "skipped": [{"position": r.position, "id": r.clip_id, "reason": r.reason, "detail": r.detail}
                        for r in results if r.frames is None],
        })

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def part_copies(meta: dict[str, Any]) -> list[int]:
    """Copies stored after each kept clip of a part (none in parts written before copies existed)."""
    return meta.get("copies") or [0] * len(meta["lengths"])


def _check_finite(frames: np.ndarray, where: Path) -> None:
    if not np.isfinite(frames).all():  # process_clip drops such clips; this guards the file itself
        raise RuntimeError(f"refusing to write non-finite frames to {where}")


# ---------------------------------------------------------------- the stage


class SpectrogramProcessor:
    """`audiotokens spectrogram`: frames of every clip of the catalogue in processed/split.json.

    The work is cut into shards (shards.py): `shard` computes that one only; otherwise the unfinished
    shards are computed here (executor "local") or as dask tasks ("dask"), then assembled into the store;
    `assemble` only assembles.
    """

    def __init__(self, config: Config, part_clips: int = 256, part_frames: int = 2**18, *,
                 shard: Shard | None = None, assemble: bool = False, executor: str = "local",
                 scheduler: str | None = None, shards: int = 0):
        self.config = config
        check_params(config.spectrogram)
        self.params = resolve_params(config.spectrogram)
        self.layout = Layout(config.workdir)
        self.part_clips = part_clips  # a part ends after this many clips or part_frames frames
        self.part_frames = part_frames
        self.shard = shard
        self.execution = Execution(executor=executor, scheduler=scheduler, assemble_only=assemble)
        self.shard_count = shards  # 0: the N of the shards on disk, else 1 (local) or per dask worker
        self.augment = RandomCorruption.from_settings(config.augment) if config.augment.copies else None
        self.train_ids: set[str] = set()  # the clips that get corrupted copies (read with the catalogue)

    def run(self) -> dict[str, Any]:
        clips = self._read_clips()
        key = self._parts_key(clips)
        if self.shard is not None:
            return self._compute_shards(clips, key, [self.shard])
        root = self.layout.frames_dir / SHARDS_DIR
        current = functools.partial(self._is_current, clips, key)
        count = finish_shards(STAGE, self.config, choose_count(root, self.shard_count, current), self.execution,
                              unfinished=functools.partial(self._unfinished, clips, key),
                              compute=functools.partial(self._compute_shards, clips, key),
                              stale=lambda: stale_shards(root, functools.partial(self._is_stale, clips, key)))
        counts = self._assemble(clips, [self._shard_store(clips, key, shard) for shard in all_shards(count)])
        shutil.rmtree(root, ignore_errors=True)
        return counts

    def pending_shards(self) -> tuple[int, list[Shard]] | None:
        """(N, the shards not finished) of the current shards on disk; None when there are none."""
        clips = self._read_clips()
        key = self._parts_key(clips)
        count = choose_count(self.layout.frames_dir / SHARDS_DIR, 0, functools.partial(self._is_current, clips, key))
        return (count, self._unfinished(clips, key, count)) if count else None

    # -- input

    def _read_clips(self) -> list[dict]:
        plan = SplitPlan.load(self.layout)
        clips = plan.clips
        counts = Counter(str(clip["id"]) for clip in clips)
        duplicate = next((clip_id for clip_id, n in counts.items() if n > 1), None)
        if duplicate is not None:
            raise UserError(f"{self.layout.split_json} lists clip id '{duplicate}' more than once; "
                            "re-run `audiotokens split`")
        if self.augment is not None:
            self.train_ids = set(map(str, plan.splits.get("train") or []))
            marked = next((clip_id for clip_id in counts if COPY_MARK in clip_id), None)
            if marked is not None:
                raise UserError(f"clip id '{marked}' contains '{COPY_MARK}', which names corrupted copies in "
                                "the frame store; rename the clip or set augment.copies = 0")
        return clips

    def _copies(self, clip_id: str) -> int:
        """Corrupted copies the clip gets: augment.copies for a training clip, else none."""
        return self.augment.settings.copies if self.augment is not None and clip_id in self.train_ids else 0

    def frame_spec(self) -> dict[str, Any]:
        """The frame spec of the store: the frame kind's, and the [augment] settings when copies are made."""
        spec = params_to_dict(self.params)
        return {**spec, AUGMENT: self.augment.record()} if self.augment is not None else spec

    # -- shards of the store

    def _shard_store(self, clips: list[dict], key: str, shard: Shard) -> PartStore:
        folder = self.layout.frames_dir / SHARDS_DIR / shard.name
        return PartStore(folder, key, shard.clip_range(len(clips)).start, frame_width(self.params), self.params.dtype)

    def _is_current(self, clips: list[dict], key: str, shard: Shard) -> bool:
        return self._shard_store(clips, key, shard).matches_key()

    def _is_stale(self, clips: list[dict], key: str, shard: Shard) -> bool:
        return self._shard_store(clips, key, shard).has_other_key()

    def _unfinished(self, clips: list[dict], key: str, count: int) -> list[Shard]:
        def finished(shard: Shard) -> bool:
            store = self._shard_store(clips, key, shard)
            return store.matches_key() and store.done_until(store.finished()) == shard.clip_range(len(clips)).stop
        return [shard for shard in all_shards(count) if not finished(shard)]

    def _compute_shards(self, clips: list[dict], key: str, shards: list[Shard]) -> dict[str, int]:
        """Compute the missing parts of each shard, one process pool for all of them."""
        # e.g. the mel filterbank, built once here so forked workers inherit it instead of each paying
        # librosa's first-call cost
        frame_kind(self.params).prepare()
        total = sum(len(shard.clip_range(len(clips))) for shard in shards)
        with self._mapper(total) as mapper:
            for shard in shards:
                self._run_shard(clips, self._shard_store(clips, key, shard), shard, mapper)
        return {"clips": total, "shards": len(shards)}

    def _run_shard(self, clips: list[dict], store: PartStore, shard: Shard, mapper) -> None:
        finished = store.open()
        try:
            self._compute_parts(clips, store, shard, finished, mapper)
        finally:
            store.close()

    def _compute_parts(self, clips: list[dict], store: PartStore, shard: Shard, finished: list[dict],
                       mapper) -> None:
        span = shard.clip_range(len(clips))
        start = store.done_until(finished)
        if start > span.start:
            log.info("resuming, %d of %d clips already done", start - span.start, len(span))
        tasks = ((i, str(clips[i]["id"]), str(clips[i]["audio"]), self._copies(str(clips[i]["id"])))
                 for i in range(start, span.stop))
        number, batch, batch_frames = len(finished), [], 0
        desc = "spectrogram" if shard.count == 1 else f"spectrogram {shard.index}/{shard.count}"
        with tqdm(total=len(span), initial=start - span.start, unit="clip", desc=desc) as bar:
            for expected, result in enumerate(mapper(tasks), start):
                # imap keeps order; a mismatch would store frames under the wrong clip, so stop instead.
                if result.position != expected or result.clip_id != str(clips[expected]["id"]):
                    raise RuntimeError(f"clip order broken at {expected}")
                store.append(result)
                batch.append(result)
                batch_frames += 0 if result.frames is None else result.frames.shape[0]
                bar.update(1)
                if len(batch) == self.part_clips or batch_frames >= self.part_frames or expected == span.stop - 1:
                    store.write(number, batch, frame_width(self.params), self.params.dtype)
                    number, batch, batch_frames = number + 1, [], 0

    def _parts_key(self, clips: list[dict]) -> str:
        key = {"format": PART_FORMAT, "params": params_to_dict(self.params), "dtype": self.params.dtype,
               "clips": [[str(c["id"]), str(c["audio"]), c.get("stat")] for c in clips]}
        if self.augment is not None:  # copies depend on the settings and on which clips are training clips
            key[AUGMENT] = {"settings": self.augment.record(), "train": sorted(self.train_ids)}
        blob = json.dumps(key, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _assemble(self, clips: list[dict], stores: list[PartStore]) -> dict[str, int]:
        shards = [(store, store.finished()) for store in stores]
        metas = [meta for _, finished in shards for meta in finished]
        if (metas[-1]["stop"] if metas else 0) != len(clips) or any(
                a["stop"] != b["start"] for a, b in itertools.pairwise(metas)):
            raise RuntimeError(f"parts do not cover the {len(clips)} clips")
        positions = [p for meta in metas for p in meta["positions"]]
        lengths = [n for meta in metas for n in meta["lengths"]]
        copies = [c for meta in metas for c in part_copies(meta)]
        skipped = [{**s, "audio": clips[s["position"]]["audio"]} for meta in metas for s in meta["skipped"]]
        ids, entry_lengths = [], []
        for position, length, count in zip(positions, lengths, copies):  # each clip, then its copies
            clip_id = str(clips[position]["id"])
            ids += [clip_id, *(copy_id(clip_id, number) for number in range(1, count + 1))]
            entry_lengths += [length] * (1 + count)
        total = int(sum(entry_lengths))
        spec = self.frame_spec()
        self._write_frames(shards, total)
        write_json(self.layout.frame_spec, spec)  # after the frames it describes, before the index
        index = ClipIndex.from_lengths(ids, entry_lengths, [[] for _ in ids], [], "")
        index.extra = {"frame_spec_digest": spec_digest(spec), "dtype": self.params.dtype}
        report = {"listed": len(clips), "kept": len(positions), "frames": total,
                  "skipped_count": len(skipped), "reasons": {}, "skipped": skipped}
        if self.augment is not None:
            index.extra["copies"] = self.augment.settings.copies
            report["copies"] = int(sum(copies))
            report["copies_skipped"] = [{**s, "audio": clips[s["position"]]["audio"]} for meta in metas
                                        for s in meta.get("copies_skipped", [])]
        index.save(self.layout.frames_index)
        reasons = Counter(s["reason"] for s in skipped)
        report["reasons"] = dict(reasons.most_common())
        write_json(self.layout.frames_report, report)
        self._log_summary(len(clips), len(positions), total, reasons, report)
        if clips and not positions:
            raise UserError(f"no usable clip ({_describe(reasons)}); see {self.layout.frames_report}")
        counts = {"clips": len(positions), "frames": total, "skipped": len(skipped)}
        return {**counts, "copies": report["copies"]} if self.augment is not None else counts

    def _write_frames(self, shards: list[tuple[PartStore, list[dict]]], total: int) -> None:
        """processed/frames/frames.npy: the first shard's frames.partial with the other shards' rows appended and
        its .npy header written, put in place under the store's name (the shard keeps it too until the stage
        has finished, so a run killed meanwhile assembles again instead of computing again)."""
        path = self.layout.frames
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed assembly
            stale.unlink(missing_ok=True)
        width, dtype = frame_width(self.params), self.params.dtype
        if total == 0:
            save_npy(path, np.zeros((0, width), dtype=dtype))
            return
        (first, first_parts), *others = shards
        try:
            with open(first.frames_path, "r+b" if first.frames_path.is_file() else "w+b") as out:
                out.truncate(NPY_HEADER_BYTES + first.rows(first_parts) * first.row_bytes)
                out.seek(0, os.SEEK_END)
                for store, parts in others:
                    _copy_rows(store.frames_path, out, store.rows(parts) * store.row_bytes)
                if out.tell() != NPY_HEADER_BYTES + total * first.row_bytes:
                    raise RuntimeError(f"{path}: shards hold {out.tell()} bytes, their index {total} frames")
                out.seek(0)
                out.write(npy_header(total, width, dtype))
                out.flush()
                os.fsync(out.fileno())
            _link_into_place(first.frames_path, path)
        except OSError as exc:
            raise write_error(path, exc) from None

    def _log_summary(self, listed: int, kept: int, frames: int, reasons: Counter,
                     report: dict[str, Any]) -> None:
        log.info("%d of %d clips, %d frames -> %s", kept, listed, frames, self.layout.frames)
        if "copies" in report:
            log.info("%d corrupted copies of training clips among them (augment.copies = %d)",
                     report["copies"], self.augment.settings.copies)
        if report.get("copies_skipped"):
            why = Counter(s["reason"] for s in report["copies_skipped"])
            log.warning("no copies of %d training clips (%s); see %s", len(report["copies_skipped"]),
                        _describe(why), self.layout.frames_report)
        if reasons:
            log.warning("skipped %d clips (%s); see %s", sum(reasons.values()), _describe(reasons),
                        self.layout.frames_report)

    # -- parallelism

    @contextmanager
    def _mapper(self, n_tasks: int) -> Iterator[Callable[[Iterable], Iterator[ClipResult]]]:
        """An ordered map of process_clip over tasks: a process pool, or in-process for one worker."""
        # a speech model runs in this process (on the GPU when there is one), not once per worker
        workers = 1 if frame_kind(self.params).in_process else self.params.workers
        work = functools.partial(process_clip, self.params)
        if self.augment is not None:
            work = functools.partial(process_clip, self.params, augment=self.augment)
        with clip_map(work, n_tasks, workers) as mapper:
            yield mapper


def npy_header(rows: int, width: int, dtype: str) -> bytes:
    """The .npy header of a (rows, width) C-ordered array, NPY_HEADER_BYTES long."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": (rows, width)})
    if len(buffer.getvalue()) != NPY_HEADER_BYTES:
        raise RuntimeError(f"a .npy header of shape ({rows}, {width}) takes {len(buffer.getvalue())} bytes")
    return buffer.getvalue()


def _copy_rows(source: Path, out, size: int) -> None:
    """The first `size` bytes of frames after the header room of a shard's frames.partial, onto `out`."""
    with open(source, "rb") as handle:
        handle.seek(NPY_HEADER_BYTES)
        while size > 0:
            chunk = handle.read(min(size, COPY_BYTES))
            if not chunk:
                raise RuntimeError(f"{source} holds fewer frames than its parts list")
            out.write(chunk)
            size -= len(chunk)


def _link_into_place(source: Path, path: Path) -> None:
    """`source` under the name `path`, which is replaced atomically: a hard link where the filesystem has
    them (no byte is copied), else a copy."""
    remove_stale_temps(path)
    tmp = path.with_name(f"{temp_prefix(path)}{os.urandom(4).hex()}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cpu_count() -> int:
    return usable_cpus()  # affinity and cgroup quota, not the host's core count


def _describe(reasons: Counter) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in reasons.most_common()) or "none listed"
