"""Decode one clip to float32 samples: files on disk or rows of Hugging Face parquet shards.

A location is a file path or "<parquet path>::<row>" (column `audio`, a struct {bytes, path}, decoded in
memory). Every problem with one clip raises AudioError, whose `kind` names the problem for skip reports.
Decoding, mixing and resampling follow librosa.load (soundfile float32, channel mean, soxr 'soxr_hq',
length fixed to ceil(n * ratio)) so frames match librosa's to float32 rounding.
`AudioStream` decodes block by block, so a long recording never has to fit in memory at once; a file
that yields fewer samples than it declares is "truncated", never a shorter clip.
"""
from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator
from contextlib import closing
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from ..pipeline.layout import PARQUET_ROW_SEPARATOR
from .ogg_pages import OggDamage, OggLength, is_ogg, ogg_length

RESAMPLE_QUALITY = "soxr_hq"  # librosa.load's default res_type

# libsndfile corrects a WAV data size that runs past the end of the file and logs "data : N (should be M)".
_WAV_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming writers leave in the header when they cannot seek back: not truncation.
_WAV_SIZE_PLACEHOLDERS = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 8}
BLOCK_FRAMES = 2**20  # samples per channel decoded at a time: 22 s at 48 kHz, 8 MiB of float32 stereo
# libsndfile's MP3 reader garbles samples after a read that ends inside an MPEG frame (576 or 1152
# samples), so MP3 blocks are whole multiples of 1152.
MP3_BLOCK_MULTIPLE = 1152
_DECODER_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError)
# Below this a declared rate is a damaged header or not sound: 1 Hz would be upsampled 22,050-fold into
# minutes of a few interpolated values. The lowest real rates (old telephony, 2-8 kHz) stay above it.
MIN_SAMPLE_RATE = 1000


