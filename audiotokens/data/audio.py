"""Decode one clip to float32 samples: files on disk, segments of them, rows of parquet or Arrow tables.

A location (`parse_location`) is one of
  "<path>"                          a whole file
  "<path>::<start>,<duration>"      a segment of a file, in seconds (lhotse supervisions, Kaldi segments):
                                    decoding seeks to it, so a minute of an hour-long file costs a minute
  "<table path>::<row>"             a row of a parquet shard or Hugging Face Arrow file: its column `audio`
  "<table path>::<column>::<row>"   (or <column>) holds {bytes, path} or bytes, decoded in memory.
Every problem with one clip raises AudioError, whose `kind` names the problem for skip reports.
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
from dataclasses import dataclass
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
# A segment may end this far past the end of its file (timing rounded by whoever wrote the metadata) and
# is cut at the end; Kaldi's extract-segments allows the same 0.5 s. Beyond it the metadata does not
# describe this file, and the clip is skipped.
SEGMENT_OVERSHOOT = 0.5
ARROW_SUFFIX = ".arrow"  # Hugging Face `save_to_disk` tables (Arrow IPC); other tables are parquet
# Below this a declared rate is a damaged header or not sound: 1 Hz would be upsampled 22,050-fold into
# minutes of a few interpolated values. The lowest real rates (old telephony, 2-8 kHz) stay above it.
MIN_SAMPLE_RATE = 1000


class AudioError(Exception):
    """One clip cannot be used. `kind` is a short category (e.g. "missing", "undecodable")."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Location:
    """Where one clip's audio is (module docstring): a file, a segment of one, or a row of a table."""

    path: str
    row: int | None = None  # a row of the table at `path`
    column: str = "audio"  # the table's audio column
    start: float = 0.0  # a segment's start and duration, in seconds
    duration: float | None = None  # None: the whole file

    def __str__(self) -> str:
        if self.row is not None:
            column = "" if self.column == "audio" else f"{self.column}{PARQUET_ROW_SEPARATOR}"
            return f"{self.path}{PARQUET_ROW_SEPARATOR}{column}{self.row}"
        if self.duration is not None:
            return f"{self.path}{PARQUET_ROW_SEPARATOR}{float(self.start)!r},{float(self.duration)!r}"
        return self.path


_SECONDS = r"\d+(?:\.\d+)?(?:e-?\d+)?"  # a non-negative float as repr() writes it
_SEGMENT = re.compile(rf"^({_SECONDS}),({_SECONDS})$")


def parse_location(location: str) -> Location:
    """The parts of a location string; anything that is not a row or a segment is a plain path."""
    head, sep, tail = str(location).rpartition(PARQUET_ROW_SEPARATOR)
    if sep and tail.isdigit():
        table, sep, column = head.rpartition(PARQUET_ROW_SEPARATOR)
        return Location(table, int(tail), column) if sep and column else Location(head, int(tail))
    segment = _SEGMENT.match(tail) if sep else None
    if segment:
        return Location(head, start=float(segment[1]), duration=float(segment[2]))
    return Location(str(location))


def segment_location(path: str, start: float, duration: float) -> str:
    """The location of `duration` seconds of the file at `path` from `start` seconds on."""
    return str(Location(path, start=start, duration=duration))


def table_location(path: str, row: int, column: str = "audio") -> str:
    """The location of row `row` of a parquet or Arrow table whose audio is in `column`."""
    return str(Location(path, row, column))


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
        where = parse_location(location)
        in_table = where.row is not None
        self._handle = (io.BytesIO(_table_audio_bytes(where.path, where.column, where.row)) if in_table
                        else _open_file(where.path))
        try:
            ogg = _ogg_pages(self._handle)
            # libsndfile reads a path itself, ~6 % faster than through Python's file object
            self._file = _open_decoder(self._handle if in_table else where.path)
        except BaseException:
            self._handle.close()
            raise
        self.rate: int = self._file.samplerate
        self.channels: int = self._file.channels
        self.declared: int = self._file.frames
        self.read = 0  # samples per channel decoded so far
        try:
            check_sample_rate(self.rate)
            self._check_complete(ogg)
            available = self.declared if where.duration is None else self._seek_segment(where)
        except BaseException:
            self.close()
            raise
        self.frames = min(available, int(max_duration * self.rate)) if max_duration > 0 else available

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

    def _seek_segment(self, where: Location) -> int:
        """Position the decoder at the segment's first sample; the segment's length in samples."""
        first, count = round(where.start * self.rate), round(where.duration * self.rate)
        seconds = self.declared / self.rate
        if first >= self.declared:
            raise AudioError("segment outside the file", f"it starts at {where.start:g} s, the file holds "
                             f"{seconds:.3f} s")
        past_end = first + count - self.declared
        if past_end > SEGMENT_OVERSHOOT * self.rate:
            raise AudioError("segment outside the file", f"it ends {past_end / self.rate:.3f} s after the end of "
                             f"the file ({seconds:.3f} s)")
        try:
            if self._file.seekable():
                self._file.seek(first)
            else:  # decode and drop what comes before the segment
                for _ in self._file.blocks(blocksize=BLOCK_FRAMES, frames=first, dtype="float32"):
                    pass
        except _DECODER_ERRORS as exc:
            raise AudioError("truncated", f"seeking to sample {first} failed ({_decoder_message(exc)})") from None
        return min(count, self.declared - first)

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


