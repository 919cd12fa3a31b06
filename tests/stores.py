"""Small separable clip stores written straight into a workdir: token ids (with centroids) or frames."""
from __future__ import annotations

import numpy as np

from audiotokens.artifacts import ClipIndex, Layout, save_npy

N_CLUSTERS = 24
FRAME_DIM = 8


def clip_labels(rng: np.random.Generator, task: str, n_classes: int) -> list[int]:
    if task == "multilabel":
        return [c for c in range(n_classes) if rng.random() < 0.4]
    return [int(rng.integers(n_classes))]


def make_workdir(root, task="multilabel", n_train=160, n_validation=64, n_classes=4, lengths=(12, 30),
                 n_codebooks=1, seed=0, splits=None) -> Layout:
    """Token stores where class c shows up as clusters 2c and 2c+1 among background clusters (separable)."""
    rng = np.random.default_rng(seed)
    layout = Layout(root)
    splits = splits or (("train", n_train), ("validation", n_validation))
    save_npy(layout.centroids, rng.normal(size=(N_CLUSTERS, 8)).astype(np.float32))
    background = np.arange(2 * n_classes, N_CLUSTERS)
    classes = [f"class {c}" for c in range(n_classes)]
    for split, n in splits:
        labels, sequences = [], []
        for _ in range(n):
            labels_of_clip = clip_labels(rng, task, n_classes)
            sequence = rng.choice(background, size=int(rng.integers(*lengths)))
            for c in labels_of_clip:
                sequence[rng.choice(len(sequence), size=3, replace=False)] = rng.choice([2 * c, 2 * c + 1], size=3)
            labels.append(labels_of_clip)
            sequences.append(sequence)
        tokens = np.repeat(np.concatenate(sequences).astype(np.int16)[:, None], n_codebooks, axis=1)
        save_npy(layout.tokens(split), tokens)
        ClipIndex.from_lengths([f"{split}-{i}" for i in range(n)], [len(s) for s in sequences], labels, classes,
                               task, split).save(layout.tokens_index(split))
    return layout


def make_frames_workdir(root, task="singlelabel", n_train=96, n_validation=32, n_classes=3, lengths=(10, 24),
                        seed=0, splits=None) -> Layout:
    """Frame stores (processed/<split>/) where class c raises mel band c on a few frames (separable)."""
    rng = np.random.default_rng(seed)
    layout = Layout(root)
    classes = [f"class {c}" for c in range(n_classes)]
    for split, n in splits or (("train", n_train), ("validation", n_validation)):
        labels, clips = [], []
        for _ in range(n):
            labels_of_clip = clip_labels(rng, task, n_classes)
            frames = rng.random((int(rng.integers(*lengths)), FRAME_DIM)).astype(np.float32) * 0.5
            for c in labels_of_clip:
                frames[rng.choice(len(frames), size=6, replace=False), c] = 2.0
            labels.append(labels_of_clip)
            clips.append(frames)
        layout.frames_dir(split).mkdir(parents=True, exist_ok=True)
        save_npy(layout.frames(split), np.concatenate(clips))
        ClipIndex.from_lengths([f"{split}-{i}" for i in range(n)], [len(f) for f in clips], labels, classes,
                               task, split).save(layout.frames_index(split))
    return layout
