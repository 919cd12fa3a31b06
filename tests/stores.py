"""Artifacts as the split, spectrogram and cluster stages write them, built directly for stage tests.

A test that exercises one stage writes its inputs here instead of running the stages before it: the clip
catalogue with its splits (processed/split.json), the frames store (processed/frames/) and the vocabulary
(output/vocabulary/).
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np

from audiotokens.config import SpectrogramConfig
from audiotokens.features.spectrogram import params_to_dict
from audiotokens.pipeline.files import save_npy, write_json
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import ClipIndex, open_split, spec_digest
from audiotokens.tokens.quantizers import Quantizer
from audiotokens.tokens.vocabulary import save_vocabulary


def frame_spec(n_mels: int, **overrides) -> dict:
    """The frame spec of default spectrogram settings with n_mels (and any other) changed."""
    return params_to_dict(dataclasses.replace(SpectrogramConfig(), n_mels=n_mels, **overrides))


def write_plan(workdir: Path, splits: dict[str, list[str]], labels: dict[str, list[int]], classes: list[str],
               task: str = "singlelabel") -> None:
    """processed/split.json listing every clip of `splits` (in split order) with its labels (class ids)."""
    clips = [{"id": clip_id, "audio": f"/nowhere/{clip_id}.wav", "labels": list(labels[clip_id]), "group": None}
             for ids in splits.values() for clip_id in ids]
    write_json(Layout(workdir).split_json, {"source": "test", "strategy": "test", "task": task,
                                            "classes": list(classes), "dropped_classes": [], "clips": clips,
                                            "splits": {name: list(ids) for name, ids in splits.items() if ids}})


def write_frames(workdir: Path, clips: list[tuple[str, np.ndarray]], spec: dict | None = None) -> ClipIndex:
    """processed/frames/ holding `clips` (id, frames) in the given row order, as the spectrogram stage writes it."""
    layout = Layout(workdir)
    dim = clips[0][1].shape[1]
    spec = spec if spec is not None else frame_spec(dim)
    frames = np.concatenate([frames for _, frames in clips])
    save_npy(layout.frames, frames)
    index = ClipIndex.from_lengths([clip_id for clip_id, _ in clips], [len(f) for _, f in clips],
                                   [[] for _ in clips], [], "")
    index.extra = {"frame_spec_digest": spec_digest(spec), "dtype": str(frames.dtype)}
    index.save(layout.frames_index)
    write_json(layout.frame_spec, spec)
    return index


def cut(frames: np.ndarray, lengths) -> list[np.ndarray]:
    """Consecutive pieces of `frames` of the given lengths."""
    edges = np.cumsum([0, *lengths])
    assert edges[-1] == len(frames)
    return [frames[a:b] for a, b in itertools.pairwise(edges)]


def write_store(workdir: Path, splits: dict[str, tuple[np.ndarray, list[int]]], classes=("a", "b"),
                spec: dict | None = None) -> dict[str, ClipIndex]:
    """split.json + one frames store from per-split (frames, clip lengths); clip i of a split is
    '<split>-<i:03d>' with label i % len(classes). Returns each split's view of the store."""
    ids = {name: [f"{name}-{i:03d}" for i in range(len(lengths))] for name, (_, lengths) in splits.items()}
    labels = {clip_id: [i % len(classes)] for name in ids for i, clip_id in enumerate(ids[name])}
    write_plan(workdir, ids, labels, list(classes))
    clips = [(clip_id, piece) for name, (frames, lengths) in splits.items()
             for clip_id, piece in zip(ids[name], cut(frames, lengths))]
    write_frames(workdir, clips, spec)
    return {name: open_split(Layout(workdir), "frames", name)[1] for name in splits}


def write_vocabulary(workdir: Path, centroids: np.ndarray, spherical: bool = False,
                     spec: dict | None = None) -> Quantizer:
    """output/vocabulary/ of a `frame` tokenizer with these centroids, fitted on frames of `spec`."""
    centroids = np.asarray(centroids, dtype=np.float32)
    quantizer = Quantizer(kind="frame", codebooks=[centroids], combine="concat", spherical=spherical)
    save_vocabulary(Layout(workdir).vocabulary, quantizer, spec if spec is not None else frame_spec(centroids.shape[1]))
    return quantizer


# ---------------------------------------------------------------- separable stores for model tests

N_CLUSTERS = 24
FRAME_DIM = 8


def clip_labels(rng: np.random.Generator, task: str, n_classes: int) -> list[int]:
    if task == "multilabel":
        return [c for c in range(n_classes) if rng.random() < 0.4]
    return [int(rng.integers(n_classes))]


def _split_sizes(splits, n_train: int, n_validation: int):
    return splits or (("train", n_train), ("validation", n_validation))


