"""Token clips as model batches: a memmap-backed Dataset, a reproducible shuffle and a padding collate."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .artifacts import ClipIndex
from .classifier import CLS, EXTRA_POSITIONS, PAD, SEP, TOKEN_OFFSET


def as_frames_by_codebooks(tokens: np.ndarray) -> np.ndarray:
    """Token arrays are (frames, codebooks); a 1-D array is one codebook."""
    return tokens[:, None] if tokens.ndim == 1 else tokens


def pack_sequences(sequences: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw cluster-id sequences (frames, codebooks) -> ([CLS] ids+offset [SEP] [PAD]...) and attention mask.

    The batch is padded to its longest sequence only; the mask is 1 on [CLS], every token and [SEP], and
    0 exactly on padding, because it is built from each sequence's true length.
    """
    sequences = [torch.as_tensor(as_frames_by_codebooks(np.asarray(s))) for s in sequences]
    n_codebooks = sequences[0].shape[1] if sequences else 1
    width = max((len(s) for s in sequences), default=0) + EXTRA_POSITIONS
    input_ids = torch.full((len(sequences), width, n_codebooks), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    input_ids[:, 0] = CLS
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        input_ids[row, 1:n + 1] = sequence.long() + TOKEN_OFFSET
        input_ids[row, n + 1] = SEP
        attention_mask[row, :n + EXTRA_POSITIONS] = 1
    return input_ids, attention_mask


class TokenClipDataset(Dataset):
    """Clip i = its first `max_frames` token rows from tokens.npy, with its label target.

    The memmap is opened lazily in whichever process reads it (each DataLoader worker opens its own)
    and is never pickled: pickling an np.memmap would copy the whole array into every worker.
    """

    def __init__(self, tokens_path: Path, index: ClipIndex, max_frames: int):
        self.tokens_path = Path(tokens_path)
        self.offsets = index.offsets
        self.lengths = np.minimum(index.lengths, max_frames)
        self.labels = index.labels
        self.n_classes = len(index.classes)
        self.multilabel = index.task == "multilabel"
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}

    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = as_frames_by_codebooks(np.load(self.tokens_path, mmap_mode="r"))
        return self._tokens

    def __getitem__(self, i: int) -> tuple[np.ndarray, torch.Tensor, int]:
        start = int(self.offsets[i])
        rows = np.array(self.tokens()[start:start + int(self.lengths[i])], dtype=np.int64)
        return rows, self.target(i), i

    def target(self, i: int) -> torch.Tensor:
        if self.multilabel:
            vector = torch.zeros(self.n_classes, dtype=torch.float32)
            vector[self.labels[i]] = 1.0
            return vector
        return torch.tensor(self.labels[i][0], dtype=torch.long)


def collate_clips(items: list[tuple[np.ndarray, torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    sequences, targets, indices = zip(*items)
    input_ids, attention_mask = pack_sequences(sequences)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "targets": torch.stack(targets),
        "indices": torch.tensor(indices, dtype=torch.long),
    }


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


def longest_first(lengths: np.ndarray) -> list[int]:
    """Evaluation order that keeps similar lengths together, so little compute goes to padding."""
    return np.argsort(-np.asarray(lengths), kind="stable").tolist()


def make_loader(
    dataset: TokenClipDataset,
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
        collate_fn=collate_clips,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
