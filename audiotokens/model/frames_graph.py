"""A fitted quantizer as torch operations, so that one exported graph reads frames and scores them.

`TokensFromFrames` takes a frames batch laid out as inputs.pack_frames lays it out ((batch, positions,
n_mels) float32, [CLS] row 0, the clip's frames, [SEP], padding; with the attention mask) and returns the
token batch pack_sequences would make of the ids the quantizer gives those frames: windows of `stack`
frames every `stride` (the last frame repeated, as Quantizer.windows does), each codebook's nearest entry,
ids + TOKEN_OFFSET between [CLS] and [SEP], padding after. Clips longer than the model's `max_frames`
tokens keep their first `max_frames`, as Bundle.scores cuts them.

Each codebook is searched as the tool searches it (quantizer_kinds.py): the k-means kinds by the nearest
entry, argmin over entries c of ||x||² − 2 x·c + ||c||² (one matrix product; spherical: the largest
x·c of unit vectors, as faiss's inner-product index); `residual` stage after stage on what the earlier
stages left; `scalar` by counting the midpoints between levels below the value, in float64 — the
bisection the tool runs, so a value on a midpoint goes to the lower level in both. Which search a kind
uses is GRAPHS, keyed like the quantizer registry.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..tokens.quantizers import Quantizer
from .parts import CLS, EXTRA_POSITIONS, PAD, SEP, TOKEN_OFFSET


def nearest(x: torch.Tensor, book: torch.Tensor, book_norms: torch.Tensor, spherical: bool) -> torch.Tensor:
    """Index of the nearest entry of `book` (size, dim) for each row of x (..., dim)."""
    products = x @ book.T
    if spherical:  # rows and entries are unit vectors: the largest inner product is the nearest
        return products.argmax(dim=-1)
    return (x.square().sum(dim=-1, keepdim=True) - 2 * products + book_norms).argmin(dim=-1)


class Codebooks(nn.Module):
    """The codebooks as buffers `book_c` with their squared norms `norms_c`."""

    def __init__(self, quantizer: Quantizer):
        super().__init__()
        self.spherical = quantizer.spherical
        self.n_codebooks = quantizer.n_codebooks
        for c, book in enumerate(quantizer.codebooks):
            tensor = torch.from_numpy(np.array(book, dtype=np.float32))
            self.register_buffer(f"book_{c}", tensor)
            self.register_buffer(f"norms_{c}", tensor.square().sum(dim=1))

    def book(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"book_{c}"), getattr(self, f"norms_{c}")


class SlicedNearest(Codebooks):
    """frame, stacked, subband: codebook c searches its own contiguous slice of the vector (spherical:
    the slice L2-normalised first, as Quantizer.prepare does)."""

    def __init__(self, quantizer: Quantizer):
        super().__init__(quantizer)
        edges = np.cumsum([0] + quantizer.codebook_dims).tolist()
        self.slices = list(itertools.pairwise(edges))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = []
        for c, (start, stop) in enumerate(self.slices):
            part = x[..., start:stop]
            if self.spherical:
                part = part / part.square().sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-30)
            ids.append(nearest(part, *self.book(c), self.spherical))
        return torch.stack(ids, dim=-1)


class ResidualNearest(Codebooks):
    """residual: stage after stage, each on what the earlier stages left (x minus their chosen entries)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = []
        residual = x
        for c in range(self.n_codebooks):
            book, norms = self.book(c)
            chosen = nearest(residual, book, norms, False)
            residual = residual - book[chosen]
            ids.append(chosen)
        return torch.stack(ids, dim=-1)


class LevelCounts(nn.Module):
    """scalar: each bin's id is the number of midpoints between its levels that lie below the value, in
    float64 (quantizer_kinds.NearestLevel's bisection; a codebook with fewer levels is padded with +inf)."""

    def __init__(self, quantizer: Quantizer):
        super().__init__()
        width = max(quantizer.codebook_sizes) - 1
        midpoints = np.full((quantizer.n_codebooks, width), np.inf)
        for c, book in enumerate(quantizer.codebooks):
            levels = book[:, 0].astype(np.float64)
            midpoints[c, :len(levels) - 1] = (levels[:-1] + levels[1:]) / 2
        self.register_buffer("midpoints", torch.from_numpy(midpoints))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double()[..., None] > self.midpoints).sum(dim=-1)


def codec_in_python(quantizer: Quantizer) -> nn.Module:
    """A neural codec's encoder is not put in the graph: it stays in Python, and the graph reads token ids."""
    raise UserError(f"the codec tokenizer's encoder ({quantizer.codec['model_type']} in {quantizer.codec['model']}) "
                    "stays in Python: export with --input tokens and make the ids with AudioTokenizer.tokens")


GRAPHS: dict[str, Callable[[Quantizer], nn.Module]] = {  # quantizer kind -> its encode as torch operations
    "frame": SlicedNearest, "stacked": SlicedNearest, "subband": SlicedNearest, "residual": ResidualNearest,
    "scalar": LevelCounts, "codec": codec_in_python}


def quantizer_graph(quantizer: Quantizer) -> nn.Module:
    """Quantizer.encode in torch: vectors (..., input_dim) -> ids (..., n_codebooks) int64."""
    if quantizer.kind not in GRAPHS:
        raise UserError(f"the {quantizer.kind} quantizer has no frames graph; export it with --input tokens")
    return GRAPHS[quantizer.kind](quantizer)


class TokensFromFrames(nn.Module):
    """Packed frames and their mask -> packed token ids and the token mask (module docstring)."""

    def __init__(self, quantizer: Quantizer, max_tokens: int):
        super().__init__()
        self.quantize = quantizer_graph(quantizer)
        self.stack, self.stride, self.max_tokens = quantizer.stack, quantizer.stride, max_tokens

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_frames = mask.sum(dim=1) - EXTRA_POSITIONS  # (batch,)
        windows_after_first = torch.div(n_frames - self.stack + self.stride - 1, self.stride, rounding_mode="floor")
        n_tokens = torch.where(n_frames > 0, 1 + windows_after_first.clamp_min(0), 0)  # Quantizer.n_tokens
        n_tokens = n_tokens.clamp_max(self.max_tokens)
        width = n_tokens.max()
        steps = torch.arange(frames.shape[1], device=frames.device)[:width]  # token positions 0 … width - 1
        # frame rows of window t: t * stride + j, the clip's last frame standing in past its end (row 0: [CLS])
        within = steps[:, None] * self.stride + torch.arange(self.stack, device=frames.device)
        last = (n_frames - 1).clamp_min(0)[:, None, None]
        rows = 1 + torch.minimum(within[None], last)  # (batch, width, stack)
        gathered = frames.gather(1, rows.reshape(rows.shape[0], -1, 1).expand(-1, -1, frames.shape[2]))
        ids = self.quantize(gathered.reshape(rows.shape[0], rows.shape[1], -1)) + TOKEN_OFFSET
        return pack_ids(ids, n_tokens)


def pack_ids(ids: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (batch, width, codebooks) + each clip's token count -> inputs.pack_sequences' layout and mask."""
    edge = torch.zeros_like(ids[:, :1])
    body = torch.cat([edge, ids, edge], dim=1)
    positions = torch.arange(body.shape[1], device=ids.device)[None, :, None]
    count = n_tokens[:, None, None]
    special = torch.where(positions == 0, CLS, torch.where(positions == count + 1, SEP, PAD))
    input_ids = torch.where((positions >= 1) & (positions <= count), body, special)
    mask = (positions[..., 0] <= count[..., 0] + 1).long()
    return input_ids, mask
