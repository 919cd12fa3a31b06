"""The classifier made of parts: input embedder -> encoder -> pooling -> head, each chosen by name.

A `ModelSpec` records every choice and size; it is saved in the bundle and rebuilds the same network.
A new encoder, pooling or head is one class plus its registry entry (ENCODERS, POOLINGS, HEADS).

Sequence layout (shared by training, the bundle and inference), for token ids and for frames alike:
  position 0 [CLS], then one position per frame, then [SEP], then [PAD] up to the batch's longest clip.
Token ids: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK], then cluster c of any codebook is id c + TOKEN_OFFSET, so no
cluster shares the padding id. Token batches are (batch, positions, codebooks) ids; frame batches are
(batch, positions, input_dim) floats whose [CLS]/[SEP]/[PAD] rows are placeholders. The mask is 1 on
[CLS], every frame and [SEP], 0 exactly on padding; no part lets a padded position change the output.
Waveform batches (a fine-tuned speech model) are frame batches whose rows are consecutive samples.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..features.ssl import model_digest
from ..pipeline.layout import HF_CONFIG
from .contrastive import TEMPERATURE

log = logging.getLogger("audiotokens")

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = {"[PAD]": PAD, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK}
TOKEN_OFFSET = len(SPECIAL_TOKENS)
EXTRA_POSITIONS = 2  # [CLS] and [SEP]
FRAME = -1  # marks a frame position where special ids are laid out

INPUTS = ("tokens", "frames", "waveform")
TOKEN_EMBEDDINGS = ("learned", "decoded", "decoded+learned")
CODEBOOK_FUSIONS = ("sum", "attention")
DECODE_COMBINES = ("concat", "sum")
INIT_STD = 0.02  # BERT's initialiser range, used for every part this module initialises itself


@dataclass(kw_only=True)
class ModelSpec:
    """Everything that defines the network's shape; JSON round-trips exactly."""

    classes: list[str]
    input: str = "tokens"  # tokens | frames | waveform (rows of samples: encoder ssl)
    token_embedding: str = "learned"  # learned | decoded | decoded+learned
    codebook_sizes: list[int] = field(default_factory=list)  # clusters per codebook (tokens input)
    codebook_fusion: str = "sum"  # sum | attention (learned embeddings of several codebooks)
    decode_dims: list[int] = field(default_factory=list)  # decoded vector size per codebook ("decoded")
    decode_combine: str = "concat"  # concat | sum: how per-codebook decoded vectors form one frame
    input_dim: int = 0  # size of a frame (frames input), of a decoded frame, or samples per row (waveform)
    encoder: str = "bert"
    encoder_params: dict[str, Any] = field(default_factory=dict)  # num_layers, num_heads, intermediate_size
    hidden_size: int = 768
    dropout: float = 0.1
    pooling: str = "cls"  # cls | mean | attention
    hidden_layer: int = 0  # units of a Linear + tanh + dropout layer between pooling and head; 0 = none
    head: str = "linear"  # linear | am_softmax
    margin: float = 0.2  # am_softmax
    scale: float = 30.0  # am_softmax
    max_positions: int = 512  # [CLS] + frames + [SEP]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def max_frames(self) -> int:
        return self.max_positions - EXTRA_POSITIONS

    @property
    def decodes(self) -> bool:
        return decodes_tokens(self.input, self.token_embedding)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"model spec has unknown keys {', '.join(unknown)}; the bundle is from another version")
        return cls(**raw)


# ---------------------------------------------------------------- embedders


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation for the layers this module creates (encoders initialise themselves)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Embedding):
            nn.init.normal_(layer.weight, std=INIT_STD)
            if layer.padding_idx is not None:
                with torch.no_grad():
                    layer.weight[layer.padding_idx].zero_()


