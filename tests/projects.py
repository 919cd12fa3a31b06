"""A tiny tone corpus run through every real stage, built once per session and shared by test modules."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from audiotokens.config import load_config
from audiotokens.pipeline.run import execute

TONES = {"low": 220.0, "mid": 660.0, "high": 1760.0}
SAMPLE_RATE = 16000
RUN_SETTINGS = """
[split]
strategy = "stratified"
validation_ratio = 0.25
[spectrogram]
workers = 1
[cluster]
n_clusters = 8
niter = 5
[model]
num_layers = 1
hidden_size = 32
num_heads = 2
intermediate_size = 64
[train]
epochs = 2
batch_size = 8
learning_rate = 1e-3
device = "cpu"
num_workers = 0
"""
_PROJECTS: dict[str, Path] = {}


def clip_labels(i: int, task: str) -> list[str]:
    names = list(TONES)
    if task == "multilabel" and i % 3 == 0:
        return [names[i % 3], names[(i + 1) % 3]]
    return [names[i % 3]]


def write_tone(path: Path, labels: list[str], variant: int, seconds: float = 0.5) -> None:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    rng = np.random.default_rng(variant)
    x = sum(0.4 * np.sin(2 * np.pi * TONES[name] * (1 + 0.01 * variant) * t) for name in labels)
    x = x + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), SAMPLE_RATE)


def write_recording(path: Path, seconds: float, bursts: list[tuple[str, float, float]], background: str = "low",
                    rate: int = SAMPLE_RATE, block_seconds: int = 60) -> None:
    """A long tone recording written block by block: `background` playing except during each
    (class, start, end) burst, where that class's tone plays instead."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for first in range(0, round(seconds * rate), block_seconds * rate):
            t = np.arange(first, min(round(seconds * rate), first + block_seconds * rate)) / rate
            playing = np.full(len(t), background, dtype=object)
            for name, start, end in bursts:
                playing[(t >= start) & (t < end)] = name
            x = sum(np.where(playing == name, 0.4 * np.sin(2 * np.pi * freq * t), 0.0)
                    for name, freq in TONES.items())
            out.write((x + 0.01 * rng.standard_normal(len(t))).astype(np.float32))


def build_project(root: Path, task: str, clips: int = 24, settings: tuple[str, ...] = ()) -> Path:
    """Every real stage, split to evaluate, on a tiny tone corpus; returns the project folder.

    The folder holds audio/, manifest.csv, run.toml and the workdir work/. `settings`
    (SECTION.KEY=VALUE overrides) apply to every stage, e.g. more epochs for a model that must be right.
    """
    rows = ["path,label"]
    for i in range(clips):
        labels = clip_labels(i, task)
        write_tone(root / "audio" / f"clip{i:02d}.wav", labels, i)
        rows.append(f"audio/clip{i:02d}.wav,{';'.join(labels)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "run.toml").write_text(f'[data]\nmanifest = "{root / "manifest.csv"}"\n' + RUN_SETTINGS)
    config = project_config(root, *settings)
    for stage in ("split", "spectrogram", "cluster", "tokenize", "train", "evaluate"):
        execute(stage, config)
    return root


def project_config(root: Path, *overrides: str):
    return load_config(root / "run.toml", list(overrides), root / "work")


def trained_project(tmp_path_factory, task: str) -> Path:
    """The project of `task`, built on first use and shared by every test module of the session."""
    if task not in _PROJECTS:
        _PROJECTS[task] = build_project(tmp_path_factory.mktemp(f"project_{task}"), task)
    return _PROJECTS[task]


def build_left_out_project(root: Path) -> Path:
    """A single-label tone project whose class 'c' is only in the test split (split.test_list): 'c' has no
    training clip, so it is no model output and its 2 clips leave the test split (6 listed, 4 scored).
    Every stage runs, the logistic-regression baseline too."""
    rows = ["path,label"]
    for i in range(20):
        label = list(TONES)[i % 3] if i < 18 else "c"
        write_tone(root / "audio" / f"clip{i:02d}.wav", [list(TONES)[i % 3]], i)
        rows.append(f"audio/clip{i:02d}.wav,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    test_list = root / "test_ids.txt"
    test_list.write_text("".join(f"audio/clip{i:02d}.wav\n" for i in (0, 1, 2, 3, 18, 19)))
    settings = RUN_SETTINGS.replace("[split]\n", f'[split]\ntest_list = "{test_list}"\n')
    (root / "run.toml").write_text(f'[data]\nmanifest = "{root / "manifest.csv"}"\n' + settings)
    config = project_config(root)
    for stage in ("split", "spectrogram", "cluster", "tokenize", "train", "evaluate"):
        execute(stage, config)
    execute("baseline", project_config(root, "baseline.models=logreg", "baseline.workers=1"))
    return root


def left_out_project(tmp_path_factory) -> Path:
    """build_left_out_project, built on first use and shared by every test module of the session."""
    if "left_out" not in _PROJECTS:
        _PROJECTS["left_out"] = build_left_out_project(tmp_path_factory.mktemp("project_left_out"))
    return _PROJECTS["left_out"]


def copy_project(root: Path, destination: Path) -> Path:
    """A private copy for tests that change artifacts (paths in run.toml still name the original audio)."""
    shutil.copytree(root, destination)
    return destination


def torchrun_train(project: Path, *settings: str, resume: bool = False) -> None:
    """`torchrun --nproc_per_node 2 -m audiotokens.cli train` on the CPU (gloo), as a user runs it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "audiotokens.cli", "train", "--config", str(project / "run.toml"), "--workdir",
               str(project / "work"), *(part for s in settings for part in ("--set", s))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command + (["--resume"] if resume else []), capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
