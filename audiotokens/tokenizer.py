"""`audiotokens tokenize`: nearest-centroid token ids for every split's frames.

Frames are streamed from each split's memmap in batches; ids go straight into a memory-mapped
tokens.npy of shape (frames, codebooks) in a staging directory that replaces tokenized/<split>/ only
once every split is complete. The index is a copy of the frames index, so clip i owns the same rows
in both stores.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import math
import mmap
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from .artifacts import (
    SPLITS,
    ClipIndex,
    Layout,
    create_npy,
    disk_failure,
    open_store,
    read_json,
    replace_dir,
    write_json,
)
from .config import Config
from .errors import UserError
from .provenance import read_record

log = logging.getLogger("audiotokens")

DEFAULT_BATCH = 262144
# Spectrogram keys that change the storage or the amount of audio, not what a frame means.
FEATURE_NEUTRAL_KEYS = {"spectrogram.dtype", "spectrogram.max_duration", "spectrogram.workers"}


# ---------------------------------------------------------------- nearest-centroid search


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


# ---------------------------------------------------------------- streaming from memmaps


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


# ---------------------------------------------------------------- the vocabulary and its provenance


@dataclass
class Vocabulary:
    centroids: np.ndarray  # float32 (k, dim)
    spherical: bool
    spectrogram: dict[str, Any] = field(default_factory=dict)  # spectrogram params the centroids saw
    path: Path = Path()

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])


def centroids_digest(centroids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(centroids, dtype=np.float32).tobytes()).hexdigest()[:16]


def load_vocabulary(layout: Layout, config: Config | None = None) -> Vocabulary:
    """Centroids plus what the cluster stage recorded about them (spherical flag, spectrogram params)."""
    path = layout.centroids
    if not path.is_file():
        raise UserError(f"{path} not found; run `audiotokens cluster` first")
    try:
        centroids = np.load(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is not a readable .npy file ({exc}); re-run `audiotokens cluster`") from None
    if centroids.ndim != 2 or centroids.shape[0] == 0 or not np.issubdtype(centroids.dtype, np.floating):
        raise UserError(f"{path} must hold a float (k, dim) matrix, found {centroids.dtype} "
                        f"{centroids.shape}; re-run `audiotokens cluster`")
    if not np.isfinite(centroids).all():
        raise UserError(f"{path} contains NaN or inf; re-run `audiotokens cluster`")
    centroids = centroids.astype(np.float32, copy=False)
    report = read_json(layout.cluster_report) if layout.cluster_report.is_file() else None
    if report is not None and report.get("centroids_digest") not in (None, centroids_digest(centroids)):
        raise UserError(f"{layout.cluster_report} does not describe {path} (an interrupted cluster run?); "
                        "re-run `audiotokens cluster`")
    return Vocabulary(centroids, _recorded_spherical(layout, report, config),
                      dict((report or {}).get("spectrogram") or {}), path)


def _recorded_spherical(layout: Layout, report: dict | None, config: Config | None) -> bool:
    """The spherical flag the centroids were trained with; the current config is only a fallback."""
    recorded = None
    if report is not None and "spherical" in report:
        recorded = bool(report["spherical"])
    else:
        record = read_record(layout, "cluster")
        if record and "cluster.spherical" in record.get("params", {}):
            recorded = bool(record["params"]["cluster.spherical"])
    configured = config.cluster.spherical if config is not None else None
    if recorded is None:
        log.warning("no cluster report or record beside %s; assuming cluster.spherical = %s from the config",
                    layout.centroids, bool(configured))
        return bool(configured)
    if configured is not None and configured != recorded:
        log.info("using cluster.spherical = %s as recorded with the centroids (the config says %s)",
                 recorded, configured)
    return recorded


def check_compatible(vocab: Vocabulary, frames: np.ndarray, frames_path: Path,
                     spectrogram: dict[str, Any] | None) -> None:
    """Refuse centroids that were trained on frames of another dimension or spectrogram setting."""
    if frames.ndim != 2 or frames.shape[1] != vocab.dim:
        width = frames.shape[1] if frames.ndim == 2 else frames.shape
        raise UserError(f"{vocab.path} has dimension {vocab.dim} but {frames_path} has frames of dimension "
                        f"{width}; re-run `audiotokens cluster` on these frames")
    if not vocab.spectrogram or not spectrogram:
        log.debug("no spectrogram parameters recorded on one side; dimension check only")
        return
    differing = [key for key in sorted(set(vocab.spectrogram) & set(spectrogram))
                 if key not in FEATURE_NEUTRAL_KEYS and vocab.spectrogram[key] != spectrogram[key]]
    if differing:
        pairs = ", ".join(f"{key}={vocab.spectrogram[key]!r} for the centroids vs {spectrogram[key]!r} for "
                          "the frames" for key in differing)
        raise UserError(f"{vocab.path} was trained on other spectrogram settings than {frames_path}: "
                        f"{pairs}; re-run `audiotokens cluster` (or the spectrogram stage with the old "
                        "settings)")


# ---------------------------------------------------------------- statistics


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


def _load_matplotlib() -> None:
    """Import the plotting modules ahead of the first plot (the import alone takes about a second)."""
    for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        importlib.import_module(module)


def plot_histogram(stats: dict[str, Any], title: str, path: Path) -> None:
    """Frames per token id, and the share of frames covered by the r most used tokens."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(stats["counts"])
    total = max(int(counts.sum()), 1)
    # fixed margins and linear axes: tight_layout and log ticks cost seconds per figure
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    # one filled step outline, at most 1000 steps (ids summed per bin): fast for any vocabulary size
    width = max(1, math.ceil(len(counts) / 1000))
    binned = np.add.reduceat(counts, np.arange(0, len(counts), width))
    edges = np.arange(len(binned) + 1) * width - 0.5
    left.fill_between(edges, np.append(binned, binned[-1:]), step="post", color="tab:blue", linewidth=0)
    left.set(xlabel="token id" if width == 1 else f"token id (bins of {width})", ylabel="frames", title=title,
             xlim=(-0.5, len(counts) - 0.5), ylim=(0, None))
    covered = np.concatenate([[0.0], np.cumsum(np.sort(counts)[::-1]) / total])
    right.plot(np.arange(len(covered)), covered, color="tab:orange")
    right.set(xlabel="most used tokens", ylabel="share of frames", ylim=(0, 1.01), xlim=(0, len(counts)),
              title=f"perplexity {stats['perplexity']:.1f} of {len(counts)}, unused {stats['unused_tokens']}")
    right.grid(alpha=0.3)
    figure.savefig(path)


