"""Starting a classifier from a pre-training: train.init, train.freeze and train.unfreeze_after.

train.init names output/pretrain (or any bundle folder): its embedder and encoder weights replace the
fresh ones (pooling and head stay freshly initialised). It is refused in one line when it was made from
other frames (frame spec digest) or, for a tokens model, with another vocabulary (digest), or when its
network does not fit model.* (its model spec's encoder, sizes and heads; the weights' shapes). Position
embeddings of another length keep the rows both have.

A speech-model encoder (model.encoder = "ssl") first gets the weights of its local folder (recorded in the
model spec: path and digest), then train.init's when that is set too.

train.freeze = N keeps the embedder, the encoder's own embeddings (a speech model's convolutional feature
encoder, feature projection and positional convolution) and its lowest N layers fixed; "feature_encoder"
keeps a speech model's convolutional feature encoder fixed; "none" nothing. Empty (the default) is the
encoder's own default: "feature_encoder" for a speech model (partial fine-tuning: the convolutional
encoder stays as pre-trained and the transformer layers adapt), nothing for the others. Frozen parameters
stay in the optimizer with requires_grad off, so they get no gradient, no update and no weight decay (AdamW
skips parameters without a gradient), and train.unfreeze_after = E turns them back on from epoch E + 1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import UserError
from ..model.bundle import METADATA, SPEC, WEIGHTS
from ..model.parts import PRETRAINED_PARTS, ModelSpec
from ..pipeline.files import read_json
from ..pipeline.stores import spec_digest

log = logging.getLogger("audiotokens")

FEATURE_ENCODER = "feature_encoder"
NOTHING = "none"
# what shapes the embedder and encoder beyond their weights' shapes (num_heads splits the same Q/K/V matrices)
NETWORK_KEYS = ("input", "encoder", "hidden_size")
MODEL_KEYS = ("num_layers", "num_heads", "intermediate_size")  # encoder_params that are model.* settings


def read_pretrained(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(embedder and encoder weights, metadata) of a pre-training or bundle folder."""
    where = f"'train.init' ({path})"
    if not path.is_dir() or not (path / WEIGHTS).is_file():
        raise UserError(f"{where} is not a pre-training or model bundle folder (no {WEIGHTS}); "
                        "run `audiotokens pretrain` or point it at output/pretrain")
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own type for a damaged file
        raise UserError(f"{path / WEIGHTS} cannot be read ({type(exc).__name__}); re-run `audiotokens pretrain`") \
            from None
    return ({k: v for k, v in weights.items() if k.startswith(PRETRAINED_PARTS)},
            read_json(path / METADATA, "a pre-training or bundle folder has one"))


def check_compatible(meta: dict[str, Any], path: Path, *, frame_spec: dict[str, Any], vocabulary_digest: str | None):
    """Refuse a pre-training made from other frames or (tokens models) another vocabulary."""
    theirs = meta.get("spectrogram")
    if theirs is None or spec_digest(theirs) != spec_digest(frame_spec):
        raise UserError(f"'train.init' ({path}) was pre-trained on other frames (frame spec differs from "
                        "processed/frames/spec.json); pre-train again on these frames")
    if vocabulary_digest is not None and meta.get("vocabulary_digest") != vocabulary_digest:
        raise UserError(f"'train.init' ({path}) was pre-trained with another vocabulary (digest "
                        f"{meta.get('vocabulary_digest')} vs {vocabulary_digest}); pre-train again after cluster")


def check_same_network(theirs: dict[str, Any], mine: ModelSpec, path: Path) -> None:
    """Refuse a pre-training whose model spec describes another embedder or encoder than model.* does, even
    where every weight has the model's shape."""
    if not isinstance(theirs, dict):
        raise UserError(f"'train.init' ({path}): {SPEC} is not a model spec; re-run `audiotokens pretrain`")
    differences = [(f"model.{key}", theirs.get(key), getattr(mine, key)) for key in NETWORK_KEYS
                   if theirs.get(key) != getattr(mine, key)]
    params = [{k: v for k, v in (spec.get("encoder_params") or {}).items() if k != "pretrained"}
              for spec in (theirs, mine.to_json())]
    differences += [(f"model.{key}" if key in MODEL_KEYS else f"the encoder's {key}", params[0].get(key),
                     params[1].get(key)) for key in sorted(set(params[0]) | set(params[1]))
                    if params[0].get(key) != params[1].get(key)]
    if differences:
        listed = "; ".join(f"{name} {old!r} there, {new!r} here" for name, old, new in differences[:3])
        raise UserError(f"'train.init' ({path}) has another network than model.* describes ({listed}); use "
                        "the model.* settings of the pre-training")


