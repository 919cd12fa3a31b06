"""What every frame kind (`spectrogram.features`) provides; the kinds are registered in spectrogram.FRAME_KINDS.

A frame kind is bound to the [spectrogram] settings it is made with and says: the frame spec it writes
(what a frame is made of and exactly the parameters that define it, recorded in the store and bundles),
the settings a recorded spec stands for, the settings the stage actually runs with, its checks, its width
(values per frame), and how a clip (a file, or mono samples already at the kind's rate) becomes frames.
A new kind is one subclass, beside the code that computes its frames, plus one entry in FRAME_KINDS.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..config import SpectrogramConfig
from ..data.audio import AudioError

# a frame spec's record of the [augment] settings its store's corrupted training copies were made with: part of
# the spec (and its digest), never a setting of the frames themselves
AUGMENT = "augment"


class FrameKind(ABC):
    """One kind of frame with the settings it is made with."""

    name: ClassVar[str]  # the spectrogram.features value, also the frame spec's "features"
    in_process: ClassVar[bool] = False  # computed in the stage's own process rather than by a pool of workers

    def __init__(self, params: SpectrogramConfig):
        self.params = params

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """The frame spec: what a frame is made of and exactly the parameters that define it."""

    @classmethod
    @abstractmethod
    def params_from_spec(cls, spec: dict[str, Any]) -> SpectrogramConfig:
        """The settings a recorded frame spec of this kind stands for (other keys keep their defaults)."""

    def resolved(self) -> SpectrogramConfig:
        """The settings the frames are computed with: the configured ones, or with what the kind fixes itself."""
        return self.params

    @abstractmethod
    def check(self) -> None:
        """A one-line UserError for settings this kind cannot make frames with."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Values per frame."""

    @abstractmethod
    def frames_of(self, location: str) -> np.ndarray:
        """(frames, width) float32 of the clip at `location` (resolved settings)."""

    @abstractmethod
    def frames_from_samples(self, mono: np.ndarray) -> np.ndarray:
        """`frames_of` for mono samples already at the resolved sample rate (audio in memory)."""

    def prepare(self) -> None:
        """Work done once before clips are computed, so forked workers inherit it rather than each repeat it."""


def sample_rows(samples: np.ndarray, hop: int, at_least: int, too_short: str) -> np.ndarray:
    """(rows, hop) float32: mono samples in rows of `hop`, the samples after the last whole row dropped;
    an AudioError ("too short", with `too_short` as detail) when fewer than `at_least` samples are kept."""
    kept = len(samples) // hop * hop
    if kept == 0 or kept < at_least:
        raise AudioError("too short", too_short)
    rows = np.asarray(samples[:kept], dtype=np.float32).reshape(-1, hop)
    if not np.isfinite(rows).all():
        raise AudioError("non-finite frames", "the waveform holds NaN or infinite samples")
    return np.ascontiguousarray(rows)
