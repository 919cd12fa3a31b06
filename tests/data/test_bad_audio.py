"""Messy audio: each broken file is skipped with its reason, odd formats are decoded, nothing else moves.

The corpus (tests/badaudio.py) holds every case of the reliability issue; good clips are interleaved
with the bad ones across several parts and two worker processes, and their frames are compared bit for
bit with a run on the usable clips alone.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from badaudio import HOUR_RATE, HOUR_SECONDS, RATE, build_corpus, deny_reading, tone, write_good, write_hour
from click.testing import CliRunner
from projects import trained_project

from audiotokens.cli import main
from audiotokens.config import SpectrogramConfig, load_config
from audiotokens.data.audio import AudioError, load_audio, load_mono
from audiotokens.features.spectrogram import SpectrogramProcessor, clip_frames, compute_frames
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import open_split

MAX_DURATION = 5.0  # crops the 1-hour file; every other clip is shorter
CLASSES = ["a", "b", "c"]
ORACLE_TOLERANCE = 1e-5


# ---------------------------------------------------------------- helpers


def clip(clip_id: str, path: Path, label: int) -> dict:
    return {"id": clip_id, "audio": str(path), "labels": [label], "group": None}


def write_split(workdir: Path, splits: dict[str, list[dict]]) -> None:
    """split.json: every clip of the splits in the catalogue (train's first), each split its ids."""
    path = Layout(workdir).split_json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"source": "test", "strategy": "test", "task": "singlelabel", "classes": CLASSES,
                                "clips": [c for clips in splits.values() for c in clips],
                                "splits": {name: [c["id"] for c in clips] for name, clips in splits.items()}}))


def run_spectrogram(workdir: Path, *overrides: str, part_clips: int = 256) -> dict:
    config = load_config(None, [f"spectrogram.max_duration={MAX_DURATION}", *overrides], workdir)
    return SpectrogramProcessor(config, part_clips=part_clips).run()


def corpus_splits(cases: dict, good: list[Path]) -> dict[str, list[dict]]:
    """Good clips interleaved with every case in train; a few cases again in validation."""
    train = []
    for i, case in enumerate(cases.values()):
        if i < 4:
            train.append(clip(f"good{i:02d}", good[i], i % 3))
        train.append(clip(case.name, case.path, i % 3))
    validation = [clip("good04", good[4], 1), clip("v_nan", cases["nan"].path, 0),
                  clip("good05", good[5], 2), clip("v_empty", cases["empty"].path, 1),
                  clip("v_six_channel", cases["six_channel"].path, 2), clip("v_missing", cases["missing"].path, 0)]
    return {"train": train, "validation": validation}


def case_of(clip_id: str) -> str:
    return clip_id.removeprefix("v_")


