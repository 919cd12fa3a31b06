"""`audiotokens tokenize`: token ids of every clip with the fitted vocabulary (vocabulary.py).

Frames are streamed from the store's memmap clip by clip in batches of about `tokenize.batch_frames`
rows; ids go straight into a memory-mapped tokenized/tokens.npy of shape (tokens, codebooks) in a staging
directory that replaces tokenized/ only once complete. With one token per frame the token index has the
frames index's offsets; a stacked tokenizer gives one token per window, so its clips are shorter. The
index records the digests of the vocabulary and frame spec the tokens were made with. Token usage is
reported per split view (tokenized/stats.json; its histograms are drawn when first shown, histograms.py).
Corrupted copies of training clips (augment.copies) are entries of the frame store like any clip, so they get
their tokens here with the same vocabulary, whatever the quantizer; the statistics count clean clips only.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import Config
from ..errors import UserError
from ..pipeline.files import (
    atomic_path,
    create_npy,
    disk_failure,
    read_json_or_none,
    save_npy,
    staging_dir,
    usual_permissions,
    write_json,
)
from ..pipeline.layout import SHARD_META, SHARDS_DIR, Layout
from ..pipeline.provenance import output_identity
from ..pipeline.shards import (
    Execution,
    Shard,
    all_shards,
    choose_count,
    finish_shards,
    stale_shards,
)
from ..pipeline.stores import ClipIndex, SplitPlan, open_store, split_view
from .histograms import remove_histograms
from .kmeans import DEFAULT_BATCH, iter_batches, release_pages, token_statistics
from .vocabulary import load_vocabulary

log = logging.getLogger("audiotokens")
STAGE = "tokenize"  # the stage table's name of this stage (shard locks, messages)


def token_dtype(k: int) -> np.dtype:
    return np.dtype(np.int16) if k < 2**15 else np.dtype(np.int32)


def check_vocabulary_fits(vocab, store: ClipIndex, frames: np.ndarray, frames_path: Path) -> None:
    """Refuse a vocabulary fitted on frames of another frame spec or dimension."""
    recorded = store.extra.get("frame_spec_digest")
    if recorded != vocab.frame_spec_digest:
        raise UserError(f"{vocab.path} was fitted on frames of another frame spec than {frames_path} (the "
                        "spectrogram settings changed since `audiotokens cluster`); re-run `audiotokens cluster`")
    if frames.ndim != 2 or frames.shape[1] != vocab.quantizer.n_mels:
        raise UserError(f"{vocab.path} takes vectors of dimension {vocab.quantizer.n_mels * vocab.quantizer.stack} but "
                        f"{frames_path} "
                        f"holds frames of shape {frames.shape[1:]}; re-run `audiotokens cluster`")


def clip_batches(index: ClipIndex, batch_rows: int, clips: range | None = None) -> Iterator[range]:
    """Runs of consecutive clips (of `clips`, default all) holding about `batch_rows` frames (at least one clip each)."""
    clips = range(len(index)) if clips is None else clips
    start, rows = clips.start, 0
    for i in clips:
        rows += int(index.lengths[i])
        if rows >= batch_rows:
            yield range(start, i + 1)
            start, rows = i + 1, 0
    if start < clips.stop:
        yield range(start, clips.stop)


class SpecTokenizer:
    """The frames store -> tokenized/ (tokens.npy + index.json + stats.json + histograms).

    Sharded like the spectrogram stage (shards.py): `shard` writes the tokens of its clips to
    tokenized/shards/N-K/ (tokens.npy, then shard.json that marks it finished); a run without it
    assembles finished shards on disk (computing those missing, here or on dask), or with no shard on
    disk and no executor asked for, tokenizes straight into the store.
    """

    def __init__(self, config: Config, *, shard: Shard | None = None, assemble: bool = False,
                 executor: str = "local", scheduler: str | None = None, shards: int = 0, **options: Any):
        self.config = config
        self.layout = Layout(config.workdir)
        self.batch_frames = int(options.get("batch_frames", config.tokenize.batch_frames))
        if self.batch_frames <= 0:
            raise UserError(f"'tokenize.batch_frames' must be positive, got {self.batch_frames}")
        self.shard = shard
        self.execution = Execution(executor=executor, scheduler=scheduler, assemble_only=assemble)
        self.shard_count = shards
        self.shards_root = self.layout.tokenized / SHARDS_DIR

    def run(self) -> dict[str, Any]:
        vocab = load_vocabulary(self.layout.vocabulary)
        frames, store = open_store(self.layout.frames, self.layout.frames_index)
        check_vocabulary_fits(vocab, store, frames, self.layout.frames)
        fill = functools.partial(self._tokenize_clips, frames, store, vocab.quantizer, range(len(store)))
        unsharded = self.shard is None and not self.shard_count and self.execution == Execution()
        if unsharded and not self.shards_root.is_dir():  # the common case, without hashing the frames for a key
            return self._write_store(vocab, store, fill)
        key = self._shards_key(vocab)
        if self.shard is not None:
            return self._compute_shard(frames, store, vocab.quantizer, key, self.shard)
        count = choose_count(self.shards_root, self.shard_count, lambda s: self._finished(store, key, s))
        if not count and self.execution == Execution():  # nothing sharded asked for: straight into the store
            return self._write_store(vocab, store, fill)

        def compute(todo: list[Shard]) -> None:
            for shard in todo:
                self._compute_shard(frames, store, vocab.quantizer, key, shard)

        count = finish_shards(STAGE, self.config, count, self.execution, compute=compute,
                              unfinished=lambda n: [s for s in all_shards(n) if not self._finished(store, key, s)],
                              stale=lambda: stale_shards(self.shards_root, lambda s: self._stale(store, key, s)))
        counts = self._write_store(vocab, store, functools.partial(self._copy_shards, store, count))
        shutil.rmtree(self.shards_root, ignore_errors=True)
        return counts

    def pending_shards(self) -> tuple[int, list[Shard]] | None:
        """(N, the shards not finished) of the current shards on disk; None when there are none."""
        store = ClipIndex.load(self.layout.frames_index)
        key = self._shards_key(load_vocabulary(self.layout.vocabulary))
        count = choose_count(self.shards_root, 0, lambda s: self._finished(store, key, s))
        return (count, [s for s in all_shards(count) if not self._finished(store, key, s)]) if count else None

    def _write_store(self, vocab, store: ClipIndex, fill: Callable[[np.ndarray, int], None]) -> dict[str, Any]:
        """Stage tokenized/ in a folder beside it, `fill` writing the tokens array, then swap the files in."""
        quantizer = vocab.quantizer
        log.info("tokenizing %d clips with the %s", len(store), vocab.describe())
        self.layout.tokenized.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir(self.layout.tokens_staging)
        try:
            tokens_index = self._token_index(store, quantizer)
            tokens = create_npy(tmp / self.layout.tokens.name, (tokens_index.total_frames, quantizer.n_codebooks),
                                token_dtype(max(quantizer.codebook_sizes)))
            fill(tokens, 0)
            tokens.flush()
            del tokens
            tokens_index.extra = {"vocabulary_digest": vocab.digest, "frame_spec_digest": vocab.frame_spec_digest,
                                  "codebook_sizes": quantizer.codebook_sizes, "stack": quantizer.stack,
                                  "stride": quantizer.stride}
            if store.extra.get("copies"):  # the training clips' corrupted copies, tokenized like every clip
                tokens_index.extra["copies"] = store.extra["copies"]
            tokens_index.save(tmp / self.layout.tokens_index.name)
            stats = self._statistics(tmp, tokens_index, quantizer.codebook_sizes)
            write_json(tmp / self.layout.token_stats.name, stats)
            usual_permissions(tmp)
            remove_histograms(self.layout)  # they show the statistics being replaced; drawn again when shown
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

    @staticmethod
    def _token_index(store: ClipIndex, quantizer) -> ClipIndex:
        lengths = np.array([quantizer.n_tokens(int(n)) for n in store.lengths], dtype=np.int64)
        return ClipIndex.from_lengths(store.ids, lengths, [[] for _ in store.ids], [], "")

    def _tokenize_clips(self, frames: np.ndarray, store: ClipIndex, quantizer, clips: range, tokens: np.ndarray,
                        first_row: int) -> None:
        """Token ids of `clips` into `tokens`, whose row 0 is token row `first_row` of the whole store."""
        index = self._token_index(store, quantizer)
        with tqdm(total=len(clips), unit="clip", desc="tokenize", disable=None, leave=False) as progress:
            for batch in clip_batches(store, self.batch_frames, clips):
                first = int(store.offsets[batch[0]])
                last = int(store.offsets[batch[-1]] + store.lengths[batch[-1]])
                block = np.asarray(frames[first:last], dtype=np.float32)
                # clip by clip: a stacked window never spans two clips, a codec reads each clip whole
                ids = np.concatenate(quantizer.encode_clips([
                    quantizer.windows(block[store.offsets[c] - first:store.offsets[c] - first + store.lengths[c]])
                    for c in batch]))
                if len(ids) and ids.min() < 0:
                    row = int(np.flatnonzero(ids.min(axis=1) < 0)[0])
                    raise UserError(f"{self.layout.frames}: a frame of clip '{store.ids[batch[0]]}' or the clips "
                                    f"after it (batch row {row}) contains NaN or inf; re-run "
                                    "`audiotokens spectrogram`")
                out = int(index.offsets[batch[0]]) - first_row
                tokens[out:out + len(ids)] = ids
                release_pages(frames, first, last)
                progress.update(len(batch))

    # -- shards

    def _shards_key(self, vocab) -> str:
        """What a shard's tokens depend on: the vocabulary and the frames store they were made from."""
        blob = json.dumps([vocab.digest, output_identity(self.layout.frames),
                           output_identity(self.layout.frames_index)])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _shard_span(self, store: ClipIndex, shard: Shard) -> tuple[range, Path]:
        return shard.clip_range(len(store)), self.shards_root / shard.name

    def _finished(self, store: ClipIndex, key: str, shard: Shard) -> bool:
        span, folder = self._shard_span(store, shard)
        meta = read_json_or_none(folder / SHARD_META)
        if not meta or meta.get("key") != key or [meta.get("start"), meta.get("stop")] != [span.start, span.stop]:
            return False
        try:
            return np.load(folder / self.layout.tokens.name, mmap_mode="r").shape[0] == meta["rows"]
        except (OSError, ValueError):
            return False

    def _stale(self, store: ClipIndex, key: str, shard: Shard) -> bool:
        """Finished under another vocabulary or frames store (or another cut of the clips): not assembled."""
        span, folder = self._shard_span(store, shard)
        meta = read_json_or_none(folder / SHARD_META)
        return bool(meta) and (meta.get("key") != key or [meta.get("start"), meta.get("stop")] != [span.start,
                                                                                                   span.stop])

    def _compute_shard(self, frames: np.ndarray, store: ClipIndex, quantizer, key: str,
                       shard: Shard) -> dict[str, Any]:
        span, folder = self._shard_span(store, shard)
        index = self._token_index(store, quantizer)
        first = int(index.offsets[span.start]) if len(span) else 0
        rows = int(index.lengths[span.start:span.stop].sum())
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SHARD_META).unlink(missing_ok=True)
        shape, dtype = (rows, quantizer.n_codebooks), token_dtype(max(quantizer.codebook_sizes))
        if rows == 0:
            save_npy(folder / self.layout.tokens.name, np.zeros(shape, dtype=dtype))
        else:
            with atomic_path(folder / self.layout.tokens.name) as tmp:
                tokens = create_npy(tmp, shape, dtype)
                self._tokenize_clips(frames, store, quantizer, span, tokens, first)
                tokens.flush()
                del tokens
        write_json(folder / SHARD_META, {"key": key, "start": span.start, "stop": span.stop, "rows": rows})
        return {"clips": len(span), "tokens": rows}

    def _copy_shards(self, store: ClipIndex, count: int, tokens: np.ndarray, first_row: int) -> None:
        row = first_row
        for shard in all_shards(count):
            part = np.load(self._shard_span(store, shard)[1] / self.layout.tokens.name, mmap_mode="r")
            for start, block in iter_batches(part, DEFAULT_BATCH):
                tokens[row + start:row + start + len(block)] = block
            row += len(part)
        if row != len(tokens):
            raise RuntimeError(f"token shards hold {row} rows, the store {len(tokens)}")

    def _statistics(self, out_dir: Path, index: ClipIndex, sizes: list[int]) -> dict[str, Any]:
        """Per split view and codebook: usage, entropy, perplexity, unused ids."""
        tokens = np.load(out_dir / self.layout.tokens.name, mmap_mode="r")
        plan = SplitPlan.load(self.layout)
        stats: dict[str, Any] = {"codebook_sizes": sizes, "splits": {}}
        for name in plan.names():
            view = split_view(index, plan, name)
            codebooks = [token_statistics(count) for count in token_counts(tokens, index, view, sizes)]
            stats["splits"][name] = {"clips": len(view), "tokens": view.total_frames, "codebooks": codebooks}
            first = codebooks[0]
            log.info("%s: %d clips, %d tokens, codebook 0: entropy %.2f bits, perplexity %.1f of %d, %d unused",
                     name, len(view), view.total_frames, first["entropy_bits"], first["perplexity"], sizes[0],
                     first["unused_tokens"])
        return stats


def token_counts(tokens: np.ndarray, index: ClipIndex, view: ClipIndex, sizes: list[int]) -> list[np.ndarray]:
    """Frames of each token id of each codebook over the clips of `view` (rows of the store `index`
    describes), in batches of store rows: one bincount per batch, not one per clip."""
    member = np.zeros(len(index), dtype=bool)
    row = index.row_of()
    member[[row[clip_id] for clip_id in view.ids]] = True
    counts = [np.zeros(size, dtype=np.int64) for size in sizes]
    for start, block in iter_batches(tokens, DEFAULT_BATCH):
        # the clips whose rows the block holds (the store's clips are contiguous, in order)
        first = int(np.searchsorted(index.offsets, start, side="right")) - 1
        stop = int(np.searchsorted(index.offsets, start + len(block), side="left"))
        skip = start - int(index.offsets[first])
        rows = np.repeat(member[first:stop], index.lengths[first:stop])[skip:skip + len(block)]
        for c, size in enumerate(sizes):
            counts[c] += np.bincount(np.asarray(block[rows, c], dtype=np.int64), minlength=size)
    return counts