class FrameProjection(nn.Module):
    """Frames -> hidden by one linear layer; [PAD]/[CLS]/[SEP]/[MASK] positions get learned vectors.

    Shared by frames input and decoded token embeddings, so both start from the same function of a frame.
    """

    def __init__(self, *, input_dim: int, hidden_size: int):
        super().__init__()
        self.projection = nn.Linear(input_dim, hidden_size)
        self.special = nn.Embedding(len(SPECIAL_TOKENS), hidden_size)

    def forward(self, frames: torch.Tensor, special_ids: torch.Tensor) -> torch.Tensor:
        """frames (batch, positions, input_dim); special_ids (batch, positions): a special id or FRAME."""
        projected = self.projection(frames)
        is_special = special_ids != FRAME
        specials = self.special(special_ids.clamp(min=0))
        return torch.where(is_special[..., None], specials.to(projected.dtype), projected)


def frame_special_ids(mask: torch.Tensor) -> torch.Tensor:
    """Special ids of a frame batch from its mask: [CLS] first, [SEP] last of each clip, [PAD] after."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    lengths = mask.sum(dim=1, keepdim=True)
    ids = torch.full(mask.shape, FRAME, dtype=torch.long, device=mask.device)
    ids = torch.where(positions >= lengths, PAD, ids)
    ids = torch.where(positions == lengths - 1, SEP, ids)
    return torch.where(positions == 0, CLS, ids)


class FrameEmbedder(nn.Module):
    """Stored frames through the projection, with learned [CLS]/[SEP] vectors."""

    def __init__(self, *, spec: ModelSpec):
        super().__init__()
        self.frames = FrameProjection(input_dim=spec.input_dim, hidden_size=spec.hidden_size)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.frames(inputs.float(), frame_special_ids(mask))


def decodes_tokens(input_kind: str, token_embedding: str) -> bool:
    """Whether the embedding decodes token ids through the vocabulary: a tokens model whose token_embedding is
    decoded or decoded+learned, over any quantizer kind (each decodes its ids to vectors)."""
    return input_kind == "tokens" and token_embedding.startswith("decoded")


def decode_tables(input_kind: str, token_embedding: str, vocab) -> list[np.ndarray]:
    """What a decoding embedding needs: the vectors each codebook's ids decode to (combined by the vocabulary's
    quantizer.combine into a frame); [] for any other model. Copies, as the quantizer's codebooks are read-only
    and torch wraps only writable arrays without a warning."""
    if not decodes_tokens(input_kind, token_embedding):
        return []
    return [np.array(book, dtype=np.float32) for book in vocab.quantizer.codebooks]


class TokenEmbedder(nn.Module):
    """Token ids (batch, positions, codebooks) -> (batch, positions, hidden).

    learned: one table per codebook (its own size), fused by sum or by attention over the codebooks of
    each frame. decoded: each position's ids decode to a frame through the vocabulary's per-codebook
    tables (buffers, saved with the weights), combined by concat or sum, then FrameProjection.
    decoded+learned: decoded plus learned tables that start at zero.
    """

    def __init__(self, *, spec: ModelSpec, decode_tables: Sequence[torch.Tensor] | None = None):
        super().__init__()
        self.fusion = spec.codebook_fusion
        self.learned = spec.token_embedding in ("learned", "decoded+learned")
        if self.learned:
            self.tables = nn.ModuleList(nn.Embedding(size + TOKEN_OFFSET, spec.hidden_size, padding_idx=PAD)
                                        for size in spec.codebook_sizes)
            if spec.codebook_fusion == "attention":
                self.codebook_score = nn.Linear(spec.hidden_size, 1)
        if spec.decodes:
            self.combine = spec.decode_combine
            tables = decode_tables or [torch.zeros(size, dim) for size, dim in
                                       zip(spec.codebook_sizes, spec.decode_dims)]
            for codebook, table in enumerate(tables):
                self.register_buffer(f"decode_{codebook}", torch.as_tensor(table, dtype=torch.float32).clone())
            self.frames = FrameProjection(input_dim=spec.input_dim, hidden_size=spec.hidden_size)
        self.decodes = spec.decodes
        _init_weights(self)
        if spec.token_embedding == "decoded+learned":
            for table in self.tables:
                nn.init.zeros_(table.weight)  # the sum starts exactly at the decoded embedding

    def decode_table(self, codebook: int) -> torch.Tensor:
        return getattr(self, f"decode_{codebook}")

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, positions, codebooks) ids -> decoded frames; special positions decode to zeros."""
        clusters = (ids - TOKEN_OFFSET).clamp(min=0)
        parts = [F.embedding(clusters[..., c], self.decode_table(c)) for c in range(ids.shape[-1])]
        decoded = torch.cat(parts, dim=-1) if self.combine == "concat" else torch.stack(parts).sum(dim=0)
        return decoded * (ids[..., :1] >= TOKEN_OFFSET)

    def learned_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        per_codebook = torch.stack([table(ids[..., c]) for c, table in enumerate(self.tables)], dim=-2)
        if self.fusion == "sum":
            return per_codebook.sum(dim=-2)
        weights = torch.softmax(self.codebook_score(per_codebook).squeeze(-1), dim=-1)
        return (weights[..., None] * per_codebook).sum(dim=-2)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids = inputs.long()
        embedded = None
        if self.decodes:
            first = ids[..., 0]
            special_ids = torch.where(first < TOKEN_OFFSET, first, FRAME)
            embedded = self.frames(self.decode(ids), special_ids)
        if self.learned:
            learned = self.learned_embedding(ids)
            embedded = learned if embedded is None else embedded + learned
        return embedded