class AudioError(Exception):
    """One clip cannot be used. `kind` is a short category (e.g. "missing", "undecodable")."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def parse_location(location: str) -> tuple[str, int | None]:
    """Split "<parquet>::<row>" into (path, row); a plain path gives (path, None)."""
    path, sep, row = str(location).rpartition(PARQUET_ROW_SEPARATOR)
    if sep and row.isdigit():
        return path, int(row)
    return str(location), None


def load_audio(location: str, max_duration: float = 0.0) -> tuple[np.ndarray, int]:
    """Samples as float32 (channels, n) at the file's own rate, and that rate.

    max_duration > 0 keeps only the first max_duration seconds and reads no more than that.
    """
    with closing(AudioStream(location, max_duration)) as stream:
        blocks = list(stream.blocks(max(stream.frames, 1)))  # one read of the whole clip
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)), stream.rate


class AudioStream:
    """One clip opened for decoding block by block; every problem with it raises AudioError. Close it.

    `frames` is what `blocks` reads: the length the file declares, or its first max_duration seconds.
    """

    def __init__(self, location: str, max_duration: float = 0.0):
        path, row = parse_location(location)
        self._handle = io.BytesIO(_parquet_audio_bytes(path, row)) if row is not None else _open_file(path)
        try:
            ogg = _ogg_pages(self._handle)
            # libsndfile reads a path itself, ~6 % faster than through Python's file object
            self._file = _open_decoder(self._handle if row is not None else path)
        except BaseException:
            self._handle.close()
            raise
        self.rate: int = self._file.samplerate
        self.channels: int = self._file.channels
        self.declared: int = self._file.frames
        self.frames = min(self.declared, int(max_duration * self.rate)) if max_duration > 0 else self.declared
        self.read = 0  # samples per channel decoded so far
        try:
            check_sample_rate(self.rate)
            self._check_complete(ogg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._file.close()
        self._handle.close()

    def blocks(self, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """float32 (channels, n) blocks of at most block_frames samples until `frames` are read."""
        if self.frames <= 0:
            raise AudioError("no samples")
        if self._file.format == "MP3":
            block_frames = -(-block_frames // MP3_BLOCK_MULTIPLE) * MP3_BLOCK_MULTIPLE
        while self.read < self.frames:
            want = min(block_frames, self.frames - self.read)
            try:
                data = self._file.read(frames=want, dtype="float32", always_2d=True)
            except _DECODER_ERRORS as exc:
                raise AudioError("truncated", f"decoding failed between samples {self.read} and {self.read + want} "
                                 f"of the {self.declared} the file declares ({_decoder_message(exc)})") from None
            if data.shape[0] == 0:
                break
            if not np.isfinite(data).all():
                raise AudioError("non-finite samples", "the file contains NaN or infinite values")
            self.read += data.shape[0]
            yield data.T
        if self.read < self.frames:
            raise AudioError("truncated", f"the audio ends after {self.read} of the {self.declared} samples the "
                             "file declares")

    def length_at(self, rate: int) -> int:
        """Samples `frames` become at `rate`: librosa.resample's length, ceil(n * ratio)."""
        return self.frames if rate == self.rate else math.ceil(self.frames * float(rate) / self.rate)

    def mono_blocks(self, rate: int, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """float32 (n,) blocks mixed down and resampled to `rate` as they are decoded.

        soxr's stream gives its one-shot output, so the blocks joined equal `resample` of the whole clip,
        but for its length fix (ceil(n * ratio), `length_at`): the caller pads or cuts the end.
        """
        resampler = None
        for block in self.blocks(block_frames):
            mono, last = to_mono(block), self.read == self.frames
            if self.rate != rate and last and resampler is None:  # the whole clip in one block
                mono = soxr.resample(mono, self.rate, rate, quality=RESAMPLE_QUALITY)
            elif self.rate != rate:
                resampler = resampler or soxr.ResampleStream(self.rate, rate, 1, dtype="float32",
                                                             quality=RESAMPLE_QUALITY)
                mono = resampler.resample_chunk(mono, last=last)
            yield mono

    def _check_complete(self, ogg: OggLength | None) -> None:
        """Evidence in the container that data is missing, before anything is decoded."""
        if self._file.format in ("WAV", "WAVEX", "RF64", "W64"):
            _check_wav_complete(self._file.extra_info)
        expected = ogg.at_rate(self.rate) if ogg is not None else None
        if expected is not None and self.declared + 1 < expected:  # Opus: rescaled from 48 kHz, allow 1
            raise AudioError("truncated", f"only {self.declared} of the {expected} samples its last Ogg page "
                             "declares can be decoded (damaged data)")


def check_sample_rate(rate: int) -> None:
    if rate < MIN_SAMPLE_RATE:
        raise AudioError("implausible sample rate", f"the file declares {rate} Hz; audio needs at least "
                         f"{MIN_SAMPLE_RATE} Hz (a damaged header, or not a sound recording)")


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Mean over channels of (channels, n) float32, equal to librosa's np.mean mix-down."""
    channels = samples.shape[0]
    if channels == 1:
        return np.ascontiguousarray(samples[0])
    if channels >= 8:
        return np.mean(samples, axis=0)  # numpy sums >= 8 terms pairwise; match it exactly
    # Row-by-row sum: the same float32 result as np.mean for < 8 channels, without its slow strided pass.
    total = samples[0].copy()
    for channel in range(1, channels):
        total += samples[channel]
    total /= np.float32(channels)
    return total


def resample(mono: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr high quality, length fixed to ceil(n * target / orig) as librosa.resample does."""
    if orig_sr == target_sr:
        return mono
    out = soxr.resample(mono, orig_sr, target_sr, quality=RESAMPLE_QUALITY)
    size = math.ceil(mono.shape[-1] * float(target_sr) / orig_sr)
    if out.shape[-1] > size:
        out = out[:size]
    elif out.shape[-1] < size:
        out = np.pad(out, (0, size - out.shape[-1]))
    return np.asarray(out, dtype=mono.dtype)


def load_mono(location: str, sample_rate: int, max_duration: float = 0.0) -> np.ndarray:
    """Decode, mix down and resample one clip: float32 (n,) at `sample_rate`."""
    samples, native_rate = load_audio(location, max_duration)
    return resample(to_mono(samples), native_rate, sample_rate)


# ---------------------------------------------------------------- decoding


def _check_file(path: str) -> None:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise AudioError("missing", path) from None
    except PermissionError:
        raise AudioError("unreadable", "permission denied") from None
    except OSError as exc:
        raise AudioError("unreadable", exc.strerror or str(exc)) from None
    if size == 0 and os.path.isfile(path):
        raise AudioError("empty file")


def _open_file(path: str) -> BinaryIO:
    _check_file(path)
    try:
        return open(path, "rb")
    except PermissionError:
        raise AudioError("unreadable", "permission denied") from None
    except IsADirectoryError:
        raise AudioError("unreadable", "is a directory") from None
    except FileNotFoundError:
        raise AudioError("missing", path) from None
    except OSError as exc:
        raise AudioError("unreadable", exc.strerror or str(exc)) from None


def _open_decoder(handle: str | BinaryIO) -> sf.SoundFile:
    try:
        return sf.SoundFile(handle)
    except _DECODER_ERRORS as exc:
        raise AudioError("undecodable", _decoder_message(exc)) from None


def _decoder_message(exc: Exception) -> str:
    if isinstance(exc, sf.LibsndfileError):
        return exc.error_string.strip().rstrip(".")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _ogg_pages(handle: BinaryIO) -> OggLength | None:
    """The page walk of an Ogg stream (by content, whatever the extension); None for other formats."""
    try:
        return ogg_length(handle) if is_ogg(handle) else None
    except OggDamage as exc:
        raise AudioError("truncated", str(exc)) from None
    except OSError as exc:
        raise AudioError("unreadable", exc.strerror or str(exc)) from None


def _check_wav_complete(log: str) -> None:
    match = _WAV_SHORT_DATA.search(log or "")
    if match:
        declared, present = int(match.group(1)), int(match.group(2))
        if present < declared and declared not in _WAV_SIZE_PLACEHOLDERS:
            raise AudioError("truncated", f"header declares {declared} data bytes, file holds {present}")


# ---------------------------------------------------------------- parquet rows

# The last row group read in this process: clips in file order read each row group once.
_parquet_cache: dict[str, object] = {}


def _parquet_audio_bytes(path: str, row: int) -> bytes:
    encoded, first_row = _parquet_row_group(path, row)
    data = encoded[row - first_row].as_py()
    if not data:
        raise AudioError("no audio", f"row {row} of {path} has no audio bytes")
    return data


def _parquet_row_group(path: str, row: int):
    """The encoded audio (`audio.bytes`) of the row group holding `row`, and that group's first row."""
    cached = _parquet_cache
    if cached.get("path") == path and cached["first"] <= row < cached["stop"]:
        return cached["column"], cached["first"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise AudioError("missing", path) from None
    except PermissionError:
        raise AudioError("unreadable", "permission denied") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise AudioError("undecodable", f"parquet file {path}: {str(exc).splitlines()[0]}") from None
    if "audio" not in parquet.schema_arrow.names:
        raise AudioError("no audio", f"parquet file {path} has no 'audio' column")
    first = 0
    for group in range(parquet.metadata.num_row_groups):
        stop = first + parquet.metadata.row_group(group).num_rows
        if row < stop:
            try:
                column = parquet.read_row_group(group, columns=["audio"]).column("audio").combine_chunks()
            except Exception as exc:  # noqa: BLE001 - any pyarrow failure means this row is unreadable
                raise AudioError("undecodable", f"parquet file {path}: {str(exc).splitlines()[0]}") from None
            if pa.types.is_struct(column.type):
                field = column.type.get_field_index("bytes")
                if field < 0:
                    raise AudioError("no audio", f"the 'audio' column of {path} has no 'bytes' field")
                column = column.flatten()[field]  # flatten keeps a null struct null
            _parquet_cache.clear()
            _parquet_cache.update(path=path, first=first, stop=stop, column=column)
            return column, first
        first = stop
    raise AudioError("missing", f"row {row} is past the end of {path} ({first} rows)")
