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

from audiotokens.artifacts import ClipIndex, Layout, open_split, save_npy, spec_digest, write_json
from audiotokens.config import SpectrogramConfig
from audiotokens.quantizers import Quantizer
from audiotokens.spectrogram import params_to_dict
from audiotokens.vocabulary import save_vocabulary


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
