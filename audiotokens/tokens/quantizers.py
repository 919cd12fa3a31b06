"""The tokenizer family: fitted quantisers that turn spectrogram frames into one or more ids per token.

This module owns what a token is: how frames are grouped into the vectors that get a token, how
those vectors are fitted, encoded to ids and decoded back to quantised vectors, and how a fitted
quantiser is saved and fingerprinted. It reads and writes no files; the cluster and tokenize stages
do that with `Quantizer.state()` / `Quantizer.from_state()`.

Kinds (`cluster.tokenizer`), for frames of `n_mels` bins:

- `frame`: one k-means over whole frames (the original vocabulary): 1 id per frame from
  `n_clusters` codes, log2(n_clusters) bits per token.
- `stacked`: one k-means over `stack` consecutive frames concatenated, windows starting every
  `stride` frames (default `stride = stack`): 1 id per window, a sequence `stride` times shorter;
  log2(n_clusters) bits per token, log2(n_clusters) / stride bits per frame. No frame is dropped: a
  clip's partial last window (or a clip shorter than `stack`) is padded by repeating its last frame.
- `subband`: product quantisation. The mel bins are split into `bands` contiguous bands (sizes differ
  by at most one bin) with one k-means of `n_clusters` per band: `bands` ids per frame,
  bands * log2(n_clusters) bits per token. `bands = 1` is `frame`.
- `residual`: `stages` k-means fitted one after another, each on what the previous stages left
  (x minus the sum of the chosen centroids): `stages` ids per frame, coarse to fine,
  stages * log2(n_clusters) bits per token. A frame decodes to the sum of its stage centroids.
- `scalar` (dMel-style, no k-means): every bin quantised on its own to `levels` evenly spaced values
  between the training sample's global minimum and maximum: `n_mels` ids per frame,
  n_mels * log2(levels) bits per token; the near-lossless ceiling. A value within the training range
  decodes within half a level; one outside it goes to the end level.

Bits per token = the sum over codebooks of log2(codebook size): what one token can tell apart.

With `spherical` (frame, stacked, subband only) vectors are compared by cosine: each codebook's slice
of a vector is L2-normalised before its nearest entry is searched, the entries are unit vectors, and a
decoded vector is a concatenation of unit vectors (see `Quantizer.prepare`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from ..errors import UserError
from .kmeans import NearestCentroid, iter_batches, token_statistics, train_kmeans, use_gpu

KINDS = ("frame", "stacked", "subband", "residual", "scalar")
COMBINE = {"frame": "concat", "stacked": "concat", "subband": "concat", "residual": "sum", "scalar": "concat"}
SPHERICAL_KINDS = ("frame", "stacked", "subband")
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
        self._check()
        # scalar codebooks are searched by bisection; the others by exact faiss search
        searchers = [] if self.kind == "scalar" else [
            NearestCentroid(book, self.spherical) for book in books]
        object.__setattr__(self, "_searchers", searchers)

    def _check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown quantizer kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.combine != COMBINE[self.kind]:
            raise ValueError(f"a {self.kind} quantizer combines by {COMBINE[self.kind]!r}, not {self.combine!r}")
        if self.kind in ("frame", "stacked") and len(self.codebooks) != 1:
            raise ValueError(f"a {self.kind} quantizer has one codebook, not {len(self.codebooks)}")
        if self.spherical and self.kind not in SPHERICAL_KINDS:
            raise ValueError(f"a {self.kind} quantizer cannot be spherical")
        if self.stack < 1 or not 1 <= self.stride <= self.stack:
            raise ValueError(f"stack = {self.stack}, stride = {self.stride}: need 1 <= stride <= stack")
        if self.kind != "stacked" and (self.stack, self.stride) != (1, 1):
            raise ValueError(f"only a stacked quantizer has stack/stride, not {self.kind}")
        if self.combine == "sum" and len({book.shape[1] for book in self.codebooks}) != 1:
            raise ValueError("summed codebooks must all have the vector's dimension")
        if self.kind == "stacked" and self.input_dim % self.stack:
            raise ValueError(f"input dimension {self.input_dim} is not a multiple of stack = {self.stack}")
        if self.kind == "scalar":
            if any(book.shape[1] != 1 or len(book) < 2 for book in self.codebooks):
                raise ValueError("scalar codebooks are (levels >= 2, 1) columns")
            if any((np.diff(book[:, 0]) <= 0).any() for book in self.codebooks):
                raise ValueError("scalar codebook levels must be strictly increasing")

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
        return self.input_dim // self.stack

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

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """(n, input_dim) -> (n, n_codebooks) int64 ids, each in [0, size_c).

        Batch by batch with no state between calls. A row that is not finite gets -1 in every
        codebook, so a caller can name the bad row (as the tokenize stage does).
        """
        x = self._checked(vectors)
        bad = ~np.isfinite(x).all(axis=1)
        x[bad] = 0.0
        ids = np.empty((len(x), self.n_codebooks), dtype=np.int64)
        if self.kind == "scalar":
            for c, book in enumerate(self.codebooks):
                ids[:, c] = _nearest_level(book[:, 0], x[:, c])
        elif self.combine == "sum":
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
                        spherical=bool(meta["spherical"]), stack=int(meta["stack"]), stride=int(meta["stride"]))
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


def _nearest_level(levels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest level (the lower one on a tie), by bisection between consecutive levels."""
    levels = levels.astype(np.float64)
    midpoints = (levels[:-1] + levels[1:]) / 2
    return np.searchsorted(midpoints, values.astype(np.float64), side="left").astype(np.int64)


