"""The vocabulary artifact: the fitted tokenizer with the frame spec it was fitted on, read and written here only.

output/vocabulary/ holds vocabulary.json (the quantizer's meta, its digest, the frame spec and its digest),
codebooks.npz (one float32 array per codebook) and report.json (how it was fitted: sampling, objective per
iteration, code usage, reconstruction error), written and replaced as one. tokenize, train, evaluate, predict and the bundle all
load it through `load_vocabulary`, and compare digests rather than settings: a model never ships with a
vocabulary or frame spec other than the ones its tokens were made with.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..pipeline.files import atomic_dir, json_text, read_json
from ..pipeline.layout import VOCABULARY_ARRAYS as ARRAYS
from ..pipeline.layout import VOCABULARY_METADATA as METADATA
from ..pipeline.layout import VOCABULARY_REPORT as REPORT
from ..pipeline.stores import spec_digest
from .quantizers import Quantizer


@dataclass(frozen=True)
class Vocabulary:
    quantizer: Quantizer
    frame_spec: dict[str, Any]
    path: Path

    @property
    def digest(self) -> str:
        return self.quantizer.digest()

    @property
    def frame_spec_digest(self) -> str:
        return spec_digest(self.frame_spec)

    @property
    def codebook_sizes(self) -> list[int]:
        return self.quantizer.codebook_sizes

    def describe(self) -> str:
        q = self.quantizer
        sizes = "x".join(map(str, q.codebook_sizes)) if len(set(q.codebook_sizes)) > 1 else \
            f"{q.n_codebooks} x {q.codebook_sizes[0]}"
        return f"{q.kind} tokenizer, {sizes} codes, {q.bits_per_frame:.1f} bits per frame"


def save_vocabulary(folder: Path, quantizer: Quantizer, frame_spec: dict[str, Any],
                    report: dict[str, Any] | None = None) -> None:
    meta, arrays = quantizer.state()
    with atomic_dir(folder) as tmp:
        with open(tmp / ARRAYS, "wb") as handle:
            np.savez(handle, **arrays)
        # plain writes inside the staging folder: a refused write is then reported for the final folder
        (tmp / METADATA).write_text(json_text({"quantizer": meta, "digest": quantizer.digest(),
                                               "frame_spec": frame_spec, "frame_spec_digest": spec_digest(frame_spec)}))
        if report is not None:
            (tmp / REPORT).write_text(json_text(report))


def load_vocabulary(folder: str | Path, hint: str = "re-run `audiotokens cluster`") -> Vocabulary:
    folder = Path(folder)
    meta = read_json(folder / METADATA, f"{hint}")
    try:
        with np.load(folder / ARRAYS) as stored:
            arrays = {name: stored[name] for name in stored.files}
        quantizer = Quantizer.from_state(meta["quantizer"], arrays)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{folder} is not a readable vocabulary ({exc}); {hint}") from None
    if quantizer.digest() != meta.get("digest"):
        raise UserError(f"{folder / ARRAYS} does not match {folder / METADATA} (changed or damaged); {hint}")
    return Vocabulary(quantizer, dict(meta.get("frame_spec") or {}), folder)
