"""Stores of per-clip rows (frames or tokens) and the splits seen over them: memmap + index.

A store may also hold corrupted copies of training clips (augment.copies): entries of their own, right after
their clip, under copy_id(clip id, 1..copies), with the clip's length; the index's "copies" says how many
were made per clip. No split lists them, so a split's view reads clean clips only; the view of a split
whose clips have copies carries their offsets (ClipIndex.copies), which only training reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .files import _json_default, read_json, write_json
from .layout import SPLITS, Layout


@dataclass
class ClipIndex:
    """Where each clip's rows sit in a store (frames.npy / tokens.npy), and its labels.

    Clip i owns rows offsets[i] : offsets[i] + lengths[i]. Labels are class ids into `classes`. A store's
    own index holds every clip in row order without labels; a split's view (open_split) holds the split's
    clips, their rows in the store (not necessarily contiguous) and their labels from split.json.
    """

    ids: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    labels: list[list[int]]
    classes: list[str]
    task: str  # sources.records.MULTILABEL or SINGLELABEL; objectives.objective_for gives its meaning
    split: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # a view's (clips, augment.copies) offsets of each clip's stored corrupted copies, those present first,
    # -1 after them; None when its clips have none
    copies: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def total_frames(self) -> int:
        return int(self.lengths.sum()) if len(self.lengths) else 0

    @classmethod
    def from_lengths(cls, ids, lengths, labels, classes, task, split="") -> ClipIndex:
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths
        return cls(list(ids), offsets, lengths, [list(map(int, x)) for x in labels], list(classes), task, split)

    def row_of(self) -> dict[str, int]:
        """Clip id -> its position in this index."""
        return {clip_id: i for i, clip_id in enumerate(self.ids)}

    def label_matrix(self) -> np.ndarray:
        """(clips, classes) 0/1 matrix."""
        matrix = np.zeros((len(self), len(self.classes)), dtype=np.float32)
        for row, labels in enumerate(self.labels):
            matrix[row, labels] = 1.0
        return matrix

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "task": self.task,
            "classes": self.classes,
            "total_frames": self.total_frames,
            "ids": self.ids,
            "offsets": self.offsets.tolist(),
            "lengths": self.lengths.tolist(),
            "labels": self.labels,
            **self.extra,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ClipIndex:
        raw = read_json(path, "run the stage that writes it first")
        known = {"split", "task", "classes", "total_frames", "ids", "offsets", "lengths", "labels"}
        return cls(
            ids=raw["ids"],
            offsets=np.asarray(raw["offsets"], dtype=np.int64),
            lengths=np.asarray(raw["lengths"], dtype=np.int64),
            labels=raw["labels"],
            classes=raw["classes"],
            task=raw["task"],
            split=raw.get("split", ""),
            extra={k: v for k, v in raw.items() if k not in known},
        )


def open_store(array_path: Path, index_path: Path) -> tuple[np.ndarray, ClipIndex]:
    """Memory-map a store's array and load its index, checking they belong together."""
    index = ClipIndex.load(index_path)
    if not array_path.is_file():
        raise UserError(f"{array_path} not found; re-run the stage that writes it")
    array = np.load(array_path, mmap_mode="r")
    if array.shape[0] != index.total_frames:
        raise UserError(
            f"{array_path} has {array.shape[0]} rows but {index_path} lists {index.total_frames}; "
            "the artifact is incomplete, re-run the stage that writes it"
        )
    return array, index


def spec_digest(spec: dict[str, Any]) -> str:
    """Digest of a frame spec (or any JSON-able settings); later artifacts carry it to refuse mixes."""
    import hashlib

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def write_frames_index(layout: Layout, ids: list[str], lengths, spec: dict[str, Any], dtype: str) -> ClipIndex:
    """The frame spec and the index of the frames store, written after processed/frames/frames.npy: the spec
    first, the index (which marks the store complete) last. The spectrogram stage's writer."""
    write_json(layout.frame_spec, spec)
    index = ClipIndex.from_lengths(ids, lengths, [[] for _ in ids], [], "")
    index.extra = {"frame_spec_digest": spec_digest(spec), "dtype": dtype}
    index.save(layout.frames_index)
    return index


