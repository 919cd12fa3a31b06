"""Spectrogram stage: librosa is the oracle for every stored frame; skips, resume and storage options."""
import dataclasses
import functools
import io
import json
import multiprocessing.pool
import signal
import threading
import time
from pathlib import Path

import librosa
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from spectrogram_workdirs import (
    CLASSES,
    Interrupt,
    clip,
    count_processed,
    distinct_clips,
    interrupt_after,
    tone,
    write_split,
)

import audiotokens.data.audio as audio_module
import audiotokens.features.spectrogram as spectrogram_module
from audiotokens.config import SpectrogramConfig, load_config
from audiotokens.data.audio import AudioError, load_audio, load_mono
from audiotokens.errors import UserError
from audiotokens.features.spectrogram import (
    FFT_BLOCK,
    NPY_HEADER_BYTES,
    MelPower,
    SpectrogramProcessor,
    clip_frames,
    compute_frames,
    params_from_dict,
    params_to_dict,
)
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import ClipIndex, open_split, open_store, spec_digest

TOLERANCE = 1e-5


# ---------------------------------------------------------------- helpers


def oracle(source, params: SpectrogramConfig, duration: float | None = None) -> np.ndarray:
    """librosa.load + melspectrogram + the scaling spectrogram.normalize names, as (frames, n_mels): the
    seed's power_to_db + min-max (clip), an absolute dB range (fixed) or librosa's PCEN example (pcen)."""
    y, _ = librosa.load(source, sr=params.sample_rate, duration=duration)
    return librosa_frames(y, params)


def librosa_frames(y: np.ndarray, params: SpectrogramConfig) -> np.ndarray:
    mel = functools.partial(librosa.feature.melspectrogram, y=y, sr=params.sample_rate, n_fft=params.n_fft,
                            hop_length=params.hop_length, n_mels=params.n_mels, fmin=params.fmin,
                            fmax=params.fmax or None)
    if params.normalize == "pcen":  # librosa.pcen's example: magnitude mel of samples scaled to int32 range
        return librosa.pcen(mel(power=1.0) * 2**31, sr=params.sample_rate, hop_length=params.hop_length).T
    spec = mel()
    if params.normalize == "fixed":
        db = librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=None)
        return ((np.clip(db, params.floor_db, params.ceiling_db) - params.floor_db)
                / (params.ceiling_db - params.floor_db)).T
    if params.db:
        spec = librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=params.top_db or None)
    if params.normalize == "clip":
        span = spec.max() - spec.min()
        spec = (spec - spec.min()) / span if span > 0 else np.zeros_like(spec)
    return spec.T


def run_stage(workdir: Path, *overrides: str, part_clips: int = 256) -> dict:
    config = load_config(None, list(overrides), workdir)
    return SpectrogramProcessor(config, part_clips=part_clips).run()


def stored(workdir: Path, split: str | None = None) -> tuple[np.ndarray, ClipIndex]:
    """The whole frames store with its own index, or with one split's view."""
    layout = Layout(workdir)
    if split is None:
        return open_store(layout.frames, layout.frames_index)
    return open_split(layout, "frames", split)


def frames_of(array: np.ndarray, index: ClipIndex, clip_id: str) -> np.ndarray:
    row = index.ids.index(clip_id)
    return np.asarray(array[index.offsets[row]:index.offsets[row] + index.lengths[row]])


def report(workdir: Path) -> dict:
    return json.loads(Layout(workdir).frames_report.read_text())


# ---------------------------------------------------------------- librosa is the oracle


FORMATS = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}
RATES = (8000, 16000, 44100, 48000)


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """One end-to-end run over wav/flac/ogg x 8/16/44.1/48 kHz x mono/stereo, plus odd but valid files."""
    workdir = tmp_path_factory.mktemp("oracle")
    audio = workdir / "audio"
    audio.mkdir()
    clips = []
    for ext, subtype in FORMATS.items():
        for sr in RATES:
            for channels in (1, 2):
                path = audio / f"{sr}_{channels}ch.{ext}"
                sf.write(path, tone(sr, 1.0, 200.0 + sr / 400, channels, seed=sr + channels), sr, subtype=subtype)
                clips.append(clip(f"{ext}-{sr}-{channels}", path))
    odd = {
        "six-channel.wav": (tone(48000, 1.0, 300.0, 6), 48000, "PCM_16"),
        "eight-bit.wav": (tone(22050, 1.0, 330.0), 22050, "PCM_U8"),
        "24-bit.flac": (tone(44100, 1.0, 440.0, 2), 44100, "PCM_24"),
        "float64.wav": (tone(32000, 1.0, 550.0), 32000, "DOUBLE"),
    }
    for name, (samples, sr, subtype) in odd.items():
        sf.write(audio / name, samples, sr, subtype=subtype)
        clips.append(clip(name, audio / name))
    # FLAC content under a .wav name: decoded by content, not extension
    sf.write(audio / "real-flac.flac", tone(16000, 1.0, 660.0), 16000)
    (audio / "real-flac.flac").rename(audio / "flac-named.wav")
    clips.append(clip("flac-named.wav", audio / "flac-named.wav"))
    write_split(workdir, {"train": clips[::2], "validation": clips[1::2]})
    counts = run_stage(workdir, "spectrogram.workers=2")
    return workdir, clips, counts


