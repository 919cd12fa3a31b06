"""The benchmark/demo data renderer (scripts/render_bench.py and its helpers): plans, excerpts, labels,
groups, the numpy fallback synthesiser and the manifest; fluidsynth rendering is marked slow."""
from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_arrange as ba
import bench_synth as bs
import render_bench as rb


def covered(rows: np.ndarray, start: float, length: float, step: float = 0.01) -> float:
    """Brute-force oracle: how much of [start, start+length) some (onset, duration) row covers."""
    grid = start + np.arange(0, length, step) + step / 2
    hit = ((grid[:, None] >= rows[None, :, 0]) & (grid[:, None] < rows[None, :, 0] + rows[None, :, 1])).any(1)
    return float(hit.sum() * step)


def random_part(rng: np.random.Generator, n: int = 40, gap_prob: float = 0.3) -> np.ndarray:
    """A monophonic line with rests, plus a few chords (same onset, several pitches)."""
    rows, t = [], 0.0
    for _ in range(n):
        if rng.random() < gap_prob:
            t += float(rng.choice([0.5, 1.0, 2.0]))
        d = float(rng.choice([0.5, 1.0, 1.5, 2.0]))
        rows.append((t, d, float(rng.integers(40, 80))))
        if rng.random() < 0.2:
            rows.append((t, d, rows[-1][2] + 4))
        t += d
    return np.array(rows)


# ---------- plans, pools, groups ----------

def test_plans_are_deterministic_independent_of_n_and_within_limits():
    classes = ba.PRESETS["bench"]
    plans = ba.plan_clips(300, classes, 4, seed=3)
    assert plans == ba.plan_clips(300, classes, 4, seed=3)
    assert plans[:50] == ba.plan_clips(50, classes, 4, seed=3)
    assert plans != ba.plan_clips(300, classes, 4, seed=4)
    for plan in plans:
        assert 1 <= len(plan.classes) <= 4
        assert len(set(plan.classes)) == len(plan.classes)
        assert set(plan.classes) <= set(classes)
    assert [p.clip_id for p in plans] == [f"clip{i:05d}" for i in range(300)]
    assert {len(p.classes) for p in plans} == {1, 2, 3, 4}


def test_plans_use_every_class_about_equally():
    classes = ba.PRESETS["demo"]
    n = 4000
    counts = Counter(c for p in ba.plan_clips(n, classes, 3, seed=0) for c in p.classes)
    p = 2.0 / len(classes)  # mean of k in 1..3 is 2, each class equally likely
    sigma = math.sqrt(n * p * (1 - p))
    for name in classes:
        assert abs(counts[name] - n * p) < 5 * sigma, (name, counts[name])


def test_assign_scores_keeps_clips_per_score_and_wraps_small_pools():
    positions = ba.assign_scores(10, pool_size=100, clips_per_score=3)
    assert max(positions) + 1 == 4  # ceil(10 / 3) scores
    assert Counter(positions) == {0: 3, 1: 3, 2: 2, 3: 2}
    positions = ba.assign_scores(10, pool_size=2, clips_per_score=3)
    assert Counter(positions) == {0: 5, 1: 5}


def test_order_pool_keeps_tiers_in_order_and_is_seeded():
    tiers = [[f"a{i}" for i in range(20)], [f"b{i}" for i in range(30)]]
    ordered = ba.order_pool(tiers, seed=1)
    assert sorted(ordered[:20]) == sorted(tiers[0]) and sorted(ordered[20:]) == sorted(tiers[1])
    assert ordered != sorted(ordered)
    assert ordered == ba.order_pool([tiers[0][::-1], tiers[1][::-1]], seed=1)  # input order does not matter
    assert ordered != ba.order_pool(tiers, seed=2)


def test_score_group_joins_versions_of_one_chorale_only():
    assert ba.score_group("bach/bwv190.7-inst") == ba.score_group("bach/bwv190.7") == "bach/bwv190.7"
    assert ba.score_group("bach/bwv18.5-w") == ba.score_group("bach/bwv18.5-lz")
    assert ba.score_group("bach/bwv18.5-w") != ba.score_group("bach/bwv18.6")
    assert ba.score_group("palestrina/Agnus_00") == "palestrina/Agnus_00"
    assert ba.score_group("synth/0003") == "synth/0003"
    assert rb.score_id("/x/corpus/bach/bwv1.6.mxl") == "bach/bwv1.6"


