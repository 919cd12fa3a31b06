"""The fitted quantizer: spectrogram frames to one or more ids per token and back, and how it is measured.

This module owns what a fitted token is: how frames are grouped into the vectors that get a token, how
those vectors are encoded to ids and decoded back to quantised vectors, and how a fitted quantizer is
saved and fingerprinted. The kinds of quantizer (`cluster.quantizer`: frame, stacked, subband, residual,
scalar), what each reads from [cluster] and how each fits, are classes in quantizer_kinds.py, looked up in
its registry `KINDS`; `fit_quantizer` fits one. This module reads and writes no files; the cluster and
tokenize stages do that with `Quantizer.state()` / `Quantizer.from_state()`.

Bits per token = the sum over codebooks of log2(codebook size): what one token can tell apart.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import faiss
import numpy as np

from ..errors import UserError
from .codec import CodecRecord, encode_clips, load_codec
from .kmeans import iter_batches, token_statistics, use_gpu
from .quantizer_kinds import KINDS, KMeansSettings, QuantizerKind

STATE_FORMAT = 1
DEFAULT_BATCH = 65536


# ---------------------------------------------------------------- the fitted quantiser


@dataclass(frozen=True, kw_only=True, eq=False)
class Quantizer:
    """A fitted tokenizer: vectors (n, input_dim) <-> ids (n, n_codebooks). Immutable; safe across threads."""

    kind: str
    codebooks: list[np.ndarray]  # float32, codebook c has shape (size_c, dim_c)
    combine: str  # "concat": decoded = concatenated entries; "sum": decoded = summed entries
    spherical: bool = False
    stack: int = 1  # frames per token (stacked only)
    stride: int = 1  # hop between windows in frames (stacked only)
    codec: dict[str, Any] | None = None  # codec only: its CodecRecord, which encodes whole clips instead of search
    _searchers: list[Any] = field(init=False, repr=False, compare=False)
    _slices: list[slice] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        books = [_frozen_codebook(book, c) for c, book in enumerate(self.codebooks)]
        object.__setattr__(self, "codebooks", books)
        if not books:
            raise ValueError("a quantizer needs at least one codebook")
        if self.combine == "concat":
            edges = np.cumsum([0] + [book.shape[1] for book in books])
            slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]
        else:
            slices = [slice(0, books[0].shape[1])] * len(books)
        object.__setattr__(self, "_slices", slices)
        kind = self._check()
        object.__setattr__(self, "_searchers", [kind.searcher(book, self.spherical) for book in books])

    def _check(self) -> type[QuantizerKind]:
        """The registered kind of this quantizer, once its codebooks are ones that kind makes."""
        kind = KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"unknown quantizer kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.combine != kind.combine:
            raise ValueError(f"a {self.kind} quantizer combines by {kind.combine!r}, not {self.combine!r}")
        if self.spherical and not kind.may_be_spherical:
            raise ValueError(f"a {self.kind} quantizer cannot be spherical")
        if self.stack < 1 or not 1 <= self.stride <= self.stack:
            raise ValueError(f"stack = {self.stack}, stride = {self.stride}: need 1 <= stride <= stack")
        if self.combine == "sum" and len({book.shape[1] for book in self.codebooks}) != 1:
            raise ValueError("summed codebooks must all have the vector's dimension")
        kind.check_fitted(self)
        return kind

    # ------------------------------------------------------------ shape facts

    @property
    def n_codebooks(self) -> int:
        return len(self.codebooks)

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(book.shape[0]) for book in self.codebooks]

    @property
    def codebook_dims(self) -> list[int]:
        return [int(book.shape[1]) for book in self.codebooks]

    @property
    def input_dim(self) -> int:
        """n_mels * stack: the length of the vector one token stands for."""
        return self._slices[-1].stop

    @property
    def n_mels(self) -> int:
        """Values per frame read: n_mels * stack = input_dim, or a codec's samples per frame (its hop)."""
        return self.codec["hop_length"] if self.codec is not None else self.input_dim // self.stack

    @property
    def bits_per_token(self) -> float:
        return float(sum(math.log2(size) for size in self.codebook_sizes))

    @property
    def bits_per_frame(self) -> float:
        """Bits per frame of audio: a stacked token advances `stride` frames."""
        return self.bits_per_token / self.stride

    # ------------------------------------------------------------ frames -> vectors

    def n_tokens(self, n_frames: int) -> int:
        """Tokens for a clip of n_frames: the fewest windows that cover every frame (0 for no frame)."""
        if n_frames < 0:
            raise ValueError(f"n_frames must be >= 0, got {n_frames}")
        if n_frames == 0:
            return 0
        return 1 + max(0, -(-(n_frames - self.stack) // self.stride))

    def windows(self, clip_frames: np.ndarray) -> np.ndarray:
        """One clip's frames (n_frames, n_mels) -> the vectors to encode (n_tokens, input_dim).

        The identity when stack == 1. A stacked window is its frames concatenated in time order. No
        frame is dropped: windows start every `stride` frames until the last frame is covered, and a
        partial last window (or a clip shorter than `stack`) is padded by repeating the clip's last frame.
        """
        if clip_frames.ndim != 2 or clip_frames.shape[1] != self.n_mels:
            raise ValueError(f"expected frames of shape (n_frames, {self.n_mels}), got {clip_frames.shape}")
        if self.stack == 1:
            return clip_frames
        n_frames = len(clip_frames)
        starts = np.arange(self.n_tokens(n_frames)) * self.stride
        rows = np.minimum(starts[:, None] + np.arange(self.stack)[None, :], max(n_frames - 1, 0))
        return clip_frames[rows].reshape(len(starts), self.input_dim)

    # ------------------------------------------------------------ vectors <-> ids

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """The vectors as the codebooks see them (float32 copy): each codebook's slice L2-normalised
        when spherical, else unchanged. Reconstruction error is measured against this."""
        x = self._checked(vectors)
        if self.spherical:
            for part in self._slices:
                x[:, part] = _unit_rows(x[:, part])
        return x

    def check_encoder(self) -> None:
        """A one-line UserError when the model a codec quantizer encodes with is gone or changed; else nothing."""
        if self.codec is not None:
            load_codec(CodecRecord.from_dict(self.codec))

    def encode_clips(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Each clip's vectors (`windows` of its frames) -> its ids: `encode` of them all, or a codec's codes of
        each clip whole (a codec reads a clip's frames together)."""
        if self.codec is not None:
            return encode_clips(CodecRecord.from_dict(self.codec), clips)
        if not clips:
            return []
        ids = self.encode(np.concatenate(clips))
        return np.split(ids, np.cumsum([len(clip) for clip in clips])[:-1])

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """(n, input_dim) -> (n, n_codebooks) int64 ids, each in [0, size_c).

        Batch by batch with no state between calls. A row that is not finite gets -1 in every
        codebook, so a caller can name the bad row (as the tokenize stage does). A codec quantizer takes
        one clip's frames (n, n_mels) and encodes them together.
        """
        if self.codec is not None:
            return self.encode_clips([vectors])[0]
        x = self._checked(vectors)
        bad = ~np.isfinite(x).all(axis=1)
        x[bad] = 0.0
        ids = np.empty((len(x), self.n_codebooks), dtype=np.int64)
        if self.combine == "sum":
            residual = x  # coarse to fine: each stage quantises what the previous ones left
            for c, (search, book) in enumerate(zip(self._searchers, self.codebooks)):
                ids[:, c] = search(residual)
                residual -= book[ids[:, c]]
        else:
            for c, (search, part) in enumerate(zip(self._searchers, self._slices)):
                ids[:, c] = search(x[:, part])
        ids[bad] = -1
        return ids

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """(n, n_codebooks) ids -> (n, input_dim) float32: the quantised vectors they stand for."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] != self.n_codebooks or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"expected integer ids of shape (n, {self.n_codebooks}), got {ids.dtype} "
                             f"{ids.shape}")
        sizes = np.asarray(self.codebook_sizes)
        if len(ids) and ((ids < 0) | (ids >= sizes)).any():
            row, c = np.argwhere((ids < 0) | (ids >= sizes))[0]
            raise ValueError(f"id {ids[row, c]} at row {row} is outside codebook {c} (size {sizes[c]})")
        entries = [book[ids[:, c]] for c, book in enumerate(self.codebooks)]
        if self.combine == "sum":
            return np.sum(entries, axis=0, dtype=np.float32).reshape(len(ids), self.input_dim)
        return np.concatenate(entries, axis=1, dtype=np.float32).reshape(len(ids), self.input_dim)

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.ndim != 2 or vectors.shape[1] != self.input_dim:
            raise ValueError(f"expected vectors of shape (n, {self.input_dim}), got {vectors.shape}")
        return np.array(vectors, dtype=np.float32, order="C", copy=True)

    # ------------------------------------------------------------ saving

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able description plus named arrays; `from_state` rebuilds an identical quantizer."""
        meta = {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "combine": self.combine,
            "spherical": self.spherical,
            "stack": self.stack,
            "stride": self.stride,
            "n_codebooks": self.n_codebooks,
            "codebook_sizes": self.codebook_sizes,
            "codebook_dims": self.codebook_dims,
            "input_dim": self.input_dim,
            "bits_per_token": self.bits_per_token,
        }
        if self.codec is not None:  # only then, so the digests of the other kinds stay as they were
            meta["codec"] = dict(self.codec)
        return meta, {_array_name(c): book for c, book in enumerate(self.codebooks)}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Quantizer:
        """The quantizer that `state()` described; ValueError when meta and arrays disagree."""
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"quantizer state format {meta.get('format')!r} is not {STATE_FORMAT}")
        names = [_array_name(c) for c in range(int(meta["n_codebooks"]))]
        missing = [name for name in names if name not in arrays]
        if missing:
            raise ValueError(f"quantizer state lacks arrays {', '.join(missing)}")
        books = [np.asarray(arrays[name]) for name in names]
        shapes = [list(book.shape) for book in books]
        if shapes != [[s, d] for s, d in zip(meta["codebook_sizes"], meta["codebook_dims"])]:
            raise ValueError(f"codebook shapes {shapes} do not match the recorded sizes and dims")
        quantizer = cls(kind=meta["kind"], codebooks=books, combine=meta["combine"],
                        spherical=bool(meta["spherical"]), stack=int(meta["stack"]), stride=int(meta["stride"]),
                        codec=meta.get("codec"))
        if quantizer.input_dim != meta["input_dim"]:
            raise ValueError(f"input dimension {quantizer.input_dim} is not the recorded {meta['input_dim']}")
        return quantizer

    def digest(self) -> str:
        """sha256[:16] over the description and every codebook's dtype, shape and bytes."""
        meta, arrays = self.state()
        sha = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for name, array in arrays.items():
            sha.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            sha.update(np.ascontiguousarray(array).tobytes())
        return sha.hexdigest()[:16]


def _array_name(c: int) -> str:
    return f"codebook_{c}"


def _frozen_codebook(book: np.ndarray, c: int) -> np.ndarray:
    book = np.array(book, dtype=np.float32, order="C", copy=True)
    if book.ndim != 2 or 0 in book.shape:
        raise ValueError(f"codebook {c} must be a non-empty (size, dim) matrix, got shape {book.shape}")
    if not np.isfinite(book).all():
        raise ValueError(f"codebook {c} contains NaN or inf")
    book.setflags(write=False)
    return book


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


# ---------------------------------------------------------------- fitting


def fit_quantizer(kind: QuantizerKind, sample: np.ndarray | None, *, n_clusters: int, niter: int, seed: int,
                  spherical: bool = False, gpu: bool = False) -> tuple[Quantizer, dict[str, Any]]:
    """Fit a quantizer of `kind` (quantizer_kinds.py, with its own settings) on training vectors; return it and
    a fit report.

    `sample` is (n, n_mels) frames, or for a kind that groups frames (`geometry`) already-windowed vectors
    (n, n_mels * stack). The sample itself is never modified. The k-means settings are ignored by a kind
    that does not use k-means; a kind that does not read frames (a codec) takes no sample (None).
    """
    if not kind.reads_frames:
        return _made_quantizer(kind, KMeansSettings(n_clusters=n_clusters, niter=niter, seed=seed,
                                                    spherical=spherical))
    if sample.ndim != 2 or 0 in sample.shape:
        raise ValueError(f"the training sample must be a non-empty (n, dim) matrix, got {sample.shape}")
    if not np.isfinite(sample).all():
        raise UserError("the training frames contain NaN or inf; re-run `audiotokens spectrogram`")
    fit = KMeansSettings(n_clusters=n_clusters, niter=niter, seed=seed, spherical=spherical)
    kind.check_sample(sample, fit)
    started = time.perf_counter()
    fit = replace(fit, gpu=use_gpu(gpu) if kind.uses_kmeans else False)
    books, fits = kind.fit(sample, fit)
    stack, stride = kind.geometry
    quantizer = Quantizer(kind=kind.name, codebooks=books, combine=kind.combine, spherical=spherical,
                          stack=stack, stride=stride)
    return quantizer, _fit_report(quantizer, sample, fits, fit.gpu, time.perf_counter() - started)


def _made_quantizer(kind: QuantizerKind, fit: KMeansSettings) -> tuple[Quantizer, dict[str, Any]]:
    """A quantizer whose codebooks come from a model (a codec) rather than from frames, and its report."""
    kind.check_sample(np.empty((0, 0), dtype=np.float32), fit)  # the settings alone (cluster.spherical)
    started = time.perf_counter()
    books, fits = kind.fit(np.empty((0, 0), dtype=np.float32), fit)
    quantizer = Quantizer(kind=kind.name, codebooks=books, combine=kind.combine, codec=kind.record())
    return quantizer, {
        "kind": quantizer.kind, "codec": quantizer.codec, "spherical": False, "stack": 1, "stride": 1,
        "n_codebooks": quantizer.n_codebooks, "codebook_sizes": quantizer.codebook_sizes,
        "input_dim": quantizer.input_dim, "bits_per_token": quantizer.bits_per_token,
        "bits_per_frame": quantizer.bits_per_frame,
        "bits_per_second": quantizer.bits_per_frame * quantizer.codec["sample_rate"] / quantizer.codec["hop_length"],
        "vectors_used": 0, "sizes_over": "no training vectors (the codec's own codebooks)",
        "fit_time_s": round(time.perf_counter() - started, 3),
        "codebooks": [{"codebook": c, "size": quantizer.codebook_sizes[c], "dim": quantizer.codebook_dims[c], **fit}
                      for c, fit in enumerate(fits)],
        "digest": quantizer.digest(),
    }


def _fit_report(quantizer: Quantizer, sample: np.ndarray, fits: list[dict], gpu: bool,
                seconds: float) -> dict[str, Any]:
    """What was fitted, on how much, how well: per codebook the faiss objective, sizes and dead codes."""
    counts = code_counts(quantizer.encode(sample), quantizer.codebook_sizes)
    codebooks = [{**use, "dim": quantizer.codebook_dims[c], **fit, "sizes": count.tolist(),
                  "dead_codes": np.flatnonzero(count == 0).tolist()}
                 for c, (fit, use, count) in enumerate(zip(fits, usage_from_counts(counts), counts))]
    return {
        "kind": quantizer.kind,
        "spherical": quantizer.spherical,
        "stack": quantizer.stack,
        "stride": quantizer.stride,
        "n_codebooks": quantizer.n_codebooks,
        "codebook_sizes": quantizer.codebook_sizes,
        "input_dim": quantizer.input_dim,
        "bits_per_token": quantizer.bits_per_token,
        "bits_per_frame": quantizer.bits_per_frame,
        "vectors_used": len(sample),
        "sizes_over": f"the {len(sample)} training vectors",
        "train_reconstruction_mse": reconstruction_mse(quantizer, sample),
        "gpu": gpu,
        "fit_time_s": round(seconds, 3),
        "codebooks": codebooks,
        "digest": quantizer.digest(),
    }


# ---------------------------------------------------------------- measures


def reconstruction_mse(quantizer: Quantizer, vectors: np.ndarray, batch_rows: int = DEFAULT_BATCH) -> float:
    """Mean over all values of (vector - decode(encode(vector)))^2, streamed in batches (memmaps welcome).

    Vectors are compared as the codebooks see them (`Quantizer.prepare`: per-codebook unit vectors
    when spherical). ValueError for a row that is not finite.
    """
    if len(vectors) == 0:
        raise ValueError("reconstruction error of no vectors")
    total = 0.0
    for start, batch in iter_batches(vectors, batch_rows):
        ids = quantizer.encode(batch)
        if len(ids) and ids.min() < 0:
            row = start + int(np.flatnonzero(ids.min(axis=1) < 0)[0])
            raise ValueError(f"row {row} contains NaN or inf")
        error = quantizer.prepare(batch).astype(np.float64) - quantizer.decode(ids)
        total += float(np.square(error).sum())
    return total / (len(vectors) * quantizer.input_dim)


def code_counts(ids: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Per codebook, how often each id occurs; add the counts of several batches to stream."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != len(sizes):
        raise ValueError(f"expected ids of shape (n, {len(sizes)}), got {ids.shape}")
    if len(ids) and ((ids < 0) | (ids >= np.asarray(sizes))).any():
        raise ValueError("ids outside their codebook (negative ids mark rows that were not finite)")
    return [np.bincount(ids[:, c], minlength=size) for c, size in enumerate(sizes)]


def usage_from_counts(counts: list[np.ndarray]) -> list[dict[str, Any]]:
    """Per codebook: codes used, dead codes, entropy of the id distribution (bits) and perplexity."""
    usage = []
    for c, count in enumerate(counts):
        stats = token_statistics(count)
        used = int(np.count_nonzero(count))
        usage.append({"codebook": c, "size": len(count), "used": used, "dead": len(count) - used,
                      "entropy_bits": stats["entropy_bits"], "perplexity": stats["perplexity"]})
    return usage


def codebook_usage(ids: np.ndarray, sizes: list[int]) -> list[dict[str, Any]]:
    """`usage_from_counts` of one batch of ids (n, n_codebooks)."""
    return usage_from_counts(code_counts(ids, sizes))