def test_stored_frames_equal_librosa_for_every_format_rate_and_layout(oracle_run):
    workdir, clips, counts = oracle_run
    params = SpectrogramConfig()
    assert counts["clips"] == len(clips) and counts["skipped"] == 0
    for split, expected in (("train", clips[::2]), ("validation", clips[1::2])):
        array, index = stored(workdir, split)
        assert array.dtype == np.float32 and array.shape[1] == params.n_mels
        assert index.ids == [c["id"] for c in expected]
        for c in expected:
            want = oracle(c["audio"], params)
            got = frames_of(array, index, c["id"])
            assert got.shape == want.shape, c["id"]
            assert np.abs(got - want).max() <= TOLERANCE, c["id"]


def test_one_store_for_every_clip_and_the_frame_spec_beside_it(oracle_run):
    """Frames are computed once per clip whatever the split; labels live in split.json, not in the store."""
    workdir, clips, _ = oracle_run
    layout = Layout(workdir)
    _, index = stored(workdir)
    catalogue = json.loads(layout.split_json.read_text())["clips"]
    assert sorted(c["id"] for c in catalogue) == sorted(c["id"] for c in clips)
    assert index.ids == [c["id"] for c in catalogue] and index.labels == [[] for _ in clips]  # catalogue order
    spec = json.loads(layout.frame_spec.read_text())
    assert spec == params_to_dict(SpectrogramConfig())
    assert index.extra["frame_spec_digest"] == spec_digest(spec) and index.extra["dtype"] == "float32"
    _, view = stored(workdir, "validation")
    assert view.classes == CLASSES and view.task == "singlelabel" and view.split == "validation"
    assert view.labels == [c["labels"] for c in clips[1::2]]
    assert not (layout.frames_dir / "shards").exists()  # parts removed once assembled


def test_the_frame_spec_holds_what_defines_a_frame_and_nothing_else():
    base = params_to_dict(SpectrogramConfig())
    # storage precision and speed leave the spec (and so every later artifact) as it is
    for key, value in (("dtype", "float16"), ("workers", 7)):
        assert params_to_dict(dataclasses.replace(SpectrogramConfig(), **{key: value})) == base
    # every setting that changes a frame changes the spec's digest
    for key, value in (("n_mels", 32), ("hop_length", 256), ("fmin", 20.0), ("db", False), ("top_db", 60.0),
                       ("normalize", "none"), ("normalize", "fixed"), ("normalize", "pcen"),
                       ("max_duration", 2.0), ("sample_rate", 16000), ("n_fft", 2048)):
        changed = params_to_dict(dataclasses.replace(SpectrogramConfig(), **{key: value}))
        assert spec_digest(changed) != spec_digest(base), key


@pytest.mark.parametrize("overrides", [
    {},
    {"fmin": 50.0, "fmax": 6000.0, "n_mels": 40},
    {"db": False},
    {"normalize": "none"},
    {"db": True, "top_db": 0.0, "normalize": "none"},
    {"normalize": "fixed"},
    {"normalize": "fixed", "floor_db": -60.0, "ceiling_db": 0.0, "n_mels": 40},
    {"normalize": "pcen"},
    {"normalize": "pcen", "n_fft": 512, "hop_length": 128, "sample_rate": 16000},
    {"n_fft": 512, "hop_length": 128, "sample_rate": 16000},
])
def test_compute_frames_matches_librosa_for_parameter_variants(tmp_path, overrides):
    params = dataclasses.replace(SpectrogramConfig(), **overrides)
    path = tmp_path / "x.wav"
    sf.write(path, tone(44100, 1.5, 310.0, 2), 44100)
    got = compute_frames(load_mono(str(path), params.sample_rate), params)
    want = oracle(str(path), params)
    assert got.dtype == np.float32 and got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))  # unnormalised power / dB values: compare relative to their range
    assert np.abs(got - want).max() <= TOLERANCE * scale


