"""The records every data source produces: clips, a catalog of them, and entries that could not be used."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MULTILABEL = "multilabel"
SINGLELABEL = "singlelabel"


@dataclass
class Clip:
    """One labelled clip.

    `audio` is a location (data/audio.py): an absolute file path, a segment of one
    ("<path>::<start>,<duration>"), or a row of a parquet shard or Arrow file ("<path>::[<column>::]<row>").
    `labels` are class ids (positions in the catalog's class list).
    """

    id: str
    audio: str
    labels: list[int]
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "audio": self.audio, "labels": list(self.labels), "group": self.group}


@dataclass
class Missing:
    """A listed entry that is not in the catalog (audio not found, duplicate id, no labels), and why."""

    id: str
    reason: str
    source: str = ""  # the metadata file that listed it

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "source": self.source}


@dataclass
class Dataset:
    """What a source found: usable clips, the class list, the task, and what it had to leave out.

    `eval_clips` is the validation side given by the metadata itself (AudioSet eval_segments or
    eval parquet shards); it shares the class list with `clips`. None when not requested.
    `test_clips` is a test split the metadata itself gives (a Hugging Face dataset's test split).
    """

    source: str
    clips: list[Clip]
    classes: list[str]
    task: str
    class_ids: list[str] | None = None
    missing: list[Missing] = field(default_factory=list)
    eval_clips: list[Clip] | None = None
    test_clips: list[Clip] | None = None

    def all_clips(self) -> list[Clip]:
        """Training-side clips, then the validation side's, then the test split's."""
        return self.clips + (self.eval_clips or []) + (self.test_clips or [])


def detect_task(label_lists: Iterable[list[int]]) -> str:
    """Multi-label as soon as one clip carries more than one label."""
    return MULTILABEL if any(len(labels) > 1 for labels in label_lists) else SINGLELABEL