def read_frame_spec(layout: Layout) -> dict[str, Any]:
    """The frame spec the spectrogram stage wrote beside the frames."""
    return read_json(layout.frame_spec, "run `audiotokens spectrogram` first")


@dataclass(frozen=True)
class LeftOut:
    """What a split's figures cannot cover. A class without a training clip is no model output: its
    single-label clips left the split (`clips`), its multi-label positives were stripped (`positives`)."""

    clips: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # the classes without a training clip that this split holds
    positives: int = 0

    def __bool__(self) -> bool:
        return bool(self.classes)

    @classmethod
    def from_json(cls, raw: Any) -> LeftOut:
        raw = raw if isinstance(raw, dict) else {}

        def names(key: str) -> tuple[str, ...]:
            value = raw.get(key)
            return tuple(map(str, value)) if isinstance(value, list) else ()

        positives = raw.get("positives")
        return cls(names("clips"), names("classes"), positives if isinstance(positives, int) else 0)

    def to_json(self) -> dict[str, Any]:
        return {"clips": list(self.clips), "classes": list(self.classes), "positives": self.positives}

    def counts(self) -> dict[str, Any]:
        """The metrics files' statement: left_out_clips, left_out_positives, left_out_classes."""
        return {"left_out_clips": len(self.clips), "left_out_positives": self.positives,
                "left_out_classes": list(self.classes)}

    def summary(self) -> str:
        """A table cell: what was left out, of which classes."""
        what = _count(len(self.clips), "clip") if self.clips else _count(self.positives, "positive")
        return f"{what} of {', '.join(self.classes)}" if self else ""

    def note(self) -> str:
        """One sentence for logs and metrics files; empty when nothing was left out."""
        if not self:
            return ""
        names = ", ".join(self.classes[:10]) + (", …" if len(self.classes) > 10 else "")
        about = f"{_count(len(self.classes), 'class', 'classes')} without a training clip ({names})"
        if self.clips:
            return (f"{_count(len(self.clips), 'clip')} of {about} left the split: accuracy counts them as errors "
                    "(accuracy_kept_classes leaves them out); per-class figures cover the classes the model predicts")
        return (f"{_count(self.positives, 'positive')} of {about} {'was' if self.positives == 1 else 'were'} "
                "stripped: the figures cover the classes the model predicts")


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


NOTHING_LEFT_OUT = LeftOut()


@dataclass
class SplitPlan:
    """processed/split.json: the clip catalogue, the classes and task, and the ids of each split."""

    classes: list[str]
    task: str
    clips: list[dict[str, Any]]  # id, audio, labels, group; the spectrogram stage's work list
    splits: dict[str, list[str]]  # split name -> clip ids (absent or empty: no such split)
    raw: dict[str, Any]

    @classmethod
    def load(cls, layout: Layout) -> SplitPlan:
        path = layout.split_json
        if not path.is_file():
            raise UserError(f"{path} not found; run `audiotokens split` first")
        raw = read_json(path)
        malformed = UserError(f"{path} is malformed (needs 'classes', 'task', 'clips' with id, audio and labels, "
                              "and 'splits' of ids); re-run `audiotokens split`")
        if not isinstance(raw, dict) or not isinstance(raw.get("clips"), list) \
                or not isinstance(raw.get("splits"), dict) or not isinstance(raw.get("classes"), list) \
                or not isinstance(raw.get("task"), str):
            raise malformed
        if not all(isinstance(c, dict) and {"id", "audio", "labels"} <= c.keys() for c in raw["clips"]):
            raise malformed
        return cls(raw["classes"], raw["task"], raw["clips"],
                   {name: list(ids) for name, ids in raw["splits"].items()}, raw)

    @property
    def held_out_fold(self) -> bool:
        """Whether validation is one fold of a k-fold split (split.strategy kfold, or a column of folds)."""
        return self.raw.get("strategy") == "kfold" or "validation_fold" in self.raw

    @classmethod
    def new(cls, *, source: str, strategy: str, task: str, classes: list[str], clips: list[dict[str, Any]],
            splits: dict[str, list[str]], **details: Any) -> SplitPlan:
        """A plan as the split stage makes it: `clips` are catalogue entries (id, audio, labels, group; the
        split stage adds the audio file's stat), `splits` the ids of each split (empty ones are left out),
        `details` (dropped classes, class ids, ...) are written as given."""
        raw = {"source": source, "strategy": strategy, "task": task, "classes": list(classes), **details,
               "clips": list(clips), "splits": {name: list(ids) for name, ids in splits.items() if ids}}
        return cls(raw["classes"], task, raw["clips"], raw["splits"], raw)

    def save(self, layout: Layout) -> None:
        """processed/split.json (the one writer of the file; `load` reads it back)."""
        write_json(layout.split_json, {**self.raw, "task": self.task, "classes": self.classes, "clips": self.clips,
                                       "splits": self.splits})

    def names(self) -> list[str]:
        """The splits that have clips, in SPLITS order."""
        return [name for name in SPLITS if self.splits.get(name)]

    def left_out(self, split: str) -> LeftOut:
        """The clips and positives of `split` left out because their class has no training clip."""
        return LeftOut.from_json((self.raw.get("left_out") or {}).get(split))

    def ids(self, split: str) -> list[str]:
        ids = self.splits.get(split) or []
        if not ids:
            raise UserError(f"split '{split}' has no clips in processed/split.json; splits with clips: "
                            f"{', '.join(self.names())}")
        return ids