@pytest.mark.parametrize("n_fft, hop", [(999, 250), (257, 128), (1000, 250), (256, 128)])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_frame_count_and_every_frame_match_librosa_for_odd_and_even_n_fft(tmp_path, n_fft, hop, extra):
    """An odd n_fft has one frame fewer than 1 + length // hop when the hop divides the length; every frame
    is computed, whole or streamed in decoder blocks (no row left uninitialised)."""
    sr = 8000
    params = SpectrogramConfig(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_mels=32)
    rng = np.random.default_rng(n_fft + extra)
    length = 40 * hop + extra  # more than one FFT block of frames only for the short hops
    y = (0.3 * rng.standard_normal(length)).astype(np.float32)
    spec = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=32)
    want = librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=params.top_db)
    want = ((want - want.min()) / (want.max() - want.min())).T
    whole = compute_frames(y, params)
    assert whole.shape == want.shape and np.abs(whole - want).max() <= TOLERANCE
    path = tmp_path / "noise.wav"
    sf.write(path, y, sr, subtype="FLOAT")
    streamed = clip_frames(str(path), params, block_frames=777)
    assert np.array_equal(streamed, whole)


def test_frame_count_is_right_across_fft_blocks():
    params = SpectrogramConfig(sample_rate=8000, n_fft=257, hop_length=128, n_mels=32)
    y = np.random.default_rng(1).standard_normal(FFT_BLOCK * 2 * 128).astype(np.float32)  # 2 blocks, exactly
    power = MelPower(length=len(y), params=params)
    power.add(y, last=True)
    want = librosa.feature.melspectrogram(y=y, sr=8000, n_fft=257, hop_length=128, n_mels=32).T
    assert power.frames.shape == want.shape == (2 * FFT_BLOCK, 32)
    assert np.allclose(power.frames, want, rtol=1e-4, atol=1e-6)


def test_quiet_bins_beside_a_loud_tone_match_librosa_closely():
    """Quiet noise bins beside a loud tone: a float32 FFT is off by 1.5e-5 here, the float64 one by 0."""
    t = np.arange(44100) / 22050
    rng = np.random.default_rng(0)
    y = (0.9 * np.sin(2 * np.pi * 300 * t) + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)
    params = SpectrogramConfig()
    spec = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=1024, hop_length=512, n_mels=64)
    want = librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=80.0)
    want = ((want - want.min()) / (want.max() - want.min())).T
    assert np.abs(compute_frames(y, params) - want).max() <= 1e-6


def test_mel_power_is_bit_identical_however_the_samples_arrive():
    """Single samples, pieces shorter than a hop, pieces across FFT blocks: the frames of one add()."""
    params = SpectrogramConfig()
    y = tone(params.sample_rate, 10.0, 310.0)[:, 0]  # 431 frames: several FFT blocks and a partial one
    assert 1 + len(y) // params.hop_length > 3 * FFT_BLOCK
    whole = MelPower(length=len(y), params=params)
    whole.add(y, last=True)
    rng = np.random.default_rng(0)
    cuts = np.unique(np.concatenate([rng.integers(1, len(y), 80), [1, 2, 3, 700, 701]]))
    pieces = np.split(y, cuts)
    streamed = MelPower(length=len(y), params=params)
    for number, piece in enumerate(pieces):
        streamed.add(piece, last=number == len(pieces) - 1)
    assert np.array_equal(streamed.frames, whole.frames)
    # a stream that ends early is padded with zeros up to the declared length
    short = MelPower(length=len(y), params=params)
    short.add(y[:len(y) - 3000])
    short.add(y[:0], last=True)
    padded = MelPower(length=len(y), params=params)
    padded.add(np.concatenate([y[:len(y) - 3000], np.zeros(3000, np.float32)]), last=True)
    assert np.array_equal(short.frames, padded.frames)


def test_several_fft_blocks_match_librosa(tmp_path):
    params = SpectrogramConfig()
    path = tmp_path / "long.wav"
    sf.write(path, tone(48000, 10.0, 250.0, 2), 48000)
    want = oracle(str(path), params)
    assert want.shape[0] > 3 * FFT_BLOCK
    assert np.abs(compute_frames(load_mono(str(path), params.sample_rate), params) - want).max() <= TOLERANCE


# ---------------------------------------------------------------- normalize: clip | fixed | pcen | none


@pytest.mark.parametrize("normalize", ["fixed", "pcen"])
def test_the_stage_stores_librosa_frames_for_fixed_and_pcen(tmp_path, normalize):
    """Decoded, resampled and framed block by block (clip_frames), as librosa computes them from the file."""
    sf.write(tmp_path / "a.wav", tone(44100, 2.0, 310.0, 2), 44100)
    sf.write(tmp_path / "b.flac", 0.05 * tone(16000, 1.5, 520.0, seed=3), 16000)  # low in the fixed range
    clips = [clip("a", tmp_path / "a.wav"), clip("b", tmp_path / "b.flac")]
    write_split(tmp_path, {"train": clips})
    run_stage(tmp_path, f"spectrogram.normalize={normalize}", "spectrogram.workers=1")
    array, index = stored(tmp_path)
    params = dataclasses.replace(SpectrogramConfig(), normalize=normalize)
    for c in clips:
        want = oracle(c["audio"], params)
        scale = max(1.0, np.abs(want).max())
        assert np.abs(frames_of(array, index, c["id"]) - want).max() <= TOLERANCE * scale
    spec = json.loads(Layout(tmp_path).frame_spec.read_text())
    assert spec["normalize"] == normalize and params_from_dict(spec) == params


