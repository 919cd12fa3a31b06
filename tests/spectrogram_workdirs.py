"""Spectrogram-stage workdirs for tests: tones, clips in a split.json, and hooks that interrupt or count the
stage's work (shared by tests/features and tests/pipeline)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

import audiotokens.features.spectrogram as spectrogram_module
from audiotokens.pipeline.layout import Layout

CLASSES = ["a", "b", "c"]


def tone(sr: int, seconds: float, freq: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A decaying harmonic tone plus quiet noise, (n, channels) float32; channels differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    out = []
    for c in range(channels):
        f = freq * (1 + 0.1 * c)
        y = sum(np.sin(2 * np.pi * f * k * t) / k**1.5 for k in range(1, 6) if f * k < sr / 2)
        y = y * np.exp(-2 * t) + 1e-3 * rng.standard_normal(t.size)
        out.append(0.4 * y / np.abs(y).max())
    return np.stack(out, axis=1).astype(np.float32)


def write_split(workdir: Path, splits: dict[str, list[dict]], task: str = "singlelabel") -> None:
    """split.json: the catalogue is every clip listed (once, in first-listed order), the splits their ids."""
    path = Layout(workdir).split_json
    path.parent.mkdir(parents=True, exist_ok=True)
    catalogue = list({c["id"]: c for clips in splits.values() for c in clips}.values())
    path.write_text(json.dumps({"source": "test", "strategy": "test", "task": task, "classes": CLASSES,
                                "clips": catalogue,
                                "splits": {name: [c["id"] for c in clips] for name, clips in splits.items()}}))


def clip(clip_id: str, audio, labels=(0,)) -> dict:
    return {"id": clip_id, "audio": str(audio), "labels": list(labels), "group": None}


def distinct_clips(folder: Path, count: int, sr: int = 16000, seconds: float = 1.0) -> list[dict]:
    """Clips whose content differs strongly, so frames stored under the wrong id cannot pass."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, tone(sr, seconds + 0.05 * i, 150.0 * (i + 1), seed=i), sr)
        clips.append(clip(f"clip{i:03d}", path, [i % len(CLASSES)]))
    return clips


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_after(monkeypatch, parts: int) -> None:
    """Make the stage stop as Ctrl-C would, right after `parts` parts were written."""
    original = spectrogram_module.PartStore.write
    written = []

    def write(self, number, *args, **kwargs):
        original(self, number, *args, **kwargs)
        written.append(number)
        if len(written) == parts:
            raise Interrupt

    monkeypatch.setattr(spectrogram_module.PartStore, "write", write)


def count_processed(monkeypatch) -> list[int]:
    seen: list[int] = []
    original = spectrogram_module.process_clip

    def counted(params, task, **options):
        seen.append(task[0])
        return original(params, task, **options)

    monkeypatch.setattr(spectrogram_module, "process_clip", counted)
    return seen

