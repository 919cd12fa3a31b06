"""`audiotokens tokenize`: token ids of every clip with the fitted vocabulary (vocabulary.py).

Frames are streamed from the store's memmap clip by clip in batches of about `tokenize.batch_frames`
rows; ids go straight into a memory-mapped tokenized/tokens.npy of shape (tokens, codebooks) in a staging
directory that replaces tokenized/ only once complete. With one token per frame the token index has the
frames index's offsets; a stacked tokenizer gives one token per window, so its clips are shorter. The
index records the digests of the vocabulary and frame spec the tokens were made with. Token usage is
reported per split view (tokenized/stats.json, one histogram per split and codebook 0).
"""
from __future__ import annotations

import importlib
import logging
import math
import mmap
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from .artifacts import (
    ClipIndex,
    Layout,
    SplitPlan,
    create_npy,
    disk_failure,
    open_store,
    split_view,
    staging_dir,
    usual_permissions,
    write_json,
)
from .config import Config
from .errors import UserError

log = logging.getLogger("audiotokens")

DEFAULT_BATCH = 262144


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


def check_vocabulary_fits(vocab, store: ClipIndex, frames: np.ndarray, frames_path: Path) -> None:
    """Refuse a vocabulary fitted on frames of another frame spec or dimension."""
    recorded = store.extra.get("frame_spec_digest")
    if recorded != vocab.frame_spec_digest:
        raise UserError(f"{vocab.path} was fitted on frames of another frame spec than {frames_path} (the "
                        "spectrogram settings changed since `audiotokens cluster`); re-run `audiotokens cluster`")
    if frames.ndim != 2 or frames.shape[1] * vocab.quantizer.stack != vocab.quantizer.input_dim:
        raise UserError(f"{vocab.path} takes vectors of dimension {vocab.quantizer.input_dim} but {frames_path} "
                        f"holds frames of shape {frames.shape[1:]}; re-run `audiotokens cluster`")


def clip_batches(index: ClipIndex, batch_rows: int) -> Iterator[range]:
    """Runs of consecutive clips holding about `batch_rows` frames (at least one clip each)."""
    start, rows = 0, 0
    for i, length in enumerate(index.lengths):
        rows += int(length)
        if rows >= batch_rows:
            yield range(start, i + 1)
            start, rows = i + 1, 0
    if start < len(index):
        yield range(start, len(index))