class RawFrames(nn.Module):
    """For encoders that read the mel as an image: the frame rows only, without [CLS]/[SEP] slots."""

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames_mask = (frame_special_ids(mask) == FRAME)[:, 1:]
        frames = inputs[:, 1:].float() * frames_mask[..., None]
        return frames, frames_mask.long()


# ---------------------------------------------------------------- encoders


class Encoder(nn.Module):
    """(batch, positions, hidden) + mask -> (batch, positions', output_size) + mask'."""

    reads_raw_frames = False  # True: takes RawFrames' output instead of embeddings
    frames_only = False  # True: reads mel frames as an image, so model.input must be frames
    has_cls = True  # position 0 of the output is the [CLS] position
    # True: a training step may leave some parameters without a gradient (LayerDrop, masking vectors), which
    # data-parallel training must then look for after every step
    skips_parameters = False

    output_size: int

    @classmethod
    def min_frames(cls, spec: ModelSpec) -> int:
        """The fewest frames a clip must have to give an output that depends on it (shorter ones are padded)."""
        return 1

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Settings this encoder cannot work with, as one-line UserErrors naming the model keys."""
        heads = spec.encoder_params.get("num_heads", 1)
        if spec.hidden_size % heads:
            raise UserError(f"'model.hidden_size' ({spec.hidden_size}) must be a multiple of "
                            f"'model.num_heads' ({heads})")


class BertEncoder(Encoder):
    """Hugging Face BertModel fed through inputs_embeds (its own position embeddings and LayerNorm), SDPA."""

    def __init__(self, *, spec: ModelSpec, num_layers: int = 12, num_heads: int = 12,
                 intermediate_size: int = 3072, attention: str = "sdpa"):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=1,  # ids never reach BERT: the embedder gives inputs_embeds
            hidden_size=spec.hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
            intermediate_size=intermediate_size, hidden_dropout_prob=spec.dropout,
            attention_probs_dropout_prob=spec.dropout, max_position_embeddings=spec.max_positions,
            pad_token_id=PAD, attn_implementation=attention)
        self.bert = BertModel(config, add_pooling_layer=False)
        # BERT's own word embeddings are never read (inputs_embeds): not trained, so that data-parallel
        # training does not wait for their gradient
        self.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        self.output_size = spec.hidden_size

    def forward(self, hidden, mask):
        return self.bert(inputs_embeds=hidden, attention_mask=mask).last_hidden_state, mask


class ConformerEncoder(Encoder):
    """Conformer blocks from transformers' Wav2Vec2-Conformer (rotary positions, SDPA attention).

    The blocks' sub-modules are transformers' own; this class runs them so that padded positions are
    zeroed before every depthwise convolution (transformers' convolution module does not mask, so
    padding would leak into the frames next to it). Batch normalisation in the convolution module
    uses batch statistics in training, which padded (zeroed) positions take part in; evaluation is
    padding-invariant.
    """

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        super().check(spec)
        head_size = spec.hidden_size // spec.encoder_params.get("num_heads", 4)
        if head_size % 2:  # rotary positions rotate pairs of features
            raise UserError(f"model.encoder=conformer needs an even model.hidden_size / model.num_heads, "
                            f"got {head_size}")
        if spec.encoder_params.get("kernel_size", 31) % 2 == 0:
            raise UserError("the conformer's convolution kernel_size must be odd")

    def __init__(self, *, spec: ModelSpec, num_layers: int = 4, num_heads: int = 4,
                 intermediate_size: int = 1024, kernel_size: int = 31, attention: str = "sdpa"):
        super().__init__()
        from transformers import Wav2Vec2ConformerConfig
        from transformers.models.wav2vec2_conformer import modeling_wav2vec2_conformer as conformer
        self.config = Wav2Vec2ConformerConfig(
            hidden_size=spec.hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
            intermediate_size=intermediate_size, hidden_dropout=spec.dropout, activation_dropout=spec.dropout,
            attention_dropout=spec.dropout, conformer_conv_dropout=spec.dropout,
            conv_depthwise_kernel_size=kernel_size, position_embeddings_type="rotary",
            attn_implementation=attention)
        self.positions = conformer.Wav2Vec2ConformerRotaryPositionalEmbedding(self.config)
        self.layers = nn.ModuleList(conformer.Wav2Vec2ConformerEncoderLayer(self.config) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(spec.hidden_size, eps=self.config.layer_norm_eps)
        self.dropout = nn.Dropout(spec.dropout)
        self.output_size = spec.hidden_size

    def forward(self, hidden, mask):
        from transformers.masking_utils import create_bidirectional_mask

        keep = mask[..., None].to(hidden.dtype)
        hidden = self.dropout(hidden * keep)
        attention_mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
        # rotary tables are cached by length alone; recompute when the device or dtype changed
        rotary = self.positions(hidden)
        if rotary.device != hidden.device or rotary.dtype != hidden.dtype:
            self.positions.cached_rotary_positional_embedding = None
            rotary = self.positions(hidden)
        for layer in self.layers:
            hidden = self._block(layer, hidden, keep, attention_mask, rotary)
        return self.layer_norm(hidden) * keep, mask

    @staticmethod
    def _block(layer, hidden, keep, attention_mask, rotary):
        """transformers' Wav2Vec2ConformerEncoderLayer.forward, with the padding zeroed before convolving."""
        hidden = 0.5 * layer.ffn1(layer.ffn1_layer_norm(hidden)) + hidden
        attended, _ = layer.self_attn(hidden_states=layer.self_attn_layer_norm(hidden), attention_mask=attention_mask,
                                      relative_position_embeddings=rotary)
        hidden = layer.self_attn_dropout(attended) + hidden
        hidden = ConformerEncoder._convolve(layer.conv_module, hidden, keep) + hidden
        hidden = 0.5 * layer.ffn2(layer.ffn2_layer_norm(hidden)) + hidden
        return layer.final_layer_norm(hidden) * keep

    @staticmethod
    def _convolve(module, hidden, keep):
        x = module.glu(module.pointwise_conv1(module.layer_norm(hidden).transpose(1, 2)))
        x = module.depthwise_conv(x * keep.transpose(1, 2))
        x = module.pointwise_conv2(module.activation(module.batch_norm(x)))
        return module.dropout(x).transpose(1, 2)


