"""What every data source (`data.source`) provides; the sources are registered in sources.SOURCES.

A source is bound to the [data] section and turns the keys it reads into one catalog of labelled clips
(`Dataset`). It also says what the split stage needs to know about it: the [data] key that names its own
validation side, if it has one (`eval_key`), the one that names its own test split (`test_key`), the split
strategy that suits it when split.strategy is auto, and whether its clip ids start with the class name
(then a split by id prefix would split by class).
A new source is one subclass, beside the code that reads its format, plus one entry in SOURCES.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import ClassVar

from ...config import DataConfig
from ...errors import UserError
from .class_list import ClassList
from .records import Clip, Dataset, Missing, detect_task

log = logging.getLogger("audiotokens")


class Source(ABC):
    """One data source with the [data] settings it reads."""

    name: ClassVar[str]  # the data.source value, also the catalog's `source`
    eval_key: ClassVar[str] = ""  # [data] key naming the source's own validation side; "" = it has none
    eval_hint: ClassVar[str] = ""  # what eval_key names, for the message when it is empty
    test_key: ClassVar[str] = ""  # [data] key naming the source's own test split; "" = it has none
    auto_strategy: ClassVar[str] = ""  # split.strategy=auto; "": by groups when clips have them, else stratified
    ids_lead_with_class: ClassVar[bool] = False  # clip ids start with the class name

    def __init__(self, data: DataConfig):
        self.data = data

    @property
    def eval_file(self) -> str:
        """The configured validation side of the source's own ("" when unset or when it has none)."""
        return getattr(self.data, self.eval_key) if self.eval_key else ""

    def load(self, with_eval: bool = False) -> Dataset:
        """The catalog; `with_eval` also loads the source's own validation side into `Dataset.eval_clips`."""
        if with_eval and not self.eval_key:
            raise UserError(f"data.source={self.name} has no eval side of its own; for split.strategy=official "
                            "set split.validation_list (a file of clip ids, one per line)")
        if with_eval and not self.eval_file:
            raise UserError(f"data.{self.eval_key} is empty; set it to {self.eval_hint} for the validation side")
        return self.read(with_eval)

    @abstractmethod
    def read(self, with_eval: bool) -> Dataset:
        """The catalog of the configured data, with the validation side when `with_eval`."""


def catalog(source: str, clips: list[Clip], eval_clips: list[Clip] | None, classes: ClassList,
            missing: list[Missing]) -> Dataset:
    """The catalog of a source with a validation side of its own: a clip on both sides stays on that side."""
    clips, missing = _drop_ids_in_eval(clips, eval_clips, missing)
    task = detect_task(clip.labels for clip in clips + (eval_clips or []))
    return Dataset(source, clips, classes.names, task, class_ids=classes.mids, missing=missing,
                   eval_clips=eval_clips)


def _drop_ids_in_eval(clips: list[Clip], eval_clips: list[Clip] | None,
                      missing: list[Missing]) -> tuple[list[Clip], list[Missing]]:
    """A clip listed on both sides stays on the validation side only, so validation never sees train data."""
    if not eval_clips:
        return clips, missing
    eval_ids = {clip.id for clip in eval_clips}
    kept = [clip for clip in clips if clip.id not in eval_ids]
    if len(kept) < len(clips):
        log.warning("%d training clips are also in the eval list; they stay on the validation side only",
                    len(clips) - len(kept))
        missing = missing + [Missing(clip.id, "also in the eval list; kept on the validation side only")
                             for clip in clips if clip.id in eval_ids]
    if not kept:
        raise UserError("every training clip is also in the eval list; data.segments and data.eval_segments "
                        "(or the parquet globs) name the same data")
    return kept, missing
