"""k-means primitives shared by every quantizer kind: fit, nearest-centroid search, statistics."""
from __future__ import annotations

import logging
import math
import mmap
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from ..errors import UserError

log = logging.getLogger("audiotokens")

DEFAULT_BATCH = 262144  # rows per nearest-centroid search call


def use_gpu(requested: bool) -> bool:
    """Whether k-means runs on the GPUs; asked for explicitly, a missing GPU is an error, not a fallback.

    faiss.Kmeans(gpu=True) spreads the assignment over every GPU the faiss build sees.
    """
    if not requested:
        return False
    if faiss.get_num_gpus() > 0:
        return True
    raise UserError("cluster.gpu = true, but this faiss build sees no GPU (faiss-cpu, or no CUDA device); "
                    "install faiss-gpu on a machine with a GPU, or set cluster.gpu = false")


def train_kmeans(x: np.ndarray, k: int, niter: int, seed: int, spherical: bool, gpu: bool) -> faiss.Kmeans:
    """faiss k-means on exactly the rows of x: no internal subsampling, no faiss warning."""
    kmeans = faiss.Kmeans(
        # faiss's seed is a C int: cluster.seed + codebook index wraps below 2**31 instead of overflowing
        x.shape[1], k, niter=niter, seed=seed % 2**31, spherical=spherical, gpu=gpu,  # True: every GPU
        max_points_per_centroid=math.ceil(len(x) / k) + 1,  # k * this >= len(x): faiss keeps every row
        min_points_per_centroid=1,  # the too-few-frames warning is ours (log + report)
        verbose=log.isEnabledFor(logging.DEBUG),
    )
    kmeans.train(x)
    return kmeans


class NearestCentroid:
    """Exact nearest-centroid search: squared L2, or inner product between unit vectors (spherical)."""

    def __init__(self, centroids: np.ndarray, spherical: bool):
        centroids = np.array(centroids, dtype=np.float32, order="C", copy=True)
        if centroids.ndim != 2 or len(centroids) == 0:
            raise ValueError(f"centroids must be a non-empty (k, dim) matrix, got shape {centroids.shape}")
        self.spherical = spherical
        self.k, self.dim = centroids.shape
        if spherical:
            faiss.normalize_L2(centroids)
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            self.index = faiss.IndexFlatL2(self.dim)
        self.index.add(centroids)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """int64 ids, -1 for rows that are not finite."""
        if self.spherical:
            # a private copy: normalising in place must never write into a caller's (memory-mapped) array
            x = np.array(frames, dtype=np.float32, order="C", copy=True)
            faiss.normalize_L2(x)
        else:
            x = np.ascontiguousarray(frames, dtype=np.float32)
        _, ids = self.index.search(x, 1)
        return ids[:, 0]


def assign_tokens(frames: np.ndarray, centroids: np.ndarray, spherical: bool,
                  batch_frames: int = DEFAULT_BATCH) -> np.ndarray:
    """Nearest-centroid id (int64) of each row of `frames` (N, dim), computed in batches.

    Exact L2 (faiss IndexFlatL2); in spherical mode frames and centroids are L2-normalised and the
    largest inner product wins (IndexFlatIP).
    """
    frames = np.asarray(frames)
    if frames.ndim != 2 or frames.shape[1] != np.shape(centroids)[1]:
        raise UserError(f"frames of shape {frames.shape} do not match centroids of dimension "
                        f"{np.shape(centroids)[1]}")
    search = NearestCentroid(centroids, spherical)
    ids = np.empty(len(frames), dtype=np.int64)
    for start, batch in iter_batches(frames, batch_frames):
        ids[start:start + len(batch)] = search(batch)
    if len(ids) and ids.min() < 0:
        row = int(np.flatnonzero(ids < 0)[0])
        raise UserError(f"frame {row} contains NaN or inf; the frames must be finite")
    return ids


def iter_batches(array: np.ndarray, batch_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) blocks of `array`; pages of a memmap are released once a block is done."""
    batch_rows = max(1, int(batch_rows))
    for start in range(0, len(array), batch_rows):
        stop = min(start + batch_rows, len(array))
        yield start, array[start:stop]
        release_pages(array, start, stop)


def release_pages(array: np.ndarray, start_row: int, stop_row: int) -> None:
    """Drop rows [start_row, stop_row) of a read-only memmap from this process's resident set.

    The data stays in the OS page cache; without this, streaming a corpus through a memmap makes the
    process look (and be accounted) as large as the whole file.
    """
    mapping = getattr(array, "_mmap", None)
    # only a whole read-only map (as np.load(mmap_mode="r") returns): offsets are known, nothing unsaved
    if not isinstance(array.base, mmap.mmap) or array.base is not mapping or array.flags.writeable:
        return
    if not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row_bytes = array.strides[0] if array.ndim else 0
    base = array.offset % mmap.ALLOCATIONGRANULARITY  # np.memmap maps from an aligned start
    low = (base + start_row * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
    high = min(len(mapping), base + stop_row * row_bytes)
    if high > low:
        try:
            mapping.madvise(mmap.MADV_DONTNEED, low, high - low)
        except (OSError, ValueError):
            pass


def token_statistics(counts: np.ndarray) -> dict[str, Any]:
    """Usage of a vocabulary from per-token frame counts."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    probabilities = counts[counts > 0] / total if total else np.zeros(0)
    entropy = float(-(probabilities * np.log2(probabilities)).sum()) if total else 0.0
    top = np.sort(counts)[::-1][:10]
    unused = np.flatnonzero(counts == 0)
    return {
        "frames": total,
        "vocab_size": len(counts),
        "entropy_bits": entropy,
        "perplexity": float(2.0 ** entropy),
        "max_entropy_bits": float(math.log2(len(counts))) if len(counts) else 0.0,
        "top10_share": float(top.sum() / total) if total else 0.0,
        "unused_tokens": len(unused),
        "unused_ids": unused.tolist(),
        "counts": counts.tolist(),
    }
