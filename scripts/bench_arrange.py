"""Pure arrangement logic of the rendered benchmark set: classes, clip plans, excerpts, drum patterns.

A score is a list of parts; a part is an array of rows (onset, duration, pitch) in quarter lengths and
MIDI pitches. A clip takes a window of a score, gives 1-4 of its parts to instruments of a fixed class
set and may add drums (MIDI channel 10) and speech. Only classes that actually sound for a good part of
the window become labels. Everything here is deterministic given a numpy Generator and depends only on
numpy, so tests can run it without music21, mido or fluidsynth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DRUMS = "drums"
SPEECH = "speech"
DRUM_CHANNEL = 9  # General MIDI channel 10, zero-based


@dataclass(frozen=True)
class Instrument:
    name: str
    program: int  # General MIDI program, zero-based; -1 for drums and speech (not a melodic part)
    low: int  # comfortable MIDI pitch range; parts are moved by octaves into it
    high: int


INSTRUMENTS = {
    inst.name: inst
    for inst in (
        Instrument("piano", 0, 36, 96),
        Instrument("organ", 19, 36, 88),
        Instrument("guitar", 24, 40, 81),
        Instrument("bass", 32, 28, 55),
        Instrument("violin", 40, 55, 96),
        Instrument("cello", 42, 36, 72),
        Instrument("harp", 46, 36, 91),
        Instrument("choir", 52, 48, 79),
        Instrument("trumpet", 56, 55, 82),
        Instrument("saxophone", 65, 49, 80),
        Instrument("clarinet", 71, 50, 89),
        Instrument("flute", 73, 60, 96),
        Instrument(DRUMS, -1, 0, 127),
        Instrument(SPEECH, -1, 0, 127),
    )
}

PRESETS = {
    "bench": tuple(INSTRUMENTS),
    "demo": ("piano", "organ", "guitar", "violin", "cello", "flute", "trumpet", DRUMS),
}


def is_melodic(name: str) -> bool:
    return INSTRUMENTS[name].program >= 0


@dataclass(frozen=True)
class ClipPlan:
    index: int
    clip_id: str
    classes: tuple[str, ...]  # requested; melodic ones the score cannot carry in the window are dropped


@dataclass
class Voice:
    name: str  # class name
    channel: int
    program: int
    notes: np.ndarray  # (m, 4) float: start_s, end_s, pitch, velocity


def order_pool(tiers: list[list[str]], seed: int) -> list[str]:
    """Scores in priority order: each tier shuffled deterministically, earlier tiers first."""
    rng = np.random.default_rng([seed, 7])
    ordered: list[str] = []
    for tier in tiers:
        items = sorted(tier)
        ordered.extend(items[i] for i in rng.permutation(len(items)))
    return ordered


def score_group(score_id: str) -> str:
    """The manifest group of a corpus score: versions of one chorale (bwv18.5-w, bwv18.5-lz, bwv190.7-inst)
    share their base number, so no version of a chorale lands on the other side of a group split."""
    folder, _, name = score_id.rpartition("/")
    if folder == "bach":
        name = name.split("-", 1)[0]
    return f"{folder}/{name}" if folder else name


def plan_clips(n: int, classes: tuple[str, ...], max_instruments: int, seed: int) -> list[ClipPlan]:
    """Clip i draws 1..max_instruments classes from its own generator, so plans do not depend on n."""
    plans = []
    for index in range(n):
        rng = np.random.default_rng([seed, index, 0])
        k = int(rng.integers(1, min(max_instruments, len(classes)) + 1))
        picked = rng.choice(len(classes), size=k, replace=False)
        plans.append(ClipPlan(index, f"clip{index:05d}", tuple(classes[i] for i in sorted(picked))))
    return plans


def assign_scores(n: int, pool_size: int, clips_per_score: int) -> list[int]:
    """Score position in the pool for each clip: consecutive pool entries, clips_per_score clips each
    (round-robin), so a score's clips share one group."""
    n_scores = max(1, min(pool_size, math.ceil(n / clips_per_score)))
    return [i % n_scores for i in range(n)]


def sounding_length(part: np.ndarray, start: float, length: float) -> float:
    """Quarter lengths during which the part sounds inside [start, start + length); chords count once."""
    if len(part) == 0:
        return 0.0
    on = np.clip(part[:, 0], start, start + length)
    off = np.clip(part[:, 0] + part[:, 1], start, start + length)
    spans = sorted(zip(on[off > on], off[off > on]))
    total, cursor = 0.0, start
    for a, b in spans:
        a = max(a, cursor)
        if b > a:
            total += b - a
            cursor = b
    return float(total)


