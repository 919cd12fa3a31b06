"""Every stage through the CLI, chained as a user's shell script would, on a tiny synthetic corpus."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CLASSES = {"low": 220.0, "mid": 660.0, "high": 1760.0}


def make_corpus(root: Path, per_class: int = 8, sr: int = 16000) -> Path:
    rng = np.random.default_rng(0)
    rows = ["path,label,group"]
    t = np.arange(sr) / sr
    for name, freq in CLASSES.items():
        for i in range(per_class):
            tone = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) + 0.01 * rng.standard_normal(sr)
            path = root / "audio" / f"{name}_{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone.astype(np.float32), sr)
            rows.append(f"audio/{path.name},{name},{name}{i % 4}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "audiotokens.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    manifest = make_corpus(root)
    (root / "run.toml").write_text(f"""
[data]
source = "manifest"
manifest = "{manifest}"
[split]
strategy = "stratified"
validation_ratio = 0.25
[spectrogram]
workers = 1
[cluster]
n_clusters = 8
[model]
num_layers = 1
hidden_size = 32
num_heads = 2
intermediate_size = 64
[train]
epochs = 3
batch_size = 8
learning_rate = 1e-3
device = "cpu"
num_workers = 0
""")
    return root


def test_chain_status_predict_and_rerun_of_changed_stages(project):
    common = ["--config", "run.toml", "--workdir", "work"]
    for stage in ("split", "spectrogram", "cluster", "tokenize", "train", "evaluate"):
        cli(stage, *common, cwd=project)

    work = project / "work"
    split = json.loads((work / "processed/split.json").read_text())
    assert split["task"] == "singlelabel" and sorted(split["classes"]) == sorted(CLASSES)
    sides = [set(split["splits"][name]) for name in ("train", "validation", "test")]
    assert sum(map(len, sides)) == 3 * 8 and set.union(*sides) == {clip["id"] for clip in split["clips"]}
    assert all(a.isdisjoint(b) for i, a in enumerate(sides) for b in sides[i + 1:])
    assert (work / "output/model").is_dir()
    metrics = json.loads((work / "output/eval/validation/metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0

    status = cli("status", *common, cwd=project).stdout
    assert status.count(": fresh") == 6, status

    predicted = cli("predict", "--workdir", "work", "--format", "json", "audio/high_0.wav", cwd=project).stdout
    rows = json.loads(predicted)
    assert len(rows) == 1 and {r["class"] for r in rows[0]["top"]} <= set(CLASSES)

    frames = work / "processed/frames/frames.npy"
    before = frames.stat().st_mtime_ns, frames.stat().st_ino
    status = cli("status", *common, "--set", "cluster.n_clusters=12", cwd=project).stdout
    assert "cluster: stale — cluster.n_clusters 8 → 12" in status
    ran = cli("run", *common, "--set", "cluster.n_clusters=12", cwd=project).stdout
    assert "stages to run: cluster, tokenize, train, evaluate" in ran
    assert (frames.stat().st_mtime_ns, frames.stat().st_ino) == before
    vocabulary = json.loads((work / "output/vocabulary/vocabulary.json").read_text())
    assert set(vocabulary["quantizer"]["codebook_sizes"]) == {12}

    # frames are stored once per clip: a new split re-runs everything after spectrogram, never spectrogram
    status = cli("status", *common, "--set", "cluster.n_clusters=12", "--set", "split.seed=3", cwd=project).stdout
    assert "spectrogram: fresh" in status and "cluster: stale" in status, status
    ran = cli("run", *common, "--set", "cluster.n_clusters=12", "--set", "split.seed=3", cwd=project).stdout
    assert "stages to run: split, cluster, tokenize, train, evaluate" in ran
    assert (frames.stat().st_mtime_ns, frames.stat().st_ino) == before
    assert json.loads((work / "processed/split.json").read_text())["splits"] != split["splits"]


def test_user_error_is_one_line_without_traceback(project):
    env = {**os.environ}
    result = subprocess.run([sys.executable, "-m", "audiotokens.cli", "cluster", "--workdir", "work",
                             "--set", "cluster.n_clustrs=3"], cwd=project, env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown config key 'cluster.n_clustrs'" in result.stderr
