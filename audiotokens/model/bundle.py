"""The portable model bundle: everything inference needs, in one directory.

  model_spec.json                   the ModelSpec: which parts, their sizes, the classes
  model.safetensors                 the weights (and the decoding tables of decoded token embeddings)
  audiotokens.json                  task, classes, decision threshold, token layout, lengths, the frame
                                    spec, the vocabulary's digest, package versions
  vocabulary/                       the tokenizer that turns frames into token ids, with the frame spec
                                    it was fitted on (vocabulary.py; tokens input only: a frames model
                                    reads frames directly)
  manifest.json                     the SHA-256 of every file above, written last

load_bundle checks the manifest before it reads anything, then the schema of the two JSON files and that
they agree with each other and with the vocabulary: a hand-edited or damaged bundle (another pooling,
another sample rate, a missing key) is refused in one line instead of loading with other scores. The
model card (README.md) is documentation, written after the manifest and not in it.

A fine-tuned speech model (waveform input) is the same: its weights are in model.safetensors, its config
and origin (the local folder and the digest of its weights) in model_spec.json, so the bundle loads
without the original folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
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
from ..pipeline.layout import BUNDLE_CARD as CARD
from ..pipeline.layout import BUNDLE_MANIFEST as MANIFEST
from ..pipeline.layout import BUNDLE_METADATA as METADATA
from ..pipeline.layout import BUNDLE_SPEC as SPEC
from ..pipeline.layout import BUNDLE_VOCABULARY as VOCABULARY
from ..pipeline.layout import BUNDLE_WEIGHTS as WEIGHTS
from ..pipeline.stores import spec_digest
from ..tokens.vocabulary import load_vocabulary
from .batching import length_ordered_batches
from .inputs import PACKERS, as_frames_by_codebooks
from .objectives import Objective, objective_for
from .parts import ENCODERS, EXTRA_POSITIONS, SPECIAL_TOKENS, TOKEN_OFFSET, AudioClassifier, ModelSpec
from .windows import clip_windows, mean_over_windows

log = logging.getLogger("audiotokens")

BUNDLE_FORMAT = "audiotokens-bundle"
BUNDLE_VERSION = 3  # 3: manifest.json
REBUILD = "re-run `audiotokens train`, or copy the whole bundle directory"
MANIFEST_FORMAT = "audiotokens-bundle-manifest"


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
        write_manifest(tmp)


def write_manifest(bundle_dir: Path) -> None:
    """manifest.json: the SHA-256 of every file of the bundle but the model card."""
    bundle_dir = Path(bundle_dir)
    files = {name: _sha256(bundle_dir / name) for name in _listed_files(bundle_dir)}
    write_json(bundle_dir / MANIFEST, {"format": MANIFEST_FORMAT, "files": files})


def _listed_files(bundle_dir: Path) -> list[str]:
    names = (path.relative_to(bundle_dir).as_posix() for path in bundle_dir.rglob("*") if path.is_file())
    return sorted(name for name in names if name not in (MANIFEST, CARD))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    check_manifest(bundle_dir)
    metadata = read_json(bundle_dir / METADATA, fix=REBUILD)
    check_metadata(metadata, bundle_dir / METADATA)
    spec = spec_from_json(read_json(bundle_dir / SPEC, fix=REBUILD), bundle_dir / SPEC)
    if spec.max_frames != metadata["max_frames"] or spec.classes != metadata["classes"] \
            or spec.input != metadata["input"]:
        raise UserError(f"{bundle_dir}: {SPEC} and {METADATA} disagree on the input, the sequence length or the "
                        "classes; re-run `audiotokens train`")
    vocabulary = None
    if spec.input == "tokens":
        vocabulary = load_vocabulary(bundle_dir / VOCABULARY, REBUILD)
        if vocabulary.digest != metadata.get("vocabulary_digest"):
            raise UserError(f"{bundle_dir / VOCABULARY} is not the vocabulary the model was trained with; {REBUILD}")
        if vocabulary.codebook_sizes != spec.codebook_sizes:
            raise UserError(f"{bundle_dir / VOCABULARY} has codebooks of sizes {vocabulary.codebook_sizes}, the model's "
                            f"embeddings {spec.codebook_sizes}; {REBUILD}")
        if spec_digest(metadata["spectrogram"]) != vocabulary.frame_spec_digest:
            raise UserError(f"{bundle_dir / METADATA}: its spectrogram settings differ from those its vocabulary was "
                            f"fitted on ({_first_difference(metadata['spectrogram'], vocabulary.frame_spec)}); "
                            f"{REBUILD}")
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


def check_manifest(bundle_dir: Path) -> None:
    """Every file the manifest lists is there with the digest it lists, the JSON files and weights among them."""
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{bundle_dir} has no {MANIFEST}: a bundle of an older format (or a damaged one); "
                        "re-run `audiotokens train`")
    manifest = read_json(path, fix=REBUILD)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not all(isinstance(name, str) and isinstance(digest, str) for name, digest in files.items()):
        raise UserError(f"{path} is not a bundle manifest; {REBUILD}")
    problems = [f"{name} is not listed" for name in (METADATA, SPEC, WEIGHTS) if name not in files]
    for name, digest in files.items():
        if not (bundle_dir / name).is_file():
            problems.append(f"{name} is missing")
        elif _sha256(bundle_dir / name) != digest:
            problems.append(f"{name} changed")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{bundle_dir}: the bundle's files do not match its manifest: {problems[0]}{more}; {REBUILD}")


_NUMBER = (int, float)
METADATA_SCHEMA: dict[str, tuple[type, ...]] = {  # what load_bundle reads from audiotokens.json
    "format": (str,), "version": (int,), "classes": (list,), "task": (str,), "threshold": _NUMBER,
    "input": (str,), "max_frames": (int,), "spectrogram": (dict,),
}
OPTIONAL_COUNTS = ("batch_frames", "crop_frames", "eval_window", "eval_hop")  # train.length_metadata


def check_metadata(metadata: Any, path: Path) -> None:
    """audiotokens.json holds what inference reads, each of its type, in its range."""
    if not isinstance(metadata, dict):
        raise UserError(f"{path} is not a JSON object; {REBUILD}")
    if metadata.get("format") != BUNDLE_FORMAT or metadata.get("version") != BUNDLE_VERSION:
        raise UserError(f"{path} is not an audiotokens bundle of version {BUNDLE_VERSION}; re-run `audiotokens train`")
    for key, types in METADATA_SCHEMA.items():
        _check_type(metadata, key, types, path)
    for key in OPTIONAL_COUNTS:
        if metadata.get(key) is not None:
            _check_type(metadata, key, (int,), path)
            if metadata[key] < 0:  # 0: none (no budget, no crop, whole clips)
                raise UserError(f"{path}: '{key}' must be 0 or more, got {metadata[key]}; {REBUILD}")
    if not metadata["classes"] or not all(isinstance(name, str) for name in metadata["classes"]):
        raise UserError(f"{path}: 'classes' must be a list of class names; {REBUILD}")
    objective_for(metadata["task"])
    if not (math.isfinite(metadata["threshold"]) and 0 <= metadata["threshold"] <= 1):
        raise UserError(f"{path}: 'threshold' must be between 0 and 1, got {metadata['threshold']}; {REBUILD}")
    if metadata["max_frames"] < 1:
        raise UserError(f"{path}: 'max_frames' must be positive, got {metadata['max_frames']}; {REBUILD}")
    if not isinstance(metadata.get("vocabulary_digest"), (str, type(None))):
        raise UserError(f"{path}: 'vocabulary_digest' must be a string; {REBUILD}")


def _check_type(data: dict[str, Any], key: str, types: tuple[type, ...], path: Path, label: str = "") -> None:
    label = label or key
    if key not in data:
        raise UserError(f"{path} lacks '{label}'; {REBUILD}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, types):
        kind = {int: "an integer", str: "a string", list: "a list", dict: "an object", float: "a number"}[types[-1]]
        raise UserError(f"{path}: '{label}' must be {kind}, got {value!r}; {REBUILD}")


SPEC_TYPES = {"str": (str,), "int": (int,), "float": _NUMBER}  # annotations of ModelSpec's plain fields
ENCODER_SIZES = ("num_layers", "num_heads", "intermediate_size")


def spec_from_json(raw: Any, path: Path) -> ModelSpec:
    """The ModelSpec of model_spec.json: every field of its type, sizes positive (the parts check the rest)."""
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a JSON object; {REBUILD}")
    for field in dataclasses.fields(ModelSpec):
        annotation = str(field.type)
        if field.name not in raw and field.default is dataclasses.MISSING \
                and field.default_factory is dataclasses.MISSING:
            raise UserError(f"{path} lacks '{field.name}'; {REBUILD}")
        if field.name not in raw:
            continue
        outer = annotation.split("[", 1)[0]
        _check_type(raw, field.name, SPEC_TYPES.get(outer) or ({"list": (list,), "dict": (dict,)}[outer]), path)
        if annotation in ("list[str]", "list[int]"):
            inner = str if annotation == "list[str]" else int
            if not all(isinstance(item, inner) and not isinstance(item, bool) for item in raw[field.name]):
                raise UserError(f"{path}: '{field.name}' must be a list of {inner.__name__}; {REBUILD}")
    params = raw.get("encoder_params", {})
    for key in ENCODER_SIZES:
        if key in params:
            _check_type(params, key, (int,), path, f"encoder_params.{key}")
    sizes = {"hidden_size": raw.get("hidden_size", 1), "max_positions": raw.get("max_positions", 3) - EXTRA_POSITIONS,
             **{f"encoder_params.{key}": params[key] for key in ENCODER_SIZES if key in params}}
    bad = next((name for name, value in sizes.items() if value < 1), None)
    if bad is not None or any(size < 1 for size in raw.get("codebook_sizes", [])):
        raise UserError(f"{path}: '{bad or 'codebook_sizes'}' must be positive; {REBUILD}")
    _check_ranges(raw, path)
    return ModelSpec.from_json(raw)


def _check_ranges(raw: dict[str, Any], path: Path) -> None:
    """Numbers torch would refuse with a traceback, or take and score NaN with (an infinite scale)."""
    for field in dataclasses.fields(ModelSpec):
        if str(field.type) == "float" and field.name in raw and not math.isfinite(raw[field.name]):
            raise UserError(f"{path}: '{field.name}' must be a finite number, got {raw[field.name]}; {REBUILD}")
    if not 0 <= raw.get("dropout", 0) < 1:
        raise UserError(f"{path}: 'dropout' must be in [0, 1), got {raw['dropout']}; {REBUILD}")
    if raw.get("hidden_layer", 0) < 0:
        raise UserError(f"{path}: 'hidden_layer' must be 0 (none) or more, got {raw['hidden_layer']}; {REBUILD}")


def _first_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    key = next((k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)), None)
    return f"{key}: {ours.get(key)!r} here, {theirs.get(key)!r} in the vocabulary" if key else "the same keys"
