"""Neural audio codecs as tokenizers (cluster.quantizer = codec): the codec's own codes are the tokens.

cluster.codec_model is a local Hugging Face folder, loaded with transformers' Auto classes from local files
only (nothing is downloaded); config.json's model_type picks the class: EnCodec (encodec), DAC (dac),
Mimi (mimi) or X-Codec (xcodec), each an entry of CODECS. The codec reads mono samples at its own rate and
gives one frame of `codebooks` ids per hop of samples: the frame store holds exactly those hops as rows
(spectrogram.features = codec, features/codec_rows.py), and a clip's rows joined back are its input.

cluster.codec_codebooks picks how many codebooks (residual stages, coarse first) the codes use, 0 = all
the codec has: DAC and Mimi take any count (Mimi at least its semantic codebooks), EnCodec and X-Codec
a count that one of their target bandwidths gives. The codebook vectors each id stands for, in the
quantiser's latent space (after DAC's and Mimi's output projections, which are linear per codebook), are
the vocabulary's codebooks: summed over the codebooks of a frame they are the codec's quantised latent,
as a residual quantizer's entries are summed, so `model.token_embedding = decoded` embeds a frame with the
codec's own vectors.

Clips are encoded whole and on their own: clips of one length share a forward pass (no padding, so the
codes are those of the clip alone), any other clip is encoded by itself. The record (`CodecRecord`) holds
the folder, its model_type and a digest of its config and weights; encoding refuses a folder whose digest
changed since the vocabulary was made.
"""
from __future__ import annotations

import functools
import json
import logging
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import Config
from ..errors import UserError
from ..features.ssl import device_name, model_digest
from ..pipeline.layout import HF_CONFIG

log = logging.getLogger("audiotokens")

BATCH_SAMPLES = 2**21  # samples per forward pass (clips of one length together): about 90 s at 24 kHz


class CodecFamily(ABC):
    """One codec class of transformers: its rate and hop, its codebook counts, how it encodes, its vectors."""

    model_type: ClassVar[str]
    label: ClassVar[str]

    @staticmethod
    def sample_rate(config) -> int:
        """Samples per second it reads (transformers' usual config key; X-Codec names it otherwise)."""
        return int(config.sampling_rate)

    @staticmethod
    def hop_length(config) -> int:
        """Samples per codec frame (Mimi names it otherwise)."""
        return int(config.hop_length)

    @abstractmethod
    def codebook_counts(self, config) -> dict[int, float | None]:
        """Codebooks it can give -> the setting its encode takes for that count (bandwidth), or None."""

    def check(self, config, folder: Path) -> None:
        """A one-line UserError for a checkpoint of this class the tool cannot use."""

    @abstractmethod
    def encode(self, model, waves: torch.Tensor, codebooks: int, bandwidth: float | None) -> torch.Tensor:
        """(batch, 1, samples) -> (batch, codebooks, frames) ids."""

    @abstractmethod
    def tables(self, model, codebooks: int) -> list[torch.Tensor]:
        """The vectors of each codebook's ids in the quantised latent space, (size, dim) per codebook."""

    @abstractmethod
    def quantized(self, model, codes: torch.Tensor) -> torch.Tensor:
        """The codec's own quantised latent of (batch, codebooks, frames) ids: (batch, dim, frames)."""


def _counts_by_bandwidth(config) -> dict[int, float]:
    """The codebooks each of an EnCodec's or X-Codec's target bandwidths gives: floor(bandwidth / kbps per
    codebook), at least 1, a codebook carrying log2(size) bits per frame."""
    per_codebook_kbps = math.log2(config.codebook_size) * config.frame_rate / 1000
    return {max(1, math.floor(bandwidth / per_codebook_kbps + 1e-9)): bandwidth
            for bandwidth in config.target_bandwidths}


class Encodec(CodecFamily):
    model_type = "encodec"
    label = "EnCodec"

    def codebook_counts(self, config) -> dict[int, float | None]:
        return _counts_by_bandwidth(config)

    def check(self, config, folder: Path) -> None:
        if config.chunk_length_s is not None:
            raise UserError(f"'cluster.codec_model' ({folder}) is an EnCodec that encodes overlapping chunks of "
                            f"{config.chunk_length_s} s (the 48 kHz model), whose codes are no single sequence of "
                            "frames; use a codec without chunk_length_s (encodec_24khz)")

    def encode(self, model, waves, codebooks, bandwidth):
        return model.encode(waves, bandwidth=bandwidth).audio_codes[0]

    def tables(self, model, codebooks):
        return [layer.codebook.embed for layer in model.quantizer.layers[:codebooks]]

    def quantized(self, model, codes):
        return model.quantizer.decode(codes.transpose(0, 1))


