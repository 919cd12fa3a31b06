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

from audiotokens.artifacts import Layout

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
[train]
num_layers = 1
hidden_size = 32
num_heads = 2
intermediate_size = 64
epochs = 3
batch_size = 4
learning_rate = 1e-3
device = "cpu"
num_workers = 0
"""
STAGES = ("split", "spectrogram", "cluster", "tokenize", "train")
# what each stage reads (must stay byte-identical when it is killed) and writes (compared with the reference)
READS = {"spectrogram": ["processed/split.json", "processed/split.meta.json"],
         "cluster": ["processed/train", "processed/validation", "processed/split.json"],
         "tokenize": ["processed", "output/centroids.npy", "output/cluster_report.json"],
         "train": ["processed", "output/centroids.npy", "tokenized"]}


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
    "between parts": {"condition": exists("processed/train/parts/part-00002.json"), "parts": 3, "clip": 0.03},
    "a part complete, not yet renamed": {"condition": exists("processed/train/parts/.part-00001.npy.*.tmp"),
                                             "parts": 3, "replace": 0.5},
    "assembling frames.npy": {"condition": exists("processed/train/.frames.npy.*.tmp"), "parts": 3, "replace": 0.5},
    "train done, validation half way": {"condition": exists("processed/validation/parts/part-00000.json"),
                                            "parts": 2, "clip": 0.05},
}


def check_spectrogram(root: Path, reference: Path) -> None:
    for split in ("train", "validation"):
        mine, theirs = Layout(root / "work"), Layout(reference / "work")
        assert np.array_equal(np.load(mine.frames(split)), np.load(theirs.frames(split)))
        assert np.load(mine.frames(split)).dtype == np.load(theirs.frames(split)).dtype
        for path in (mine.frames_index(split), mine.frames_report(split)):
            assert json.loads(path.read_text()) == json.loads((theirs.workdir / path.relative_to(root / "work"))
                                                              .read_text())


@pytest.mark.parametrize("point", [
    "between parts",
    pytest.param("a part complete, not yet renamed", marks=pytest.mark.slow),
    "assembling frames.npy",
    pytest.param("train done, validation half way", marks=pytest.mark.slow),
])
def test_spectrogram_killed(reference, tmp_path, point):
    root = project_before(reference, "spectrogram", tmp_path / "p")
    kill_and_check(root, "spectrogram", **SPECTROGRAM_POINTS[point])
    refused = start(cli(root, "cluster"), root, root / "refused.log")
    refused.process.join()
    assert refused.process.exitcode == 2 and "reads spectrogram, which is failed" in refused.output()
    output = rerun(root, "spectrogram")
    if point == "between parts":
        assert re.search(r"train: resuming, [1-9]\d* of \d+ clips already done", output)  # parts kept
    check_spectrogram(root, reference)


# ---------------------------------------------------------------- cluster


CLUSTER_POINTS = {
    "centroids renamed, report not yet": {
        "condition": lambda work: (work / "output/centroids.npy").exists() and any(
            (work / "output").glob(".cluster_report.json.*.tmp")), "replace": 0.5},
    "k-means running": {"condition": lambda work: "k-means:" in read_if_there(work.parent / "killed.log"),
                            "kmeans": 1.0},
}


@pytest.mark.parametrize("point", ["centroids renamed, report not yet",
                                   pytest.param("k-means running", marks=pytest.mark.slow)])
def test_cluster_killed(reference, tmp_path, point):
    root = project_before(reference, "cluster", tmp_path / "p")
    kill_and_check(root, "cluster", **CLUSTER_POINTS[point])
    rerun(root, "cluster")
    mine, theirs = Layout(root / "work"), Layout(reference / "work")
    assert np.array_equal(np.load(mine.centroids), np.load(theirs.centroids))
    report, expected = (json.loads(p.read_text()) for p in (mine.cluster_report, theirs.cluster_report))
    for timing in ("fit_time_s", "wall_time_s"):
        report.pop(timing), expected.pop(timing)
    assert report == expected


# ---------------------------------------------------------------- tokenize


TOKENIZE_POINTS = {
    "train split half written": {"condition": exists("tokenized/.train.tmp/tokens.npy"), "batch": 0.05},
    "train swapped in, validation not yet": {
        "condition": lambda work: (work / "tokenized/train/tokens.npy").exists(), "replace": 0.5},
}


@pytest.mark.parametrize("point", ["train split half written",
                                   pytest.param("train swapped in, validation not yet", marks=pytest.mark.slow)])
def test_tokenize_killed(reference, tmp_path, point):
    root = project_before(reference, "tokenize", tmp_path / "p")
    kill_and_check(root, "tokenize", **TOKENIZE_POINTS[point])
    rerun(root, "tokenize")
    for split in ("train", "validation"):
        mine, theirs = Layout(root / "work"), Layout(reference / "work")
        tokens = np.load(mine.tokens(split))
        assert tokens.dtype == np.load(theirs.tokens(split)).dtype
        assert np.array_equal(tokens, np.load(theirs.tokens(split)))
        assert json.loads(mine.tokens_index(split).read_text()) == json.loads(theirs.tokens_index(split).read_text())


# ---------------------------------------------------------------- train


TRAIN_POINTS = {
    "after epoch 1": {"condition": exists("output/checkpoints/last.pt"), "epoch": 1.0},
    "writing the epoch 2 checkpoint": {
        "condition": lambda work: (work / "output/checkpoints/last.pt").exists()
        and any((work / "output/checkpoints").glob(".last.pt.*.tmp")), "replace": 0.4},
    "writing the bundle": {"condition": exists("output/.model.*.tmp/model.safetensors"), "replace": 0.5},
}


def comparable_metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        for key in ("train_samples_per_s", "epoch_time_s"):
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