# ---------------------------------------------------------------- table rows

# The last row group (parquet) or table (Arrow) read in this process: clips in file order read each once.
_parquet_cache: dict[str, object] = {}


def _table_audio_bytes(path: str, column: str, row: int) -> bytes:
    rows = _arrow_table if path.endswith(ARROW_SUFFIX) else _parquet_row_group
    encoded, first_row = rows(path, column, row)
    data = encoded[row - first_row].as_py()
    if not data:
        raise AudioError("no audio", f"row {row} of {path} has no audio bytes")
    return data


def _bytes_of(column, name: str, path: str):
    """The encoded audio of a table's audio column: the `bytes` field of a struct {bytes, path}, or itself."""
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        field = column.type.get_field_index("bytes")
        if field < 0:
            raise AudioError("no audio", f"the '{name}' column of {path} has no 'bytes' field")
        return column.flatten()[field]  # flatten keeps a null struct null
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise AudioError("no audio", f"the '{name}' column of {path} holds {column.type}, not audio bytes")
    return column


def _arrow_table(path: str, column: str, row: int):
    """The encoded audio of a whole Arrow file (memory-mapped, so only the rows read are touched), and 0."""
    cached = _parquet_cache
    if cached.get("path") == path and cached.get("name") == column:
        encoded = cached["column"]
    else:
        import pyarrow as pa

        try:
            with pa.memory_map(path) as source:
                try:
                    table = pa.ipc.open_stream(source).read_all()  # what `save_to_disk` writes
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(source).read_all()
        except FileNotFoundError:
            raise AudioError("missing", path) from None
        except PermissionError:
            raise AudioError("unreadable", "permission denied") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for damaged files
            raise AudioError("undecodable", f"Arrow file {path}: {str(exc).splitlines()[0]}") from None
        if column not in table.column_names:
            raise AudioError("no audio", f"Arrow file {path} has no '{column}' column")
        encoded = _bytes_of(table.column(column), column, path)
        _parquet_cache.clear()
        _parquet_cache.update(path=path, name=column, column=encoded)
    if row >= len(encoded):
        raise AudioError("missing", f"row {row} is past the end of {path} ({len(encoded)} rows)")
    return encoded, 0


def _parquet_row_group(path: str, column: str, row: int):
    """The encoded audio (`<column>.bytes`) of the row group holding `row`, and that group's first row."""
    cached = _parquet_cache
    if (cached.get("path") == path and cached.get("name") == column and "first" in cached
            and cached["first"] <= row < cached["stop"]):
        return cached["column"], cached["first"]
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise AudioError("missing", path) from None
    except PermissionError:
        raise AudioError("unreadable", "permission denied") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise AudioError("undecodable", f"parquet file {path}: {str(exc).splitlines()[0]}") from None
    if column not in parquet.schema_arrow.names:
        raise AudioError("no audio", f"parquet file {path} has no '{column}' column")
    first = 0
    for group in range(parquet.metadata.num_row_groups):
        stop = first + parquet.metadata.row_group(group).num_rows
        if row < stop:
            try:
                read = parquet.read_row_group(group, columns=[column]).column(column).combine_chunks()
            except Exception as exc:  # noqa: BLE001 - any pyarrow failure means this row is unreadable
                raise AudioError("undecodable", f"parquet file {path}: {str(exc).splitlines()[0]}") from None
            encoded = _bytes_of(read, column, path)
            _parquet_cache.clear()
            _parquet_cache.update(path=path, name=column, first=first, stop=stop, column=encoded)
            return encoded, first
        first = stop
    raise AudioError("missing", f"row {row} is past the end of {path} ({first} rows)")
