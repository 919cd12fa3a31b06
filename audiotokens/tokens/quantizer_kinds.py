"""Quantizer kinds (`cluster.quantizer`): one registered class per kind of codebook, and `KINDS`, the registry.

A kind is a small frozen dataclass whose fields are the [cluster] keys it reads besides the k-means
settings every kind shares (`KMeansSettings`: n_clusters, niter, seed, spherical, gpu). The class says
how its codebooks combine into a vector (`combine`), whether it may be spherical, whether k-means fits
it, how frames are grouped into the vectors that get a token (`geometry`), how it checks its settings
(on construction), a training sample (`check_sample`) and a fitted quantizer read back from disk
(`check_fitted`), how it fits (`fit`) and how a codebook is searched (`searcher`). A new kind is one class
here plus one entry in KINDS; config.QUANTIZERS (the user-facing choice list, which config.py cannot take
from here) names the same kinds, and tests/test_registries.py keeps the two equal. Whatever the kind, the
fitted result is a `quantizers.Quantizer`, whose saved state names its kind.

Kinds, for frames of `n_mels` bins:

- `frame`: one k-means over whole frames (the original vocabulary): 1 id per frame from
  `n_clusters` codes, log2(n_clusters) bits per token.
- `stacked`: one k-means over `stack` consecutive frames concatenated, windows starting every
  `stack_stride` frames (default, 0: `stack`): 1 id per window, a sequence `stride` times shorter;
  log2(n_clusters) bits per token, log2(n_clusters) / stride bits per frame. No frame is dropped: a
  clip's partial last window (or a clip shorter than `stack`) is padded by repeating its last frame.
- `subband`: product quantisation. The mel bins are split into `bands` contiguous bands (sizes differ
  by at most one bin) with one k-means of `n_clusters` per band: `bands` ids per frame,
  bands * log2(n_clusters) bits per token. `bands = 1` is `frame`.
- `residual`: `stages` k-means fitted one after another, each on what the previous stages left
  (x minus the sum of the chosen centroids): `stages` ids per frame, coarse to fine,
  stages * log2(n_clusters) bits per token. A frame decodes to the sum of its stage centroids.
- `codec` (no k-means): a neural codec's own codes (tokens/codec.py): the local Hugging Face codec
  `codec_model` encodes each clip's waveform rows (spectrogram.features = codec) into `codec_codebooks`
  residual codebooks, coarse to fine, one frame per row: codec_codebooks * log2(codebook size) bits per
  token. Its codebooks are the codec's vectors of each id, summed as `residual` sums its entries.
- `scalar` (dMel-style, no k-means): every bin quantised on its own to `levels` evenly spaced values
  between the training sample's global minimum and maximum: `n_mels` ids per frame,
  n_mels * log2(levels) bits per token; the near-lossless ceiling. A value within the training range
  decodes within half a level; one outside it goes to the end level.

With `spherical` (frame, stacked, subband only) vectors are compared by cosine: each codebook's slice
of a vector is L2-normalised before its nearest entry is searched, the entries are unit vectors, and a
decoded vector is a concatenation of unit vectors (see `Quantizer.prepare`).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import faiss
import numpy as np

from ..config import ClusterConfig
from ..errors import UserError
from .codec import CodecRecord, codebook_tables, codec_record
from .kmeans import NearestCentroid, train_kmeans

Fits = tuple[list[np.ndarray], list[dict[str, Any]]]  # codebooks and a fit report per codebook


@dataclass(frozen=True)
class KMeansSettings:
    """What every kind fitted by k-means shares: cluster.n_clusters (per codebook), niter, seed, spherical, gpu."""

    n_clusters: int
    niter: int
    seed: int
    spherical: bool = False
    gpu: bool = False  # already resolved: True only where faiss sees a GPU


@dataclass(frozen=True)
class QuantizerKind(ABC):
    """One kind of quantizer with its own settings (the dataclass fields, each a [cluster] key)."""

    name: ClassVar[str]
    combine: ClassVar[str] = "concat"  # decoded = concatenated entries ("concat") or summed entries ("sum")
    may_be_spherical: ClassVar[bool] = True
    uses_kmeans: ClassVar[bool] = True  # n_clusters, niter, seed and gpu apply
    one_codebook: ClassVar[bool] = False
    groups_frames: ClassVar[bool] = False  # a token may stand for several frames (Quantizer.stack, stride)
    reads_frames: ClassVar[bool] = True  # fitted on training frames; False: made without them (a codec)

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The [cluster] keys this kind reads besides the shared k-means settings."""
        return tuple(f.name for f in fields(cls))

    @property
    def geometry(self) -> tuple[int, int]:
        """(frames per training vector, hop between vectors in frames)."""
        return 1, 1

    def check_sample(self, sample: np.ndarray, fit: KMeansSettings) -> None:
        """A one-line UserError naming the [cluster] key that cannot work with this training sample."""
        rows, _ = sample.shape
        if fit.spherical and not self.may_be_spherical:
            allowed = ", ".join(name for name, kind in KINDS.items() if kind.may_be_spherical)
            raise UserError(f"cluster.spherical is not supported for the {self.name} tokenizer; set "
                            f"cluster.spherical = false, or use the {allowed} tokenizer")
        if self.uses_kmeans and not 1 <= fit.n_clusters <= rows:
            raise UserError(f"cluster.n_clusters = {fit.n_clusters} needs between 1 and the {rows} training "
                            "vectors; lower cluster.n_clusters or train on more frames")

    @abstractmethod
    def fit(self, sample: np.ndarray, fit: KMeansSettings) -> Fits:
        """The codebooks fitted on training vectors (never modified), with a report per codebook."""

    def record(self) -> dict[str, Any] | None:
        """What a quantizer that encodes with a model of its own records of it (Quantizer.codec); None here."""
        return None

    @classmethod
    def check_fitted(cls, quantizer: Any) -> None:
        """ValueError when a fitted quantizer (a saved state read back, say) is not one this kind makes."""
        if quantizer.codec is not None:
            raise ValueError(f"a {cls.name} quantizer searches its codebooks; it records no codec")
        if cls.one_codebook and quantizer.n_codebooks != 1:
            raise ValueError(f"a {cls.name} quantizer has one codebook, not {quantizer.n_codebooks}")
        if not cls.groups_frames and (quantizer.stack, quantizer.stride) != (1, 1):
            raise ValueError(f"a {cls.name} quantizer has one frame per token, not stack = {quantizer.stack}, "
                             f"stride = {quantizer.stride}")

    @classmethod
    def searcher(cls, book: np.ndarray, spherical: bool) -> Callable[[np.ndarray], np.ndarray]:
        """Rows (n, dim) -> the index of each row's nearest entry of `book`."""
        return NearestCentroid(book, spherical)