class SpecTokenizer:
    """The frames store -> tokenized/ (tokens.npy + index.json + stats.json + histograms)."""

    def __init__(self, config: Config, **options: Any):
        self.config = config
        self.layout = Layout(config.workdir)
        self.batch_frames = int(options.get("batch_frames", config.tokenize.batch_frames))
        if self.batch_frames <= 0:
            raise UserError(f"'tokenize.batch_frames' must be positive, got {self.batch_frames}")

    def run(self) -> dict[str, Any]:
        from .vocabulary import load_vocabulary

        vocab = load_vocabulary(self.layout.vocabulary)
        frames, store = open_store(self.layout.frames, self.layout.frames_index)
        check_vocabulary_fits(vocab, store, frames, self.layout.frames)
        quantizer = vocab.quantizer
        log.info("tokenizing %d clips with the %s", len(store), vocab.describe())
        self.layout.tokenized.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir(self.layout.tokenized / "store")
        try:
            tokens_index = self._tokenize(frames, store, quantizer, tmp)
            tokens_index.extra = {"vocabulary_digest": vocab.digest, "frame_spec_digest": vocab.frame_spec_digest,
                                  "codebook_sizes": quantizer.codebook_sizes, "stack": quantizer.stack,
                                  "stride": quantizer.stride}
            tokens_index.save(tmp / self.layout.tokens_index.name)
            stats = self._statistics(tmp, tokens_index, quantizer.codebook_sizes)
            write_json(tmp / self.layout.token_stats.name, stats)
            for name in stats["splits"]:
                plot_histogram(stats["splits"][name]["codebooks"][0], f"{name}: codebook 0 usage",
                               tmp / self.layout.token_histogram(name).name)
            usual_permissions(tmp)
            # the index last: until it is replaced, readers see the old store whole (row counts are checked)
            for item in sorted(tmp.iterdir(), key=lambda item: item.name == self.layout.tokens_index.name):
                os.replace(item, self.layout.tokenized / item.name)
        except BaseException as exc:
            failure = disk_failure(self.layout.tokenized, exc)  # checked before the removal frees the space
            shutil.rmtree(tmp, ignore_errors=True)
            if failure is not None:
                raise failure from None
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        counts: dict[str, Any] = {"clips": len(tokens_index), "tokens": tokens_index.total_frames,
                                  "codebooks": quantizer.n_codebooks}
        for name, split in stats["splits"].items():
            counts[f"{name}_clips"] = split["clips"]
            counts[f"{name}_perplexity"] = round(split["codebooks"][0]["perplexity"], 3)
        return counts

    def _tokenize(self, frames: np.ndarray, store: ClipIndex, quantizer, out_dir: Path) -> ClipIndex:
        lengths = np.array([quantizer.n_tokens(int(n)) for n in store.lengths], dtype=np.int64)
        index = ClipIndex.from_lengths(store.ids, lengths, [[] for _ in store.ids], [], "")
        dtype = token_dtype(max(quantizer.codebook_sizes))
        tokens = create_npy(out_dir / self.layout.tokens.name, (index.total_frames, quantizer.n_codebooks), dtype)
        with tqdm(total=len(store), unit="clip", desc="tokenize", disable=None, leave=False) as progress:
            for clips in clip_batches(store, self.batch_frames):
                first, last = int(store.offsets[clips[0]]), int(store.offsets[clips[-1]] + store.lengths[clips[-1]])
                block = np.asarray(frames[first:last], dtype=np.float32)
                if quantizer.stack > 1:
                    block = np.concatenate([quantizer.windows(block[store.offsets[c] - first:
                                                                    store.offsets[c] - first + store.lengths[c]])
                                            for c in clips])
                ids = quantizer.encode(block)
                if len(ids) and ids.min() < 0:
                    row = int(np.flatnonzero(ids.min(axis=1) < 0)[0])
                    raise UserError(f"{self.layout.frames}: a frame of clip '{store.ids[clips[0]]}' or the clips "
                                    f"after it (batch row {row}) contains NaN or inf; re-run "
                                    "`audiotokens spectrogram`")
                out = int(index.offsets[clips[0]])
                tokens[out:out + len(ids)] = ids
                release_pages(frames, first, last)
                progress.update(len(clips))
        tokens.flush()
        del tokens
        return index

    def _statistics(self, out_dir: Path, index: ClipIndex, sizes: list[int]) -> dict[str, Any]:
        """Per split view and codebook: usage, entropy, perplexity, unused ids."""
        tokens = np.load(out_dir / self.layout.tokens.name, mmap_mode="r")
        plan = SplitPlan.load(self.layout)
        stats: dict[str, Any] = {"codebook_sizes": sizes, "splits": {}}
        for name in plan.names():
            view = split_view(index, plan, name)
            counts = [np.zeros(size, dtype=np.int64) for size in sizes]
            for offset, length in zip(view.offsets, view.lengths):
                rows = np.asarray(tokens[offset:offset + length], dtype=np.int64)
                for c, size in enumerate(sizes):
                    counts[c] += np.bincount(rows[:, c], minlength=size)
            codebooks = [token_statistics(count) for count in counts]
            stats["splits"][name] = {"clips": len(view), "tokens": view.total_frames, "codebooks": codebooks}
            first = codebooks[0]
            log.info("%s: %d clips, %d tokens, codebook 0: entropy %.2f bits, perplexity %.1f of %d, %d unused",
                     name, len(view), view.total_frames, first["entropy_bits"], first["perplexity"], sizes[0],
                     first["unused_tokens"])
        return stats