def sounding_parts(parts: list[np.ndarray], start: float, length: float, min_fraction: float) -> list[int]:
    return [i for i, p in enumerate(parts) if sounding_length(p, start, length) >= min_fraction * length]


def excerpt(part: np.ndarray, start: float, length: float) -> np.ndarray:
    """Rows overlapping [start, start + length), shifted to 0 and clipped to the window."""
    on, dur = part[:, 0], part[:, 1]
    keep = (on < start + length) & (on + dur > start)
    rows = part[keep].copy()
    begin = np.maximum(rows[:, 0], start)
    end = np.minimum(rows[:, 0] + rows[:, 1], start + length)
    rows[:, 0] = begin - start
    rows[:, 1] = end - begin
    return rows[rows[:, 1] > 0]


def fit_range(pitches: np.ndarray, low: int, high: int) -> np.ndarray:
    """Move the line by whole octaves so its median lies in [low, high], then fold stray notes in."""
    if len(pitches) == 0:
        return pitches
    out = pitches.astype(float).copy()
    centre = (low + high) / 2
    out += 12 * np.round((centre - np.median(out)) / 12)
    while (out < low).any() and high - low >= 12:
        out[out < low] += 12
    while (out > high).any() and high - low >= 12:
        out[out > high] -= 12
    return out


def choose_window(rng: np.random.Generator, parts: list[np.ndarray], length: float, need: int,
                  min_fraction: float, tries: int = 32) -> tuple[float, list[int]]:
    """A start (on a whole beat) where at least `need` parts sound; else the start with the most."""
    total = max((float((p[:, 0] + p[:, 1]).max()) for p in parts if len(p)), default=0.0)
    starts = np.arange(0.0, max(total - length, 0.0) + 1e-9, 1.0)
    best: tuple[float, list[int]] = (0.0, [])
    for start in rng.permutation(starts)[:tries]:
        playing = sounding_parts(parts, float(start), length, min_fraction)
        if len(playing) > len(best[1]):
            best = (float(start), playing)
        if len(playing) >= need:
            break
    return best


def part_notes(rng: np.random.Generator, rows: np.ndarray, seconds_per_quarter: float, duration: float,
               inst: Instrument, transpose: int) -> np.ndarray:
    """Excerpt rows -> (start_s, end_s, pitch, velocity), articulated so repeated notes re-attack."""
    start = rows[:, 0] * seconds_per_quarter
    end = np.minimum((rows[:, 0] + rows[:, 1]) * seconds_per_quarter, duration)
    end = np.maximum(start + 0.04, end - np.minimum(0.04, 0.15 * (end - start)))
    pitch = fit_range(rows[:, 2] + transpose, inst.low, inst.high)
    base = rng.uniform(72, 108)
    velocity = np.clip(base + rng.normal(0, 6, len(rows)), 30, 127).round()
    notes = np.stack([start, np.minimum(end, duration), pitch, velocity], axis=1)
    notes = notes[notes[:, 1] - notes[:, 0] >= 0.02]  # a sliver at the clip's end would only click
    # one onset per pitch and time: duplicate rows (unisons inside a part) would cut each other off
    _, unique = np.unique(np.round(notes[:, :3], 4), axis=0, return_index=True)
    return notes[np.sort(unique)]


# 16 sixteenth-note steps per 4/4 bar; GM percussion keys
KICK, RIM, SNARE, CLOSED_HAT, OPEN_HAT, CRASH, RIDE = 36, 37, 38, 42, 46, 49, 51
TOMS = (50, 47, 45)
DRUM_PATTERNS = {
    "rock": {KICK: (0, 8, 10), SNARE: (4, 12), CLOSED_HAT: tuple(range(0, 16, 2))},
    "disco": {KICK: (0, 4, 8, 12), SNARE: (4, 12), OPEN_HAT: (2, 6, 10, 14), CLOSED_HAT: (0, 4, 8, 12)},
    "halftime": {KICK: (0, 6), SNARE: (8,), RIDE: tuple(range(0, 16, 2))},
    "shuffle": {KICK: (0, 8), SNARE: (4, 12), CLOSED_HAT: (0, 3, 4, 7, 8, 11, 12, 15)},
    "latin": {KICK: (0, 6, 8, 14), RIM: (3, 6, 10, 12), CLOSED_HAT: tuple(range(16))},
}