class ConvBlock(nn.Module):
    """PANNs' block: two 3x3 convolutions with batch norm and ReLU, then 2x2 average pooling.

    Padded time steps are zeroed after every convolution, and a pooled step counts as valid only when
    its whole window was, so a clip's output does not depend on the padding after it.
    """

    def __init__(self, *, in_channels: int, out_channels: int, pool_frequency: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = nn.AvgPool2d((2, pool_frequency))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None])[:, None, :, None]
        x = F.relu(self.bn1(self.conv1(x))) * keep
        x = F.relu(self.bn2(self.conv2(x))) * keep
        return self.pool(x), lengths // 2


class CnnEncoder(Encoder):
    """A small PANNs-style CNN over the mel frames as an image (time x mel), frames input only.

    Blocks double the channels up to hidden_size; the output is one vector per remaining time step
    (mean over the remaining mel bins), pooled by mean or attention pooling. A clip shorter than
    2 ** blocks frames would pool to no time step at all, and every such clip would get the same output:
    it is read as if followed by zero frames up to that length, alone or in a batch alike.
    """

    reads_raw_frames = True
    frames_only = True
    has_cls = False
    MAX_BLOCKS = 6  # each block halves time and frequency
    DEFAULT_BLOCKS = 4

    @classmethod
    def min_frames(cls, spec: ModelSpec) -> int:
        return 2 ** spec.encoder_params.get("num_layers", cls.DEFAULT_BLOCKS)

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        blocks = spec.encoder_params.get("num_layers", cls.DEFAULT_BLOCKS)
        if blocks > cls.MAX_BLOCKS:
            raise UserError(f"model.encoder=cnn uses model.num_layers conv blocks, each halving time and "
                            f"frequency; use 1 to {cls.MAX_BLOCKS}, got {blocks}")

    def __init__(self, *, spec: ModelSpec, num_layers: int = DEFAULT_BLOCKS, **_unused: Any):
        super().__init__()
        self.fewest = 2 ** num_layers
        channels = [max(spec.hidden_size // 2 ** (num_layers - 1 - i), 1) for i in range(num_layers)]
        blocks, frequency, previous = [], spec.input_dim, 1
        for width in channels:
            pool_frequency = 2 if frequency >= 2 else 1
            blocks.append(ConvBlock(in_channels=previous, out_channels=width, pool_frequency=pool_frequency))
            frequency, previous = frequency // pool_frequency, width
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(spec.dropout)
        self.output_size = channels[-1]

    def forward(self, frames, mask):
        # padded frames are zeros already; the batch grows to `fewest` frames when shorter. Padding by
        # `fewest` and cutting to max(positions, fewest), not padding by the shortfall, keeps the ONNX
        # trace's padding dynamic (a Python max of the traced length would be frozen at the example's)
        keep = torch.clamp(torch.as_tensor(frames.shape[1]), min=self.fewest)
        x = F.pad(frames, (0, 0, 0, self.fewest))[:, :keep][:, None]
        lengths = mask.sum(dim=1).clamp(min=self.fewest)
        for block in self.blocks:
            x, lengths = block(x, lengths)
        hidden = self.dropout(x.mean(dim=3).transpose(1, 2))
        out_mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).long()
        return hidden * out_mask[..., None], out_mask


class SpeechModelEncoder(Encoder):
    """A pretrained speech model (wav2vec2, HuBERT, WavLM through transformers) fine-tuned on waveform rows.

    The network is built from the model's config (encoder_params["speech_config"], saved in the model spec),
    so a bundle needs no model folder; `load_pretrained` copies the folder's weights in before training
    (encoder_params["pretrained"]: the folder and the digest of its config and weights). A batch's rows are
    joined back into each clip's samples, normalised to zero mean and unit variance over the clip's own
    samples when the model's feature extractor does so (do_normalize), and run through transformers' own
    modules in the order of their forward (convolutional feature encoder, feature projection, SpecAugment
    masking in training as the model's config sets it, transformer encoder) with the frames of each clip
    from the model's `_get_feat_extract_output_lengths` as the attention mask.

    Padding never changes a clip's output: feature encoders that normalise over time (feat_extract_norm
    "group": wav2vec2 base, HuBERT base) run clip by clip on its own samples; layer-normalised ones run on the
    padded batch, where a valid frame sees only valid samples. A frozen feature encoder (finetune.py) runs
    without building a graph.
    """

    reads_raw_frames = True
    has_cls = False
    skips_parameters = True  # LayerDrop and SpecAugment's masked_spec_embed of the speech model

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        config = spec.encoder_params.get("speech_config")
        if not config:
            raise UserError("model.encoder=ssl needs a speech model: set spectrogram.features=waveform and "
                            "spectrogram.ssl_model to a local Hugging Face folder, then run `audiotokens spectrogram`")
        if config.get("add_adapter"):
            raise UserError(f"the speech model in {spec.encoder_params.get('pretrained', {}).get('path')} has an "
                            "adapter after its encoder (add_adapter), which model.encoder=ssl does not support")

    def __init__(self, *, spec: ModelSpec, speech_config: dict[str, Any], normalize: bool = True,
                 pretrained: dict[str, str] | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.for_model(**speech_config)
        # float32 like the other parts, whatever dtype the checkpoint was saved in (AMP casts on the GPU)
        self.speech = AutoModel.from_config(config, dtype=torch.float32)
        self.stride = spec.input_dim
        self.normalize = normalize
        self.pretrained = dict(pretrained or {})
        self.clipwise_features = getattr(config, "feat_extract_norm", "group") == "group"
        self.output_size = config.hidden_size

    @property
    def feature_encoder(self) -> nn.Module:
        """The convolutional feature encoder (train.freeze = feature_encoder)."""
        return self.speech.feature_extractor

    def embedding_parts(self) -> list[nn.Module]:
        """What comes before the transformer layers (train.freeze = N keeps these fixed too)."""
        return [self.speech.feature_extractor, self.speech.feature_projection, self.speech.encoder.pos_conv_embed]

    @property
    def layers(self) -> nn.ModuleList:
        return self.speech.encoder.layers

    def load_pretrained(self) -> None:
        """The speech model's weights from its folder, which must still hold the model the frames were made for."""
        from transformers import AutoModel


        path = Path(self.pretrained.get("path", ""))
        if not (path / HF_CONFIG).is_file():
            raise UserError(f"'spectrogram.ssl_model' ({path}) is not a local Hugging Face model folder (no "
                            f"{HF_CONFIG}); nothing is downloaded at run time: save the model there first")
        digest = model_digest(path)
        if digest != self.pretrained.get("digest"):
            raise UserError(f"'spectrogram.ssl_model' ({path}) now holds another model (digest {digest}, waveform "
                            f"rows made for {self.pretrained.get('digest')}); re-run `audiotokens spectrogram`")
        source = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.speech.load_state_dict(source.state_dict())
        log.info("speech model weights from %s (digest %s)", path, digest)

    def forward(self, frames, mask):
        waves = frames.flatten(1)
        lengths = mask.sum(dim=1) * self.stride
        if self.normalize:
            waves = normalise_waves(waves, lengths)
        features = self._features(waves, lengths)
        frame_lengths = self.speech._get_feat_extract_output_lengths(lengths)
        frame_mask = torch.arange(features.shape[1], device=features.device)[None, :] < frame_lengths[:, None]
        projected = self.speech.feature_projection(features)
        hidden = projected[0] if isinstance(projected, tuple) else projected  # wav2vec2/WavLM also give the norm
        if self.training and hidden.shape[1] >= self.speech.config.mask_time_length:
            hidden = self.speech._mask_hidden_states(hidden, attention_mask=frame_mask)
        hidden = self.speech.encoder(hidden, attention_mask=frame_mask).last_hidden_state
        return hidden * frame_mask[..., None].to(hidden.dtype), frame_mask.long()

    def _features(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, frames, conv channels); padded frames of clip-by-clip features are zeros."""
        extractor = self.speech.feature_extractor
        trains = any(p.requires_grad for p in extractor.parameters())
        extractor._requires_grad = trains  # transformers' flag: a frozen encoder needs no gradient of its input
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            if not self.clipwise_features:
                return extractor(waves).transpose(1, 2)
            pieces = [extractor(waves[i:i + 1, :n])[0].transpose(0, 1) for i, n in enumerate(lengths.tolist())]
            return nn.utils.rnn.pad_sequence(pieces, batch_first=True)


def normalise_waves(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each clip's first `lengths` samples (the feature extractor's do_normalize,
    variance + 1e-7 under the root as there); the padding stays zero."""
    valid = (torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None]).to(waves.dtype)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (waves * valid).sum(dim=1, keepdim=True) / count
    variance = (((waves - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (waves - mean) / torch.sqrt(variance + 1e-7) * valid


# ---------------------------------------------------------------- pooling


class ClsPooling(nn.Module):
    """The final hidden state at [CLS] (position 0)."""

    needs_cls = True

    def __init__(self, *, size: int):
        super().__init__()

    def forward(self, hidden, mask):
        return hidden[:, 0]


class MeanPooling(nn.Module):
    """The mean over unmasked positions; a clip with none gives zeros."""

    needs_cls = False

    def __init__(self, *, size: int):
        super().__init__()

    def forward(self, hidden, mask):
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """Self-attentive pooling: softmax over unmasked positions of v . tanh(W h)."""

    needs_cls = False

    def __init__(self, *, size: int):
        super().__init__()
        self.project = nn.Linear(size, size)
        self.score = nn.Linear(size, 1, bias=False)

    def forward(self, hidden, mask):
        scores = self.score(torch.tanh(self.project(hidden))).squeeze(-1).float()
        # the lowest finite score, not -inf: a clip with no valid position then gets zeros, not NaN
        scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * mask
        return (weights[..., None].to(hidden.dtype) * hidden).sum(dim=1)


# ---------------------------------------------------------------- heads


class HiddenLayer(nn.Module):
    """Linear + tanh + dropout on the pooled vector: the dense layer transformers' sequence classification
    heads put before the output layer (RobertaClassificationHead), here after mean pooling a speech model."""

    def __init__(self, *, size: int, units: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(size, units)
        self.dropout = nn.Dropout(dropout)

    def forward(self, pooled):
        return self.dropout(torch.tanh(self.linear(pooled)))



class LinearHead(nn.Module):
    """Dropout, then one logit per class."""

    single_label_only = False

    def __init__(self, *, spec: ModelSpec, size: int):
        super().__init__()
        self.dropout = nn.Dropout(spec.dropout)
        self.linear = nn.Linear(size, spec.n_classes)

    def forward(self, pooled, targets=None):
        return self.linear(self.dropout(pooled))


class AmSoftmaxHead(nn.Module):
    """Additive-margin softmax: scale * (cos(embedding, class weight) - margin at the target class).

    The margin applies only in training and only to each clip's target class; at evaluation the
    logits are scale * cosine, so the softmax ranks classes by cosine.
    """

    single_label_only = True

    def __init__(self, *, spec: ModelSpec, size: int):
        super().__init__()
        self.margin, self.scale = spec.margin, spec.scale
        self.weight = nn.Parameter(torch.empty(spec.n_classes, size).normal_(std=INIT_STD))

    def forward(self, pooled, targets=None):
        cosine = F.normalize(pooled.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T
        if self.training and targets is not None:
            cosine = cosine - self.margin * F.one_hot(targets, cosine.shape[-1]).to(cosine.dtype)
        return self.scale * cosine

    def remove_margin(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training logits as evaluation computes them (scale * cosine): what training figures are measured
        on, so that training and validation accuracy compare like with like."""
        return logits + self.scale * self.margin * F.one_hot(targets, logits.shape[-1]).to(logits.dtype)


class ClassMeanHead(nn.Module):
    """Nearest class mean (train.objective = contrastive): cosine of the clip's embedding to each class's
    mean training embedding, divided by the contrastive temperature (contrastive.nearest_class_mean).

    The means are a buffer, refitted after every epoch by the contrastive trainer, so checkpoints and the
    bundle carry them with the weights. A class with no training clip (a zero row) gets a logit so low that
    both its sigmoid and its softmax share are 0.
    """

    single_label_only = False
    EMPTY_LOGIT = -1e4

    def __init__(self, *, spec: ModelSpec, size: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(spec.n_classes, size))

    def set_means(self, means: torch.Tensor) -> None:
        self.means.copy_(means.to(self.means.device, self.means.dtype))

    def forward(self, pooled, targets=None):
        logits = F.normalize(pooled.float(), dim=-1) @ self.means.float().T / TEMPERATURE
        return logits.masked_fill(self.means.norm(dim=-1) == 0, self.EMPTY_LOGIT)


ENCODERS: dict[str, type[Encoder]] = {"bert": BertEncoder, "conformer": ConformerEncoder, "cnn": CnnEncoder,
                                      "ssl": SpeechModelEncoder}
SPEECH_ENCODER, WAVEFORM = "ssl", "waveform"  # a speech model reads waveforms, and only it does
POOLINGS: dict[str, type[nn.Module]] = {"cls": ClsPooling, "mean": MeanPooling, "attention": AttentionPooling}
HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearHead, "am_softmax": AmSoftmaxHead, "class_means": ClassMeanHead}
CHOICES: dict[str, Sequence[str]] = {  # model.<key> -> the names it accepts
    "input": INPUTS, "token_embedding": TOKEN_EMBEDDINGS, "codebook_fusion": CODEBOOK_FUSIONS,
    "encoder": tuple(ENCODERS), "pooling": tuple(POOLINGS), "head": tuple(HEADS),
}


def check_input_encoder(input_kind: str, encoder: str) -> None:
    """model.input = waveform and model.encoder = ssl go together."""
    if (input_kind == WAVEFORM) != (encoder == SPEECH_ENCODER):
        raise UserError(f"model.input={WAVEFORM} and model.encoder={SPEECH_ENCODER} go together (a speech model "
                        f"fine-tuned on the waveform), got model.input={input_kind}, model.encoder={encoder}")


def check_parts(parts: Any) -> None:
    """The parts named exist and the input fits the encoder: of a ModelSpec, or of the [model] settings
    (checked before the train stage reads any data; ranges are checked when the config is loaded)."""
    for key, names in CHOICES.items():
        if getattr(parts, key) not in names:
            raise UserError(f"'model.{key}' must be one of {', '.join(names)}, got '{getattr(parts, key)}'")
    check_input_encoder(parts.input, parts.encoder)
    if ENCODERS[parts.encoder].frames_only and parts.input != "frames":
        raise UserError(f"model.encoder={parts.encoder} reads mel frames; set model.input=frames")
    if not ENCODERS[parts.encoder].has_cls and POOLINGS[parts.pooling].needs_cls:
        raise UserError(f"model.encoder={parts.encoder} has no [CLS] position; set model.pooling to mean or attention")


def check_spec(spec: ModelSpec) -> None:
    """Combinations of parts that cannot work, as one-line errors naming the model keys."""
    check_parts(spec)
    ENCODERS[spec.encoder].check(spec)
    if spec.input == "tokens" and not spec.codebook_sizes:
        raise UserError("a tokens model needs the codebook sizes of its vocabulary")
    if spec.decodes and spec.decode_combine not in DECODE_COMBINES:
        raise UserError(f"decoded embeddings combine codebooks by {' or '.join(DECODE_COMBINES)}, "
                        f"got '{spec.decode_combine}'")


PRETRAINED_PARTS = ("embedder.", "encoder.")  # state-dict prefixes of what a pre-training trains and hands on


class AudioClassifier(nn.Module):
    """embedder -> encoder -> pooling -> head, built from a ModelSpec.

    forward(inputs, mask, targets=None) -> logits; `targets` only matters to heads with a training
    margin. encode(...) gives the encoder's states and mask, embed(...) the pooled clip embeddings (after the
    hidden layer, when the spec has one).
    """

    def __init__(self, *, spec: ModelSpec, decode_tables: Sequence[torch.Tensor] | None = None):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        encoder = ENCODERS[spec.encoder]
        if encoder.reads_raw_frames:
            self.embedder = RawFrames()
        elif spec.input == "frames":
            self.embedder = FrameEmbedder(spec=spec)
            _init_weights(self.embedder)
        else:
            self.embedder = TokenEmbedder(spec=spec, decode_tables=decode_tables)
        self.encoder = encoder(spec=spec, **spec.encoder_params)
        self.pooling = POOLINGS[spec.pooling](size=self.encoder.output_size)
        self.hidden_layer = (HiddenLayer(size=self.encoder.output_size, units=spec.hidden_layer, dropout=spec.dropout)
                             if spec.hidden_layer else nn.Identity())
        self.head = HEADS[spec.head](spec=spec, size=spec.hidden_layer or self.encoder.output_size)
        _init_weights(self.pooling)
        _init_weights(self.hidden_layer)
        _init_weights(self.head)

    def encode(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder.reads_raw_frames:
            return self.encoder(*self.embedder(inputs, mask))
        return self.encoder(self.embedder(inputs, mask), mask)

    def embed(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.hidden_layer(self.pooling(*self.encode(inputs, mask)))

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(inputs, mask), targets)