# ---------------------------------------------------------------- the stage


def token_dtype(k: int) -> np.dtype:
    return np.dtype(np.int16) if k < 2**15 else np.dtype(np.int32)


class SpecTokenizer:
    """Every split's frames -> nearest-centroid ids in tokenized/<split>/ (tokens.npy + index + stats)."""

    def __init__(self, config: Config, **options: Any):
        self.config = config
        self.layout = Layout(config.workdir)
        self.batch_frames = int(options.get("batch_frames", config.tokenize.batch_frames))
        if self.batch_frames <= 0:
            raise UserError(f"'tokenize.batch_frames' must be positive, got {self.batch_frames}")

    def run(self) -> dict[str, Any]:
        vocab = load_vocabulary(self.layout, self.config)
        record = read_record(self.layout, "spectrogram")
        spectrogram = (record or {}).get("params", {})
        stores = {split: open_store(self.layout.frames(split), self.layout.frames_index(split))
                  for split in SPLITS}
        for split, (frames, _) in stores.items():
            check_compatible(vocab, frames, self.layout.frames(split), spectrogram)
        log.info("tokenizing with %d centroids of dimension %d (%s)", vocab.k, vocab.dim,
                 "inner product, spherical" if vocab.spherical else "L2")
        search = NearestCentroid(vocab.centroids, vocab.spherical)
        self.layout.tokenized.mkdir(parents=True, exist_ok=True)
        staging: dict[str, Path] = {}
        counts: dict[str, Any] = {"n_clusters": vocab.k, "spherical": vocab.spherical}
        # plots are drawn on a side thread while faiss (which releases the GIL) searches the next split
        plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-histogram")
        plots = [plotter.submit(_load_matplotlib)]
        try:
            for split, (frames, index) in stores.items():
                staging[split] = self._staging_dir(split)
                stats = self._tokenize_split(split, frames, index, search, staging[split])
                title = f"{split}: token usage ({stats['frames']} frames)"
                png = staging[split] / self.layout.token_histogram(split).name
                plots.append(plotter.submit(plot_histogram, stats, title, png))
                counts[f"{split}_clips"] = len(index)
                counts[f"{split}_frames"] = stats["frames"]
                counts[f"{split}_perplexity"] = round(stats["perplexity"], 3)
            for plot in plots:
                plot.result()
            for split, tmp_dir in staging.items():
                replace_dir(tmp_dir, self.layout.tokens_dir(split))
        except BaseException as exc:
            plotter.shutdown(wait=True, cancel_futures=True)
            failure = disk_failure(self.layout.tokenized, exc)  # checked before the removal frees the space
            for tmp_dir in staging.values():
                shutil.rmtree(tmp_dir, ignore_errors=True)
            if failure is not None:
                raise failure from None
            raise
        plotter.shutdown()
        return counts

    def _staging_dir(self, split: str) -> Path:
        """A fresh hidden directory beside tokenized/<split>/ (created with the user's umask)."""
        final = self.layout.tokens_dir(split)
        staging = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted run
        staging.mkdir(parents=True)
        return staging

    def _tokenize_split(self, split: str, frames: np.ndarray, index: ClipIndex, search: NearestCentroid,
                        out_dir: Path) -> dict[str, Any]:
        frames_path = self.layout.frames(split)
        # the token store is (frames, codebooks): one codebook for k-means ids
        tokens = create_npy(out_dir / self.layout.tokens(split).name, (len(frames), 1), token_dtype(search.k))
        usage = np.zeros(search.k, dtype=np.int64)
        with tqdm(total=len(frames), unit="frame", unit_scale=True, desc=f"tokenize {split}", disable=None,
                  leave=False) as progress:
            for start, batch in iter_batches(frames, self.batch_frames):
                ids = search(batch)
                if ids.min() < 0:
                    row = start + int(np.flatnonzero(ids < 0)[0])
                    raise UserError(f"{frames_path} row {row} contains NaN or inf; "
                                    "re-run `audiotokens spectrogram`")
                tokens[start:start + len(ids), 0] = ids
                usage += np.bincount(ids, minlength=search.k)
                progress.update(len(ids))
        tokens.flush()
        del tokens
        token_index = ClipIndex(index.ids, index.offsets, index.lengths, index.labels, index.classes,
                                index.task, split, {**index.extra, "codebooks": 1, "vocab_size": search.k})
        token_index.save(out_dir / self.layout.tokens_index(split).name)
        stats = {"split": split, "spherical": search.spherical, **token_statistics(usage)}
        write_json(out_dir / self.layout.token_stats(split).name, stats)
        log.info("%s: %d clips, %d frames, entropy %.2f bits, perplexity %.1f of %d, top-10 share %.1f%%, "
                 "%d unused tokens", split, len(index), stats["frames"], stats["entropy_bits"],
                 stats["perplexity"], search.k, 100 * stats["top10_share"], stats["unused_tokens"])
        return stats