def load_pretrained(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Copy the embedder and encoder weights into `model`; position tables keep the rows both have."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(PRETRAINED_PARTS)}
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        names = ", ".join((missing or unexpected)[:3])
        raise UserError(f"'train.init' ({path}) has another network than model.* describes "
                        f"({'missing' if missing else 'unexpected'} {names}); use the same parts and sizes")
    with torch.no_grad():
        for name, target in own.items():
            source = weights[name]
            if source.shape == target.shape:
                target.copy_(source)
            elif "position_embeddings" in name and source.shape[1:] == target.shape[1:]:
                rows = min(len(source), len(target))
                target[:rows].copy_(source[:rows])
                log.info("train.init: %s has %d positions, the model %d; the first %d are copied",
                         name, len(source), len(target), rows)
            else:
                raise UserError(f"'train.init' ({path}): {name} is {tuple(source.shape)}, the model's "
                                f"{tuple(target.shape)}; use the model.* sizes of the pre-training")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's stack of layers, lowest first."""
    encoder = model.encoder
    if hasattr(encoder, "bert"):
        return encoder.bert.encoder.layer
    if hasattr(encoder, "layers"):
        return encoder.layers
    raise UserError(f"train.freeze = N needs a layered encoder (bert, conformer, ssl), got model.encoder="
                    f"{model.spec.encoder}")


def default_freeze(model: nn.Module) -> str:
    """What an empty train.freeze means: a speech model's feature encoder stays fixed, nothing else does."""
    return FEATURE_ENCODER if hasattr(model.encoder, FEATURE_ENCODER) else NOTHING


def frozen_parameters(model: nn.Module, freeze: str) -> list[nn.Parameter]:
    """The parameters train.freeze keeps fixed."""
    freeze = freeze or default_freeze(model)
    if freeze == NOTHING:
        return []
    if freeze == FEATURE_ENCODER:
        feature_encoder = getattr(model.encoder, FEATURE_ENCODER, None)
        if feature_encoder is None:
            raise UserError(f"train.freeze = {FEATURE_ENCODER} needs a speech-model encoder; use a number of layers")
        return list(feature_encoder.parameters())
    if not freeze.isdigit():
        raise UserError(f"'train.freeze' must be empty, {NOTHING}, a number of layers or {FEATURE_ENCODER}, "
                        f"got '{freeze}'")
    layers = encoder_layers(model)
    n = int(freeze)
    if n > len(layers):
        raise UserError(f"'train.freeze' ({n}) is more than the encoder's {len(layers)} layers")
    parts: list[nn.Module] = [model.embedder]
    if hasattr(model.encoder, "bert"):
        parts.append(model.encoder.bert.embeddings)
    if hasattr(model.encoder, "embedding_parts"):
        parts += model.encoder.embedding_parts()
    parts += list(layers[:n])
    return [p for part in parts for p in part.parameters() if p.requires_grad]  # the model's dead ones stay off


@dataclass(kw_only=True)
class FineTuning:
    """What train.init / freeze / unfreeze_after do to one model during one training run."""

    init: str = ""
    freeze: str = ""
    unfreeze_after: int = 0
    frozen: list[nn.Parameter] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings) -> FineTuning:
        return cls(init=settings.init, freeze=settings.freeze, unfreeze_after=settings.unfreeze_after)

    def initialise(self, model: nn.Module, *, frame_spec: dict[str, Any], vocabulary_digest: str | None) -> None:
        """Before training: a speech model's own weights, then the pre-trained ones (when train.init is set)."""
        if hasattr(model.encoder, "load_pretrained"):
            model.encoder.load_pretrained()
        if not self.init:
            return
        path = Path(self.init)
        weights, meta = read_pretrained(path)
        check_compatible(meta, path, frame_spec=frame_spec, vocabulary_digest=vocabulary_digest)
        spec = read_json(path / SPEC, "a pre-training or bundle folder has one")
        check_same_network(spec, model.spec, path)
        load_pretrained(model, weights, path)
        log.info("embedder and encoder start from %s (%s)", path, meta.get("objective", "a trained bundle"))

    def freeze_parts(self, model: nn.Module) -> None:
        """After the optimizer is built (so it holds every parameter): switch off the frozen ones."""
        self.frozen = frozen_parameters(model, self.freeze)
        for parameter in self.frozen:
            parameter.requires_grad_(False)
        if self.frozen:
            log.info("train.freeze = %s: %d parameters fixed%s", self.freeze or default_freeze(model),
                     sum(p.numel() for p in self.frozen),
                     f" until epoch {self.unfreeze_after}" if self.unfreeze_after else "")

    def epoch_starts(self, epochs_done: int) -> None:
        """Before each epoch: frozen parts train again once train.unfreeze_after epochs are done."""
        if self.frozen and self.unfreeze_after and epochs_done >= self.unfreeze_after:
            for parameter in self.frozen:
                parameter.requires_grad_(True)
            log.info("epoch %d: frozen parameters train from now on (train.unfreeze_after)", epochs_done + 1)
            self.frozen = []
