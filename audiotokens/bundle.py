"""The portable model bundle: everything inference needs, in one directory.

  model.safetensors + config.json   the classifier (Hugging Face save_pretrained)
  audiotokens.json                  classes, task, threshold, token layout, lengths, the frame spec,
                                    package versions
  vocabulary/                       the tokenizer that turns frames into token ids (vocabulary.py), with
                                    the frame spec it was fitted on
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from .artifacts import atomic_dir, write_json
from .classifier import EXTRA_POSITIONS, SPECIAL_TOKENS, TOKEN_OFFSET, AudioTokenClassifier, probabilities
from .errors import UserError
from .token_dataset import as_frames_by_codebooks, pack_sequences

log = logging.getLogger("audiotokens")

BUNDLE_FORMAT = "audiotokens-bundle"
BUNDLE_VERSION = 1
METADATA = "audiotokens.json"
VOCABULARY = "vocabulary"
REQUIRED_FILES = (METADATA, "config.json", "model.safetensors")


def save_bundle(
    model: AudioTokenClassifier,
    bundle_dir: Path,
    *,
    classes: list[str],
    task: str,
    threshold: float,
    max_frames: int,
    vocabulary,
    versions: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the bundle beside `bundle_dir`, then swap it in, so a reader never sees half a bundle."""
    bundle_dir = Path(bundle_dir)
    with atomic_dir(bundle_dir) as tmp:
        hf_logging.disable_progress_bar()
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copytree(vocabulary.path, tmp / VOCABULARY)
        config = model.config
        write_json(tmp / METADATA, {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "classes": list(classes),
            "task": task,
            "threshold": threshold,
            "special_tokens": SPECIAL_TOKENS,
            "token_offset": TOKEN_OFFSET,
            "sequence": "[CLS] tokens [SEP] [PAD]...",
            "n_clusters": config.n_clusters,
            "n_codebooks": config.n_codebooks,
            "max_frames": max_frames,
            "max_position_embeddings": config.max_position_embeddings,
            "spectrogram": vocabulary.frame_spec,
            "vocabulary_digest": vocabulary.digest,
            "versions": versions,
            **(extra or {}),
        })


@dataclass
class Bundle:
    model: AudioTokenClassifier
    vocabulary: Any  # vocabulary.Vocabulary
    spectrogram: dict[str, Any]
    classes: list[str]
    task: str
    threshold: float
    max_frames: int
    metadata: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def scores(self, token_sequences: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(clips, classes) sigmoid (multi-label) or softmax (single-label) probabilities.

        Each sequence holds raw cluster ids, (frames,) or (frames, codebooks). Sequences longer than
        the model's `max_frames` are cut to their first `max_frames` frames, with a warning.
        """
        sequences = [as_frames_by_codebooks(np.asarray(s)) for s in token_sequences]
        self._check(sequences)
        result = np.zeros((len(sequences), len(self.classes)), dtype=np.float32)
        order = np.argsort([-len(s) for s in sequences], kind="stable")  # similar lengths batch together
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            input_ids, attention_mask = pack_sequences([sequences[i][:self.max_frames] for i in rows])
            logits = self.model(input_ids.to(self.device), attention_mask.to(self.device))
            result[rows] = probabilities(logits, self.task).cpu().numpy()
        return result

    def _check(self, sequences: list[np.ndarray]) -> None:
        n_clusters, n_codebooks = self.model.config.n_clusters, self.model.config.n_codebooks  # sizes are equal
        for i, sequence in enumerate(sequences):
            if sequence.shape[1] != n_codebooks:
                raise UserError(f"token sequence {i} has {sequence.shape[1]} codebooks; the model expects "
                                f"{n_codebooks}")
            if len(sequence) and (sequence.min() < 0 or sequence.max() >= n_clusters):
                raise UserError(f"token sequence {i} holds ids outside 0..{n_clusters - 1}; tokenize with "
                                "the bundle's vocabulary")
        cut = [len(s) - self.max_frames for s in sequences if len(s) > self.max_frames]
        if cut:
            log.warning("%d of %d clips are longer than the model's %d frames; %d frames were cut",
                        len(cut), len(sequences), self.max_frames, sum(cut))


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by save_bundle; the model comes back in eval mode."""
    bundle_dir = Path(bundle_dir)
    missing = [name for name in REQUIRED_FILES if not (bundle_dir / name).is_file()]
    if missing:
        raise UserError(f"{bundle_dir} is not a complete model bundle (missing {', '.join(missing)}); "
                        "run `audiotokens train` or point --model at a bundle directory")
    try:
        metadata = json.loads((bundle_dir / METADATA).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{bundle_dir / METADATA} is not valid JSON ({exc}); re-run `audiotokens train`") from None
    if metadata.get("format") != BUNDLE_FORMAT or metadata.get("version") != BUNDLE_VERSION:
        raise UserError(f"{bundle_dir / METADATA} is not an audiotokens bundle of version {BUNDLE_VERSION}")
    from .vocabulary import load_vocabulary

    hint = "re-run `audiotokens train`, or copy the whole bundle directory"
    vocabulary = load_vocabulary(bundle_dir / VOCABULARY, hint)
    if vocabulary.digest != metadata.get("vocabulary_digest"):
        raise UserError(f"{bundle_dir / VOCABULARY} is not the vocabulary the model was trained with; {hint}")
    hf_logging.disable_progress_bar()
    try:
        model = AudioTokenClassifier.from_pretrained(bundle_dir).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - safetensors and transformers raise their own types for bad files
        raise UserError(f"{bundle_dir / 'model.safetensors'} cannot be read ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); {hint}") from None
    if model.config.max_position_embeddings != metadata["max_frames"] + EXTRA_POSITIONS:
        raise UserError(f"{bundle_dir}: config.json and {METADATA} disagree on the sequence length; "
                        "re-run `audiotokens train`")
    return Bundle(
        model=model,
        vocabulary=vocabulary,
        spectrogram=vocabulary.frame_spec,
        classes=metadata["classes"],
        task=metadata["task"],
        threshold=metadata["threshold"],
        max_frames=metadata["max_frames"],
        metadata=metadata,
    )