def drum_notes(rng: np.random.Generator, seconds_per_quarter: float, duration: float) -> np.ndarray:
    """A drum-kit groove at the clip's tempo (beat folded into 0.4-0.8 s), with crashes and tom fills."""
    beat = seconds_per_quarter
    while beat < 0.4:
        beat *= 2
    while beat > 0.8:
        beat /= 2
    step = beat / 4
    name = sorted(DRUM_PATTERNS)[int(rng.integers(len(DRUM_PATTERNS)))]
    pattern = DRUM_PATTERNS[name]
    base = rng.uniform(80, 115)
    rows = []
    n_bars = math.ceil(duration / (16 * step))
    for bar in range(n_bars):
        fill = bar % 4 == 3 and rng.random() < 0.5
        for key, steps in pattern.items():
            for s in steps:
                if fill and s >= 12:
                    continue
                accent = 8 if s % 4 == 0 else 0
                rows.append((bar * 16 + s, key, base + accent + rng.normal(0, 5)))
        if fill:
            for j, s in enumerate(range(12, 16)):
                rows.append((bar * 16 + s, TOMS[min(j, 2)], base + rng.normal(0, 5)))
        if bar % 4 == 0 and rng.random() < 0.5:
            rows.append((bar * 16, CRASH, base + 5))
    hit = min(0.12, 0.8 * step)  # shorter than a step, so repeated hits of one key never overlap
    notes = np.array([(i * step, i * step + hit, key, vel) for i, key, vel in rows], dtype=float)
    notes = notes[notes[:, 0] < duration]
    notes[:, 1] = np.minimum(notes[:, 1], duration)
    notes[:, 3] = np.clip(notes[:, 3], 30, 127).round()
    return notes[np.argsort(notes[:, 0], kind="stable")]


def arrange_clip(rng: np.random.Generator, parts: list[np.ndarray], classes: tuple[str, ...],
                 duration: float, min_fraction: float = 0.25) -> tuple[list[Voice], float]:
    """Voices for the melodic classes and drums of a clip, and the seconds per quarter used.

    Tempo follows the score's note values (median note 0.3-0.6 s), so chorales and polyphony in long
    note values both move at a natural pace. A melodic class only gets a part that sounds for at least
    min_fraction of the window; classes beyond the number of such parts are dropped.
    """
    melodic = [c for c in classes if is_melodic(c)]
    durations = np.concatenate([p[:, 1] for p in parts if len(p)]) if parts else np.ones(1)
    seconds_per_quarter = rng.uniform(0.3, 0.6) / float(np.median(durations))
    length = duration / seconds_per_quarter
    voices: list[Voice] = []
    if melodic and parts:
        start, playing = choose_window(rng, parts, length, len(melodic), min_fraction)
        chosen = rng.choice(playing, size=min(len(melodic), len(playing)), replace=False) if playing else []
        transpose = int(rng.integers(-3, 4))
        for channel, (name, part_index) in enumerate(zip(melodic, chosen)):
            inst = INSTRUMENTS[name]
            rows = excerpt(parts[int(part_index)], start, length)
            notes = part_notes(rng, rows, seconds_per_quarter, duration, inst, transpose)
            voices.append(Voice(name, channel, inst.program, notes))
    if DRUMS in classes:
        voices.append(Voice(DRUMS, DRUM_CHANNEL, -1, drum_notes(rng, seconds_per_quarter, duration)))
    return voices, seconds_per_quarter


def voice_sounds(voice: Voice, duration: float, min_fraction: float) -> bool:
    """True when the voice's notes cover at least min_fraction of the clip (drums: any hits)."""
    if len(voice.notes) == 0:
        return False
    if voice.name == DRUMS:
        return True
    rows = np.stack([voice.notes[:, 0], voice.notes[:, 1] - voice.notes[:, 0]], axis=1)
    return sounding_length(rows, 0.0, duration) >= min_fraction * duration


def label_string(names: list[str] | tuple[str, ...], classes: tuple[str, ...]) -> str:
    """The manifest's label cell: the exact set, in the class set's order, ';'-separated."""
    order = {c: i for i, c in enumerate(classes)}
    return ";".join(sorted(set(names), key=order.__getitem__))