def test_label_string_is_the_exact_set_in_class_order():
    classes = ba.PRESETS["bench"]
    assert ba.label_string(["speech", "piano", "drums", "piano"], classes) == "piano;drums;speech"
    assert ba.label_string(["flute"], classes) == "flute"


# ---------- excerpts and arrangement ----------

def test_sounding_length_matches_a_raster_oracle():
    rng = np.random.default_rng(0)
    for _ in range(20):
        part = random_part(rng)
        start, length = float(rng.uniform(0, 20)), float(rng.uniform(2, 15))
        expected = covered(part, start, length)
        assert ba.sounding_length(part, start, length) == pytest.approx(expected, abs=0.02)
    assert ba.sounding_length(np.zeros((0, 3)), 0, 4) == 0.0


def test_excerpt_sounds_exactly_where_the_score_does():
    rng = np.random.default_rng(1)
    part = random_part(rng)
    start, length = 7.25, 9.0
    rows = ba.excerpt(part, start, length)
    assert (rows[:, 0] >= 0).all() and (rows[:, 0] + rows[:, 1] <= length + 1e-9).all()
    grid = np.arange(0, length, 0.05) + 0.025
    for t in grid:
        in_score = {p for on, d, p in part if on <= start + t < on + d}
        in_excerpt = {p for on, d, p in rows if on <= t < on + d}
        assert in_score == in_excerpt


def test_fit_range_moves_by_octaves_into_the_range():
    rng = np.random.default_rng(2)
    for _ in range(50):
        pitches = rng.integers(30, 100, 20).astype(float)
        low = int(rng.integers(28, 60))
        high = low + int(rng.integers(14, 40))
        out = ba.fit_range(pitches, low, high)
        assert ((out >= low) & (out <= high)).all()
        assert (np.mod(out - pitches, 12) == 0).all()  # pitch classes kept
    line = np.array([60.0, 62, 64, 65, 67])
    moved = ba.fit_range(line, 72, 96)
    assert (np.diff(moved) == np.diff(line)).all()  # a line that fits keeps its intervals


def test_choose_window_finds_a_window_where_enough_parts_sound():
    rng = np.random.default_rng(3)
    busy = np.array([(t, 1.0, 60.0) for t in range(64)])
    late = np.array([(t, 1.0, 55.0) for t in range(40, 64)])  # silent for the first 40 beats
    start, playing = ba.choose_window(rng, [busy, late], 12.0, need=2, min_fraction=0.25)
    assert playing == [0, 1]
    for i in playing:
        assert covered([busy, late][i], start, 12.0) >= 0.25 * 12.0 - 0.02


def test_arrange_clip_gives_only_sounding_parts_to_instruments():
    rng = np.random.default_rng(4)
    duration = 10.0
    silent = np.array([(0.0, 0.25, 60.0)])  # too short to count as sounding in any window
    parts = [random_part(rng, 60, 0.1), silent, random_part(rng, 60, 0.1)]
    for seed in range(10):
        classes = ("violin", "cello", "flute", "drums")
        voices, spq = ba.arrange_clip(np.random.default_rng(seed), parts, classes, duration)
        names = [v.name for v in voices]
        assert names[-1] == "drums" and voices[-1].channel == ba.DRUM_CHANNEL
        melodic = voices[:-1]
        assert 1 <= len(melodic) <= 2  # only two parts can sound
        channels = {v.channel for v in melodic}
        assert len(channels) == len(melodic) and ba.DRUM_CHANNEL not in channels
        for v in melodic:
            inst = ba.INSTRUMENTS[v.name]
            assert v.program == inst.program
            assert (v.notes[:, 0] >= 0).all() and (v.notes[:, 1] <= duration + 1e-9).all()
            assert (v.notes[:, 1] > v.notes[:, 0]).all()
            assert ((v.notes[:, 2] >= inst.low) & (v.notes[:, 2] <= inst.high)).all()
            assert ((v.notes[:, 3] >= 1) & (v.notes[:, 3] <= 127)).all()
            rows = np.stack([v.notes[:, 0], v.notes[:, 1] - v.notes[:, 0]], 1)
            assert covered(rows, 0, duration) >= 0.2 * duration
        assert 0.3 / 2.0 <= spq <= 0.6 / 0.5  # median note value of these parts is within [0.5, 2]


