"""`audiotokens cluster`: the k-means vocabulary, fitted on training-split frames only.

Which frames train the centroids is explicit: all training frames when they fit
`cluster.memory_budget_gb` as float32 (or `cluster.max_frames` of them), else a uniform random sample
of rows across all clips, read from the memmap in sorted order. faiss is told to use every frame it
is given (`max_points_per_centroid`), so the count in the log and the report is what it trained on.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import faiss
import numpy as np

from .artifacts import ClipIndex, Layout, open_store, save_npy, write_json
from .config import ClusterConfig, Config
from .errors import UserError
from .provenance import read_record
from .tokenizer import NearestCentroid, centroids_digest, iter_batches, release_pages

log = logging.getLogger("audiotokens")

TRAIN_SPLIT = "train"
FAISS_MIN_POINTS = 39  # faiss's own threshold (min_points_per_centroid) for a reliable fit
TINY_SHARE = 0.01  # a cluster below 1 % of the mean cluster size is reported as tiny
READ_CHUNK = 262144


# ---------------------------------------------------------------- which frames train the centroids


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
    """Sorted row numbers of a uniform sample without replacement; None means every row."""
    if count >= available:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=count, replace=False))


def load_rows(frames: np.ndarray, rows: np.ndarray | None, where: str) -> np.ndarray:
    """The chosen rows as one float32 matrix, read chunk by chunk (float16 converted per chunk)."""
    count = len(frames) if rows is None else len(rows)
    out = np.empty((count, frames.shape[1]), dtype=np.float32)
    for start in range(0, count, READ_CHUNK):
        stop = min(start + READ_CHUNK, count)
        if rows is None:
            out[start:stop] = frames[start:stop]
            first, last = start, stop
        else:
            chunk_rows = rows[start:stop]
            out[start:stop] = frames[chunk_rows]
            first, last = int(chunk_rows[0]), int(chunk_rows[-1]) + 1
        release_pages(frames, first, last)
        if not np.isfinite(out[start:stop]).all():
            bad = start + int(np.flatnonzero(~np.isfinite(out[start:stop]).all(axis=1))[0])
            row = bad if rows is None else int(rows[bad])
            raise UserError(f"{where} row {row} contains NaN or inf; re-run `audiotokens spectrogram`")
    return out


# ---------------------------------------------------------------- k-means


def use_gpu(requested: bool) -> bool:
    if not requested:
        return False
    if faiss.get_num_gpus() > 0:
        return True
    log.warning("cluster.gpu = true, but this faiss build sees no GPU (faiss-cpu, or no CUDA device); "
                "training on the CPU. Install faiss-gpu for GPU k-means, or set cluster.gpu = false")
    return False


def train_kmeans(x: np.ndarray, k: int, niter: int, seed: int, spherical: bool, gpu: bool) -> faiss.Kmeans:
    """faiss k-means on exactly the rows of x: no internal subsampling, no faiss warning."""
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed, spherical=spherical, gpu=gpu,
        max_points_per_centroid=math.ceil(len(x) / k) + 1,  # k * this >= len(x): faiss keeps every row
        min_points_per_centroid=1,  # the too-few-frames warning is ours (log + report)
        verbose=log.isEnabledFor(logging.DEBUG),
    )
    kmeans.train(x)
    return kmeans


def cluster_sizes(search: NearestCentroid, frames: np.ndarray, batch: int, where: str) -> np.ndarray:
    sizes = np.zeros(search.k, dtype=np.int64)
    for start, rows in iter_batches(frames, batch):
        ids = search(rows)
        if ids.min() < 0:
            row = start + int(np.flatnonzero(ids < 0)[0])
            raise UserError(f"{where} row {row} contains NaN or inf; re-run `audiotokens spectrogram`")
        sizes += np.bincount(ids, minlength=search.k)
    return sizes


def size_summary(sizes: np.ndarray) -> dict[str, Any]:
    """Dead clusters (no frame) and tiny ones (below TINY_SHARE of the mean cluster size)."""
    threshold = TINY_SHARE * sizes.sum() / max(len(sizes), 1)
    return {
        "dead_clusters": np.flatnonzero(sizes == 0).tolist(),
        "tiny_clusters": np.flatnonzero((sizes > 0) & (sizes < threshold)).tolist(),
        "tiny_threshold": float(threshold),
    }


def spectrogram_params(layout: Layout) -> dict[str, Any]:
    """The spectrogram settings of the frames, from the spectrogram stage's provenance record."""
    record = read_record(layout, "spectrogram")
    params = (record or {}).get("params", {})
    return {key: value for key, value in params.items() if key.startswith("spectrogram.")}


# ---------------------------------------------------------------- the stage