class Dac(CodecFamily):
    model_type = "dac"
    label = "DAC"

    def codebook_counts(self, config) -> dict[int, float | None]:
        return {n: None for n in range(1, config.n_codebooks + 1)}

    def encode(self, model, waves, codebooks, bandwidth):
        return model.encode(waves, n_quantizers=codebooks).audio_codes

    def tables(self, model, codebooks):
        # an id's vector is out_proj(codebook entry): a 1x1 convolution per codebook, applied to every entry
        return [q.out_proj(q.codebook.weight.T[None])[0].T for q in model.quantizer.quantizers[:codebooks]]

    def quantized(self, model, codes):
        return model.quantizer.from_codes(codes)[0]


class Mimi(CodecFamily):
    model_type = "mimi"
    label = "Mimi"

    @staticmethod
    def hop_length(config) -> int:
        return int(config.frame_size)

    def codebook_counts(self, config) -> dict[int, float | None]:
        return {n: None for n in range(config.num_semantic_quantizers, config.num_quantizers + 1)}

    def encode(self, model, waves, codebooks, bandwidth):
        return model.encode(waves, num_quantizers=codebooks).audio_codes

    def tables(self, model, codebooks):
        split = model.quantizer
        semantic = split.num_semantic_quantizers
        groups = [(split.semantic_residual_vector_quantizer, min(codebooks, semantic)),
                  (split.acoustic_residual_vector_quantizer, max(codebooks - semantic, 0))]
        tables = []
        for rvq, count in groups:
            for layer in rvq.layers[:count]:
                entries = layer.codebook.embed  # (size, dim); the group's output projection is linear, no bias
                tables.append(entries if rvq.output_proj is None else rvq.output_proj(entries.T[None])[0].T)
        return tables

    def quantized(self, model, codes):
        return model.quantizer.decode(codes)


class Xcodec(CodecFamily):
    model_type = "xcodec"
    label = "X-Codec"

    @staticmethod
    def sample_rate(config) -> int:
        return int(config.sample_rate)

    def codebook_counts(self, config) -> dict[int, float | None]:
        return _counts_by_bandwidth(config)

    def encode(self, model, waves, codebooks, bandwidth):
        return model.encode(waves, bandwidth=bandwidth).audio_codes

    def tables(self, model, codebooks):
        return [q.codebook.embed for q in model.quantizer.quantizers[:codebooks]]

    def quantized(self, model, codes):
        return model.quantizer.decode(codes.transpose(0, 1))


CODECS: dict[str, CodecFamily] = {family.model_type: family for family in (Encodec(), Dac(), Mimi(), Xcodec())}


@dataclass(frozen=True)
class CodecRecord:
    """What the vocabulary records of its codec: the folder, the class, its digest, rate, hop, codebooks."""

    model: str
    model_type: str
    digest: str
    sample_rate: int
    hop_length: int
    codebooks: int
    bandwidth: float | None  # EnCodec, X-Codec: the target bandwidth that gives `codebooks`

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CodecRecord:
        return cls(**values)

    @property
    def family(self) -> CodecFamily:
        return CODECS[self.model_type]

    @property
    def bits_per_second_factor(self) -> float:
        """Frames per second: bits per frame times this is bits per second."""
        return self.sample_rate / self.hop_length


def codec_folder(value: str) -> Path:
    """The local codec folder cluster.codec_model names, or a one-line error."""
    if not value:
        raise UserError("cluster.quantizer = codec needs 'cluster.codec_model', a local Hugging Face codec folder "
                        f"({', '.join(f.label for f in CODECS.values())})")
    path = Path(value).expanduser()
    if not (path / HF_CONFIG).is_file():
        raise UserError(f"'cluster.codec_model' ({path}) is not a local Hugging Face model folder (no {HF_CONFIG}); "
                        "nothing is downloaded at run time: save the codec there first (save_pretrained)")
    return path.absolute()