def test_voice_sounds_applies_the_fraction():
    notes = np.array([[0.0, 2.0, 60, 90], [1.0, 2.4, 64, 90]])
    assert ba.voice_sounds(ba.Voice("piano", 0, 0, notes), 10.0, 0.24)
    assert not ba.voice_sounds(ba.Voice("piano", 0, 0, notes), 10.0, 0.25)
    assert not ba.voice_sounds(ba.Voice("piano", 0, 0, np.zeros((0, 4))), 10.0, 0.1)


def test_drum_notes_follow_a_grid_inside_the_clip():
    rng = np.random.default_rng(5)
    for spq in (0.15, 0.5, 1.3):
        notes = ba.drum_notes(rng, spq, 10.0)
        assert len(notes) > 10
        assert (notes[:, 0] >= 0).all() and (notes[:, 0] < 10.0).all() and (notes[:, 1] <= 10.0).all()
        assert (np.diff(notes[:, 0]) >= 0).all()
        assert set(notes[:, 2].astype(int)) <= {36, 37, 38, 42, 45, 46, 47, 49, 50, 51}
        beat = spq * 2 ** np.round(np.log2(0.6 / spq))
        steps = notes[:, 0] / (beat / 4)
        assert np.allclose(steps, np.round(steps), atol=1e-6)


def test_midi_round_trip_keeps_notes_programs_and_drum_channel(tmp_path):
    mido = pytest.importorskip("mido")
    parts = [random_part(np.random.default_rng(7), 60, 0.1)] * 2
    voices, _ = ba.arrange_clip(np.random.default_rng(6), parts, ("organ", "trumpet", "drums"), 8.0)
    rb.build_midi(voices).save(tmp_path / "x.mid")
    now, programs, sounding, played = 0.0, {}, {}, []
    for msg in mido.MidiFile(tmp_path / "x.mid"):  # iteration gives times in seconds
        now += msg.time
        if msg.type == "program_change":
            programs[msg.channel] = msg.program
        elif msg.type == "note_on" and msg.velocity > 0:
            sounding[(msg.channel, msg.note)] = (now, msg.velocity)
        elif msg.type in ("note_off", "note_on"):
            start, velocity = sounding.pop((msg.channel, msg.note))
            played.append((msg.channel, start, now, msg.note, velocity))
    assert not sounding
    expected = sorted((v.channel, *row) for v in voices for row in v.notes)
    got = sorted(played)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g[0] == e[0] and g[3:] == tuple(int(x) for x in e[3:])
        assert g[1] == pytest.approx(e[1], abs=1e-3) and g[2] == pytest.approx(e[2], abs=1e-3)
    assert programs == {v.channel: v.program for v in voices if v.program >= 0}
    assert {v.channel for v in voices if v.name == "drums"} == {9}


# ---------- signal helpers ----------

def test_fit_length_and_loudness_normalise():
    x = np.ones(10, dtype=np.float32)
    assert len(rb.fit_length(x, 4)) == 4
    assert len(rb.fit_length(x, 15)) == 15 and rb.fit_length(x, 15)[10:].sum() == 0
    rng = np.random.default_rng(8)
    noise = rng.normal(0, 0.01, 44100).astype(np.float32)
    out = rb.loudness_normalise(noise, -20.0)
    assert 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2))) == pytest.approx(-20.0, abs=0.01)
    spiky = np.zeros(44100, dtype=np.float32)
    spiky[100] = 1.0  # reaching -20 dB RMS would need a peak far above full scale
    out = rb.loudness_normalise(spiky, -20.0, peak=0.95)
    assert np.abs(out).max() == pytest.approx(0.95, rel=1e-6)
    assert rb.loudness_normalise(np.zeros(10, np.float32), -20.0).sum() == 0


def test_active_seconds_counts_the_sounding_part():
    sr = 16000
    t = np.arange(sr) / sr
    signal = np.concatenate([np.zeros(sr), np.sin(2 * np.pi * 440 * t), np.zeros(2 * sr)]).astype(np.float32)
    assert rb.active_seconds(signal, sr) == pytest.approx(1.0, abs=0.04)
    assert rb.active_seconds(np.zeros(sr, np.float32), sr) == 0.0


def test_place_puts_the_whole_signal_inside_or_crops_it():
    rng = np.random.default_rng(9)
    short = np.ones(100, np.float32)
    assert rb.place(rng, short, 1000).sum() == 100
    long = np.arange(5000, dtype=np.float32)
    piece = rb.place(rng, long, 1000)
    assert len(piece) == 1000 and (np.diff(piece) == 1).all()


# ---------- numpy fallback synthesiser ----------