# ---------------------------------------------------------------- fitting


def fit_quantizer(kind: str, sample: np.ndarray, *, n_clusters: int, niter: int, seed: int,
                  spherical: bool = False, bands: int = 8, stages: int = 4, levels: int = 16, stack: int = 4,
                  stride: int = 0, gpu: bool = False) -> tuple[Quantizer, dict[str, Any]]:
    """Fit a quantizer of `kind` on training vectors; return it and a fit report.

    `sample` is (n, n_mels) frames, or for `stacked` already-windowed vectors (n, n_mels * stack).
    The sample itself is never modified. Parameters a kind does not use are ignored.
    """
    _check_parameters(kind, sample, n_clusters=n_clusters, spherical=spherical, bands=bands, stages=stages,
                      levels=levels, stack=stack, stride=stride)
    started = time.perf_counter()
    gpu = use_gpu(gpu) if kind != "scalar" else False
    fit = {"n_clusters": n_clusters, "niter": niter, "seed": seed, "spherical": spherical, "gpu": gpu}
    if kind in ("frame", "stacked"):
        books, fits = _fit_concat(sample, [sample.shape[1]], **fit)
    elif kind == "subband":
        books, fits = _fit_concat(sample, band_widths(sample.shape[1], bands), **fit)
    elif kind == "residual":
        books, fits = _fit_residual(sample, stages, **fit)
    else:
        books, fits = _fit_scalar(sample, levels)
    stacked = kind == "stacked"
    quantizer = Quantizer(kind=kind, codebooks=books, combine=COMBINE[kind], spherical=spherical,
                          stack=stack if stacked else 1, stride=(stride or stack) if stacked else 1)
    return quantizer, _fit_report(quantizer, sample, fits, gpu, time.perf_counter() - started)


