"""Windowed scoring: the windows a long clip is scored in and the mean of their scores.

A model trained on crops scores a longer clip as the mean of its windows' scores. Validation during
training (training/loaders.py) and inference (model/bundle.py) both cut clips with `clip_windows` and
average with `mean_over_windows`, so a clip gets the same score in both. A timeline of a long recording
(evaluation/timeline.py) steps through it with the same windows, in samples.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def eval_windows(length: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, stop) windows every `hop` frames, the last one aligned to the clip's end; one if it fits."""
    return list(window_spans(length, window, hop))


def window_spans(length: int, window: int, hop: int) -> Iterator[tuple[int, int]]:
    """`eval_windows` one at a time, in any unit (a timeline's are samples): none is held for a long file."""
    if length <= window:
        yield 0, length
        return
    start = 0
    for start in range(0, length - window + 1, hop):
        yield start, start + window
    if start + window < length:
        yield length - window, length


def clip_windows(lengths: Sequence[int] | np.ndarray, window: int,
                 hop: int) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """Every clip's (clip, start, stop) windows, clip by clip, and the number of windows of each clip;
    with `window` 0, each clip whole."""
    items, counts = [], np.zeros(len(lengths), dtype=np.int64)
    for i, length in enumerate(lengths):
        pieces = eval_windows(int(length), window, hop) if window else [(0, int(length))]
        items += [(i, start, stop) for start, stop in pieces]
        counts[i] = len(pieces)
    return items, counts


def first_windows(counts: np.ndarray) -> np.ndarray:
    """The row of each clip's first window among windows listed clip by clip."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def mean_over_windows(window_scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(clips, classes): each clip's mean of its windows' scores, from the scores of the windows listed clip
    by clip (as `clip_windows` lists them) and the number of windows of each clip. Give it probabilities,
    so that the mean is a mean of probabilities."""
    counts = np.asarray(counts)
    if not len(counts):
        return window_scores
    means = np.add.reduceat(window_scores, first_windows(counts), axis=0) / counts[:, None]
    return means.astype(window_scores.dtype)