def spectrum(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr), mag


@pytest.mark.parametrize("name", sorted(bs.TIMBRES))
def test_tones_are_harmonic_at_the_requested_pitch(name):
    sr = 22050
    x = bs.tone(name, 57.0, 1.0, sr, np.random.default_rng(0))  # A3 = 220 Hz
    assert np.isfinite(x).all() and np.abs(x).max() > 0
    freqs, mag = spectrum(x[: sr], sr)
    peaks = freqs[np.argsort(mag)[-3:]]
    ratios = peaks / 220.0
    assert np.allclose(ratios, np.round(ratios), atol=0.03), (name, peaks)


def test_timbres_differ_in_envelope_and_brightness():
    sr = 22050
    rng = np.random.default_rng(1)

    def energy(x, a, b):
        return float(np.mean(x[int(a * sr): int(b * sr)] ** 2))

    def centroid(x):
        freqs, mag = spectrum(x[: sr // 2], sr)
        return float((freqs * mag).sum() / mag.sum())

    for plucked in ("piano", "guitar"):
        x = bs.tone(plucked, 60, 1.5, sr, rng)
        assert energy(x, 1.1, 1.4) < 0.5 * energy(x, 0.1, 0.4)
    for sustained in ("organ", "flute", "violin", "trumpet"):
        x = bs.tone(sustained, 60, 1.5, sr, rng)
        assert energy(x, 1.1, 1.4) == pytest.approx(energy(x, 0.2, 0.5), rel=0.3)
    assert centroid(bs.tone("trumpet", 60, 1.0, sr, rng)) > 2 * centroid(bs.tone("flute", 60, 1.0, sr, rng))


def test_drum_hits_are_finite_and_decay():
    sr = 22050
    for key in (36, 37, 38, 42, 45, 46, 47, 49, 50, 51):
        x = bs.drum_hit(key, sr, np.random.default_rng(key))
        assert np.isfinite(x).all()
        assert np.mean(x[-sr // 10:] ** 2) < 0.2 * np.mean(x[: sr // 10] ** 2)


def test_render_voices_has_exact_length_and_follows_the_notes():
    sr, duration = 22050, 3.0
    notes = np.array([[0.0, 0.8, 60, 100]])
    out = bs.render_voices([ba.Voice("organ", 0, 19, notes)], sr, duration, np.random.default_rng(0))
    assert out.shape == (int(duration * sr),) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out[int(1.2 * sr):]).max() < 1e-3 * np.abs(out[: int(0.8 * sr)]).max()
    assert not bs.render_voices([], sr, duration, np.random.default_rng(0)).any()


def test_synthetic_score_stays_in_its_registers():
    parts = bs.synthetic_score(np.random.default_rng(3), n_parts=4, n_chords=16)
    assert len(parts) == 4
    for part, (low, high) in zip(parts, bs.REGISTERS):
        assert ((part[:, 2] >= low) & (part[:, 2] <= high)).all()
        assert (part[:, 1] > 0).all() and (np.diff(part[:, 0]) > 0).all()
        assert part[-1, 0] + part[-1, 1] == pytest.approx(32.0)  # 16 chords of two quarters, no gaps
    again = bs.synthetic_score(np.random.default_rng(3), n_parts=4, n_chords=16)
    assert all((a == b).all() for a, b in zip(parts, again))


# ---------- manifest, completeness, whole runs ----------

def test_summary_counts_classes_label_counts_and_groups():
    rows = [{"label": "piano;drums", "group": "bach/a"}, {"label": "piano", "group": "bach/a"},
            {"label": "flute;organ;drums", "group": "palestrina/b"}]
    summary = rb.summarise(rows, ("piano", "organ", "flute", "drums"))
    assert summary["clips_per_class"] == {"piano": 2, "organ": 1, "flute": 1, "drums": 2}
    assert summary["clips_per_label_count"] == {1: 1, 2: 1, 3: 1}
    assert summary["groups"] == 2 and summary["groups_per_source"] == {"bach": 1, "palestrina": 1}
    assert summary["clips_per_group"] == {"min": 1, "median": 2, "max": 2}


def run_numpy(out: Path, n: int, *extra: str) -> int:
    return rb.main([str(out), str(n), "--preset", "demo", "--duration", "1", "--synth", "numpy",
                    "--workers", "2", "--clips-per-score", "2", *extra])


def test_numpy_fallback_run_writes_an_exact_deterministic_manifest(tmp_path, capsys):
    assert run_numpy(tmp_path / "a", 7) == 0
    assert "NUMPY-SYNTHESISED" in capsys.readouterr().out
    rows = rb.read_manifest(tmp_path / "a" / "manifest.csv")
    assert list(rows[0]) == ["path", "label", "group"]
    assert [r["path"] for r in rows] == [f"audio/clip{i:05d}.flac" for i in range(7)]
    plans = ba.plan_clips(7, ba.PRESETS["demo"], 4, seed=0)
    for row, plan in zip(rows, plans):
        labels = row["label"].split(";")
        assert labels and set(labels) <= set(plan.classes)
        assert row["label"] == ba.label_string(labels, ba.PRESETS["demo"])
        audio, sr = sf.read(tmp_path / "a" / row["path"])
        assert sr == 44100 and audio.shape == (44100,) and np.abs(audio).max() > 0.01
    # clips of one score share its group; four scores for seven clips at two clips per score
    groups = [r["group"] for r in rows]
    assert len(set(groups)) == 4 and all(groups[i] == groups[i + 4] for i in range(3))
    record = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert record["synth"] == "numpy" and record["classes"] == list(ba.PRESETS["demo"])

    assert run_numpy(tmp_path / "b", 7) == 0
    for row in rows:
        assert (tmp_path / "a" / row["path"]).read_bytes() == (tmp_path / "b" / row["path"]).read_bytes()
    assert (tmp_path / "a" / "manifest.csv").read_text() == (tmp_path / "b" / "manifest.csv").read_text()


def test_complete_output_is_skipped_and_incomplete_output_rerendered(tmp_path, capsys):
    out = tmp_path / "d"
    assert run_numpy(out, 3) == 0
    assert run_numpy(out, 3, "--check") == 0
    capsys.readouterr()
    assert run_numpy(out, 3) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_numpy(out, 4, "--check") == 1  # another request
    (out / "audio" / "clip00001.flac").unlink()
    assert run_numpy(out, 3, "--check") == 1
    assert run_numpy(out, 3) == 0
    assert (out / "audio" / "clip00001.flac").is_file()
    assert run_numpy(out, 2) == 0  # fewer clips: files of the old request are removed
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["clip00000.flac", "clip00001.flac"]
    with open(out / "manifest.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2


# ---------- real rendering (fluidsynth + music21) ----------

needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not Path(rb.SOUNDFONT).is_file(),
    reason="fluidsynth and fluid-soundfont-gm are not installed")


@pytest.mark.slow
@needs_fluidsynth
def test_corpus_score_parts_match_music21():
    music21 = pytest.importorskip("music21")
    path = str(music21.corpus.getWork("bach/bwv66.6"))
    parts = rb.load_corpus_score(path)
    score = music21.converter.parse(path).stripTies()
    assert len(parts) == len(score.parts) == 4
    for rows, part in zip(parts, score.parts):
        notes = [n for n in part.flatten().notes for _ in n.pitches]
        assert len(rows) == len(notes)
        assert rows[:, 2].tolist() == [p.midi for n in part.flatten().notes for p in n.pitches]


@pytest.mark.slow
@needs_fluidsynth
def test_fluidsynth_render_is_deterministic_and_labelled(tmp_path):
    pytest.importorskip("music21")
    pytest.importorskip("mido")
    args = ["6", "--duration", "3", "--workers", "2", "--clips-per-score", "2"]
    assert rb.main([str(tmp_path / "a"), *args]) == 0
    assert rb.main([str(tmp_path / "b"), *args]) == 0
    rows = rb.read_manifest(tmp_path / "a" / "manifest.csv")
    assert len(rows) == 6 and all(r["group"].startswith("bach/") for r in rows)
    for row in rows:
        audio, sr = sf.read(tmp_path / "a" / row["path"])
        assert sr == 44100 and audio.shape == (3 * 44100,) and np.abs(audio).max() > 0.01
        assert (tmp_path / "a" / row["path"]).read_bytes() == (tmp_path / "b" / row["path"]).read_bytes()
        assert set(row["label"].split(";")) <= set(ba.PRESETS["bench"])


def test_demo_config_loads_and_reads_the_demo_manifest():
    from audiotokens.config import load_config

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "demo.toml")  # unknown keys would raise
    assert config.data.source == "manifest" and config.data.manifest == "demo_data/manifest.csv"
    assert config.split.strategy == "group" and config.train.device == "cpu"