def test_fixed_and_pcen_frames_ignore_what_comes_later_in_the_clip():
    """Clip scaling takes each clip's own peak, so a loud event anywhere moves every frame of the clip; a
    fixed dB range and PCEN (a causal filter) leave the frames before it as they were."""
    y = tone(22050, 3.0, 300.0)[:, 0]
    loud = y.copy()
    loud[2 * 22050:] += np.sin(2 * np.pi * 1000 * np.arange(22050) / 22050).astype(np.float32)  # a new peak
    before = 2 * 22050 // 512 - 2  # frames whose window ends before the loud second
    frames = {}
    for normalize in ("clip", "fixed", "pcen"):
        params = dataclasses.replace(SpectrogramConfig(), normalize=normalize)
        frames[normalize] = compute_frames(y, params)[:before], compute_frames(loud, params)[:before]
    assert np.abs(np.subtract(*frames["clip"])).max() > 0.05
    np.testing.assert_array_equal(*frames["fixed"])
    np.testing.assert_allclose(*frames["pcen"], rtol=1e-6, atol=1e-6)


def test_the_frame_spec_holds_the_settings_of_its_normalize_only():
    fixed = params_to_dict(dataclasses.replace(SpectrogramConfig(), normalize="fixed"))
    assert fixed["normalize"] == "fixed" and (fixed["floor_db"], fixed["ceiling_db"]) == (-80.0, 40.0)
    assert "top_db" not in fixed  # no per-clip peak to floor against
    pcen = params_to_dict(dataclasses.replace(SpectrogramConfig(), normalize="pcen"))
    assert not {"db", "top_db", "floor_db", "ceiling_db"} & set(pcen)
    clip_spec = params_to_dict(SpectrogramConfig())
    assert clip_spec["normalize"] == "clip" and "floor_db" not in clip_spec
    for normalize, spec in (("fixed", fixed), ("clip", clip_spec)):
        other = params_to_dict(dataclasses.replace(SpectrogramConfig(), normalize=normalize, floor_db=-70.0))
        assert (spec_digest(other) != spec_digest(spec)) == (normalize == "fixed")


def test_a_frame_spec_written_before_normalize_was_a_choice_keeps_its_meaning():
    old = {key: value for key, value in params_to_dict(SpectrogramConfig()).items()}
    assert params_from_dict({**old, "normalize": True}) == SpectrogramConfig()
    assert params_from_dict({**old, "normalize": False}).normalize == "none"
    with pytest.raises(UserError, match="normalize"):
        params_from_dict({**old, "normalize": "loud"})


def test_silent_clip_gives_zeros_not_nan(tmp_path):
    silent = np.zeros((16000, 1), np.float32)
    for db in (True, False):
        params = dataclasses.replace(SpectrogramConfig(), db=db)
        frames = compute_frames(silent[:, 0], params)
        assert np.isfinite(frames).all() and not frames.any()
    sf.write(tmp_path / "silent.wav", silent, 16000)
    write_split(tmp_path, {"train": [clip("silent", tmp_path / "silent.wav")]})
    run_stage(tmp_path, "spectrogram.workers=1")
    array, index = stored(tmp_path)
    assert index.ids == ["silent"] and array.shape[0] > 0 and not np.asarray(array).any()


# ---------------------------------------------------------------- skipped clips


