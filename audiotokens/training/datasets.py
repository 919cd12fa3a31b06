"""Clips as model batches: memmap-backed datasets of token ids or frames, a reproducible shuffle, padding collates.

Both stores have one format: a .npy of rows (frames x codebooks ids, frames x mel floats, or rows of waveform
samples) and a ClipIndex of offsets, lengths and labels. A batch is {"inputs", "mask", "targets", "indices"}
whatever the input; waveform rows are packed like frames.

Corrupted copies (augment.copies): a dataset of N clips also answers items N*v + i, version v of clip i
(v = 1.. its stored copies, from the view's ClipIndex.copies); CopyChoice makes training batches read, per
(seed, epoch, clip), the clean clip or one of its copies. Evaluation never asks for a copy.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..model.inputs import PACKERS, as_frames_by_codebooks
from ..model.objectives import Objective
from ..pipeline.distributed import real_clip
from ..pipeline.stores import ClipIndex


class ClipDataset(Dataset):
    """Clip i = its first `max_frames` rows of a clip store, with its label target.

    The memmap is opened lazily in whichever process reads it (each DataLoader worker opens its own)
    and is never pickled: pickling an np.memmap would copy the whole array into every worker.
    """

    input_kind = ""
    row_dtype: type = np.float32

    def __init__(self, *, store_path: Path, index: ClipIndex, max_frames: int, objective: Objective):
        self.store_path = Path(store_path)
        self.offsets = index.offsets
        self.copies = index.copies  # offsets of each clip's corrupted copies (-1 past the last), or None
        self.lengths = np.minimum(index.lengths, max_frames)
        self.labels = index.labels
        self.n_classes = len(index.classes)
        self.objective = objective
        self._rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": None}

    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = self.open(self.store_path)
        return self._rows

    @staticmethod
    def open(path: Path) -> np.ndarray:
        return np.load(path, mmap_mode="r")

    def __getitem__(self, item: int | tuple[int, int, int]) -> tuple[np.ndarray, torch.Tensor, int]:
        """Clip `item`, or, for an (i, start, stop) item (a training crop or an evaluation window), frames
        [start, stop) of clip i. A padding item (distributed.padding_item) reads its clip with index -1."""
        i, padding = real_clip(item)
        i, start = self.locate(i)
        first, stop = item[1:] if isinstance(item, tuple) else (0, int(self.lengths[i]))
        rows = np.array(self.rows()[start + first:start + stop], dtype=self.row_dtype)
        return rows, self.objective.target(self.labels[i], self.n_classes), -1 if padding else i

    def locate(self, item: int) -> tuple[int, int]:
        """(clip, offset of the rows read) of a clip item: the clip, or one of its copies (item >= N)."""
        version, clip = divmod(item, len(self.offsets))
        return clip, int(self.offsets[clip] if version == 0 else self.copies[clip, version - 1])

    def copy_counts(self) -> np.ndarray | None:
        """Corrupted copies stored per clip; None when there are none."""
        return None if self.copies is None else (self.copies >= 0).sum(axis=1)

    def collate(self, items: list[tuple[np.ndarray, torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        sequences, targets, indices = zip(*items)
        inputs, mask = PACKERS[self.input_kind](sequences)
        return {"inputs": inputs, "mask": mask, "targets": torch.stack(targets),
                "indices": torch.tensor(indices, dtype=torch.long)}


class TokenClipDataset(ClipDataset):
    """Token ids of a split's view of tokenized/tokens.npy, (frames, codebooks)."""

    input_kind = "tokens"
    row_dtype = np.int64

    @staticmethod
    def open(path: Path) -> np.ndarray:
        return as_frames_by_codebooks(np.load(path, mmap_mode="r"))


class FrameClipDataset(ClipDataset):
    """Mel frames of a split's view of processed/frames/frames.npy, (frames, n_mels), as float32."""

    input_kind = "frames"


class WaveformClipDataset(ClipDataset):
    """Rows of waveform samples (spectrogram.features = waveform) for a speech model, as float32."""

    input_kind = "waveform"


DATASETS: dict[str, type[ClipDataset]] = {kind.input_kind: kind for kind in
                                          (TokenClipDataset, FrameClipDataset, WaveformClipDataset)}


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())


class CopyChoice:
    """The inner batch sampler's batches with each clip replaced by the version of it this epoch reads: the
    clean clip or one of its stored corrupted copies, uniformly, fixed by (seed, epoch, clip) so that a
    resumed run reads exactly what an uninterrupted one does. Items are clip indices or (clip, start,
    stop)."""

    def __init__(self, *, inner, copies: np.ndarray, seed: int):
        self.inner, self.copies, self.seed, self.epoch = inner, np.asarray(copies), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        (self.inner if hasattr(self.inner, "set_epoch") else self.inner.sampler).set_epoch(epoch)

    def versions(self) -> np.ndarray:
        """Per clip: 0 = clean, v = its copy v."""
        uniform = np.random.default_rng([self.seed, self.epoch, 2]).random(len(self.copies))
        return np.floor(uniform * (self.copies + 1)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list]:
        shift = self.versions() * len(self.copies)  # item N*v + i reads version v of clip i
        for batch in self.inner:
            yield [(item[0] + int(shift[item[0]]), *item[1:]) if isinstance(item, tuple)
                   else item + int(shift[item]) for item in batch]


def make_loader(
    dataset: ClipDataset,
    batch_size: int,
    sampler: Sampler[int] | Sequence[int],
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    # An own generator keeps the global torch RNG (dropout) untouched by the data path.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=dataset.collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
