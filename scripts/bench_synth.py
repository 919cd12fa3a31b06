"""Numpy fallback synthesiser for the demo set when fluidsynth cannot be installed.

It renders the same arrangements as the fluidsynth path (voices of notes from bench_arrange) with
additive tones whose harmonic spectra, envelopes and vibrato differ by class, and noise/sweep drums.
It also writes the scores: short four-part chorale-like progressions in a random key.
"""
from __future__ import annotations

import numpy as np
from bench_arrange import DRUMS, Voice
from scipy.signal import lfilter

REGISTERS = ((67, 79), (60, 72), (52, 67), (40, 55))  # soprano, alto, tenor, bass
RHYTHMS = ((2.0,), (1.0, 1.0), (0.5, 0.5, 1.0), (1.0, 0.5, 0.5), (1.5, 0.5))
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


def synthetic_score(rng: np.random.Generator, n_parts: int = 4, n_chords: int = 24) -> list[np.ndarray]:
    """Parts (onset, duration, pitch) over a diatonic triad progression, two quarters per chord."""
    tonic = int(rng.integers(0, 12))
    scale = MAJOR if rng.random() < 0.6 else MINOR
    degrees = [0]
    for _ in range(n_chords - 1):
        degrees.append(int(rng.choice([0, 1, 3, 4, 5])) if rng.random() < 0.8 else int(rng.integers(0, 7)))
    parts = []
    for low, high in REGISTERS[:n_parts]:
        rows, previous = [], (low + high) / 2
        for i, degree in enumerate(degrees):
            chord = {(tonic + scale[(degree + k) % 7]) % 12 for k in (0, 2, 4)}
            candidates = [p for p in range(low, high + 1) if p % 12 in chord]
            onset = 2.0 * i
            for length in RHYTHMS[int(rng.integers(len(RHYTHMS)))]:
                near = sorted(candidates, key=lambda p: abs(p - previous))[: 3]
                pitch = near[int(rng.integers(len(near)))]
                rows.append((onset, length, pitch))
                onset += length
                previous = pitch
        parts.append(np.array(rows, dtype=float))
    return parts


def _midi_hz(pitch: float) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def _envelope(n: int, sr: int, attack: float, release: float, decay: float | None, held: int) -> np.ndarray:
    t = np.arange(n) / sr
    env = np.minimum(1.0, t / attack)
    if decay is not None:
        env *= np.exp(-t / decay)
    after = np.arange(n) - held
    env[held:] *= np.exp(-after[held:] / (release * sr))
    return env


# class -> (harmonic amplitude function of n and f0, attack s, release s, decay s or None,
#           vibrato (rate Hz, depth fraction), per-harmonic decay exponent, breath noise level)
TIMBRES = {
    "piano": (lambda n, f: np.abs(np.sin(np.pi * n / 7)) / n ** 1.5, 0.004, 0.08, 1.4, (0, 0), 0.6, 0.0),
    "organ": (lambda n, f: np.isin(n, [1, 2, 3, 4, 6, 8]) / (1 + 0.25 * n), 0.015, 0.05, None, (0, 0), 0.0,
              0.0),
    "guitar": (lambda n, f: np.abs(np.sin(np.pi * n * 0.18)) / n, 0.003, 0.06, 0.9, (0, 0), 1.0, 0.0),
    "violin": (lambda n, f: (1 / n) * (1 + 2 * np.exp(-(((n * f) - 2800) / 700) ** 2)),
               0.07, 0.08, None, (5.5, 0.006), 0.0, 0.01),
    "cello": (lambda n, f: (1 / n ** 1.2) * (1 + 1.5 * np.exp(-(((n * f) - 300) / 150) ** 2)),
              0.09, 0.1, None, (5.0, 0.005), 0.0, 0.01),
    "flute": (lambda n, f: np.array([1.0, 0.35, 0.12, 0.05, 0.02] + [0.0] * 20)[n - 1],
              0.06, 0.06, None, (5.0, 0.004), 0.0, 0.06),
    "trumpet": (lambda n, f: 1 / n ** 0.6, 0.03, 0.05, None, (5.5, 0.002), 0.0, 0.0),
}


