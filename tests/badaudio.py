"""A corpus of messy audio files, built by the reliability tests: broken files and valid-but-odd ones.

`build_corpus(folder)` writes every case and returns {case name: Case}. Each case says whether the
spectrogram stage must skip it (and with which reason) or keep it (valid audio in an unusual format).
Good reference clips are distinct tones, so a clip stored under the wrong id would show.
"""
from __future__ import annotations

import builtins
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
HOUR_RATE = 8000  # the 1-hour file: low rate keeps it at 58 MB of int16 and cheap to write
HOUR_SECONDS = 3600


@dataclass
class Case:
    name: str
    path: Path
    skip_reason: str | None  # AudioError kind the stage must report; None = the clip is kept
    note: str  # what the file is


def tone(seconds: float, freq: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(n, channels) float32: a sine plus a little noise, each channel at its own level."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    mono = 0.4 * np.sin(2 * np.pi * freq * t)
    out = np.stack([mono * (1 - 0.1 * c) + 0.01 * rng.standard_normal(len(t)) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def write_good(folder: Path, count: int, seconds: float = 1.0) -> list[Path]:
    """`count` distinct 16 kHz mono wav clips."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"good{i:02d}.wav"
        sf.write(path, tone(seconds, 200.0 * (i + 1), seed=i), RATE)
        paths.append(path)
    return paths


def _truncated(folder: Path, ext: str, fmt: str) -> Path:
    whole = folder / f".whole.{ext}"
    sf.write(whole, tone(2.0, 500.0), RATE, format=fmt)
    data = whole.read_bytes()
    whole.unlink()
    path = folder / f"truncated.{ext}"
    path.write_bytes(data[:len(data) // 2])
    return path


def write_hour(path: Path, seconds: int = HOUR_SECONDS, rate: int = HOUR_RATE) -> Path:
    """A long int16 wav written block by block (never the whole signal in memory)."""
    block = rate * 60
    t = np.arange(block) / rate
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for minute in range(int(np.ceil(seconds / 60))):
            n = min(block, seconds * rate - minute * block)
            out.write((0.3 * np.sin(2 * np.pi * (300 + 5 * minute) * t[:n])).astype(np.float32))
    return path


def build_corpus(folder: Path, hour: bool = True) -> dict[str, Case]:
    """Every case of the messy-audio corpus under `folder`; `hour=False` leaves out the 1-hour file."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name, path, reason, note):
        cases.append(Case(name, Path(path), reason, note))

    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    add("empty", empty, "empty file", "zero-byte .wav")
    add("truncated_flac", _truncated(folder, "flac", "FLAC"), "truncated", "first half of a 2 s flac")
    add("truncated_ogg", _truncated(folder, "ogg", "OGG"), "truncated", "first half of a 2 s ogg vorbis")
    corrupt = folder / "corrupt_header.wav"
    sf.write(corrupt, tone(1.0, 700.0), RATE, subtype="PCM_16")
    data = bytearray(corrupt.read_bytes())
    data[12:36] = bytes(range(24))  # the whole fmt chunk overwritten
    corrupt.write_bytes(bytes(data))
    add("corrupt_header", corrupt, "undecodable", "wav whose fmt chunk is garbage")
    text = folder / "notes.wav"
    text.write_text("these are my field notes, not a sound\n" * 20)
    add("text_as_wav", text, "undecodable", "a text file named .wav")
    silent = folder / "silent.wav"
    sf.write(silent, np.zeros((RATE, 1), np.float32), RATE)
    add("silent", silent, None, "1 s of digital silence")
    nan = folder / "nan.wav"
    sf.write(nan, np.full((RATE, 1), np.nan, np.float32), RATE, subtype="FLOAT")
    add("nan", nan, "non-finite samples", "float wav full of NaN")
    inf = folder / "inf.wav"
    signal = tone(1.0, 900.0)
    signal[::7] = np.inf
    signal[3::7] = -np.inf
    sf.write(inf, signal, RATE, subtype="FLOAT")
    add("inf", inf, "non-finite samples", "float wav with +-inf samples")
    short = folder / "short.wav"
    sf.write(short, tone(0.02, 1000.0), RATE)  # 320 samples -> 441 at 22050 Hz < n_fft 1024
    add("too_short", short, "too short", "20 ms, fewer samples than n_fft")
    one_hertz = folder / "one_hertz.wav"
    sf.write(one_hertz, tone(64.0, 0.1, rate=1), 1)  # a header saying 1 Hz: not audio at 22,050-fold upsampling
    add("one_hertz", one_hertz, "implausible sample rate", "wav whose header declares 1 Hz")
    low = folder / "low_rate.wav"
    sf.write(low, tone(1.0, 100.0, rate=999), 999)
    add("999_hz", low, "implausible sample rate", "wav at 999 Hz, just under the lowest rate taken")
    if hour:
        add("one_hour", write_hour(folder / "hour.wav"), None, f"{HOUR_SECONDS} s int16 wav at {HOUR_RATE} Hz")
    surround = folder / "surround.wav"
    sf.write(surround, tone(1.0, 1100.0, channels=6), RATE)
    add("six_channel", surround, None, "6-channel (5.1) wav")
    u8 = folder / "pcm_u8.wav"
    sf.write(u8, tone(1.0, 1300.0), RATE, subtype="PCM_U8")
    add("8_bit", u8, None, "unsigned 8-bit wav")
    p24 = folder / "pcm_24.flac"
    sf.write(p24, tone(1.0, 1500.0), RATE, subtype="PCM_24")
    add("24_bit", p24, None, "24-bit flac")
    f64 = folder / "double.wav"
    sf.write(f64, tone(1.0, 1700.0, rate=44100), 44100, subtype="DOUBLE")
    add("float64", f64, None, "float64 wav at 44.1 kHz")
    disguised = folder / "really_flac.wav"
    sf.write(disguised, tone(1.0, 1900.0), RATE, format="FLAC")
    add("wrong_extension", disguised, None, "flac content named .wav")
    add("missing", folder / "deleted.wav", "missing", "listed, then deleted")
    locked = folder / "locked.wav"
    sf.write(locked, tone(1.0, 2100.0), RATE)
    locked.chmod(0)
    add("unreadable", locked, "unreadable", "mode 000 (root reads it anyway: see deny_reading)")
    return {case.name: case for case in cases}


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def deny_reading(monkeypatch, path: Path) -> None:
    """Opening `path` for decoding fails with EACCES, as mode 000 does for any user but root.

    Root ignores file modes, so under root the decoder's `open` is wrapped to refuse that one path
    exactly as the kernel would refuse a normal user; as a normal user the real mode 000 applies.
    Forked worker processes inherit the wrapper.
    """
    if not running_as_root():
        return
    from audiotokens.data import audio

    refused = os.path.abspath(path)

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(audio, "open", guarded_open, raising=False)