@dataclass(frozen=True)
class Frame(QuantizerKind):
    """One k-means over whole frames."""

    name = "frame"
    one_codebook = True

    def fit(self, sample: np.ndarray, fit: KMeansSettings) -> Fits:
        return fit_slices(sample, [sample.shape[1]], fit)


@dataclass(frozen=True)
class Stacked(QuantizerKind):
    """One k-means over windows of `stack` frames starting every `stack_stride` (0: `stack`) frames."""

    name = "stacked"
    one_codebook = True
    groups_frames = True
    stack: int = ClusterConfig.stack
    stack_stride: int = ClusterConfig.stack_stride

    def __post_init__(self) -> None:
        if self.stack < 1:
            raise UserError(f"cluster.stack = {self.stack} must be at least 1 (frames per token)")
        if not 0 <= self.stack_stride <= self.stack:
            raise UserError(f"cluster.stack_stride = {self.stack_stride} must be between 1 and cluster.stack = "
                            f"{self.stack} (a larger hop would skip frames), or 0 for the default (= cluster.stack)")

    @property
    def geometry(self) -> tuple[int, int]:
        return self.stack, self.stack_stride or self.stack

    def check_sample(self, sample: np.ndarray, fit: KMeansSettings) -> None:
        super().check_sample(sample, fit)
        if sample.shape[1] % self.stack:
            raise ValueError(f"stacked training vectors of dimension {sample.shape[1]} are not windows of "
                             f"{self.stack} frames")

    def fit(self, sample: np.ndarray, fit: KMeansSettings) -> Fits:
        return fit_slices(sample, [sample.shape[1]], fit)

    @classmethod
    def check_fitted(cls, quantizer: Any) -> None:
        super().check_fitted(quantizer)
        if quantizer.input_dim % quantizer.stack:
            raise ValueError(f"input dimension {quantizer.input_dim} is not a multiple of stack = {quantizer.stack}")