def tone(name: str, pitch: float, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One note of a class: additive harmonics below Nyquist with the class's envelope and vibrato."""
    amp_fn, attack, release, decay, (rate, depth), harmonic_decay, breath = TIMBRES[name]
    f0 = _midi_hz(pitch)
    held = int(seconds * sr)
    n = held + int(4 * release * sr)
    t = np.arange(n) / sr
    freq = f0 * (1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    harmonics = np.arange(1, 25)
    harmonics = harmonics[harmonics * f0 < min(sr / 2 - 1000, 10000)]
    amps = amp_fn(harmonics, f0)
    rotor = np.exp(1j * phase).astype(np.complex64)  # h-th harmonic = rotor**h, cheaper than sin per partial
    power = np.ones(n, dtype=np.complex64)
    out = np.zeros(n, dtype=np.float32)
    for h, a in zip(harmonics, amps):
        power *= rotor
        if a <= 0:
            continue
        partial = a * (power * np.complex64(np.exp(1j * rng.uniform(0, 2 * np.pi)))).imag
        if harmonic_decay and decay:
            partial *= np.exp(-t * (h ** harmonic_decay - 1) / decay).astype(np.float32)
        if name == "trumpet":  # brass: upper harmonics grow in as the note speaks
            partial *= np.minimum(1.0, t / (0.02 + 0.01 * h)).astype(np.float32)
        out += partial
    if breath:
        noise = lfilter([1.0], [1.0, -0.9], rng.normal(0, 1, n)) * 0.1
        out += breath * noise / max(1e-9, np.abs(noise).max()) * np.abs(out).max()
    return out * _envelope(n, sr, attack, release, decay, held)


DRUM_DECAY = {36: 0.25, 37: 0.02, 38: 0.15, 42: 0.04, 45: 0.3, 46: 0.3, 47: 0.3, 49: 1.0, 50: 0.3, 51: 0.5}


def drum_hit(key: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """GM percussion key -> a synthetic hit (sweeps for kick/toms, shaped noise for the rest), long
    enough (five decay times) to fade out instead of stopping with a click."""
    decay = DRUM_DECAY.get(key, 0.1)
    n = int(min(3.0, max(0.3, 5 * decay)) * sr)
    t = np.arange(n) / sr
    noise = rng.normal(0, 1, n)
    bright = np.diff(noise, prepend=0.0)  # first difference: a cheap high-pass for cymbals
    if key == 36:
        return np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-t / 0.03)) / sr) * np.exp(-t / decay)
    if key in (45, 47, 50):
        base = {45: 90, 47: 120, 50: 160}[key]
        return np.sin(2 * np.pi * np.cumsum(base * (1 + 0.5 * np.exp(-t / 0.05))) / sr) * np.exp(-t / decay)
    if key == 38:
        body = 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
        return body + 0.6 * lfilter([1.0], [1.0, -0.5], noise) * np.exp(-t / decay)
    if key == 37:
        return 0.8 * bright * np.exp(-t / decay)
    return 0.35 * bright * np.exp(-t / decay)


def render_voices(voices: list[Voice], sr: int, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Mix every voice's notes into one mono signal of exactly duration * sr samples."""
    total = round(duration * sr)
    out = np.zeros(total + sr)
    for voice in voices:
        track = np.zeros_like(out)
        for start, end, pitch, velocity in voice.notes:
            if voice.name == DRUMS:
                sound = drum_hit(int(pitch), sr, rng)
            else:
                sound = tone(voice.name, pitch, end - start, sr, rng)
            at = int(start * sr)
            sound = sound[: len(track) - at]
            track[at: at + len(sound)] += (velocity / 127) ** 2 * sound
        peak = np.abs(track).max()
        if peak > 0:  # voices at comparable level, as a mixing engineer would set them
            track *= rng.uniform(0.5, 1.0) / np.sqrt(np.mean(track ** 2) + 1e-12) * 0.1
        out += track
    return out[:total].astype(np.float32)
