"""Corruptions: measured SNR, pink spectrum, reproducible draws, causal length-preserving reverb, specs."""
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


def test_pink_noise_power_falls_as_one_over_f():
    from audiotokens.data.corrupt import pink_noise

    noise = pink_noise(2**18, np.random.default_rng(0))
    frequencies, power = scipy.signal.welch(noise, fs=1.0, nperseg=4096)
    band = (frequencies > 1e-3) & (frequencies < 0.4)
    slope = np.polyfit(np.log10(frequencies[band]), np.log10(power[band]), 1)[0]
    assert abs(slope + 1.0) < 0.1


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
    ("noise:snr=10,kind=brown", "kind must be one of white, pink"),
    ("noise:snr=10,level=3", "unknown key 'level'"),
    ("noise:snr", "'snr' is not key=value"),
    ("reverb:", "exactly one of rt60"),
    ("reverb:rt60=-1", "rt60 must be positive"),
    ("reverb:dir=/nonexistent/rooms", "is not a folder"),
    ("noise:snr=nan", "must be finite"),
])
def test_bad_specs_are_one_line_user_errors_naming_the_spec(spec, message):
    with pytest.raises(UserError, match=message) as error:
        parse_corruption(spec)
    assert spec in str(error.value) and "\n" not in str(error.value)


def test_folder_without_audio_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(UserError, match="no audio files"):
        parse_corruption(f"noise:dir={tmp_path},snr=5")


def test_clip_seed_depends_on_run_seed_and_clip_id_only():
    from audiotokens.data.corrupt import clip_seed

    assert clip_seed(0, "clip1") == clip_seed(0, "clip1")
    assert len({clip_seed(0, "clip1"), clip_seed(1, "clip1"), clip_seed(0, "clip2")}) == 3
