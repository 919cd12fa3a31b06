"""The portable model bundle: everything inference needs, in one directory.

  model_spec.json                   the ModelSpec: which parts, their sizes, the classes
  model.safetensors                 the weights (and the decoding tables of decoded token embeddings)
  audiotokens.json                  task, classes, decision threshold, token layout, lengths, the frame
                                    spec, the vocabulary's digest, package versions
  vocabulary/                       the tokenizer that turns frames into token ids, with the frame spec
                                    it was fitted on (vocabulary.py; tokens input only: a frames model
                                    reads frames directly)

A fine-tuned speech model (waveform input) is the same: its weights are in model.safetensors, its config
and origin (the local folder and the digest of its weights) in model_spec.json, so the bundle loads
without the original folder.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..pipeline.files import atomic_dir, read_json, write_json
from ..pipeline.layout import BUNDLE_METADATA as METADATA
from ..pipeline.layout import BUNDLE_SPEC as SPEC
from ..pipeline.layout import BUNDLE_VOCABULARY as VOCABULARY
from ..pipeline.layout import BUNDLE_WEIGHTS as WEIGHTS
from ..tokens.vocabulary import load_vocabulary
from .batching import length_ordered_batches
from .inputs import PACKERS, as_frames_by_codebooks
from .objectives import Objective, objective_for
from .parts import ENCODERS, EXTRA_POSITIONS, SPECIAL_TOKENS, TOKEN_OFFSET, AudioClassifier, ModelSpec
from .windows import clip_windows, mean_over_windows

log = logging.getLogger("audiotokens")

BUNDLE_FORMAT = "audiotokens-bundle"
BUNDLE_VERSION = 2
REBUILD = "re-run `audiotokens train`, or copy the whole bundle directory"


def save_weights(model: AudioClassifier, path: Path) -> None:
    save_file({name: value.detach().contiguous() for name, value in model.state_dict().items()}, str(path))


def save_bundle(
    model: AudioClassifier,
    bundle_dir: Path,
    *,
    classes: list[str],
    task: str,
    threshold: float,
    max_frames: int,
    vocabulary,
    spectrogram: dict[str, Any],
    versions: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the bundle beside `bundle_dir`, then swap it in, so a reader never sees half a bundle.

    `vocabulary` (vocabulary.Vocabulary) is None for a frames-input model, which needs none; `spectrogram`
    is the frame spec of the frames the model (or its vocabulary) was made from.
    """
    bundle_dir = Path(bundle_dir)
    spec = model.spec
    with atomic_dir(bundle_dir) as tmp:
        save_weights(model, tmp / WEIGHTS)
        write_json(tmp / SPEC, spec.to_json())
        if vocabulary is not None:
            shutil.copytree(vocabulary.path, tmp / VOCABULARY)
        write_json(tmp / METADATA, {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "classes": list(classes),
            "task": task,
            "threshold": threshold,
            "input": spec.input,
            "special_tokens": SPECIAL_TOKENS,
            "token_offset": TOKEN_OFFSET,
            "sequence": "[CLS] tokens-or-frames [SEP] [PAD]...",
            "n_clusters": spec.codebook_sizes[0] if spec.codebook_sizes else None,
            "n_codebooks": len(spec.codebook_sizes),
            "max_frames": max_frames,
            "max_position_embeddings": spec.max_positions,
            "spectrogram": spectrogram,
            "vocabulary_digest": vocabulary.digest if vocabulary is not None else None,
            "versions": versions,
            **(extra or {}),
        })