COPY_MARK = "#copy"  # a copy's id: the clip's id, COPY_MARK and the copy's number (1, 2, ...)


def copy_id(clip_id: str, number: int) -> str:
    """The store id of corrupted copy `number` (1, 2, ...) of a clip."""
    return f"{clip_id}{COPY_MARK}{number}"


def copy_offsets(store: ClipIndex, row: dict[str, int], ids: list[str]) -> np.ndarray | None:
    """(len(ids), copies) offsets in the store of each clip's copies, present ones first and -1 after them;
    None when none of these clips has a copy. `row` is store.row_of()."""
    count = int(store.extra.get("copies", 0))
    offsets = np.full((len(ids), count), -1, dtype=np.int64)
    for i, clip_id in enumerate(ids):
        present = [store.offsets[row[name]] for name in (copy_id(clip_id, k) for k in range(1, count + 1))
                   if name in row]
        offsets[i, :len(present)] = present
    return offsets if (offsets >= 0).any() else None


def with_copies(view: ClipIndex) -> ClipIndex:
    """The view's clips followed by every stored copy of them, as clips of their own (with their clip's
    labels)."""
    if view.copies is None:
        return view
    clip, number = np.nonzero(view.copies >= 0)
    return ClipIndex([*view.ids, *(copy_id(view.ids[c], int(k) + 1) for c, k in zip(clip, number))],
                     np.concatenate([view.offsets, view.copies[clip, number]]),
                     np.concatenate([view.lengths, view.lengths[clip]]),
                     [*view.labels, *(list(view.labels[c]) for c in clip)], view.classes, view.task,
                     view.split, dict(view.extra))


def split_view(store: ClipIndex, plan: SplitPlan, split: str) -> ClipIndex:
    """The clips of `split` that the store holds, with their rows in the store and their labels (and the
    offsets of their corrupted copies, when the store has any)."""
    row = store.row_of()
    labels = {clip["id"]: clip["labels"] for clip in plan.clips}
    ids = [clip_id for clip_id in plan.ids(split) if clip_id in row]
    rows = np.asarray([row[clip_id] for clip_id in ids], dtype=np.int64)
    return ClipIndex(ids, store.offsets[rows] if len(rows) else np.zeros(0, np.int64),
                     store.lengths[rows] if len(rows) else np.zeros(0, np.int64),
                     [list(labels[clip_id]) for clip_id in ids], list(plan.classes), plan.task, split,
                     dict(store.extra), copy_offsets(store, row, ids))


def open_split(layout: Layout, kind: str, split: str) -> tuple[np.ndarray, ClipIndex]:
    """The whole store ("frames" or "tokens") memory-mapped, and the index of one split's view of it.

    Clips of the split that the store lacks (skipped by the spectrogram stage, reported there) are left out.
    """
    array_path, index_path = layout.store(kind)
    array, store = open_store(array_path, index_path)
    view = split_view(store, SplitPlan.load(layout), split)
    if len(view) == 0:
        raise UserError(f"no clip of split '{split}' has {kind} in {array_path}; every one was skipped "
                        f"(see {layout.frames_report}) — check the audio, then re-run `audiotokens spectrogram`")
    return array, view
