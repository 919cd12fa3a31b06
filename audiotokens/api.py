"""The public Python interface: load a bundle and score audio, reuse the learned tokenizer, drive the pipeline.

Everything here is a thin layer over the modules the CLI uses (model.audio_tokenizer, bundle, predict,
pipeline), so a score, a token or an error is the same from Python as from the shell; they are imported on
use, so `import audiotokens` stays quick. Audio in memory is a
(waveform, sample_rate) pair: a numpy array or torch tensor, either mono (n,) or (channels, n) (torchaudio's
layout) or (n, channels) (soundfile's: the longer axis is taken as time); channels are averaged, then the
waveform is resampled to the model's rate, exactly as a file would be.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

Waveform = Any  # numpy array or torch tensor, (n,), (channels, n) or (n, channels)
Item = str | Path | tuple[Waveform, int]


class Model:
    """A loaded bundle: `classes`, `predict` (chosen classes per item), `scores` (every class) and `timeline`
    (when each class occurs in a long recording)."""

    def __init__(self, *, bundle):
        from .model.audio_tokenizer import AudioTokenizer  # on use: start-up time

        self.bundle = bundle
        self.tokenizer = AudioTokenizer.of_bundle(bundle)

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
            tokenized = self.tokenizer(str(item))
            if tokenized.tokens is None:
                raise UserError(f"cannot score {item}: {tokenized.error}")
            return tokenized.tokens
        if not isinstance(item, tuple) or len(item) != 2:
            raise UserError(f"an item is a path or a (waveform, sample_rate) pair, got {type(item).__name__}")
        return self.tokenizer.model_input(self.tokenizer.frames(*item))

    def scores(self, items: Iterable[Item], batch_size: int = 32) -> np.ndarray:
        """(items, classes) float32 probabilities: sigmoid for multi-label models, softmax for single-label."""
        from .model.audio_tokenizer import single_threaded  # on use: start-up time

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
        from .evaluation.predict import chosen_classes  # on use: start-up time

        if top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be between 0 and 1, got {threshold}")
        return [{row["class"]: row["score"] for row in chosen_classes(scores, self.classes, top_k, threshold)}
                for scores in self.scores(items, batch_size)]

    def timeline(self, path: str | Path, window: float | None = None, hop: float | None = None,
                 threshold: float | None = None, out: str | Path | None = None):
        """When each class occurs in a recording of any length, as `audiotokens predict --timeline`.

        Windows of `window` seconds every `hop` (default: the model's evaluation window and hop), decoded
        block by block. Returns a Timeline: `events` (class, start, end, peak_score), `starts`, `ends` and
        `scores` (windows, classes) of every window; with `out`, the CLI's files are written in that folder.
        """
        from .data.audio import AudioError  # on use: start-up time
        from .evaluation.timeline import make_timeline, window_plan

        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be between 0 and 1, got {threshold}")
        plan = window_plan(self.bundle, self.tokenizer, window, hop)
        try:
            return make_timeline(str(path), self.bundle, self.tokenizer, plan, threshold,
                                 Path(out) if out is not None else None, keep_scores=True)
        except AudioError as exc:
            raise UserError(f"cannot score {path}: {exc}") from None

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
    from .evaluation.predict import load_model  # on use: start-up time

    return Model(bundle=load_model(bundle_dir, device=device))


def run(config_or_path: str | Path | None = None, stages: Sequence[str] | tuple[str, str] | None = None,
        workdir: str | Path = ".", overrides: Sequence[str] = (), force: bool = False,
        strict: bool = False) -> list[str]:
    """Run pipeline stages like `audiotokens run`: the stale ones of `stages` (all by default), in order.

    `config_or_path` is a TOML file (or None for the defaults); `stages` a list of names or a (first, last)
    range; `overrides` are `SECTION.KEY=VALUE` strings as for --set. Returns the stages that ran. Bad input
    raises UserError with the CLI's one-line message; provenance records are written as by the CLI.
    """
    # on use: start-up time
    from .config import load_config
    from .pipeline.lock import workdir_lock
    from .pipeline.run import execute, plan
    from .pipeline.run import run as run_range
    from .pipeline.stages import NAMES

    if isinstance(overrides, str):
        overrides = [overrides]
    config = load_config(str(config_or_path) if config_or_path is not None else None, list(overrides), workdir)
    if config.cluster.quantizer == "codec":  # the codec's own frames, from its folder
        from .tokens.codec import with_codec_frames

        config = with_codec_frames(config)
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