@dataclass(frozen=True)
class Subband(QuantizerKind):
    """Product quantisation: one k-means per band of contiguous mel bins."""

    name = "subband"
    bands: int = ClusterConfig.bands

    def __post_init__(self) -> None:
        if self.bands < 1:
            raise UserError(f"cluster.bands = {self.bands} must be at least 1")

    def check_sample(self, sample: np.ndarray, fit: KMeansSettings) -> None:
        super().check_sample(sample, fit)
        if self.bands > sample.shape[1]:
            raise UserError(f"cluster.bands = {self.bands} must be between 1 and the {sample.shape[1]} mel bins "
                            "per frame")

    def fit(self, sample: np.ndarray, fit: KMeansSettings) -> Fits:
        return fit_slices(sample, band_widths(sample.shape[1], self.bands), fit)


@dataclass(frozen=True)
class Residual(QuantizerKind):
    """`stages` k-means, each fitted on what the previous ones left; entries are summed."""

    name = "residual"
    combine = "sum"
    may_be_spherical = False
    stages: int = ClusterConfig.stages

    def __post_init__(self) -> None:
        if self.stages < 1:
            raise UserError(f"cluster.stages = {self.stages} must be at least 1")

    def fit(self, sample: np.ndarray, fit: KMeansSettings) -> Fits:
        """Stage s is fitted on the sample minus the entries stages 0..s-1 chose (nearest, as encode does)."""
        residual = np.array(sample, dtype=np.float32, order="C", copy=True)
        books, reports = [], []
        for c in range(self.stages):
            book, report = kmeans_codebook(residual, c, fit)
            residual -= book[NearestCentroid(book, False)(residual)]
            books.append(book)
            reports.append(report)
        return books, reports


@dataclass(frozen=True)
class Scalar(QuantizerKind):
    """Every bin on its own to `levels` evenly spaced values over the training range; no k-means."""

    name = "scalar"
    may_be_spherical = False
    uses_kmeans = False
    levels: int = ClusterConfig.levels

    def __post_init__(self) -> None:
        if self.levels < 2:
            raise UserError(f"cluster.levels = {self.levels} must be at least 2")

    def fit(self, sample: np.ndarray, fit: KMeansSettings) -> Fits:
        """`levels` evenly spaced values from the sample's global min to max, the same for every bin."""
        low, high = float(sample.min()), float(sample.max())
        if not high > low:
            raise UserError(f"every training value equals {low}: the scalar tokenizer needs a range of values; "
                            "check the spectrogram stage's output")
        values = np.linspace(low, high, self.levels, dtype=np.float64).astype(np.float32)[:, None]
        report = {"range": [low, high], "step": (high - low) / (self.levels - 1), "objective": []}
        return [values] * sample.shape[1], [report] * sample.shape[1]

    @classmethod
    def check_fitted(cls, quantizer: Any) -> None:
        super().check_fitted(quantizer)
        if any(book.shape[1] != 1 or len(book) < 2 for book in quantizer.codebooks):
            raise ValueError("scalar codebooks are (levels >= 2, 1) columns")
        if any((np.diff(book[:, 0]) <= 0).any() for book in quantizer.codebooks):
            raise ValueError("scalar codebook levels must be strictly increasing")

    @classmethod
    def searcher(cls, book: np.ndarray, spherical: bool) -> Callable[[np.ndarray], np.ndarray]:
        return NearestLevel(book)


@dataclass(frozen=True)
class Codec(QuantizerKind):
    """A neural codec's own codes; its codebooks are the codec's vectors of each id (summed, as residual)."""

    name = "codec"
    combine = "sum"
    may_be_spherical = False
    uses_kmeans = False
    reads_frames = False
    codec_model: str = ClusterConfig.codec_model
    codec_codebooks: int = ClusterConfig.codec_codebooks

    def __post_init__(self) -> None:
        if self.codec_codebooks < 0:
            raise UserError(f"cluster.codec_codebooks = {self.codec_codebooks} must be 0 (all) or positive")

    def record(self) -> dict[str, Any]:
        return codec_record(self.codec_model, self.codec_codebooks).as_dict()

    def fit(self, sample: np.ndarray, fit: KMeansSettings) -> Fits:
        """The codec's codebook vectors; nothing is fitted, the sample is not read."""
        record = CodecRecord.from_dict(self.record())
        books = codebook_tables(record)
        return books, [{"codec": record.model_type, "objective": []} for _ in books]

    @classmethod
    def check_fitted(cls, quantizer: Any) -> None:
        if quantizer.codec is None:
            raise ValueError("a codec quantizer records its codec")
        if quantizer.n_codebooks != quantizer.codec["codebooks"] or (quantizer.stack, quantizer.stride) != (1, 1):
            raise ValueError(f"a codec quantizer of {quantizer.codec['codebooks']} codebooks has one frame per token, "
                             f"not {quantizer.n_codebooks} codebooks, stack {quantizer.stack}")

    @classmethod
    def searcher(cls, book: np.ndarray, spherical: bool) -> Callable[[np.ndarray], np.ndarray]:
        return _codec_search


