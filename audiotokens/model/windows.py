"""Windowed scoring: the windows a long clip is scored in and the mean of their scores."""
from __future__ import annotations

from collections.abc import Callable

import torch


def eval_windows(length: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, stop) windows every `hop` frames, the last one aligned to the clip's end; one if it fits."""
    if length <= window:
        return [(0, length)]
    windows = [(start, start + window) for start in range(0, length - window + 1, hop)]
    if windows[-1][1] < length:
        windows.append((length - window, length))
    return windows


def mean_window_scores(
    score_fn: Callable[[list[torch.Tensor]], torch.Tensor], sequence: torch.Tensor, window: int, hop: int,
    *, windows_per_call: int = 16,
) -> torch.Tensor:
    """Mean over windows of `score_fn` for one clip's (frames, ...) sequence -> (n_classes,).

    `score_fn` takes a list of window slices (each (frames, ...)) and returns (len(list), n_classes) scores;
    give it probabilities so the mean is a mean of probabilities. Windows go to it in groups of
    `windows_per_call` so a long clip never becomes one huge batch.
    """
    slices = [sequence[start:stop] for start, stop in eval_windows(len(sequence), window, hop)]
    scores = [score_fn(slices[i:i + windows_per_call]) for i in range(0, len(slices), windows_per_call)]
    return torch.cat(scores).mean(dim=0)
