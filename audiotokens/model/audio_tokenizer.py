"""Audio -> frames -> token ids with one frame spec and one vocabulary: the tokenizer a bundle or a workdir holds.

One class for audio files and for audio in memory, used by `predict`, `show`, `evaluate --manifest`,
robustness and the Python API, so a clip's tokens are the same whichever door it came through. Everything
that turns audio into model input comes from the frame spec and vocabulary given (a bundle's, or the one
`audiotokens cluster` fitted in a workdir), never from the current config: a bundle copied to another
machine scores a file exactly as the training pipeline would have. A frames-input bundle has no vocabulary
(its model reads the frames themselves); a waveform bundle's frames are rows of resampled samples.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from ..data.audio import MIN_SAMPLE_RATE, AudioError, resample, to_mono
from ..errors import UserError
from ..features.spectrogram import frame_width, frames_from_samples, frames_of, params_from_dict
from ..pipeline.layout import Layout
from ..tokens.vocabulary import load_vocabulary
from .bundle import load_bundle

Waveform = Any  # numpy array or torch tensor, (n,), (channels, n) or (n, channels)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch and faiss on one thread for one clip's work, restored afterwards.

    One clip's STFT or nearest-centroid search is too small for thread pools to pay off, and on a busy
    machine their spinning costs far more than the work (2 cores under load: mel frames of a 10 s clip
    105 ms with 2 threads vs 10 ms with 1; token search 29 ms vs 0.12 ms). The model keeps all threads.
    """
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


@dataclass
class Tokenized:
    """One file's model input (token ids, or frames for a frames model), or why it has none."""

    path: str
    tokens: np.ndarray | None
    error: str = ""


def _as_numpy(waveform: Waveform) -> np.ndarray:
    if hasattr(waveform, "detach"):  # a torch tensor, possibly on a GPU
        waveform = waveform.detach().cpu().numpy()
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim == 1:
        return samples[None, :]
    if samples.ndim != 2:
        raise UserError(f"a waveform must be (n,), (channels, n) or (n, channels), got shape {samples.shape}")
    # a clip has more samples than channels: the longer axis is time, so soundfile's and torchaudio's
    # layouts both work (read the other way, a stereo clip would be 2 samples of n channels)
    return samples.T if samples.shape[0] > samples.shape[1] else samples


def _check_rate(sample_rate: Any) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or sample_rate < MIN_SAMPLE_RATE:
        raise UserError(f"a sample rate must be an integer of at least {MIN_SAMPLE_RATE} Hz, got {sample_rate!r}")
    return int(sample_rate)