def _config(path: Path):
    model_type = json.loads((path / HF_CONFIG).read_text()).get("model_type")
    if model_type not in CODECS:
        raise UserError(f"'cluster.codec_model' ({path}) holds a {model_type!r} model, not a codec; use a folder of "
                        f"one of {', '.join(f'{f.label} ({name})' for name, f in CODECS.items())}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    CODECS[model_type].check(config, path)
    return config


def with_codec_frames(config: Config) -> Config:
    """The configuration with the codec's own frames when cluster.quantizer = codec leaves
    spectrogram.features at mel: rows of samples at the codec's rate and hop, read from its folder (a codec
    reads no other frames). Explicit spectrogram.features = codec settings are kept (the cluster stage
    refuses them in one line when they are not the codec's)."""
    if config.cluster.quantizer != "codec" or config.spectrogram.features != "mel":
        return config
    path = codec_folder(config.cluster.codec_model)
    hf_config = _config(path)
    family = CODECS[hf_config.model_type]
    rate, hop = family.sample_rate(hf_config), family.hop_length(hf_config)
    log.info("spectrogram: the %s's own frames, rows of %d samples at %d Hz (spectrogram.features = codec)",
             family.label, hop, rate)
    spectrogram = replace(config.spectrogram, features="codec", sample_rate=rate, hop_length=hop)
    return replace(config, spectrogram=spectrogram)


def codec_record(model: str, codebooks: int) -> CodecRecord:
    """The record of the codec in folder `model` giving `codebooks` ids per frame (0: all it has)."""
    path = codec_folder(model)
    config = _config(path)
    family = CODECS[config.model_type]
    counts = family.codebook_counts(config)
    chosen = codebooks or max(counts)
    if chosen not in counts:
        raise UserError(f"'cluster.codec_codebooks' = {codebooks}: the {family.label} in {path} gives "
                        f"{', '.join(map(str, sorted(counts)))} codebooks (or 0 for all)")
    return CodecRecord(model=str(path), model_type=family.model_type, digest=model_digest(path),
                       sample_rate=family.sample_rate(config), hop_length=family.hop_length(config),
                       codebooks=chosen, bandwidth=counts[chosen])


def check_frames(record: CodecRecord, frame_spec: dict[str, Any], where: str) -> None:
    """Refuse frames that are not rows of this codec's frames (its rate and hop)."""
    wanted = {"features": "codec", "sample_rate": record.sample_rate, "hop_length": record.hop_length}
    found = {key: frame_spec.get(key) for key in wanted}
    if found != wanted:
        raise UserError(f"the {record.family.label} in {record.model} reads rows of {record.hop_length} samples at "
                        f"{record.sample_rate} Hz, but {where} holds {found}; set spectrogram.features = codec, "
                        f"spectrogram.sample_rate = {record.sample_rate}, spectrogram.hop_length = "
                        f"{record.hop_length} and re-run `audiotokens spectrogram`")


@functools.lru_cache(maxsize=2)
def _load(path: str, digest: str, device: str):
    """The codec in eval mode; `digest` keys the cache, so a codec replaced in its folder is read again."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()


def load_codec(record: CodecRecord):
    """The recorded codec, refused in one line when its folder is gone or now holds another model."""
    path = Path(record.model)
    if not (path / HF_CONFIG).is_file():
        raise UserError(f"the codec of this vocabulary, 'cluster.codec_model' ({path}), is gone; restore the folder "
                        "or re-run `audiotokens cluster` with another")
    digest = model_digest(path)
    if digest != record.digest:
        raise UserError(f"'cluster.codec_model' ({path}) now holds another model (digest {digest}, the vocabulary "
                        f"was made with {record.digest}); restore that model or re-run `audiotokens cluster`")
    return _load(str(path), digest, device_name())


@torch.inference_mode()
def codebook_tables(record: CodecRecord) -> list[np.ndarray]:
    """The codebooks' vectors, (size, dim) float32 each: summed over a frame's ids, the quantised latent."""
    model = load_codec(record)
    return [table.detach().float().cpu().numpy() for table in record.family.tables(model, record.codebooks)]


@torch.inference_mode()
def encode_clips(record: CodecRecord, clips: list[np.ndarray]) -> list[np.ndarray]:
    """Each clip's rows (rows, hop_length) -> its ids (rows, codebooks) int64, one frame per row.

    Clips of equal length share forward passes (up to BATCH_SAMPLES samples); nothing is padded. A clip
    with a sample that is not finite gets -1 in every id, so a caller can name it.
    """
    model = load_codec(record)
    out: list[np.ndarray | None] = [None] * len(clips)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, rows in enumerate(clips):
        if rows.ndim != 2 or rows.shape[1] != record.hop_length:
            raise ValueError(f"expected rows of shape (n, {record.hop_length}), got {rows.shape}")
        if not np.isfinite(rows).all():
            out[i] = np.full((len(rows), record.codebooks), -1, dtype=np.int64)
        elif len(rows) == 0:
            out[i] = np.zeros((0, record.codebooks), dtype=np.int64)
        else:
            by_length[len(rows)].append(i)
    device = next(model.parameters()).device
    for rows, members in by_length.items():
        step = max(1, BATCH_SAMPLES // (rows * record.hop_length))
        for start in range(0, len(members), step):
            batch = members[start:start + step]
            waves = torch.from_numpy(np.stack([clips[i].reshape(-1) for i in batch]).astype(np.float32))[:, None]
            codes = record.family.encode(model, waves.to(device), record.codebooks, record.bandwidth)
            if codes.shape[1:] != (record.codebooks, rows):
                raise UserError(f"the {record.family.label} in {record.model} gave codes of shape "
                                f"{tuple(codes.shape[1:])} for {rows} rows, not ({record.codebooks}, {rows})")
            for i, clip_codes in zip(batch, codes.cpu().numpy()):
                out[i] = np.ascontiguousarray(clip_codes.T, dtype=np.int64)
    return out  # type: ignore[return-value]