def band_widths(dim: int, bands: int) -> list[int]:
    """Widths of `bands` contiguous bands over `dim` bins, as equal as possible (wider bands first)."""
    return [dim // bands + (1 if band < dim % bands else 0) for band in range(bands)]


def _check_parameters(kind: str, sample: np.ndarray, *, n_clusters: int, spherical: bool, bands: int,
                      stages: int, levels: int, stack: int, stride: int) -> None:
    if kind not in KINDS:
        raise UserError(f"cluster.tokenizer = {kind!r} is not a tokenizer; choose one of {', '.join(KINDS)}")
    if sample.ndim != 2 or 0 in sample.shape:
        raise ValueError(f"the training sample must be a non-empty (n, dim) matrix, got {sample.shape}")
    if not np.isfinite(sample).all():
        raise UserError("the training frames contain NaN or inf; re-run `audiotokens spectrogram`")
    rows, dim = sample.shape
    if spherical and kind not in SPHERICAL_KINDS:
        raise UserError(f"cluster.spherical is not supported for the {kind} tokenizer; set "
                        f"cluster.spherical = false, or use the {', '.join(SPHERICAL_KINDS)} tokenizer")
    if kind != "scalar" and not 1 <= n_clusters <= rows:
        raise UserError(f"cluster.n_clusters = {n_clusters} needs between 1 and the {rows} training vectors; "
                        "lower cluster.n_clusters or train on more frames")
    if kind == "subband" and not 1 <= bands <= dim:
        raise UserError(f"cluster.bands = {bands} must be between 1 and the {dim} mel bins per frame")
    if kind == "residual" and stages < 1:
        raise UserError(f"cluster.stages = {stages} must be at least 1")
    if kind == "scalar" and levels < 2:
        raise UserError(f"cluster.levels = {levels} must be at least 2")
    if kind == "stacked":
        if stack < 1:
            raise UserError(f"cluster.stack = {stack} must be at least 1 (frames per token)")
        if not 0 <= stride <= stack:
            raise UserError(f"cluster.stack_stride = {stride} must be between 1 and cluster.stack = {stack} "
                            "(a larger hop would skip frames), or 0 for the default (= cluster.stack)")
        if dim % stack:
            raise ValueError(f"stacked training vectors of dimension {dim} are not windows of {stack} frames")


def _fit_concat(sample: np.ndarray, widths: list[int], **fit: Any) -> tuple[list[np.ndarray], list[dict]]:
    """One k-means per contiguous slice of the vector (a single slice: the whole frame or window)."""
    books, fits, start = [], [], 0
    for c, width in enumerate(widths):
        book, report = _kmeans(sample[:, start:start + width], c, **fit)
        books.append(book)
        fits.append(report)
        start += width
    return books, fits


def _fit_residual(sample: np.ndarray, stages: int, **fit: Any) -> tuple[list[np.ndarray], list[dict]]:
    """Stage s is fitted on the sample minus the entries stages 0..s-1 chose (nearest, as encode does)."""
    residual = np.array(sample, dtype=np.float32, order="C", copy=True)
    books, fits = [], []
    for c in range(stages):
        book, report = _kmeans(residual, c, **fit)
        residual -= book[NearestCentroid(book, False)(residual)]
        books.append(book)
        fits.append(report)
    return books, fits


def _kmeans(x: np.ndarray, c: int, *, n_clusters: int, niter: int, seed: int, spherical: bool,
            gpu: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """faiss k-means as the cluster stage runs it (same call, same normalisation) on a private copy.

    Codebook c uses seed + c, so codebook 0 of any kind has the `frame` kind's centroids for the same data.
    """
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if spherical:
        faiss.normalize_L2(x)
    started = time.perf_counter()
    kmeans = train_kmeans(x, n_clusters, niter, seed + c, spherical, gpu)
    seconds = time.perf_counter() - started
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    if spherical:
        faiss.normalize_L2(centroids)
    return centroids, {
        "seed": seed + c,
        "iterations_run": len(kmeans.obj),  # faiss stops early once the objective stops changing
        "objective": [float(v) for v in kmeans.obj],
        "objective_meaning": ("sum of inner products of unit vectors with their centroid (higher is better)"
                              if spherical else "sum of squared L2 distances to centroids"),
        "imbalance_factor": float(kmeans.iteration_stats[-1]["imbalance_factor"])
        if kmeans.iteration_stats else None,
        "fit_time_s": round(seconds, 3),
    }


def _fit_scalar(sample: np.ndarray, levels: int) -> tuple[list[np.ndarray], list[dict]]:
    """`levels` evenly spaced values from the sample's global min to max, the same for every bin."""
    low, high = float(sample.min()), float(sample.max())
    if not high > low:
        raise UserError(f"every training value equals {low}: the scalar tokenizer needs a range of values; "
                        "check the spectrogram stage's output")
    values = np.linspace(low, high, levels, dtype=np.float64).astype(np.float32)[:, None]
    report = {"range": [low, high], "step": (high - low) / (levels - 1), "objective": []}
    return [values] * sample.shape[1], [report] * sample.shape[1]


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