class AudioTokenizer:
    """The learned vocabulary as a component: audio -> frames -> token ids -> quantised frames.

    Token ids are the tokenize stage's (tokens, codebooks) int64 ids, without the model's special tokens.
    Without a vocabulary (a frames or waveform bundle) `frames` works and `tokens` / `decode` raise
    UserError; `model_input` then is the frames themselves.
    """

    def __init__(self, *, frame_spec: dict[str, Any], vocabulary=None, input_dim: int | None = None,
                 source: str = "the frame spec"):
        self.frame_spec = dict(frame_spec)
        try:
            self.params = params_from_dict(dict(frame_spec))
        except (TypeError, UserError) as exc:
            raise UserError(f"{source}'s spectrogram parameters are unusable ({exc}); "
                            "re-run `audiotokens train`") from None
        self.vocabulary = vocabulary
        width = vocabulary.quantizer.n_mels if vocabulary is not None else input_dim
        if width is not None and frame_width(self.params) != width:
            raise UserError(f"the model (or vocabulary) of {source} reads frames of {width} values but its frame "
                            f"spec gives {frame_width(self.params)}; it is inconsistent")
        if vocabulary is not None:
            vocabulary.quantizer.check_encoder()  # a codec's folder, refused now rather than file by file

    @classmethod
    def of_bundle(cls, bundle) -> AudioTokenizer:
        """The tokenizer of a loaded bundle (model.bundle.Bundle)."""
        return cls(frame_spec=bundle.spectrogram, vocabulary=bundle.vocabulary, input_dim=bundle.spec.input_dim,
                   source="the model bundle")

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path) -> AudioTokenizer:
        """The tokenizer a model bundle was trained with (its frame spec and vocabulary)."""
        return cls.of_bundle(load_bundle(bundle_dir))

    @classmethod
    def from_workdir(cls, workdir: str | Path = ".") -> AudioTokenizer:
        """The vocabulary fitted by `audiotokens cluster` in a workdir, with the frame spec it was fitted on."""
        vocabulary = load_vocabulary(Layout(workdir).vocabulary)
        return cls(frame_spec=vocabulary.frame_spec, vocabulary=vocabulary, source=str(Layout(workdir).vocabulary))

    @property
    def quantizer(self):
        if self.vocabulary is None:
            raise UserError("this bundle reads frames (or waveform rows) and has no vocabulary; use frames(), or a "
                            "tokens model")
        return self.vocabulary.quantizer

    @property
    def codebook_sizes(self) -> list[int]:
        return self.quantizer.codebook_sizes

    def frames(self, waveform: Waveform, sample_rate: int) -> np.ndarray:
        """Frames of audio in memory, exactly as the spectrogram stage makes them from a file at that rate.

        Mixed down first, then cropped to max_duration, then resampled: the order a file goes through.
        """
        rate = _check_rate(sample_rate)
        mono = to_mono(np.ascontiguousarray(_as_numpy(waveform)))
        if self.params.max_duration > 0:
            mono = mono[:int(self.params.max_duration * rate)]
        if not np.isfinite(mono).all():
            raise UserError("the waveform holds NaN or infinite samples")
        try:
            frames = frames_from_samples(resample(mono, rate, self.params.sample_rate), self.params)
        except AudioError as exc:
            raise UserError(f"cannot make frames of this waveform: {exc}") from None
        frames = frames.astype(self.params.dtype, copy=False)
        if not np.isfinite(frames).all():
            raise UserError(f"the waveform's frames overflow {self.params.dtype}")
        return frames

    def file_frames(self, location: str) -> np.ndarray:
        """Frames of one audio file exactly as the spectrogram stage stores them (its dtype included)."""
        frames = frames_of(location, self.params).astype(self.params.dtype, copy=False)
        if not np.isfinite(frames).all():
            raise AudioError("non-finite frames", f"values overflow {self.params.dtype}")
        return frames

    def tokens(self, waveform: Waveform, sample_rate: int) -> np.ndarray:
        """(tokens, codebooks) int64 ids of audio in memory, as the tokenize stage assigns them."""
        return self.frames_to_tokens(self.frames(waveform, sample_rate))

    def frames_to_tokens(self, frames: np.ndarray) -> np.ndarray:
        quantizer = self.quantizer
        with single_threaded():
            return quantizer.encode(quantizer.windows(np.asarray(frames, dtype=np.float32)))

    def model_input(self, frames: np.ndarray) -> np.ndarray:
        """What the network reads: the token ids, or the frames themselves when there is no vocabulary."""
        return frames if self.vocabulary is None else self.frames_to_tokens(frames)

    def __call__(self, location: str) -> Tokenized:
        """One file's model input. Never raises for a bad file: the reason goes in `error`, so the other
        files still get scored."""
        try:
            with single_threaded():
                return Tokenized(location, self.model_input(self.file_frames(location)))
        except AudioError as exc:
            return Tokenized(location, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - an odd file must cost one row, not the whole run
            return Tokenized(location, None, f"unexpected error: {type(exc).__name__}: {exc}")

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """The quantised frames the ids stand for: (tokens, n_mels * stack) float32.

        One row per token; a stacked tokenizer's row is its `stack` frames concatenated in time order.
        A 1-D array is read as one codebook.
        """
        ids = np.asarray(tokens)
        try:
            return self.quantizer.decode(ids[:, None] if ids.ndim == 1 else ids)
        except ValueError as exc:
            raise UserError(f"cannot decode these tokens: {exc}") from None
