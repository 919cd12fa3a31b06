"""predict --timeline and Model.timeline: windows along a long recording, its events, memory that stays flat."""
from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from badaudio import build_corpus, running_as_root
from click.testing import CliRunner
from projects import build_project, write_recording

import audiotokens
from audiotokens.cli import main
from audiotokens.data.audio import load_mono
from audiotokens.evaluation.predict import load_model
from audiotokens.evaluation.timeline import (
    EventMerger,
    ScorePicture,
    Timeline,
    WindowPlan,
    WindowStream,
    make_timeline,
    timeline_cli,
    window_plan,
)
from audiotokens.model.audio_tokenizer import AudioTokenizer
from audiotokens.model.windows import eval_windows

pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny model: thread pools only cost on a busy machine

MINUTES = 20
# (class, start s, end s) of the bursts; the "low" tone plays everywhere else. Starts and ends fall between
# window hops, and the bursts are a few windows to a minute long.
BURSTS = [("high", 61.3, 75.0), ("mid", 200.0, 203.7), ("high", 455.55, 470.0), ("mid", 700.1, 760.0),
          ("high", 1100.0, 1104.2), ("mid", 1190.0, 1195.5)]
SHORT_MINUTES = 5  # the shorter recording whose peak memory the 20-minute one is compared with
MEMORY_SLACK = 2**20  # bytes: allocator and Python bookkeeping that may differ between two runs
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    # 96 clips give 9 steps per epoch, so the first epoch at 100 % validation accuracy (the one kept) has
    # clear margins; 24 clips would keep a model that barely learned anything
    root = build_project(tmp_path_factory.mktemp("tones"), "singlelabel", clips=96,
                         settings=("train.epochs=3", "train.learning_rate=1e-2", "model.pooling=mean",
                                   "cluster.quantizer=frame"))
    return root / "work/output/model"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    paths = {}
    for minutes in (SHORT_MINUTES, MINUTES):
        paths[minutes] = folder / f"rec{minutes}.wav"
        write_recording(paths[minutes], minutes * 60, [b for b in BURSTS if b[2] <= minutes * 60])
    return paths


def traced_timeline(path: Path, bundle_dir: Path, out_dir: Path) -> tuple[int, Timeline]:
    """The peak of memory traced while `predict --timeline` runs on `path` and its output, the model loaded
    and every library it uses already imported (a first short run), so only the run itself is counted."""
    bundle = load_model(bundle_dir, device="cpu")
    tokenizer = AudioTokenizer.of_bundle(bundle)
    plan = window_plan(bundle, tokenizer)
    write_recording(out_dir / "warm-up.wav", 2.0, [])
    make_timeline(str(out_dir / "warm-up.wav"), bundle, tokenizer, plan, out_dir=out_dir)
    tracemalloc.start()
    try:
        result = make_timeline(str(path), bundle, tokenizer, plan, out_dir=out_dir)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, result


@pytest.fixture(scope="module")
def runs(recordings, bundle_dir, tmp_path_factory) -> dict[int, tuple[int, Timeline]]:
    """Each recording's timeline, written by the command's own code under tracemalloc: (peak, Timeline)."""
    out = tmp_path_factory.mktemp("timelines")
    return {minutes: traced_timeline(path, bundle_dir, out) for minutes, path in recordings.items()}


# ---------------------------------------------------------------- the 20-minute recording


def test_a_20_minute_recording_gives_its_bursts_as_events_within_one_hop(runs):
    _, timeline = runs[MINUTES]
    assert timeline.duration == pytest.approx(MINUTES * 60, abs=1e-3)
    found = [(e["class"], e["start"], e["end"]) for e in timeline.events if e["class"] != "low"]
    assert [name for name, _, _ in found] == [name for name, _, _ in BURSTS]
    for (_, start, end), (_, true_start, true_end) in zip(found, BURSTS):
        assert abs(start - true_start) <= timeline.hop and abs(end - true_end) <= timeline.hop
    # between the bursts, the background: "low" covers everything else, from 0 to the end
    low = [x for e in timeline.events if e["class"] == "low" for x in (e["start"], e["end"])]
    assert low == pytest.approx([0.0, *(x for _, start, end in found for x in (start, end)), timeline.duration])
    assert all(0.5 < e["peak_score"] <= 1.0 for e in timeline.events)