def test_bad_clip_in_the_middle_shifts_nothing(tmp_path):
    clips = distinct_clips(tmp_path / "audio", 7)
    broken = {
        1: ("corrupt.flac", b"fLaC" + bytes(range(256)) * 8),
        3: ("text.wav", b"this is not audio\n" * 40),
        5: ("short.wav", None),
    }
    for position, (name, content) in broken.items():
        path = tmp_path / "audio" / name
        if content is None:
            sf.write(path, tone(16000, 0.02, 500.0), 16000)  # 441 samples at 22050 Hz < n_fft 1024
        else:
            path.write_bytes(content)
        clips[position]["audio"] = str(path)
    clips.insert(4, clip("missing", tmp_path / "audio" / "nowhere.wav"))
    write_split(tmp_path, {"train": clips})
    counts = run_stage(tmp_path, "spectrogram.workers=2", part_clips=3)

    array, index = stored(tmp_path, "train")
    usable = [c for i, c in enumerate(clips) if c["id"] not in ("clip001", "clip003", "missing", "clip005")]
    assert index.ids == [c["id"] for c in usable] == stored(tmp_path)[1].ids
    assert index.labels == [c["labels"] for c in usable]
    for c in usable:
        assert np.abs(frames_of(array, index, c["id"]) - oracle(c["audio"], SpectrogramConfig())).max() <= TOLERANCE
    reasons = {entry["id"]: entry["reason"] for entry in report(tmp_path)["skipped"]}
    assert reasons == {"clip001": "undecodable", "clip003": "undecodable", "missing": "missing",
                       "clip005": "too short"}
    assert counts == {"clips": 4, "frames": index.total_frames, "skipped": 4}
    assert report(tmp_path)["listed"] == 8 and report(tmp_path)["kept"] == 4