def write_tokens(workdir: Path, clips: list[tuple[str, np.ndarray]], quantizer: Quantizer) -> None:
    """tokenized/ holding `clips` (id, ids (tokens, codebooks)) as the tokenize stage writes it."""
    layout = Layout(workdir)
    tokens = np.concatenate([ids for _, ids in clips]).astype(np.int16)
    save_npy(layout.tokens, tokens)
    index = ClipIndex.from_lengths([clip_id for clip_id, _ in clips], [len(ids) for _, ids in clips],
                                   [[] for _ in clips], [], "")
    index.extra = {"vocabulary_digest": quantizer.digest(), "codebook_sizes": quantizer.codebook_sizes}
    index.save(layout.tokens_index)


def make_workdir(root, task="multilabel", n_train=160, n_validation=64, n_classes=4, lengths=(12, 30),
                 n_codebooks=1, seed=0, splits=None) -> Layout:
    """Token stores where class c shows up as clusters 2c and 2c+1 among background clusters (separable).

    The vocabulary has `n_codebooks` codebooks of N_CLUSTERS random codes (a frame tokenizer for one, a
    sub-band one for more); every codebook carries the same ids.
    """
    rng = np.random.default_rng(seed)
    books = [rng.normal(size=(N_CLUSTERS, FRAME_DIM)).astype(np.float32) for _ in range(n_codebooks)]
    quantizer = Quantizer(kind="frame" if n_codebooks == 1 else "subband", codebooks=books, combine="concat")
    save_vocabulary(Layout(root).vocabulary, quantizer, frame_spec(FRAME_DIM * n_codebooks))
    background = np.arange(2 * n_classes, N_CLUSTERS)
    ids, labels, clips = {}, {}, []
    for split, n in _split_sizes(splits, n_train, n_validation):
        ids[split] = [f"{split}-{i}" for i in range(n)]
        for clip_id in ids[split]:
            labels[clip_id] = clip_labels(rng, task, n_classes)
            sequence = rng.choice(background, size=int(rng.integers(*lengths)))
            for c in labels[clip_id]:
                sequence[rng.choice(len(sequence), size=3, replace=False)] = rng.choice([2 * c, 2 * c + 1], size=3)
            clips.append((clip_id, np.repeat(sequence[:, None], n_codebooks, axis=1)))
    write_plan(root, ids, labels, [f"class {c}" for c in range(n_classes)], task)
    write_tokens(root, clips, quantizer)
    return Layout(root)


def make_frames_workdir(root, task="singlelabel", n_train=96, n_validation=32, n_classes=3, lengths=(10, 24),
                        seed=0, splits=None) -> Layout:
    """A frames store where class c raises mel band c on a few frames (separable)."""
    rng = np.random.default_rng(seed)
    ids, labels, clips = {}, {}, []
    for split, n in _split_sizes(splits, n_train, n_validation):
        ids[split] = [f"{split}-{i}" for i in range(n)]
        for clip_id in ids[split]:
            labels[clip_id] = clip_labels(rng, task, n_classes)
            frames = rng.random((int(rng.integers(*lengths)), FRAME_DIM)).astype(np.float32) * 0.5
            for c in labels[clip_id]:
                frames[rng.choice(len(frames), size=6, replace=False), c] = 2.0
            clips.append((clip_id, frames))
    write_plan(root, ids, labels, [f"class {c}" for c in range(n_classes)], task)
    write_frames(root, clips)
    return Layout(root)


def assert_resume_matches_straight(straight, interrupted, monkeypatch, trainer=None) -> tuple[dict, dict]:
    """Train `straight` (a config) to the end; train `interrupted` until a KeyboardInterrupt in its second
    epoch, scramble the global random state and resume it; every weight of the two last.pt must be equal.
    Returns (straight, resumed) checkpoint states. `trainer`: the Trainer class whose epochs run."""
    import torch

    from audiotokens.training.checkpoint import load_checkpoint
    from audiotokens.training.optimisation import Trainer
    from audiotokens.training.train import ModelBuilder

    ModelBuilder(straight).run()
    interrupt_in_second_epoch(ModelBuilder(interrupted).run, monkeypatch, trainer or Trainer)
    torch.manual_seed(99)  # the resumed run must take its random state from the checkpoint
    ModelBuilder(interrupted, resume=True).run()
    states = tuple(load_checkpoint(Layout(config.workdir).checkpoints / "last.pt") for config in (straight, interrupted))
    for name, value in states[0]["model"].items():
        assert torch.equal(value, states[1]["model"][name]), name
    return states


def interrupt_in_second_epoch(train, monkeypatch, trainer, method: str = "train_epoch") -> None:
    """Call `train` (a training run) with `trainer.<method>` (called once per epoch) raising KeyboardInterrupt
    in the second epoch, so the run's checkpoint holds its first epoch."""
    import pytest

    original, calls = getattr(trainer, method), []

    def stop_in_the_second_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer, method, stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(trainer, method, original)