def _codec_search(rows: np.ndarray) -> np.ndarray:
    raise ValueError("a codec quantizer encodes whole clips with its codec (Quantizer.encode_clips), not by search")


KINDS: dict[str, type[QuantizerKind]] = {kind.name: kind for kind in (Frame, Stacked, Subband, Residual, Scalar, Codec)}


def quantizer_kind(name: str, **settings: Any) -> QuantizerKind:
    """The registered kind `name` with its settings taken from `settings` ([cluster] keys).

    Keys of other kinds are ignored, as in the [cluster] section, which holds every kind's keys; a key no
    kind reads is a TypeError (a misspelt setting would otherwise fall back to its default unnoticed).
    """
    if name not in KINDS:
        raise UserError(f"cluster.quantizer = {name!r} is not a quantizer kind; choose one of {', '.join(KINDS)}")
    unknown = sorted(set(settings) - set(setting_keys()))
    if unknown:
        raise TypeError(f"no quantizer kind reads {', '.join(unknown)}; known: {', '.join(setting_keys())}")
    kind = KINDS[name]
    return kind(**{key: settings[key] for key in kind.settings() if key in settings})


def kind_from_config(cluster: ClusterConfig) -> QuantizerKind:
    """The kind cluster.quantizer names, with its settings from the [cluster] section."""
    return quantizer_kind(cluster.quantizer, **{key: getattr(cluster, key) for key in setting_keys()})


def setting_keys() -> tuple[str, ...]:
    """Every [cluster] key some kind reads, in registry order."""
    return tuple(dict.fromkeys(key for kind in KINDS.values() for key in kind.settings()))


# ---------------------------------------------------------------- fitting and searching, shared by kinds


def band_widths(dim: int, bands: int) -> list[int]:
    """Widths of `bands` contiguous bands over `dim` bins, as equal as possible (wider bands first)."""
    return [dim // bands + (1 if band < dim % bands else 0) for band in range(bands)]


def fit_slices(sample: np.ndarray, widths: list[int], fit: KMeansSettings) -> Fits:
    """One k-means per contiguous slice of the vector (a single slice: the whole frame or window)."""
    books, reports, start = [], [], 0
    for c, width in enumerate(widths):
        book, report = kmeans_codebook(sample[:, start:start + width], c, fit)
        books.append(book)
        reports.append(report)
        start += width
    return books, reports


def kmeans_codebook(x: np.ndarray, c: int, fit: KMeansSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """faiss k-means as the cluster stage runs it (same call, same normalisation) on a private copy.

    Codebook c uses seed + c, so codebook 0 of any kind has the `frame` kind's centroids for the same data.
    """
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if fit.spherical:
        faiss.normalize_L2(x)
    started = time.perf_counter()
    kmeans = train_kmeans(x, fit.n_clusters, fit.niter, fit.seed + c, fit.spherical, fit.gpu)
    seconds = time.perf_counter() - started
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    if fit.spherical:
        faiss.normalize_L2(centroids)
    return centroids, {
        "seed": fit.seed + c,
        "iterations_run": len(kmeans.obj),  # faiss stops early once the objective stops changing
        "objective": [float(v) for v in kmeans.obj],
        "objective_meaning": ("sum of inner products of unit vectors with their centroid (higher is better)"
                              if fit.spherical else "sum of squared L2 distances to centroids"),
        "imbalance_factor": float(kmeans.iteration_stats[-1]["imbalance_factor"])
        if kmeans.iteration_stats else None,
        "fit_time_s": round(seconds, 3),
    }


class NearestLevel:
    """Index of the nearest level of a (levels, 1) column (the lower one on a tie), by bisection."""

    def __init__(self, book: np.ndarray):
        levels = book[:, 0].astype(np.float64)
        self.midpoints = (levels[:-1] + levels[1:]) / 2

    def __call__(self, column: np.ndarray) -> np.ndarray:
        values = column[:, 0].astype(np.float64)
        return np.searchsorted(self.midpoints, values, side="left").astype(np.int64)