@dataclass
class Bundle:
    model: AudioClassifier
    vocabulary: Any  # vocabulary.Vocabulary; None for a frames-input model
    spectrogram: dict[str, Any]  # the frame spec
    classes: list[str]
    task: str
    threshold: float
    max_frames: int
    metadata: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def input(self) -> str:
        return self.spec.input

    @property
    def objective(self) -> Objective:
        return objective_for(self.task)

    @property
    def batch_frames(self) -> int:
        """The padded-position budget per batch the model was trained with (0: batches of clips)."""
        return int(self.metadata.get("batch_frames") or 0)

    @torch.no_grad()
    def scores(self, clips: Sequence[np.ndarray], batch_size: int = 32,
               batch_frames: int | None = None) -> np.ndarray:
        """(clips, classes) probabilities: sigmoid (multi-label) or softmax (single-label).

        Each clip is what the model reads: raw cluster ids, (frames,) or (frames, codebooks), for a tokens
        model; mel frames (frames, n_mels) for a frames model; rows of samples (rows, stride) for a waveform
        model. Clips longer than the model's `max_frames`
        are cut to their first `max_frames` frames, with a warning, unless the model was trained on crops
        (train.crop_frames / eval_window): then a clip longer than the window scores the mean of its
        windows' scores. Batches hold at most `batch_size` pieces and, when `batch_frames` (default: the
        bundle's train.batch_frames) is set, at most that many padded positions.
        """
        sequences = [self._as_rows(np.asarray(s)) for s in clips]
        self._check(sequences)
        budget = self.batch_frames if batch_frames is None else batch_frames
        if not self.window:
            return self._score_pieces(sequences, batch_size, budget)
        items, counts = clip_windows([len(s) for s in sequences], self.window, self.hop)
        window_scores = self._score_pieces([sequences[i][start:stop] for i, start, stop in items], batch_size, budget)
        return mean_over_windows(window_scores, counts)

    @property
    def window(self) -> int:
        """Evaluation window in frames (0: whole clips), never more than the model holds."""
        return min(int(self.metadata.get("eval_window") or 0), self.max_frames)

    @property
    def hop(self) -> int:
        return int(self.metadata.get("eval_hop") or max(1, self.window // 2))

    def _score_pieces(self, sequences: list[np.ndarray], batch_size: int, batch_frames: int) -> np.ndarray:
        result = np.zeros((len(sequences), len(self.classes)), dtype=np.float32)
        objective, pack = self.objective, PACKERS[self.input]
        for rows in self._batches(sequences, batch_size, batch_frames):
            inputs, mask = pack([sequences[i][:self.max_frames] for i in rows])
            logits = self.model(inputs.to(self.device), mask.to(self.device))
            result[rows] = objective.scores(logits).cpu().numpy()
        return result

    def _batches(self, sequences: list[np.ndarray], batch_size: int, batch_frames: int) -> list[list[int]]:
        """Longest first, so similar lengths batch together."""
        positions = np.array([min(len(s), self.max_frames) + EXTRA_POSITIONS for s in sequences],
                             dtype=np.int64)
        return length_ordered_batches(positions, batch_size, batch_frames)

    def _as_rows(self, clip: np.ndarray) -> np.ndarray:
        return as_frames_by_codebooks(clip) if self.input == "tokens" else clip

    def _check(self, sequences: list[np.ndarray]) -> None:
        spec = self.spec
        for i, sequence in enumerate(sequences):
            if self.input != "tokens":
                if sequence.ndim != 2 or sequence.shape[1] != spec.input_dim:
                    raise UserError(f"clip {i} has frames of shape {sequence.shape}; the model reads "
                                    f"(frames, {spec.input_dim})")
                continue
            sizes = np.asarray(spec.codebook_sizes)
            if sequence.shape[1] != len(sizes):
                raise UserError(f"token sequence {i} has {sequence.shape[1]} codebooks; the model expects "
                                f"{len(sizes)}")
            if len(sequence) and (sequence.min() < 0 or (sequence.max(axis=0) >= sizes).any()):
                raise UserError(f"token sequence {i} holds ids outside the codebook sizes {sizes.tolist()}; "
                                "tokenize with the bundle's vocabulary")
        fewest = ENCODERS[spec.encoder].min_frames(spec)
        short = sum(len(s) < fewest for s in sequences)
        if short:
            log.warning("%d of %d clips are shorter than the %d frames model.encoder=%s reads; they are padded "
                        "with zero frames to %d", short, len(sequences), fewest, spec.encoder, fewest)
        cut = [len(s) - self.max_frames for s in sequences if len(s) > self.max_frames]
        if cut and not self.window:
            log.warning("%d of %d clips are longer than the model's %d frames; %d frames were cut",
                        len(cut), len(sequences), self.max_frames, sum(cut))


def load_model_weights(bundle_dir: Path, spec: ModelSpec) -> AudioClassifier:
    """The network of `spec` with the bundle's weights (decoding tables included), in eval mode."""
    model = AudioClassifier(spec=spec)
    try:
        weights = load_file(str(bundle_dir / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own type for a damaged file
        first = (str(exc).strip().splitlines() or ["damaged"])[0]
        raise UserError(f"{bundle_dir / WEIGHTS} cannot be read ({type(exc).__name__}: {first}); {REBUILD}") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{bundle_dir / WEIGHTS} does not fit {bundle_dir / SPEC} ({first}); {REBUILD}") from None
    return model.eval()


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by save_bundle; the model comes back in eval mode."""
    bundle_dir = Path(bundle_dir)
    required = (METADATA, SPEC, WEIGHTS)
    missing = [name for name in required if not (bundle_dir / name).is_file()]
    if missing:
        raise UserError(f"{bundle_dir} is not a complete model bundle (missing {', '.join(missing)}); "
                        "run `audiotokens train` or point --model at a bundle directory")
    metadata = read_json(bundle_dir / METADATA, fix=REBUILD)
    if not isinstance(metadata, dict) or metadata.get("format") != BUNDLE_FORMAT \
            or metadata.get("version") != BUNDLE_VERSION:
        raise UserError(f"{bundle_dir / METADATA} is not an audiotokens bundle of version {BUNDLE_VERSION}; "
                        "re-run `audiotokens train`")
    spec = ModelSpec.from_json(read_json(bundle_dir / SPEC, fix=REBUILD))
    if spec.max_frames != metadata["max_frames"] or spec.classes != metadata["classes"]:
        raise UserError(f"{bundle_dir}: {SPEC} and {METADATA} disagree on the sequence length or the classes; "
                        "re-run `audiotokens train`")
    vocabulary = None
    if spec.input == "tokens":
        vocabulary = load_vocabulary(bundle_dir / VOCABULARY, REBUILD)
        if vocabulary.digest != metadata.get("vocabulary_digest"):
            raise UserError(f"{bundle_dir / VOCABULARY} is not the vocabulary the model was trained with; {REBUILD}")
        if vocabulary.codebook_sizes != spec.codebook_sizes:
            raise UserError(f"{bundle_dir / VOCABULARY} has codebooks of sizes {vocabulary.codebook_sizes}, the model's "
                            f"embeddings {spec.codebook_sizes}; {REBUILD}")
    return Bundle(
        model=load_model_weights(bundle_dir, spec).to(device),
        vocabulary=vocabulary,
        spectrogram=metadata["spectrogram"],
        classes=metadata["classes"],
        task=metadata["task"],
        threshold=metadata["threshold"],
        max_frames=metadata["max_frames"],
        metadata=metadata,
    )
