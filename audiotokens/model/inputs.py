"""Batch layouts of each input kind: token ids or frame rows packed with an attention mask."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .parts import CLS, EXTRA_POSITIONS, PAD, SEP, TOKEN_OFFSET


def as_frames_by_codebooks(tokens: np.ndarray) -> np.ndarray:
    """Token arrays are (frames, codebooks); a 1-D array is one codebook."""
    return tokens[:, None] if tokens.ndim == 1 else tokens


def as_tensor(rows: np.ndarray) -> torch.Tensor:
    """The rows as a tensor: shared when writable (the batch's own copy), copied when read-only (a memmap's
    rows), which torch can only wrap with a warning."""
    return torch.as_tensor(rows) if rows.flags.writeable else torch.tensor(rows)


def pack_sequences(sequences: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw cluster-id sequences (frames, codebooks) -> ([CLS] ids+offset [SEP] [PAD]...) and attention mask.

    The batch is padded to its longest sequence only; the mask is 1 on [CLS], every token and [SEP], and
    0 exactly on padding, because it is built from each sequence's true length.
    """
    sequences = [as_tensor(as_frames_by_codebooks(np.asarray(s))) for s in sequences]
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


def pack_frames(sequences: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame sequences (frames, dim) -> (batch, positions, dim) floats laid out like pack_sequences.

    Row 0 ([CLS]), row n + 1 ([SEP]) and the padding rows are zeros; the model puts its learned [CLS]
    and [SEP] vectors there. The mask is the one pack_sequences gives for the same lengths.
    """
    sequences = [as_tensor(np.asarray(s, dtype=np.float32)) for s in sequences]
    dim = sequences[0].shape[1] if sequences else 0
    width = max((len(s) for s in sequences), default=0) + EXTRA_POSITIONS
    inputs = torch.zeros((len(sequences), width, dim), dtype=torch.float32)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        inputs[row, 1:n + 1] = sequence
        mask[row, :n + EXTRA_POSITIONS] = 1
    return inputs, mask


PACKERS = {"tokens": pack_sequences, "frames": pack_frames, "waveform": pack_frames}  # input kind -> batch layout