class ClusterCreator:
    """k-means on training frames -> output/centroids.npy (float32, k x dim) + output/cluster_report.json."""

    def __init__(self, config: Config, **options: Any):
        self.config = config
        self.cluster = config.cluster
        self.layout = Layout(config.workdir)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        path = self.layout.frames(TRAIN_SPLIT)
        frames, index = open_store(path, self.layout.frames_index(TRAIN_SPLIT))
        if frames.ndim != 2:
            raise UserError(f"{path} must be a (frames, n_mels) matrix, found shape {frames.shape}; "
                            "re-run `audiotokens spectrogram`")
        k, (available, dim) = self.cluster.n_clusters, frames.shape
        used, reason = sample_size(available, dim, self.cluster)
        warnings = self._check_counts(used, available, k)
        rows = sample_rows(available, used, self.cluster.seed)
        log.info("k-means: %d clusters on %d of %d training frames (%s), dim %d, %d iterations%s", k, used,
                 available, reason, dim, self.cluster.niter, ", spherical" if self.cluster.spherical else "")
        x = load_rows(frames, rows, str(path))
        kmeans, centroids, gpu, fit_time = self._fit(x)
        search = NearestCentroid(centroids, self.cluster.spherical)
        # sizes over ALL training frames: reuse the in-memory matrix when it already holds them all
        sizes = cluster_sizes(search, x if rows is None else frames, self.config.tokenize.batch_frames,
                              str(path))
        del x
        report = self._report(index, frames, rows, reason, kmeans, centroids, sizes, warnings, gpu, fit_time)
        save_npy(self.layout.centroids, centroids)
        report["wall_time_s"] = round(time.perf_counter() - started, 3)
        write_json(self.layout.cluster_report, report)
        log.info("k-means done in %.1f s: objective %.5g, %d dead and %d tiny clusters; wrote %s",
                 report["wall_time_s"], report["objective"][-1] if report["objective"] else float("nan"),
                 len(report["dead_clusters"]), len(report["tiny_clusters"]), self.layout.centroids)
        return {"n_clusters": k, "dim": dim, "frames_used": used, "frames_available": available,
                "dead_clusters": len(report["dead_clusters"]), "tiny_clusters": len(report["tiny_clusters"])}

    def _fit(self, x: np.ndarray) -> tuple[faiss.Kmeans, np.ndarray, bool, float]:
        """k-means on x (normalised in place in spherical mode): kmeans, centroids, GPU used, seconds."""
        if self.cluster.spherical:
            faiss.normalize_L2(x)
        gpu = use_gpu(self.cluster.gpu)
        started = time.perf_counter()
        kmeans = train_kmeans(x, self.cluster.n_clusters, self.cluster.niter, self.cluster.seed,
                              self.cluster.spherical, gpu)
        seconds = time.perf_counter() - started
        centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
        if self.cluster.spherical:
            faiss.normalize_L2(centroids)
        return kmeans, centroids, gpu, seconds

    def _check_counts(self, used: int, available: int, k: int) -> list[str]:
        if used < k:
            raise UserError(f"cluster.n_clusters = {k} needs at least {k} training frames, but only {used} "
                            f"are used ({available} available in {self.layout.frames(TRAIN_SPLIT)}); lower "
                            "cluster.n_clusters or raise cluster.max_frames / add training audio")
        if used < FAISS_MIN_POINTS * k:
            message = (f"only {used} training frames for {k} clusters (< {FAISS_MIN_POINTS} per cluster); "
                       "centroids may be unreliable")
            log.warning(message)
            return [message]
        return []

    def _report(self, index: ClipIndex, frames: np.ndarray, rows: np.ndarray | None, reason: str,
                kmeans: faiss.Kmeans, centroids: np.ndarray, sizes: np.ndarray, warnings: list[str],
                gpu: bool, fit_time: float) -> dict[str, Any]:
        k = len(centroids)
        clip_of_row = None if rows is None else np.searchsorted(index.offsets, rows, side="right")
        clips_sampled = len(index) if clip_of_row is None else len(np.unique(clip_of_row))
        return {
            "n_clusters": k,
            "dim": int(centroids.shape[1]),
            "niter": self.cluster.niter,
            "seed": self.cluster.seed,
            "spherical": self.cluster.spherical,
            "gpu": gpu,
            "split": TRAIN_SPLIT,
            "frames_available": len(frames),
            "frames_used": int(len(frames) if rows is None else len(rows)),
            "sampling": reason,
            "clips_available": len(index),
            "clips_sampled": clips_sampled,
            "frames_dtype": str(frames.dtype),
            "iterations_run": len(kmeans.obj),  # faiss stops early once the objective stops changing
            "objective": [float(v) for v in kmeans.obj],
            "objective_meaning": (
                "sum of inner products of unit frames with their centroid (higher is better)"
                if self.cluster.spherical else "sum of squared L2 distances to centroids"),
            "imbalance_factor": float(kmeans.iteration_stats[-1]["imbalance_factor"])
            if kmeans.iteration_stats else None,
            "fit_time_s": round(fit_time, 3),
            "cluster_sizes": sizes.tolist(),
            "sizes_over": f"all {int(sizes.sum())} training frames",
            **size_summary(sizes),
            "warnings": warnings,
            "spectrogram": spectrogram_params(self.layout),
            "centroids_digest": centroids_digest(centroids),
        }
