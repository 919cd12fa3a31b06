"""The public Python interface: load a bundle and score audio, reuse the learned tokenizer, drive the pipeline.

Everything here is a thin layer over the modules the CLI uses (predict, bundle, vocabulary, pipeline), so a
score, a token or an error is the same from Python as from the shell. Audio in memory is a
(waveform, sample_rate) pair: a numpy array or torch tensor, either mono (n,) or (channels, n); channels
are averaged, then the waveform is resampled to the model's rate, exactly as a file would be.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

Waveform = Any  # numpy array or torch tensor, (n,) or (channels, n)
Item = str | Path | tuple[Waveform, int]


def _as_numpy(waveform: Waveform) -> np.ndarray:
    if hasattr(waveform, "detach"):  # a torch tensor, possibly on a GPU
        waveform = waveform.detach().cpu().numpy()
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim == 1:
        return samples[None, :]
    if samples.ndim != 2:
        raise UserError(f"a waveform must be (n,) or (channels, n), got shape {samples.shape}")
    return samples


def _check_rate(sample_rate: Any) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise UserError(f"a sample rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def waveform_frames(waveform: Waveform, sample_rate: int, params) -> np.ndarray:
    """Frames of audio in memory, exactly as the spectrogram stage makes them from a file at that rate.

    Mixed down first, then cropped to params.max_duration, then resampled: the order a file goes through.
    """
    from .data.audio import AudioError, resample, to_mono
    from .features.spectrogram import frames_from_samples

    rate = _check_rate(sample_rate)
    mono = to_mono(np.ascontiguousarray(_as_numpy(waveform)))
    if params.max_duration > 0:
        mono = mono[:int(params.max_duration * rate)]
    if not np.isfinite(mono).all():
        raise UserError("the waveform holds NaN or infinite samples")
    try:
        frames = frames_from_samples(resample(mono, rate, params.sample_rate), params).astype(params.dtype,
                                                                                            copy=False)
    except AudioError as exc:
        raise UserError(f"cannot make frames of this waveform: {exc}") from None
    if not np.isfinite(frames).all():
        raise UserError(f"the waveform's frames overflow {params.dtype}")
    return frames


class AudioTokenizer:
    """The learned vocabulary as a component: waveform -> mel frames -> token ids -> quantised frames.

    Token ids are the tokenize stage's (frames, codebooks) int64 cluster ids, without the model's special
    tokens. A frames-input bundle has no vocabulary: `frames` works, `tokens` and `decode` raise UserError.
    For a waveform bundle (a fine-tuned speech model) `frames` gives the rows of samples the model reads.
    """

    def __init__(self, *, frame_spec: dict[str, Any], vocabulary=None):
        from .features.spectrogram import params_from_dict

        self.frame_spec = dict(frame_spec)
        self.params = params_from_dict(dict(frame_spec))
        self.vocabulary = vocabulary

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path) -> AudioTokenizer:
        """The tokenizer a model bundle was trained with (its frame spec and vocabulary)."""
        from .model.bundle import load_bundle

        bundle = load_bundle(bundle_dir)
        return cls(frame_spec=bundle.spectrogram, vocabulary=bundle.vocabulary)

    @classmethod
    def from_workdir(cls, workdir: str | Path = ".") -> AudioTokenizer:
        """The vocabulary fitted by `audiotokens cluster` in a workdir, with the frame spec it was fitted on."""
        from .pipeline.layout import Layout
        from .tokens.vocabulary import load_vocabulary

        vocabulary = load_vocabulary(Layout(workdir).vocabulary)
        return cls(frame_spec=vocabulary.frame_spec, vocabulary=vocabulary)

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
        """(frames, n_mels) mel frames (or the frame spec's kind) as the spectrogram stage stores them."""
        return waveform_frames(waveform, sample_rate, self.params)

    def tokens(self, waveform: Waveform, sample_rate: int) -> np.ndarray:
        """(tokens, codebooks) int64 ids, as the tokenize stage assigns them."""
        return self.frames_to_tokens(self.frames(waveform, sample_rate))

    def frames_to_tokens(self, frames: np.ndarray) -> np.ndarray:
        quantizer = self.quantizer
        return quantizer.encode(quantizer.windows(np.asarray(frames, dtype=np.float32)))

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


class Model:
    """A loaded bundle: `classes`, `predict` (chosen classes per item) and `scores` (every class)."""

    def __init__(self, *, bundle, tokenizer):
        self.bundle = bundle
        self._file_tokenizer = tokenizer  # predict.AudioTokenizer: files go the CLI's own way
        self.tokenizer = AudioTokenizer(frame_spec=bundle.spectrogram, vocabulary=bundle.vocabulary)

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.classes)

    @property
    def task(self) -> str:
        return self.bundle.task

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    def model_input(self, item: Item) -> np.ndarray:
        """What the network reads for one item: token ids, or frames for a frames model."""
        if isinstance(item, (str, Path)):
            tokenized = self._file_tokenizer(str(item))
            if tokenized.tokens is None:
                raise UserError(f"cannot score {item}: {tokenized.error}")
            return tokenized.tokens
        if not isinstance(item, tuple) or len(item) != 2:
            raise UserError(f"an item is a path or a (waveform, sample_rate) pair, got {type(item).__name__}")
        frames = self.tokenizer.frames(*item)
        return frames if self.bundle.vocabulary is None else self.tokenizer.frames_to_tokens(frames)

    def scores(self, items: Iterable[Item], batch_size: int = 32) -> np.ndarray:
        """(items, classes) float32 probabilities: sigmoid for multi-label models, softmax for single-label."""
        from .evaluation.predict import single_threaded

        items = _as_list(items)
        with single_threaded():  # one clip's features are too small for thread pools (see predict)
            inputs = [self.model_input(item) for item in items]
        if not inputs:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.bundle.scores(inputs, batch_size=batch_size)

    def predict(self, items: Iterable[Item], top_k: int = 5, threshold: float | None = None,
                batch_size: int = 32) -> list[dict[str, float]]:
        """Per item, class -> score for the classes `audiotokens predict` lists, best first.

        With `threshold`, every class scoring at least that; otherwise the `top_k` best.
        """
        from .evaluation.predict import chosen_classes

        if top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be between 0 and 1, got {threshold}")
        return [{row["class"]: row["score"] for row in chosen_classes(scores, self.classes, top_k, threshold)}
                for scores in self.scores(items, batch_size)]

    def decisions(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """(items, classes) booleans: the model's own decisions (its threshold, or arg-max for single-label)."""
        return self.bundle.objective.decisions(np.asarray(scores), self.threshold if threshold is None else threshold)


def _as_list(items: Iterable[Item]) -> list[Item]:
    # one pair or one path alone is a common slip; treat it as a batch of one
    if isinstance(items, (str, Path)):
        return [items]
    if isinstance(items, tuple) and len(items) == 2 and not isinstance(items[0], (str, Path, tuple)) \
            and isinstance(items[1], (int, np.integer)):
        return [items]
    return list(items)


def load(bundle_dir: str | Path, device: str = "auto") -> Model:
    """The model bundle at `bundle_dir` (e.g. <workdir>/output/model) on `device` (auto: CUDA, MPS, else CPU)."""
    from .evaluation.predict import AudioTokenizer as FileTokenizer
    from .evaluation.predict import load_model

    bundle = load_model(bundle_dir, device=device)
    return Model(bundle=bundle, tokenizer=FileTokenizer(bundle))


def run(config_or_path: str | Path | None = None, stages: Sequence[str] | tuple[str, str] | None = None,
        workdir: str | Path = ".", overrides: Sequence[str] = (), force: bool = False,
        strict: bool = False) -> list[str]:
    """Run pipeline stages like `audiotokens run`: the stale ones of `stages` (all by default), in order.

    `config_or_path` is a TOML file (or None for the defaults); `stages` a list of names or a (first, last)
    range; `overrides` are `SECTION.KEY=VALUE` strings as for --set. Returns the stages that ran. Bad input
    raises UserError with the CLI's one-line message; provenance records are written as by the CLI.
    """
    from .config import load_config
    from .pipeline.lock import workdir_lock
    from .pipeline.run import execute, plan
    from .pipeline.run import run as run_range
    from .pipeline.stages import NAMES

    if isinstance(overrides, str):
        overrides = [overrides]
    config = load_config(str(config_or_path) if config_or_path is not None else None, list(overrides), workdir)
    if stages is None:
        return run_range(config, force=force, strict=strict)
    wanted = [stages] if isinstance(stages, str) else list(stages)
    unknown = [name for name in wanted if name not in NAMES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; stages are {', '.join(NAMES)}")
    if (isinstance(stages, tuple) and len(stages) == 2) or len(wanted) == 1:  # a (first, last) range
        return run_range(config, wanted[0], wanted[-1], force=force, strict=strict)
    positions = sorted(NAMES.index(name) for name in wanted)
    with workdir_lock(config.workdir, "run"):
        # stale among the wanted ones, judged over the range they span; the others are left as they are
        todo = [name for name in plan(config, NAMES[positions[0]], NAMES[positions[-1]], force) if name in wanted]
        for name in todo:
            execute(name, config, strict=strict)
    return todo
