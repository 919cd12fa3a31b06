"""Data sources -> one catalog of labelled clips (`Dataset`), whatever the metadata format.

`load(config.data)` dispatches on `data.source`: manifest | folder | audioset | hf_parquet. With
`with_eval=True` the AudioSet sources also load their own validation side (data.eval_segments or
data.eval_parquet) into `Dataset.eval_clips`, with the same class list and audio lookup.
"""
from __future__ import annotations

import logging

from ...config import DataConfig
from ...errors import UserError
from .audio_files import AUDIO_EXTENSIONS, is_audio_file
from .audioset import load_audioset
from .hf_parquet import load_hf_parquet, parquet_location, split_location
from .manifest import ManifestRow, load_folder, load_manifest, read_manifest
from .records import MULTILABEL, SINGLELABEL, Clip, Dataset, Missing, detect_task

log = logging.getLogger("audiotokens")

__all__ = [
    "AUDIO_EXTENSIONS", "MULTILABEL", "SINGLELABEL", "Clip", "Dataset", "ManifestRow", "Missing", "detect_task",
    "is_audio_file", "load", "load_folder", "load_manifest", "parquet_location", "read_manifest",
    "split_location",
]


def load(data: DataConfig, with_eval: bool = False) -> Dataset:
    """The catalog of the configured source; `with_eval` also loads eval_segments / eval_parquet."""
    if data.source == "manifest":
        _no_eval(data, with_eval)
        return load_manifest(data.manifest, data.label_delimiter)
    if data.source == "folder":
        _no_eval(data, with_eval)
        return load_folder(data.folder)
    if data.source == "audioset":

        if with_eval and not data.eval_segments:
            raise UserError("data.eval_segments is empty; set it (e.g. eval_segments.csv) for the validation side")
        found = load_audioset(data.segments, data.audio_root, data.class_labels, data.ontology,
                              data.eval_segments if with_eval else "")
        return _catalog("audioset", *found)
    if data.source == "hf_parquet":

        if with_eval and not data.eval_parquet:
            raise UserError("data.eval_parquet is empty; set it to a glob of the eval shards")
        found = load_hf_parquet(data.parquet, data.class_labels, data.ontology,
                                data.eval_parquet if with_eval else "")
        return _catalog("hf_parquet", *found)
    raise UserError(f"'data.source' must be one of manifest, folder, audioset, hf_parquet, got '{data.source}'")


def _no_eval(data: DataConfig, with_eval: bool) -> None:
    if with_eval:
        raise UserError(f"data.source={data.source} has no eval side of its own; for split.strategy=official "
                        "set split.validation_list (a file of clip ids, one per line)")


def _catalog(source, clips, eval_clips, classes, missing) -> Dataset:
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