def test_the_files_hold_every_window_and_the_same_events(runs):
    _, timeline = runs[MINUTES]
    with open(timeline.files["scores"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["start", "end", *timeline.classes]
    plan_windows = eval_windows(round(MINUTES * 60 * 22050), round(timeline.window * 22050),
                                round(timeline.hop * 22050))
    assert len(rows) - 1 == len(plan_windows)
    starts = np.array([float(r[0]) for r in rows[1:]])
    assert np.all(np.diff(starts) > 0) and float(rows[-1][1]) == pytest.approx(timeline.duration, abs=1e-3)
    scores = np.array([[float(x) for x in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)  # softmax: a single-label model
    with open(timeline.files["events"], newline="") as handle:
        events = list(csv.DictReader(handle))
    saved = json.loads(Path(timeline.files["events_json"]).read_text())
    assert [(e["class"], float(e["start"]), float(e["end"])) for e in events] == \
        [(e["class"], e["start"], e["end"]) for e in saved["events"]] == \
        [(e["class"], e["start"], e["end"]) for e in timeline.events]
    assert saved["threshold"] is None and saved["classes"] == timeline.classes  # arg-max decisions
    assert Path(timeline.files["picture"]).read_bytes()[:8] == PNG_SIGNATURE


def test_peak_memory_does_not_grow_with_the_recordings_length(runs):
    short, _ = runs[SHORT_MINUTES]
    long, _ = runs[MINUTES]
    # 4x the audio: a 20-minute recording at 22,050 Hz is 106 MB of float32 samples, 5 minutes 26 MB
    assert long <= short + MEMORY_SLACK, (short, long)


# ---------------------------------------------------------------- windows and their frames


def test_a_streamed_window_has_the_frames_of_the_same_span_decoded_whole(bundle_dir, tmp_path):
    # stereo at 44.1 kHz: mixed down and resampled block by block, with blocks that end inside windows
    rate, seconds = 44100, 13.3
    t = np.arange(round(rate * seconds)) / rate
    left = 0.3 * np.sin(2 * np.pi * (300 + 40 * t) * t)
    right = 0.2 * np.random.default_rng(1).standard_normal(len(t))
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), rate, subtype="PCM_24")
    tokenizer = AudioTokenizer.from_bundle(bundle_dir)
    model_rate = tokenizer.params.sample_rate
    plan = WindowPlan(model_rate, window=round(1.3 * model_rate), hop=round(0.7 * model_rate))
    whole = load_mono(str(path), model_rate)
    stream = WindowStream(str(path), plan, block_frames=10007)
    try:
        windows = list(stream)
    finally:
        stream.close()
    assert [(start, stop) for start, stop, _ in windows] == eval_windows(len(whole), plan.window, plan.hop)
    assert len(windows) == stream.count
    for start, stop, samples in windows:
        np.testing.assert_array_equal(samples, whole[start:stop])
        np.testing.assert_array_equal(tokenizer.frames(samples, model_rate),
                                      tokenizer.frames(whole[start:stop], model_rate))


def test_model_timeline_scores_each_window_as_predict_scores_that_span(bundle_dir, recordings, tmp_path):
    model = audiotokens.load(bundle_dir, device="cpu")
    path = tmp_path / "short.wav"
    write_recording(path, 12.0, [("mid", 4.0, 6.0)])
    timeline = model.timeline(path, window=0.4, hop=0.3, out=tmp_path / "out")
    whole = load_mono(str(path), 22050)
    spans = eval_windows(len(whole), round(0.4 * 22050), round(0.3 * 22050))
    assert timeline.scores.shape == (len(spans), 3)
    np.testing.assert_allclose(timeline.starts, [start / 22050 for start, _ in spans])
    np.testing.assert_allclose(timeline.ends, [stop / 22050 for _, stop in spans])
    expected = model.scores([(whole[start:stop], 22050) for start, stop in spans])
    np.testing.assert_allclose(timeline.scores, expected, atol=1e-6)
    with open(tmp_path / "out/short.timeline.csv", newline="") as handle:
        written = np.array([[float(x) for x in row[2:]] for row in list(csv.reader(handle))[1:]])
    np.testing.assert_allclose(written, timeline.scores, atol=1e-6)
    assert [e["class"] for e in timeline.events] == ["low", "mid", "low"]
    # a threshold above every score leaves no event; the arg-max class must also reach it
    assert model.timeline(path, threshold=1.0).events == []
    # a recording shorter than the window is one window, the whole recording
    write_recording(path, 0.3, [("high", 0.0, 0.3)])
    timeline = model.timeline(path)
    assert timeline.starts.tolist() == [0.0] and timeline.ends.tolist() == [pytest.approx(0.3)]
    assert timeline.events == [{"class": "high", "start": 0.0, "end": 0.3, "peak_score": pytest.approx(
        float(model.scores([path])[0].max()), abs=1e-6)}]


def test_the_default_window_and_hop_are_the_bundles(bundle_dir, tmp_path):
    bundle = load_model(bundle_dir, device="cpu")
    tokenizer = AudioTokenizer.of_bundle(bundle)
    frame_hop = tokenizer.params.hop_length
    plan = window_plan(bundle, tokenizer)  # trained on whole clips: the longest clip, half of it as hop
    assert plan.window == (bundle.max_frames - 1) * frame_hop and plan.hop == bundle.max_frames // 2 * frame_hop
    assert len(tokenizer.model_input(tokenizer.frames(np.ones(plan.window, np.float32), plan.rate))) \
        == bundle.max_frames
    bundle.metadata.update(eval_window=10, eval_hop=3)
    plan = window_plan(bundle, tokenizer)
    assert (plan.window, plan.hop) == (9 * frame_hop, 3 * frame_hop)
    assert len(tokenizer.model_input(tokenizer.frames(np.ones(plan.window, np.float32), plan.rate))) == 10
    assert window_plan(bundle, tokenizer, window=5.0).window == 5 * plan.rate  # longer: the mean of its windows


# ---------------------------------------------------------------- the command


def predict(bundle_dir: Path, *arguments):
    """`audiotokens predict --model BUNDLE ARGUMENTS...` through the CLI."""
    return CliRunner().invoke(main, ["predict", "--model", str(bundle_dir), *map(str, arguments)])


def test_the_command_prints_the_events_and_writes_the_files(bundle_dir, tmp_path):
    write_recording(tmp_path / "a.wav", 8.0, [("high", 3.0, 5.0)])
    result = predict(bundle_dir, "--timeline", "--out", tmp_path / "o", "--format", "csv", tmp_path / "a.wav")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert [r["class"] for r in rows] == ["low", "high", "low"] and all(r["error"] == "" for r in rows)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == \
        ["a.events.csv", "a.events.json", "a.timeline.csv", "a.timeline.png"]
    result = predict(bundle_dir, "--timeline", "--out", tmp_path / "o", tmp_path / "a.wav")
    assert result.exit_code == 0 and "3 events" in result.stdout and "high" in result.stdout


@pytest.mark.parametrize(("arguments", "message"), [
    (["--window", "0.01"], "--window must be at least"),
    (["--window", "60"], "longer than the"),
    (["--window", "nan"], "--window must be a number of seconds"),
    (["--hop", "0"], "--hop must be more than 0"),
    (["--hop", "0.4", "--window", "0.3"], "--hop must be more than 0 and at most the window"),
    (["--hop", "inf"], "--hop must be a number of seconds"),
    (["--threshold", "2"], "--threshold must be between 0 and 1"),
])
def test_bad_windows_are_refused_in_one_line(bundle_dir, tmp_path, arguments, message):
    write_recording(tmp_path / "a.wav", 2.0, [])
    result = predict(bundle_dir, "--timeline", *arguments, tmp_path / "a.wav")
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_timeline_options_without_timeline_are_refused(bundle_dir, tmp_path):
    write_recording(tmp_path / "a.wav", 2.0, [])
    result = predict(bundle_dir, "--hop", "1", tmp_path / "a.wav")
    assert result.exit_code == 2 and "go with --timeline" in result.output


def test_bad_files_get_error_rows_and_the_others_their_timelines(bundle_dir, tmp_path):
    cases = build_corpus(tmp_path / "corpus", hour=False)
    paths = [str(case.path) for case in cases.values() if case.name != "unreadable" or not running_as_root()]
    out = tmp_path / "out"
    text = io.StringIO()
    code = timeline_cli(paths, str(bundle_dir), ".", None, "json", out_dir=str(out), out=text)
    assert code == 1
    rows = {row["path"]: row for row in json.loads(text.getvalue())}
    for case in cases.values():
        row = rows.get(str(case.path))
        if row is None:
            continue
        if case.skip_reason is None:
            assert row["error"] is None and row["events"], case.name
            assert Path(row["files"]["picture"]).is_file()
        else:
            assert row["error"].startswith(case.skip_reason), (case.name, row["error"])
    # only the timelines of the good files were written, and no temporary file is left behind
    written = {p.name.split(".")[0] for p in out.iterdir()}
    assert written == {Path(p).stem for p in rows if rows[p]["error"] is None}
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]


def test_a_recording_failing_midway_leaves_the_earlier_timeline_of_its_name(bundle_dir, tmp_path):
    good, bad = tmp_path / "good/rec.wav", tmp_path / "bad/rec.wav"
    good.parent.mkdir()
    bad.parent.mkdir()
    write_recording(good, 6.0, [("mid", 2.0, 4.0)])
    x = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 100) / 16000)
    x[16000 * 80:] = np.nan  # past the first decoder block: some windows are scored before it fails
    sf.write(bad, x.astype(np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    assert timeline_cli([str(good)], str(bundle_dir), ".", None, "table", out_dir=str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    text = io.StringIO()
    assert timeline_cli([str(bad)], str(bundle_dir), ".", None, "table", out_dir=str(out), out=text) == 1
    assert "ERROR   non-finite samples" in text.getvalue()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_files_of_the_same_name_get_their_own_outputs(bundle_dir, tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        write_recording(tmp_path / folder / "rec.wav", 2.0, [])
    text = io.StringIO()
    assert timeline_cli([str(tmp_path / "x"), str(tmp_path / "y")], str(bundle_dir), ".", None, "json",
                        out_dir=str(tmp_path / "out"), out=text) == 0
    assert [Path(row["files"]["events"]).name for row in json.loads(text.getvalue())] == \
        ["rec.events.csv", "rec-2.events.csv"]


# ---------------------------------------------------------------- events and the picture


def test_events_are_runs_of_windows_counting_for_a_class():
    merger = EventMerger(["a", "b"])
    active = [(1, 0), (1, 1), (0, 1), (1, 0), (0, 0)]
    for i, (a, b) in enumerate(active):
        merger.add(float(i), float(i + 1), np.array([a, b], dtype=bool), np.array([0.1 * i + 0.5, 0.9]))
    assert merger.finish() == [
        {"class": "a", "start": 0.0, "end": 2.0, "peak_score": 0.6},
        {"class": "b", "start": 1.0, "end": 3.0, "peak_score": 0.9},
        {"class": "a", "start": 3.0, "end": 4.0, "peak_score": 0.8}]


def test_the_picture_keeps_a_bounded_number_of_max_pooled_columns():
    picture = ScorePicture(2, max_columns=4)
    scores = np.random.default_rng(0).random((37, 2)).astype(np.float32)
    for row in scores:
        picture.add(row)
    assert picture.columns.shape == (8, 2) and picture.per_column == 8 and picture.filled == 5
    expected = [scores[i:i + 8].max(axis=0) for i in range(0, 37, 8)]
    np.testing.assert_array_equal(picture.columns[:picture.filled], expected)
