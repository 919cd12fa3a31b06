"""`audiotokens cluster`: fit the tokenizer (cluster.quantizer) on training-split frames only.

Which vectors train it is explicit: all training vectors (frames, or windows of `stack` frames) when they
fit `cluster.memory_budget_gb` as float32 (or `cluster.max_frames` of them), else a uniform random sample
across all training clips, read from the memmap in sorted order. faiss is told to use every vector it is
given (`max_points_per_centroid`), so the count in the log and the report is what it trained on. The
result is the vocabulary artifact (vocabulary.py), whose report.json also holds the reconstruction error
on the validation split. With cluster.fit_on_copies the training vectors include those of the training
clips' corrupted copies (augment.copies), so the cells are drawn around noisy frames too.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..config import ClusterConfig, Config
from ..errors import UserError
from ..pipeline.layout import Layout
from ..pipeline.stores import ClipIndex, SplitPlan, open_split, read_frame_spec, with_copies
from .codec import CodecRecord, check_frames
from .kmeans import release_pages
from .quantizer_kinds import QuantizerKind, kind_from_config
from .quantizers import fit_quantizer, reconstruction_mse
from .vocabulary import save_vocabulary

log = logging.getLogger("audiotokens")
FAISS_MIN_POINTS = 39  # faiss's own threshold (min_points_per_centroid) for a reliable fit


def sample_size(available: int, dim: int, config: ClusterConfig) -> tuple[int, str]:
    """How many training frames k-means uses, and why."""
    if config.max_frames < 0:
        raise UserError(f"'cluster.max_frames' must be 0 (automatic) or positive, got {config.max_frames}")
    if config.memory_budget_gb <= 0:
        raise UserError(f"'cluster.memory_budget_gb' must be positive, got {config.memory_budget_gb}")
    fit = int(config.memory_budget_gb * 2**30 // (dim * 4))
    if config.max_frames:
        if config.max_frames >= available:
            return available, f"all (cluster.max_frames = {config.max_frames} >= available)"
        if config.max_frames > fit:
            log.warning("cluster.max_frames = %d needs %.1f GB as float32, above cluster.memory_budget_gb = "
                        "%s", config.max_frames, config.max_frames * dim * 4 / 2**30, config.memory_budget_gb)
        return config.max_frames, "uniform sample of cluster.max_frames"
    if available <= fit:
        return available, "all"
    return fit, f"uniform sample of as many as fit cluster.memory_budget_gb = {config.memory_budget_gb}"


def sample_rows(available: int, count: int, seed: int) -> np.ndarray | None:
    """Sorted positions of a uniform sample without replacement; None means every position."""
    if count >= available:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=count, replace=False))


def vector_count(index: ClipIndex, stack: int, stride: int) -> int:
    """Training vectors of a view: frames, or windows of `stack` frames every `stride` (quantizers.windows)."""
    if stack == 1:
        return index.total_frames
    return int(sum(_windows_of(int(n), stack, stride) for n in index.lengths))


def _windows_of(n_frames: int, stack: int, stride: int) -> int:
    return 0 if n_frames == 0 else max(1, -(-max(n_frames - stack, 0) // stride) + 1)


def load_vectors(frames: np.ndarray, index: ClipIndex, positions: np.ndarray | None, stack: int, stride: int,
                 where: str) -> np.ndarray:
    """The chosen training vectors (positions in the view's vector order; None = all) as float32.

    A vector is a frame, or `stack` frames from a window start, padded at the clip's end with its last
    frame (as Quantizer.windows does). Reads go clip by clip in row order, releasing pages behind them.
    """
    per_clip = np.array([_windows_of(int(n), stack, stride) for n in index.lengths], dtype=np.int64) \
        if stack > 1 else index.lengths
    starts = np.concatenate([[0], np.cumsum(per_clip)])
    wanted = np.arange(starts[-1]) if positions is None else positions
    out = np.empty((len(wanted), frames.shape[1] * stack), dtype=np.float32)
    clip_of = np.searchsorted(starts, wanted, side="right") - 1
    done = 0
    for clip in np.unique(clip_of):
        chosen = wanted[clip_of == clip] - starts[clip]
        first, length = int(index.offsets[clip]), int(index.lengths[clip])
        rows = np.asarray(frames[first:first + length], dtype=np.float32)
        if stack > 1:
            take = np.minimum(chosen[:, None] * stride + np.arange(stack)[None, :], length - 1)
            block = rows[take].reshape(len(chosen), -1)
        else:
            block = rows[chosen]
        out[done:done + len(chosen)] = block
        done += len(chosen)
        release_pages(frames, first, first + length)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise UserError(f"{where}: training vector {bad} contains NaN or inf; re-run `audiotokens spectrogram`")
    return out


VALIDATION_MSE_VECTORS = 200_000  # reconstruction error is measured on at most this many validation vectors


class ClusterCreator:
    """The tokenizer fitted on training frames -> output/vocabulary/ (with its report.json)."""

    def __init__(self, config: Config, **options: Any):
        self.config = config
        self.cluster = config.cluster
        self.layout = Layout(config.workdir)

    @staticmethod
    def check_settings(config: Config) -> None:
        """What the config alone says is wrong with the quantizer (pipeline.run checks it before any stage)."""
        kind = kind_from_config(config.cluster)
        if not kind.reads_frames:  # a codec: its folder, and frames that are rows of its frames
            spectrogram = config.spectrogram
            check_frames(CodecRecord.from_dict(kind.record()), {"features": spectrogram.features, "sample_rate":
                         spectrogram.sample_rate, "hop_length": spectrogram.hop_length}, "the [spectrogram] settings")

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        kind = kind_from_config(self.cluster)
        spec = read_frame_spec(self.layout)
        if spec.get("features") == "waveform":
            raise UserError(f"{self.layout.frames} holds waveform rows (spectrogram.features = waveform) for "
                            "fine-tuning a speech model, not frames to quantise; set spectrogram.features to mel "
                            "or ssl and re-run `audiotokens spectrogram`")
        if not kind.reads_frames:
            return self._made_without_frames(kind, spec, started)
        frames, index = self._training_frames()
        if frames.ndim != 2:
            raise UserError(f"{self.layout.frames} must be a (frames, dim) matrix, found shape {frames.shape}; "
                            "re-run `audiotokens spectrogram`")
        stack, stride = kind.geometry
        available, dim = vector_count(index, stack, stride), frames.shape[1] * stack
        used, reason = sample_size(available, dim, self.cluster)
        warnings = self._check_counts(kind, used, available)
        positions = sample_rows(available, used, self.cluster.seed)
        log.info("%s tokenizer: %d clusters per codebook on %d of %d training vectors (%s), dim %d, "
                 "%d iterations%s", kind.name, self.cluster.n_clusters, used, available, reason, dim,
                 self.cluster.niter, ", spherical" if self.cluster.spherical else "")
        x = load_vectors(frames, index, positions, stack, stride, str(self.layout.frames))
        quantizer, report = fit_quantizer(
            kind, x, n_clusters=self.cluster.n_clusters, niter=self.cluster.niter, seed=self.cluster.seed,
            spherical=self.cluster.spherical, gpu=self.cluster.gpu)
        del x
        report.update(self._sampling(index, positions, available, used, reason, warnings, frames.dtype))
        report["validation_reconstruction_mse"] = self._validation_mse(quantizer, reconstruction_mse)
        report["frame_spec"] = spec
        report["wall_time_s"] = round(time.perf_counter() - started, 3)
        save_vocabulary(self.layout.vocabulary, quantizer, spec, report)
        dead = sum(len(book["dead_codes"]) for book in report["codebooks"])
        log.info("%s tokenizer done in %.1f s: %d codebook(s) of %s codes, %.1f bits per frame, reconstruction "
                 "MSE %.4g train / %s validation, %d dead codes; wrote %s", quantizer.kind, report["wall_time_s"],
                 quantizer.n_codebooks, "/".join(map(str, sorted(set(quantizer.codebook_sizes)))),
                 quantizer.bits_per_frame, report["train_reconstruction_mse"],
                 _figure(report["validation_reconstruction_mse"]), dead, self.layout.vocabulary)
        return {"tokenizer": quantizer.kind, "codebooks": quantizer.n_codebooks,
                "codebook_sizes": quantizer.codebook_sizes, "bits_per_frame": quantizer.bits_per_frame,
                "dim": dim, "frames_used": used, "frames_available": available, "dead_codes": dead,
                "validation_reconstruction_mse": report["validation_reconstruction_mse"]}

    def _made_without_frames(self, kind: QuantizerKind, spec: dict[str, Any], started: float) -> dict[str, Any]:
        """A codec's vocabulary: its codebooks and record, checked against the frames it will encode."""
        check_frames(CodecRecord.from_dict(kind.record()), spec, str(self.layout.frames))
        quantizer, report = fit_quantizer(kind, None, n_clusters=self.cluster.n_clusters, niter=self.cluster.niter,
                                          seed=self.cluster.seed, spherical=self.cluster.spherical)
        report["frame_spec"] = spec
        report["wall_time_s"] = round(time.perf_counter() - started, 3)
        save_vocabulary(self.layout.vocabulary, quantizer, spec, report)
        codec = quantizer.codec
        log.info("codec tokenizer: %s in %s (digest %s), %d codebook(s) of %s codes, %.1f bits per frame, %.0f bits "
                 "per second; wrote %s", codec["model_type"], codec["model"], codec["digest"], quantizer.n_codebooks,
                 "/".join(map(str, sorted(set(quantizer.codebook_sizes)))), quantizer.bits_per_frame,
                 report["bits_per_second"], self.layout.vocabulary)
        return {"tokenizer": quantizer.kind, "codec": codec["model_type"], "codebooks": quantizer.n_codebooks,
                "codebook_sizes": quantizer.codebook_sizes, "bits_per_frame": quantizer.bits_per_frame,
                "bits_per_second": report["bits_per_second"], "dim": quantizer.input_dim}

    def _training_frames(self) -> tuple[np.ndarray, ClipIndex]:
        """The training split's frames, with its clips' corrupted copies when cluster.fit_on_copies is set."""
        frames, index = open_split(self.layout, "frames", "train")
        if not self.cluster.fit_on_copies:
            return frames, index
        if index.copies is None:
            raise UserError(f"cluster.fit_on_copies = true but {self.layout.frames} holds no corrupted copies "
                            "of training clips; set augment.copies > 0 and re-run `audiotokens spectrogram`, or "
                            "set cluster.fit_on_copies = false")
        return frames, with_copies(index)

    def _check_counts(self, kind: QuantizerKind, used: int, available: int) -> list[str]:
        k = self.cluster.n_clusters
        if not kind.uses_kmeans:
            return []
        if used < k:
            raise UserError(f"cluster.n_clusters = {k} needs at least {k} training vectors, but only {used} "
                            f"are used ({available} available in the train split of {self.layout.frames}); lower "
                            "cluster.n_clusters or raise cluster.max_frames / add training audio")
        if used < FAISS_MIN_POINTS * k:
            message = (f"only {used} training vectors for {k} clusters (< {FAISS_MIN_POINTS} per cluster); "
                       "centroids may be unreliable")
            log.warning(message)
            return [message]
        return []

    def _sampling(self, index: ClipIndex, positions: np.ndarray | None, available: int, used: int, reason: str,
                  warnings: list[str], dtype) -> dict[str, Any]:
        return {"split": "train", "niter": self.cluster.niter, "seed": self.cluster.seed,
                "vectors_available": available, "vectors_used": used, "sampling": reason,
                "clips_available": len(index), "fit_on_copies": self.cluster.fit_on_copies,
                "frames_dtype": str(dtype), "warnings": warnings}

    def _validation_mse(self, quantizer, reconstruction_mse) -> float | None:
        """Reconstruction error on (a uniform sample of) the validation split: what the tokens lose."""
        if "validation" not in SplitPlan.load(self.layout).names():
            return None
        frames, index = open_split(self.layout, "frames", "validation")
        available = vector_count(index, quantizer.stack, quantizer.stride)
        positions = sample_rows(available, min(available, VALIDATION_MSE_VECTORS), self.cluster.seed)
        vectors = load_vectors(frames, index, positions, quantizer.stack, quantizer.stride, str(self.layout.frames))
        return float(reconstruction_mse(quantizer, vectors))


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