def test_no_usable_clip_is_a_user_error_with_a_report(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    write_split(tmp_path, {"train": [clip("x", tmp_path / "empty.wav"), clip("y", tmp_path / "gone.wav")]})
    with pytest.raises(UserError, match=r"no usable clip \(.*see .*report\.json"):
        run_stage(tmp_path, "spectrogram.workers=1")
    assert {e["reason"] for e in report(tmp_path)["skipped"]} == {"empty file", "missing"}


def test_a_split_whose_clips_were_all_skipped_is_refused_when_read(tmp_path):
    clips = distinct_clips(tmp_path / "audio", 2)
    (tmp_path / "empty.wav").write_bytes(b"")
    write_split(tmp_path, {"train": clips, "validation": [clip("x", tmp_path / "empty.wav")]})
    run_stage(tmp_path, "spectrogram.workers=1")
    assert stored(tmp_path, "train")[1].ids == ["clip000", "clip001"]
    with pytest.raises(UserError, match=r"no clip of split 'validation' has frames.*report\.json"):
        stored(tmp_path, "validation")


def test_missing_split_json_tells_to_run_split(tmp_path):
    with pytest.raises(UserError, match="audiotokens split"):
        run_stage(tmp_path)


def test_nan_samples_are_skipped_never_stored(tmp_path):
    clips = distinct_clips(tmp_path / "audio", 2)
    bad = tone(16000, 1.0, 400.0)
    bad[100] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    clips.insert(1, clip("nan", tmp_path / "nan.wav"))
    write_split(tmp_path, {"train": clips})
    run_stage(tmp_path, "spectrogram.workers=1")
    array, index = stored(tmp_path)
    assert index.ids == ["clip000", "clip001"] and np.isfinite(array).all()
    assert report(tmp_path)["skipped"][0]["reason"] == "non-finite samples"


# ---------------------------------------------------------------- decoding errors


def _write_bad(kind: str, folder: Path) -> Path:
    good = tone(16000, 1.0, 300.0)
    path = folder / f"{kind}.wav"
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, not a sound\n" * 30)
    elif kind in ("truncated wav", "truncated flac"):
        ext = kind.split()[1]
        path = folder / f"whole.{ext}"
        sf.write(path, good, 16000)
        data = path.read_bytes()
        path = folder / f"half.{ext}"
        path.write_bytes(data[:len(data) // 2])
    elif kind == "no samples":
        sf.write(path, np.zeros((0, 1), np.float32), 16000)
    elif kind in ("nan", "inf"):
        good[10, 0] = np.nan if kind == "nan" else np.inf
        sf.write(path, good, 16000, subtype="DOUBLE")
    return path


@pytest.mark.parametrize("kind, expected", [
    ("empty file", "empty file"),
    ("text", "undecodable"),
    ("truncated wav", "truncated"),
    ("truncated flac", "truncated"),
    ("no samples", "no samples"),
    ("nan", "non-finite samples"),
    ("inf", "non-finite samples"),
])
def test_load_audio_names_the_problem(tmp_path, kind, expected):
    with pytest.raises(AudioError) as caught:
        load_audio(str(_write_bad(kind, tmp_path)))
    assert caught.value.kind == expected


def test_load_audio_missing_directory_and_permission(tmp_path, monkeypatch):
    with pytest.raises(AudioError, match="missing"):
        load_audio(str(tmp_path / "nope.wav"))
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(str(tmp_path))
    sf.write(tmp_path / "ok.wav", tone(8000, 0.5, 300.0), 8000)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(audio_module, "open", denied, raising=False)  # chmod does not stop root
    with pytest.raises(AudioError, match="permission denied"):
        load_audio(str(tmp_path / "ok.wav"))


def test_load_audio_shapes_and_rate(tmp_path):
    samples = tone(48000, 0.5, 300.0, 6)
    sf.write(tmp_path / "six.flac", samples, 48000, subtype="PCM_24")
    decoded, rate = load_audio(str(tmp_path / "six.flac"))
    assert rate == 48000 and decoded.shape == (6, samples.shape[0]) and decoded.dtype == np.float32
    assert np.abs(decoded - samples.T).max() < 2**-22


# ---------------------------------------------------------------- parquet rows


def write_parquet(path: Path, clips: list[np.ndarray], sr: int, row_group_size: int) -> None:
    encoded = []
    for i, samples in enumerate(clips):
        buffer = io.BytesIO()
        sf.write(buffer, samples, sr, format="FLAC")
        encoded.append({"bytes": buffer.getvalue(), "path": f"row{i}.flac"})
    table = pa.table({"video_id": [f"v{i}" for i in range(len(clips))], "audio": encoded,
                      "labels": [["/m/0"] for _ in clips]})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_rows_decode_in_memory_reading_each_row_group_once(tmp_path, monkeypatch):
    clips = [tone(48000, 0.3 + 0.1 * i, 200.0 * (i + 1), 1 + i % 2) for i in range(6)]
    path = tmp_path / "shard.parquet"
    write_parquet(path, clips, 48000, row_group_size=2)
    reads = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **k: reads.append(i) or original(self, i, *a, **k))
    audio_module._parquet_cache.clear()
    for row, samples in enumerate(clips):
        decoded, rate = load_audio(f"{path}::{row}")
        assert rate == 48000 and decoded.shape == samples.T.shape
        assert np.abs(decoded - samples.T).max() < 2**-14  # FLAC 16-bit
    assert reads == [0, 1, 2]
    with pytest.raises(AudioError, match="past the end"):
        load_audio(f"{path}::6")


def test_parquet_locations_through_the_stage_equal_librosa(tmp_path):
    clips = [tone(44100, 1.0, 250.0 * (i + 1), 2) for i in range(4)]
    path = tmp_path / "shard.parquet"
    write_parquet(path, clips, 44100, row_group_size=3)
    write_split(tmp_path, {"train": [clip(f"v{i}", f"{path}::{i}") for i in range(4)]})
    run_stage(tmp_path, "spectrogram.workers=2")
    array, index = stored(tmp_path)
    encoded = pq.read_table(path).column("audio").to_pylist()
    assert index.ids == ["v0", "v1", "v2", "v3"]
    for i in range(4):
        want = oracle(io.BytesIO(encoded[i]["bytes"]), SpectrogramConfig())
        assert np.abs(frames_of(array, index, f"v{i}") - want).max() <= TOLERANCE


# ---------------------------------------------------------------- storage options


def test_float16_storage(tmp_path):
    clips = distinct_clips(tmp_path / "audio", 3)
    write_split(tmp_path, {"train": clips})
    run_stage(tmp_path, "spectrogram.dtype=float16", "spectrogram.workers=1")
    array, index = stored(tmp_path)
    assert array.dtype == np.float16
    for c in clips:
        want = oracle(c["audio"], SpectrogramConfig()).astype(np.float16)
        assert np.abs(frames_of(array, index, c["id"]).astype(np.float32) - want).max() <= 2**-11


def test_float16_overflow_is_skipped_not_stored_as_inf(tmp_path):
    clips = distinct_clips(tmp_path / "audio", 2)
    sf.write(tmp_path / "loud.wav", 200 * tone(16000, 1.0, 400.0), 16000, subtype="FLOAT")  # float WAV > 1.0
    clips.insert(1, clip("loud", tmp_path / "loud.wav"))
    write_split(tmp_path, {"train": clips})
    run_stage(tmp_path, "spectrogram.dtype=float16", "spectrogram.db=false", "spectrogram.normalize=none",
              "spectrogram.workers=1")
    array, index = stored(tmp_path)
    assert index.ids == ["clip000", "clip001"] and np.isfinite(array).all()
    assert report(tmp_path)["skipped"][0]["reason"] == "non-finite frames"


def test_max_duration_crops_and_reads_only_that_much(tmp_path, monkeypatch):
    sf.write(tmp_path / "long.flac", tone(48000, 3.0, 300.0, 2), 48000)
    write_split(tmp_path, {"train": [clip("long", tmp_path / "long.flac")]})
    requested = []
    original = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read",
                        lambda self, frames=-1, **k: requested.append(frames) or original(self, frames, **k))
    run_stage(tmp_path, "spectrogram.max_duration=1.25", "spectrogram.workers=1")
    assert requested == [60000]
    monkeypatch.undo()
    array, index = stored(tmp_path)
    want = oracle(str(tmp_path / "long.flac"), SpectrogramConfig(), duration=1.25)
    assert frames_of(array, index, "long").shape == want.shape
    assert np.abs(frames_of(array, index, "long") - want).max() <= TOLERANCE


def test_params_round_trip_through_a_dict():
    params = dataclasses.replace(SpectrogramConfig(), n_mels=80, fmax=8000.0, db=False)
    values = params_to_dict(params)
    assert json.loads(json.dumps(values)) == values
    assert params_to_dict(params_from_dict(values)) == values
    with pytest.raises(UserError, match="unknown spectrogram parameters"):
        params_from_dict({**values, "n_mel": 3})
    with pytest.raises(UserError, match="fmax"):
        params_from_dict({**values, "fmax": 20000.0})


def test_a_frame_spec_is_read_by_the_kind_it_names():
    values = params_to_dict(dataclasses.replace(SpectrogramConfig(), n_mels=80))
    older = {key: value for key, value in values.items() if key != "features"}  # specs before frame kinds
    assert params_from_dict(older) == params_from_dict(values)
    with pytest.raises(UserError, match=r"^frames of kind 'cqt' cannot be computed here \(only 'mel', 'ssl' or "
                                        r"'waveform' or 'codec'\)$"):
        params_from_dict({**values, "features": "cqt"})
    with pytest.raises(UserError, match="'spectrogram.features' must be one of mel, ssl, waveform, codec, got 'cqt'"):
        params_to_dict(dataclasses.replace(SpectrogramConfig(), features="cqt"))


# ---------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def resume_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    clips = distinct_clips(root / "audio", 10, seconds=0.5)
    (root / "audio" / "bad.wav").write_text("not audio")
    clips.insert(6, clip("bad", root / "audio" / "bad.wav"))
    reference = root / "reference"
    write_split(reference, {"train": clips[3:], "validation": clips[:3]})
    run_stage(reference, "spectrogram.workers=1", part_clips=3)
    return clips, reference


@pytest.mark.parametrize("part_clips, part_frames, resumes_at", [(3, 2**18, 6), (100, 1, 2)])
def test_resume_after_interruption_gives_identical_artifacts(tmp_path, monkeypatch, resume_corpus, part_clips,
                                                             part_frames, resumes_at):
    """Parts end after part_clips clips or part_frames frames; either way the result is the same."""
    clips, reference = resume_corpus
    write_split(tmp_path, {"train": clips[3:], "validation": clips[:3]})
    interrupt_after(monkeypatch, parts=2)
    with pytest.raises(Interrupt):
        config = load_config(None, ["spectrogram.workers=2"], tmp_path)
        SpectrogramProcessor(config, part_clips=part_clips, part_frames=part_frames).run()
    monkeypatch.undo()
    assert not Layout(tmp_path).frames.exists()

    processed = count_processed(monkeypatch)
    run_stage(tmp_path, "spectrogram.workers=1", part_clips=3)
    assert sorted(processed) == list(range(resumes_at, len(clips)))  # only the clips not yet done
    layout_a, layout_b = Layout(tmp_path), Layout(reference)
    for name in ("frames", "frames_index", "frame_spec", "frames_report"):
        assert getattr(layout_a, name).read_bytes() == getattr(layout_b, name).read_bytes(), name


def test_a_failure_between_parts_keeps_the_frames_written_once_and_the_rerun_equals_librosa(tmp_path, monkeypatch,
                                                                                        resume_corpus):
    """Frames go to the shard's frames.npy as clips arrive; a run that fails after clips of an unfinished part
    were written there resumes after the last finished part, cutting off those rows, and its store is the
    uninterrupted run's, byte for byte, and librosa's frames."""
    clips, reference = resume_corpus
    write_split(tmp_path, {"train": clips[3:], "validation": clips[:3]})
    appended = []
    original = spectrogram_module.PartStore.append

    def append_then_fail(self, result):
        original(self, result)
        appended.append(result.position)
        if len(appended) == 8:  # parts of 3 clips: 2 finished, 2 clips of the third on disk
            self._frames.flush()
            raise Interrupt

    monkeypatch.setattr(spectrogram_module.PartStore, "append", append_then_fail)
    with pytest.raises(Interrupt):
        run_stage(tmp_path, "spectrogram.workers=2", part_clips=3)
    monkeypatch.undo()
    shard = Layout(tmp_path).frames_dir / "shards" / "1-0"
    assert sorted(p.name for p in shard.glob("part-*.json")) == ["part-00000.json", "part-00001.json"]
    index_rows = sum(len(frames_of(*stored(reference), c["id"])) for c in clips[:6] if c["id"] != "bad")
    assert (shard / "frames.partial").stat().st_size > NPY_HEADER_BYTES + index_rows * 64 * 4  # rows of no part

    processed = count_processed(monkeypatch)
    run_stage(tmp_path, "spectrogram.workers=1", part_clips=3)
    assert sorted(processed) == list(range(6, len(clips)))
    for name in ("frames", "frames_index", "frame_spec", "frames_report"):
        assert getattr(Layout(tmp_path), name).read_bytes() == getattr(Layout(reference), name).read_bytes(), name
    array, index = stored(tmp_path)
    for c in clips:
        if c["id"] != "bad":
            assert np.abs(frames_of(array, index, c["id"]) - oracle(c["audio"], SpectrogramConfig())).max() \
                <= TOLERANCE
    assert not shard.parent.exists()


@pytest.mark.parametrize("change", ["parameters", "catalogue"])
def test_parts_are_discarded_when_parameters_or_catalogue_change(tmp_path, monkeypatch, resume_corpus, change):
    clips, _ = resume_corpus
    write_split(tmp_path, {"train": clips})
    interrupt_after(monkeypatch, parts=2)
    with pytest.raises(Interrupt):
        run_stage(tmp_path, "spectrogram.workers=1", part_clips=3)
    monkeypatch.undo()

    overrides = ["spectrogram.workers=1"]
    if change == "parameters":
        overrides.append("spectrogram.n_mels=32")
    else:
        clips = [clips[1], clips[0], *clips[2:]]
        write_split(tmp_path, {"train": clips})
    processed = count_processed(monkeypatch)
    run_stage(tmp_path, *overrides, part_clips=3)
    assert sorted(processed) == list(range(len(clips)))
    array, index = stored(tmp_path, "train")
    params = dataclasses.replace(SpectrogramConfig(), n_mels=32 if change == "parameters" else 64)
    assert index.ids == [c["id"] for c in clips if c["id"] != "bad"]
    for c in clips[:4]:
        assert np.abs(frames_of(array, index, c["id"]) - oracle(c["audio"], params)).max() <= TOLERANCE


def test_parts_are_kept_when_only_the_assignment_to_splits_changes(tmp_path, monkeypatch, resume_corpus):
    """The store does not depend on the split: a new assignment of the same clips resumes the parts."""
    clips, reference = resume_corpus
    write_split(tmp_path, {"train": clips[3:], "validation": clips[:3]})
    interrupt_after(monkeypatch, parts=2)
    with pytest.raises(Interrupt):
        run_stage(tmp_path, "spectrogram.workers=1", part_clips=3)
    monkeypatch.undo()
    catalogue = json.loads(Layout(tmp_path).split_json.read_text())
    catalogue["splits"] = {"train": [c["id"] for c in clips[5:]], "validation": [c["id"] for c in clips[:5]]}
    Layout(tmp_path).split_json.write_text(json.dumps(catalogue))
    processed = count_processed(monkeypatch)
    run_stage(tmp_path, "spectrogram.workers=1", part_clips=3)
    assert sorted(processed) == list(range(6, len(clips)))
    assert Layout(tmp_path).frames.read_bytes() == Layout(reference).frames.read_bytes()
    assert stored(tmp_path, "validation")[1].ids == [c["id"] for c in clips[:5]]


def test_a_pool_that_does_not_stop_is_killed_and_the_error_still_reaches_the_caller(monkeypatch, caplog):
    """Pool.terminate once waited minutes on its task thread after an error mid-map: the stage must give up
    on it, kill the workers and raise the error, not hang."""
    class Boom(Exception):
        pass

    pools, workers, release = [], [], threading.Event()

    def hanging_terminate(pool):
        pools.append(pool)
        workers.extend(pool._pool)  # those to be killed (the fake leaves the pool running: it replaces them)
        release.wait()

    monkeypatch.setattr(spectrogram_module, "POOL_STOP_S", 0.5)
    monkeypatch.setattr(spectrogram_module._Pool, "terminate", hanging_terminate)
    started = time.monotonic()
    try:
        with pytest.raises(Boom), spectrogram_module.clip_map(abs, 16, workers=2) as mapped:
            assert list(mapped(range(-4, 0))) == [4, 3, 2, 1]
            raise Boom
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 5  # the pool's own thread may reap a worker before this one can
        while any(worker.exitcode is None for worker in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers and all(worker.exitcode == -signal.SIGKILL for worker in workers)
        assert "did not stop within 0 s; its workers were killed" in caplog.text
    finally:
        release.set()
        retire(pools[0])


def retire(pool) -> None:
    """Stop a pool whose workers were killed without Pool.terminate, which would now wait forever for the task
    queue's read lock a killed worker held: no new workers, no finalizer at exit, every process gone."""
    pool._terminate.cancel()
    pool._state = pool._worker_handler._state = multiprocessing.pool.TERMINATE
    pool._change_notifier.put(None)
    pool._worker_handler.join(5)
    for worker in pool._pool:
        worker.kill()
        worker.join(5)
