"""SIGKILL during spectrogram, cluster, tokenize and train: nothing earlier is touched, no half-written file
sits under a final name, the stage reads as unfinished, and a re-run (train: --resume) gives exactly what
an uninterrupted run gives.

The CLI runs in child processes (tests/killing.py); every stage of the reference chain runs the same way.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from killing import assert_complete, digests, finish, kill_when, run_cli, start, temporaries
from projects import TONES, write_tone
from safetensors.numpy import load_file

from audiotokens.config import load_config
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.provenance import stage_states

SETTINGS = """
[split]
strategy = "stratified"
validation_ratio = 0.25
[spectrogram]
workers = 1
[cluster]
n_clusters = 8
niter = 10
[tokenize]
batch_frames = 64
[model]
num_layers = 1
hidden_size = 32
num_heads = 2
intermediate_size = 64
[train]
epochs = 3
batch_size = 4
learning_rate = 1e-3
device = "cpu"
num_workers = 0
"""
STAGES = ("split", "spectrogram", "cluster", "tokenize", "train")
# what each stage reads (must stay byte-identical when it is killed) and writes (compared with the reference)
READS = {"spectrogram": ["processed/split.json", "processed/split.meta.json"],
         "cluster": ["processed/frames", "processed/split.json"],
         "tokenize": ["processed", "output/vocabulary"],
         "train": ["processed", "output/vocabulary", "tokenized"]}


def cli(root: Path, stage: str, *extra: str) -> list[str]:
    return [stage, "--config", str(root / "run.toml"), "--workdir", str(root / "work"), *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted chain; `snapshots[stage]` is the project just before that stage ran."""
    root = tmp_path_factory.mktemp("interrupt")
    rows = ["path,label"]
    for i in range(16):
        label = list(TONES)[i % 3]
        write_tone(root / "audio" / f"clip{i:02d}.wav", [label], i, seconds=0.6)
        rows.append(f"audio/clip{i:02d}.wav,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "run.toml").write_text(f'[data]\nmanifest = "{root / "manifest.csv"}"\n' + SETTINGS)
    for stage in STAGES:
        snapshot = root / "snapshots" / stage
        shutil.copytree(root / "work", snapshot) if (root / "work").exists() else snapshot.mkdir(parents=True)
        run_cli(cli(root, stage), root, root / f"{stage}.log")
    return root


def project_before(reference: Path, stage: str, destination: Path) -> Path:
    """A project holding everything up to (not including) `stage`; run.toml names the same audio."""
    destination.mkdir()
    shutil.copy(reference / "run.toml", destination / "run.toml")
    shutil.copytree(reference / "snapshots" / stage, destination / "work")
    return destination


def kill_and_check(root: Path, stage: str, condition, extra=(), **delays: float) -> str:
    """Run `stage`, SIGKILL it when condition(work) holds, check what it left; returns its output."""
    work = root / "work"
    before = digests(work, *READS[stage])
    run = start(cli(root, stage, *extra), root, root / "killed.log", **delays)
    kill_when(run, lambda: condition(work))
    assert digests(work, *READS[stage]) == before, "an earlier artifact changed"
    assert_complete(work)
    failure = json.loads(Layout(work).failure(stage).read_text())
    assert failure["error"].startswith("unfinished"), failure
    state = stage_states(Layout(work), load_config(root / "run.toml", [], work))[stage]
    assert state.state == "killed" and f"run `audiotokens {stage}` again" in state.line(), state.line()
    return run.output()


def rerun(root: Path, stage: str, *extra: str) -> str:
    output = finish(start(cli(root, stage, *extra), root, root / "rerun.log"))
    assert temporaries(root / "work") == [], "the re-run left temporary files"
    assert not Layout(root / "work").failure(stage).exists()
    return output


def read_if_there(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def exists(pattern: str):
    return lambda work: any(work.glob(pattern))


# ---------------------------------------------------------------- spectrogram


SPECTROGRAM_POINTS = {
    "between parts": {"condition": exists("processed/frames/shards/1-0/part-00002.json"), "parts": 3, "clip": 0.03},
    "a part's frames on disk, its record not yet renamed": {
        "condition": exists("processed/frames/shards/1-0/.part-00001.json.*.tmp"), "parts": 3, "replace": 0.5},
    "assembling frames.npy": {"condition": exists("processed/frames/.frames.npy.*.tmp"), "parts": 3, "replace": 0.5},
    "most of the catalogue done": {"condition": exists("processed/frames/shards/1-0/part-00005.json"),
                                   "parts": 2, "clip": 0.05},
}


def check_spectrogram(root: Path, reference: Path) -> None:
    mine, theirs = Layout(root / "work"), Layout(reference / "work")
    assert np.array_equal(np.load(mine.frames), np.load(theirs.frames))
    assert np.load(mine.frames).dtype == np.load(theirs.frames).dtype
    for name in ("frames_index", "frame_spec", "frames_report"):
        assert json.loads(getattr(mine, name).read_text()) == json.loads(getattr(theirs, name).read_text()), name


@pytest.mark.parametrize("point", [
    "between parts",
    pytest.param("a part's frames on disk, its record not yet renamed", marks=pytest.mark.slow),
    "assembling frames.npy",
    pytest.param("most of the catalogue done", marks=pytest.mark.slow),
])
def test_spectrogram_killed(reference, tmp_path, point):
    root = project_before(reference, "spectrogram", tmp_path / "p")
    kill_and_check(root, "spectrogram", **SPECTROGRAM_POINTS[point])
    refused = start(cli(root, "cluster"), root, root / "refused.log")
    refused.process.join()
    assert refused.process.exitcode == 2 and "reads spectrogram, which is killed" in refused.output()
    output = rerun(root, "spectrogram")
    if point == "between parts":
        assert re.search(r"resuming, [1-9]\d* of \d+ clips already done", output)  # parts kept
    check_spectrogram(root, reference)


# ---------------------------------------------------------------- cluster


CLUSTER_POINTS = {
    "vocabulary and report staged, not swapped in yet": {
        "condition": lambda work: any(p.name == "report.json" for p in (work / "output").glob(".vocabulary.*.tmp/*")),
        "replace": 0.5},
    "k-means running": {"condition": lambda work: "clusters per codebook on" in read_if_there(
        work.parent / "killed.log"), "kmeans": 1.0},
}


def without_timings(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k not in ("fit_time_s", "wall_time_s")}
    report["codebooks"] = [{k: v for k, v in book.items() if k != "fit_time_s"} for book in report["codebooks"]]
    return report


@pytest.mark.parametrize("point", ["vocabulary and report staged, not swapped in yet",
                                   pytest.param("k-means running", marks=pytest.mark.slow)])
def test_cluster_killed(reference, tmp_path, point):
    root = project_before(reference, "cluster", tmp_path / "p")
    kill_and_check(root, "cluster", **CLUSTER_POINTS[point])
    rerun(root, "cluster")
    mine, theirs = Layout(root / "work"), Layout(reference / "work")
    for name in ("vocabulary.json", "codebooks.npz"):
        assert (mine.vocabulary / name).read_bytes() == (theirs.vocabulary / name).read_bytes(), name
    report, expected = (json.loads(p.read_text()) for p in (mine.cluster_report, theirs.cluster_report))
    assert without_timings(report) == without_timings(expected)


# ---------------------------------------------------------------- tokenize


TOKENIZE_POINTS = {
    "token store half written": {"condition": exists("tokenized/.store.*.tmp/tokens.npy"), "batch": 0.05},
    "tokens swapped in, index not yet": {
        "condition": lambda work: (work / "tokenized/tokens.npy").exists()
        and any(work.glob("tokenized/.store.*.tmp/index.json")), "replace": 0.5},
}


@pytest.mark.parametrize("point", ["token store half written",
                                   pytest.param("tokens swapped in, index not yet", marks=pytest.mark.slow)])
def test_tokenize_killed(reference, tmp_path, point):
    root = project_before(reference, "tokenize", tmp_path / "p")
    kill_and_check(root, "tokenize", **TOKENIZE_POINTS[point])
    rerun(root, "tokenize")
    mine, theirs = Layout(root / "work"), Layout(reference / "work")
    tokens = np.load(mine.tokens)
    assert tokens.dtype == np.load(theirs.tokens).dtype
    assert np.array_equal(tokens, np.load(theirs.tokens))
    for name in ("tokens_index", "token_stats"):
        assert json.loads(getattr(mine, name).read_text()) == json.loads(getattr(theirs, name).read_text()), name


# ---------------------------------------------------------------- train


TRAIN_POINTS = {
    "after epoch 1": {"condition": exists("output/train.partial/checkpoints/last.pt"), "epoch": 1.0},
    "writing the epoch 2 checkpoint": {
        "condition": lambda work: (work / "output/train.partial/checkpoints/last.pt").exists()
        and any((work / "output/train.partial/checkpoints").glob(".last.pt.*.tmp")), "replace": 0.4},
    "writing the bundle": {"condition": exists("output/.model.*.tmp/model.safetensors"), "replace": 0.5},
}


def comparable_metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        for key in ("train_samples_per_s", "epoch_time_s", "peak_memory_gib"):  # measurements
            row.pop(key, None)
    return rows


@pytest.mark.parametrize("point", ["after epoch 1",
                                   pytest.param("writing the epoch 2 checkpoint", marks=pytest.mark.slow),
                                   pytest.param("writing the bundle", marks=pytest.mark.slow)])
def test_train_killed_then_resumed(reference, tmp_path, point):
    root = project_before(reference, "train", tmp_path / "p")
    kill_and_check(root, "train", **TRAIN_POINTS[point])
    output = rerun(root, "train", "--resume")
    assert "resume:" in output
    mine, theirs = Layout(root / "work"), Layout(reference / "work")
    weights, expected = (load_file(layout.model_dir / "model.safetensors") for layout in (mine, theirs))
    assert weights.keys() == expected.keys()
    for name in weights:
        assert np.array_equal(weights[name], expected[name]), name
    assert comparable_metrics(mine.metrics) == comparable_metrics(theirs.metrics)