def librosa_frames(path: Path, duration: float | None) -> np.ndarray:
    """The seed's computation with librosa, (frames, n_mels)."""
    y, sr = librosa.load(path, sr=22050, duration=duration)
    spec = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=1024, hop_length=512, n_mels=64)
    spec = librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=80.0)
    return ((spec - spec.min()) / (spec.max() - spec.min())).T


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------- the corpus through the spectrogram stage


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("badaudio")
    return build_corpus(root / "audio"), write_good(root / "good", 6)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The whole corpus (2 workers, parts of 3 clips), then only the clips it kept (1 worker, one part)."""
    cases, good = corpus
    splits = corpus_splits(cases, good)
    messy = tmp_path_factory.mktemp("messy")
    write_split(messy, splits)
    with pytest.MonkeyPatch.context() as patch:
        deny_reading(patch, cases["unreadable"].path)
        counts = run_spectrogram(messy, "spectrogram.workers=2", part_clips=3)
    kept = {name: [c for c in clips if cases.get(case_of(c["id"])) is None
                   or cases[case_of(c["id"])].skip_reason is None] for name, clips in splits.items()}
    clean = tmp_path_factory.mktemp("clean")
    write_split(clean, kept)
    run_spectrogram(clean, "spectrogram.workers=1")
    return {"cases": cases, "splits": splits, "kept": kept, "messy": messy, "clean": clean, "counts": counts}


def test_each_broken_clip_is_skipped_with_its_reason(runs):
    cases = runs["cases"]
    clips = [c for split in runs["splits"].values() for c in split]
    report = strict_json(Layout(runs["messy"]).frames_report)
    reasons = {entry["id"]: entry["reason"] for entry in report["skipped"]}
    expected = {c["id"]: cases[case_of(c["id"])].skip_reason for c in clips
                if case_of(c["id"]) in cases and cases[case_of(c["id"])].skip_reason}
    assert reasons == expected
    assert {"v_nan", "v_empty", "v_missing"} <= set(reasons)  # validation's broken clips too
    assert report["listed"] == len(clips) and report["kept"] == len(clips) - len(expected)
    for entry in report["skipped"]:
        assert entry["audio"] == next(c["audio"] for c in clips if c["id"] == entry["id"])
    details = {entry["id"]: entry["detail"] for entry in report["skipped"]}
    assert "permission denied" in details["unreadable"]
    assert "samples" in details["truncated_flac"] and "Ogg page" in details["truncated_ogg"]
    assert "n_fft 1024" in details["too_short"] and "NaN" in details["nan"]
    assert "declares 1 Hz" in details["one_hertz"] and "at least 1000 Hz" in details["999_hz"]
    assert runs["counts"]["skipped"] == sum(1 for clips in runs["splits"].values() for c in clips
                                            if case_of(c["id"]) in cases and cases[case_of(c["id"])].skip_reason)


def test_the_other_clips_are_stored_exactly_as_without_the_broken_ones(runs):
    messy, clean = Layout(runs["messy"]), Layout(runs["clean"])
    for split in ("train", "validation"):
        frames, index = open_split(messy, "frames", split)
        clean_frames, clean_index = open_split(clean, "frames", split)
        assert index.ids == [c["id"] for c in runs["kept"][split]]
        assert (index.ids, index.labels) == (clean_index.ids, clean_index.labels)
        np.testing.assert_array_equal(index.offsets, clean_index.offsets)
        np.testing.assert_array_equal(index.lengths, clean_index.lengths)
        assert frames.dtype == clean_frames.dtype and np.array_equal(frames, clean_frames)
    assert messy.frames.read_bytes() == clean.frames.read_bytes()


def test_odd_but_valid_formats_give_librosas_frames(runs):
    frames, index = open_split(Layout(runs["messy"]), "frames", "train")
    for case in runs["cases"].values():
        if case.skip_reason is not None:
            continue
        row = index.ids.index(case.name)
        stored = np.asarray(frames[index.offsets[row]:index.offsets[row] + index.lengths[row]])
        if case.name == "silent":
            assert stored.shape[0] == 1 + math.ceil(RATE * 22050 / RATE) // 512 and not stored.any()
            continue
        expected = librosa_frames(case.path, MAX_DURATION if case.name == "one_hour" else None)
        assert stored.shape == expected.shape, case.name
        assert np.abs(stored - expected).max() <= ORACLE_TOLERANCE, case.name
    hour = index.lengths[index.ids.index("one_hour")]
    assert hour == 1 + math.ceil(MAX_DURATION * HOUR_RATE * 22050 / HOUR_RATE) // 512  # cropped, not whole


def test_no_artifact_holds_nan_or_inf(runs):
    layout = Layout(runs["messy"])
    assert np.isfinite(np.load(layout.frames)).all()
    for path in (layout.frames_index, layout.frames_report, layout.frame_spec):
        strict_json(path)
    assert not list(runs["messy"].rglob("parts"))  # resumable parts are removed once assembled


# ---------------------------------------------------------------- decoding details


def test_streamed_frames_equal_the_whole_clip_decode_bit_for_bit(corpus, tmp_path):
    cases, _ = corpus
    sf.write(tmp_path / "long.ogg", tone(20.0, 440.0, rate=44100, channels=2), 44100)
    sf.write(tmp_path / "long.flac", tone(20.0, 880.0, rate=48000, channels=2), 48000)
    sf.write(tmp_path / "long.wav", tone(20.0, 660.0, rate=22050), 22050)
    paths = [tmp_path / name for name in ("long.ogg", "long.flac", "long.wav")]
    paths += [cases[name].path for name in ("six_channel", "float64", "8_bit", "24_bit", "wrong_extension")]
    params = SpectrogramConfig()
    for path in paths:
        whole = compute_frames(load_mono(str(path), params.sample_rate), params)
        for block in (4096, 33333):
            assert np.array_equal(clip_frames(str(path), params, block_frames=block), whole), (path, block)
    cropped = SpectrogramConfig(max_duration=60.0)
    whole = compute_frames(load_mono(str(cases["one_hour"].path), 22050, 60.0), cropped)
    assert np.array_equal(clip_frames(str(cases["one_hour"].path), cropped, block_frames=50000), whole)


def _cut(path: Path, fraction: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[:int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7, 0.9])
def test_cut_ogg_and_flac_files_are_truncated_not_shorter_clips(tmp_path, fraction):
    for ext in ("ogg", "flac"):
        whole = tmp_path / f"whole.{ext}"
        sf.write(whole, tone(3.0, 500.0), RATE)
        with pytest.raises(AudioError) as caught:
            load_audio(str(_cut(whole, fraction, tmp_path / f"cut.{ext}")))
        assert caught.value.kind == "truncated", (ext, str(caught.value))


def test_damaged_ogg_data_is_truncated_and_intact_ogg_is_whole(tmp_path):
    whole = tmp_path / "whole.ogg"
    sf.write(whole, tone(3.0, 500.0), RATE)
    data = bytearray(whole.read_bytes())
    data[len(data) // 2:len(data) // 2 + 200] = bytes(200)  # zeros inside a page: decoding stops there
    (tmp_path / "damaged.ogg").write_bytes(bytes(data))
    with pytest.raises(AudioError, match="truncated"):
        load_audio(str(tmp_path / "damaged.ogg"))
    for subtype, rate in (("VORBIS", 44100), ("OPUS", 16000), ("OPUS", 48000)):
        path = tmp_path / f"{subtype}{rate}.ogg"
        sf.write(path, tone(2.3, 300.0, rate=rate), rate, format="OGG", subtype=subtype)
        samples, got_rate = load_audio(str(path))
        assert got_rate == rate and samples.shape == (1, sf.info(str(path)).frames) and samples.shape[1] > 0


# ---------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "singlelabel") / "work/output/model"


def predict_json(bundle: Path, paths: list[Path]) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(main, ["predict", "--model", str(bundle), "--format", "json", *map(str, paths)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def test_predict_gives_an_error_row_per_broken_file_and_scores_the_rest(corpus, bundle, monkeypatch):
    cases, good = corpus
    deny_reading(monkeypatch, cases["unreadable"].path)
    listed = [c for c in cases.values() if c.name != "one_hour"]  # the hour is in the slow variant
    paths = [good[0], *[c.path for c in listed], good[1]]
    code, rows = predict_json(bundle, paths)
    assert code == 1
    assert [row["path"] for row in rows] == [str(p) for p in paths]
    for case, row in zip(listed, rows[1:-1]):
        if case.skip_reason:
            assert row["error"].startswith(case.skip_reason) and row["top"] == [], case.name
        else:
            assert row["error"] is None and row["top"], case.name
            assert all(0.0 <= item["score"] <= 1.0 for item in row["top"])
    code, alone = predict_json(bundle, [good[0], good[1]])
    assert code == 0
    for before, after in zip((rows[0], rows[-1]), alone):
        assert [t["class"] for t in before["top"]] == [t["class"] for t in after["top"]]
        np.testing.assert_allclose([t["score"] for t in before["top"]], [t["score"] for t in after["top"]],
                                   atol=1e-6)


# ---------------------------------------------------------------- the whole hour (slow)


PEAK_RSS_CHILD = r"""
import json, resource, sys
from pathlib import Path
from audiotokens.config import load_config
from audiotokens.features.spectrogram import SpectrogramProcessor
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
counts = SpectrogramProcessor(load_config(None, ["spectrogram.workers=1"], Path(sys.argv[1]))).run()
print(json.dumps({"baseline_kb": baseline, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  **{k: counts[k] for k in ("frames", "skipped")}}))
"""


@pytest.mark.slow
def test_a_whole_hour_streams_within_bounded_memory(tmp_path):
    hour = write_hour(tmp_path / "hour.wav")
    write_split(tmp_path / "work", {"train": [clip("hour", hour, 0)]})
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_CHILD, str(tmp_path / "work")], capture_output=True,
                          text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    length = math.ceil(HOUR_SECONDS * HOUR_RATE * 22050 / HOUR_RATE)
    assert result["frames"] == 1 + length // 512 and result["skipped"] == 0
    # the whole-clip path holds the hour at 22.05 kHz in float64 plus its complex STFT: over 2 GB
    grown_mb = (result["peak_kb"] - result["baseline_kb"]) / 1024
    assert grown_mb < 600, f"peak RSS grew by {grown_mb:.0f} MB"
    frames = np.load(Layout(tmp_path / "work").frames)
    assert np.isfinite(frames).all() and frames.min() == 0.0 and frames.max() == 1.0


@pytest.mark.slow
def test_predict_scores_a_whole_hour(corpus, bundle):
    cases, good = corpus
    code, rows = predict_json(bundle, [cases["one_hour"].path, good[0]])
    assert code == 0 and all(row["error"] is None for row in rows)
