"""Corruptions: measured SNR, pink and brown spectra, gain, tilt, reproducible draws, causal length-preserving
reverb, specs, and the random chains of noisy training (RandomCorruption)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from audiotokens.data.corrupt import noise_of, parse_corruption
from audiotokens.errors import UserError

RATE = 16000


def _tone(seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)).astype(np.float32)


def _measured_snr(clean: np.ndarray, corrupted: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    noise = corrupted.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2))


@pytest.mark.parametrize("spec, snr", [("noise:snr=20", 20), ("noise:snr=5,kind=pink", 5),
                                       ("noise:snr=-3", -3), ("noise:snr=10,kind=white", 10)])
def test_noise_has_the_requested_snr(spec, snr):
    clean = _tone()
    corrupted = parse_corruption(spec).apply(clean, RATE, seed=1)
    assert corrupted.shape == clean.shape and corrupted.dtype == clean.dtype
    assert abs(_measured_snr(clean, corrupted) - snr) < 0.05


def test_recorded_noise_is_looped_resampled_and_at_the_snr(tmp_path):
    folder = tmp_path / "noises"
    folder.mkdir()
    rng = np.random.default_rng(5)
    sf.write(folder / "hum.wav", (0.2 * rng.standard_normal(8000)).astype(np.float32), 8000)  # 1 s at 8 kHz
    corruption = parse_corruption(f"noise:dir={folder},snr=10")
    clean = _tone(3.0)
    corrupted = corruption.apply(clean, RATE, seed=0)
    assert corrupted.shape == clean.shape
    assert abs(_measured_snr(clean, corrupted) - 10) < 0.05
    added = corrupted.astype(np.float64) - clean
    # a 1 s recording looped over 3 s: the added noise repeats every second (16000 samples)
    assert np.allclose(added[:16000], added[16000:32000], atol=1e-6)


def test_same_seed_same_signal_other_seed_other_signal():
    clean = _tone()
    for spec in ("noise:snr=10", "noise:snr=10,kind=pink", "reverb:rt60=0.3"):
        corruption = parse_corruption(spec)
        first = corruption.apply(clean, RATE, seed=42)
        assert np.array_equal(first, parse_corruption(spec).apply(clean, RATE, seed=42)), spec
        assert not np.array_equal(first, corruption.apply(clean, RATE, seed=43)), spec


@pytest.mark.parametrize("kind, exponent", [("pink", 1.0), ("brown", 2.0)])
def test_coloured_noise_power_falls_as_a_power_of_f(kind, exponent):
    from audiotokens.data.corrupt import COLOURED

    noise = COLOURED[kind](2**18, np.random.default_rng(0))
    frequencies, power = scipy.signal.welch(noise, fs=1.0, nperseg=4096)
    band = (frequencies > 1e-3) & (frequencies < 0.4)
    slope = np.polyfit(np.log10(frequencies[band]), np.log10(power[band]), 1)[0]
    assert abs(slope + exponent) < 0.1


def test_brown_noise_spec_hits_its_snr():
    clean = _tone()
    corrupted = parse_corruption("noise:snr=8,kind=brown").apply(clean, RATE, seed=3)
    assert abs(_measured_snr(clean, corrupted) - 8) < 0.05


def test_gain_scales_the_level_exactly():
    clean = _tone()
    quieter = parse_corruption("gain:db=-6").apply(clean, RATE, seed=0)
    assert quieter.dtype == clean.dtype
    level = 10 * np.log10(np.mean(quieter.astype(np.float64) ** 2) / np.mean(clean.astype(np.float64) ** 2))
    assert abs(level + 6) < 1e-4


def test_eq_tilt_changes_colour_by_its_db_per_octave_and_keeps_the_power():
    rng = np.random.default_rng(0)
    white = (0.1 * rng.standard_normal(4 * RATE)).astype(np.float32)
    tilted = parse_corruption("eq:tilt=3").apply(white, RATE, seed=0)
    assert tilted.shape == white.shape
    power = [np.mean(x.astype(np.float64) ** 2) for x in (white, tilted)]
    assert np.isclose(*power, rtol=1e-4)
    frequencies, before = scipy.signal.welch(white, fs=RATE, nperseg=2048)
    _, after = scipy.signal.welch(tilted, fs=RATE, nperseg=2048)
    gain_db = 10 * np.log10(after / before)
    band = (frequencies >= 100) & (frequencies <= 6000)
    slope = np.polyfit(np.log2(frequencies[band]), gain_db[band], 1)[0]  # dB per octave
    assert abs(slope - 3) < 0.1


def test_reverb_preserves_length_and_is_causal():
    onset = 5000
    impulse = np.zeros(RATE, dtype=np.float32)
    impulse[onset] = 1.0
    wet = parse_corruption("reverb:rt60=0.4").apply(impulse, RATE, seed=0)
    assert wet.shape == impulse.shape and wet.dtype == impulse.dtype
    # nothing before the impulse (up to FFT rounding, ~1e-18; a non-causal filter leaks ~1e-2 here)
    assert np.abs(wet[:onset]).max() < 1e-9 * np.abs(wet).max()
    assert wet[onset] != 0 and np.count_nonzero(wet[onset:]) > 0.3 * RATE


def test_synthetic_reverb_decays_by_60_db_over_rt60():
    from audiotokens.data.corrupt import synthetic_response

    rt60 = 0.5
    response = synthetic_response(rt60, RATE, np.random.default_rng(0))
    assert len(response) == int(rt60 * RATE) and np.isclose(np.sum(response ** 2), 1.0)
    tail = response[1:] ** 2  # without the direct path
    # Schroeder backward integration: energy decay curve, fit over -5 … -35 dB (the T30 convention)
    decay = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
    fit = (decay < -5) & (decay > -35)
    slope_db_per_s = np.polyfit(np.flatnonzero(fit) / RATE, decay[fit], 1)[0]
    assert abs(-60.0 / slope_db_per_s - rt60) < 0.05 * rt60


def test_recorded_impulse_response_starts_at_its_peak(tmp_path):
    folder = tmp_path / "rooms"
    folder.mkdir()
    response = np.zeros(4000, dtype=np.float32)
    response[300] = 0.8  # 300 samples of pre-delay before the direct sound
    response[900] = 0.4
    sf.write(folder / "room.wav", response, RATE)
    impulse = np.zeros(RATE, dtype=np.float32)
    impulse[100] = 1.0
    wet = parse_corruption(f"reverb:dir={folder}").apply(impulse, RATE, seed=0)
    peaks = np.flatnonzero(np.abs(wet) > 1e-3)
    assert peaks.tolist() == [100, 700]
    assert np.isclose(wet[100] / wet[700], 2.0, rtol=1e-4)


def test_silent_clip_is_returned_unchanged():
    silence = np.zeros(RATE, dtype=np.float32)
    out = parse_corruption("noise:snr=10").apply(silence, RATE, seed=0)
    assert np.array_equal(out, silence) and np.isfinite(out).all()


def test_names_for_tables():
    assert parse_corruption("noise:snr=5,kind=pink").name == "noise_pink_snr5"
    assert parse_corruption("noise:snr=20").name == "noise_white_snr20"
    assert parse_corruption("reverb:rt60=0.6").name == "reverb_rt60_0.6"
    assert parse_corruption("noise:snr=10,kind=brown").name == "noise_brown_snr10"
    assert parse_corruption("gain:db=-6").name == "gain_db-6"
    assert parse_corruption("eq:tilt=2").name == "eq_tilt2"


@pytest.mark.parametrize("spec, noise", [
    ("noise:snr=20", ("white", 20.0)), ("noise:snr=-5,kind=pink", ("pink", -5.0)),
    ("noise:snr=2.5", ("white", 2.5)), ("noise:snr=1e-7", ("white", 1e-7)), ("reverb:rt60=0.3", None),
])
def test_a_noise_name_gives_back_its_source_and_snr(spec, noise):
    assert noise_of(parse_corruption(spec).name) == noise


@pytest.mark.parametrize("spec, message", [
    ("echo:delay=3", "unknown corruption 'echo'"),
    ("noise:kind=pink", "noise needs snr"),
    ("noise:snr=loud", "snr must be a number"),
    ("noise:snr=10,kind=blue", "kind must be one of white, pink, brown"),
    ("gain:", "gain needs db"),
    ("eq:tilt=steep", "tilt must be a number"),
    ("noise:snr=10,level=3", "unknown key 'level'"),
    ("noise:snr", "'snr' is not key=value"),
    ("reverb:", "exactly one of rt60"),
    ("reverb:rt60=-1", r"rt60 must be in \(0, 30\] seconds, got -1"),
    ("reverb:dir=/nonexistent/rooms", "is not a folder"),
    ("noise:snr=nan", "must be finite"),
    ("noise:snr=-1000", r"snr must be in \[-60, 120\] dB, got -1000"),
    ("noise:snr=500,kind=pink", r"snr must be in \[-60, 120\] dB, got 500"),
    ("reverb:rt60=1e7", r"rt60 must be in \(0, 30\] seconds, got 1e\+07"),
])
def test_bad_specs_are_one_line_user_errors_naming_the_spec(spec, message):
    with pytest.raises(UserError, match=message) as error:
        parse_corruption(spec)
    assert spec in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("spec", ["noise:snr=-60", "noise:snr=120,kind=pink", "reverb:rt60=30"])
def test_the_ends_of_the_ranges_give_finite_clips_of_the_same_length(spec):
    clean = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32)
    corrupted = parse_corruption(spec).apply(clean, RATE, seed=0)
    assert corrupted.shape == clean.shape and corrupted.dtype == clean.dtype and np.isfinite(corrupted).all()


def test_folder_without_audio_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(UserError, match="no audio files"):
        parse_corruption(f"noise:dir={tmp_path},snr=5")


def test_clip_seed_depends_on_run_seed_and_clip_id_only():
    from audiotokens.data.corrupt import clip_seed

    assert clip_seed(0, "clip1") == clip_seed(0, "clip1")
    assert len({clip_seed(0, "clip1"), clip_seed(1, "clip1"), clip_seed(0, "clip2")}) == 3


# ---------------------------------------------------------------- random chains ([augment])


def _augment(**values):
    import dataclasses

    from audiotokens.config import AugmentConfig
    from audiotokens.data.corrupt import RandomCorruption

    off = {f"{step}_probability": 0.0 for step in ("noise", "reverb", "gain", "eq")}
    return RandomCorruption.from_settings(dataclasses.replace(AugmentConfig(), copies=1, **{**off, **values}))


def test_training_copies_hit_the_requested_snr_range_measured_on_the_waveform():
    augment = _augment(noise_probability=1.0, snr_low=4.0, snr_high=16.0)
    clean = _tone(1.0)
    seeds = [augment.copy_seed(f"clip{i}", 1) for i in range(40)]
    measured = [_measured_snr(clean, augment.apply(clean, RATE, seed)) for seed in seeds]
    assert min(measured) > 4.0 - 0.05 and max(measured) < 16.0 + 0.05
    assert min(measured) < 6.0 and max(measured) > 14.0  # drawn over the whole range, not one value
    kinds = {augment.chain(seed)[0][0].noise for seed in seeds}
    assert kinds == {"white", "pink", "brown"}


def test_training_copies_reverberate_within_the_requested_rt60_range():
    augment = _augment(reverb_probability=1.0, rt60_low=0.3, rt60_high=0.6)
    impulse = np.zeros(RATE, dtype=np.float32)
    impulse[0] = 1.0
    measured = []
    for i in range(12):
        response = augment.apply(impulse, RATE, augment.copy_seed(f"clip{i}", 1)).astype(np.float64)
        tail = response[1:] ** 2  # the room's response to the impulse, without the direct path
        decay = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
        fit = (decay < -5) & (decay > -35)
        measured.append(-60.0 / np.polyfit(np.flatnonzero(fit) / RATE, decay[fit], 1)[0])
    assert 0.3 * 0.95 < min(measured) and max(measured) < 0.6 * 1.05
    assert max(measured) - min(measured) > 0.1


def test_probabilities_pick_how_many_copies_get_each_corruption_and_every_copy_is_reproducible():
    augment = _augment(noise_probability=0.5, gain_probability=1.0)
    chains = [augment.chain(augment.copy_seed(f"clip{i}", number)) for i in range(200) for number in (1, 2)]
    noisy = sum(any(c.kind == "noise" for c, _ in chain) for chain in chains)
    assert 160 < noisy < 240 and all(chain[-1][0].kind == "gain" for chain in chains)
    clean = _tone(0.5)
    first = augment.apply(clean, RATE, augment.copy_seed("clip1", 1))
    assert np.array_equal(first, _augment(noise_probability=0.5, gain_probability=1.0).apply(
        clean, RATE, augment.copy_seed("clip1", 1)))
    pairs = (("clip1", 1), ("clip1", 2), ("clip2", 1))
    assert len({augment.copy_seed(clip, number) for clip, number in pairs}) == 3


def test_recorded_noise_and_responses_are_drawn_from_the_folders(tmp_path):
    noises, rooms = tmp_path / "noises", tmp_path / "rooms"
    noises.mkdir()
    rooms.mkdir()
    hum = 0.2 * np.random.default_rng(1).standard_normal(RATE)
    sf.write(noises / "hum.wav", hum.astype(np.float32), RATE)
    response = np.zeros(2000, dtype=np.float32)
    response[0], response[700] = 1.0, 0.5
    sf.write(rooms / "room.wav", response, RATE)
    augment = _augment(noise_probability=1.0, noise_kinds="", noise_dir=str(noises), snr_low=10.0,
                       snr_high=10.0)
    clean = _tone(1.0)
    assert abs(_measured_snr(clean, augment.apply(clean, RATE, 5)) - 10) < 0.05
    echo = _augment(reverb_probability=1.0, ir_dir=str(rooms))
    impulse = np.zeros(RATE, dtype=np.float32)
    impulse[10] = 1.0
    assert np.flatnonzero(np.abs(echo.apply(impulse, RATE, 0)) > 1e-3).tolist() == [10, 710]


@pytest.mark.parametrize("values, message", [
    ({"noise_kinds": "white,blue"}, r"'augment.noise_kinds' lists 'blue'"),
    ({"noise_kinds": "", "noise_probability": 0.5}, r"'augment.noise_probability' > 0 needs a noise source"),
    ({"noise_dir": "/nonexistent/noises"}, r"'augment.noise_dir': dir /nonexistent/noises is not a folder"),
    ({"ir_dir": "/nonexistent/rooms"}, r"'augment.ir_dir': dir /nonexistent/rooms is not a folder"),
])
def test_bad_augment_settings_are_one_line_errors_naming_the_key(values, message):
    with pytest.raises(UserError, match=message) as error:
        _augment(**values)
    assert "\n" not in str(error.value)


def test_augment_ranges_are_checked_when_the_config_is_loaded():
    from audiotokens.config import load_config

    with pytest.raises(UserError, match=r"'augment.snr_low' \(20.0\) must be <= 'augment.snr_high' \(10.0\)"):
        load_config(overrides=["augment.snr_low=20", "augment.snr_high=10"])
    with pytest.raises(UserError, match="'augment.rt60_low' must be positive"):
        load_config(overrides=["augment.rt60_low=0"])
