"""lhotse manifests: a RecordingSet with a SupervisionSet, or a CutSet (jsonl or jsonl.gz), read with lhotse.

Every supervision segment is one clip: its id is the supervision's id, its audio the segment of its
recording's file ("<path>::<start>,<duration>", data/audio.py seeks to it), its labels the value of
data.lhotse_label (a SupervisionSegment field such as speaker, language, gender or text, else a key of its
`custom` dict; a list of values makes the task multi-label), its group that of data.lhotse_group
(recording_id by default, so segments of one recording stay on one side of the split). In a CutSet a
supervision's start counts from its cut's start, as in lhotse. Decisions:
- a segment is left out and reported when it has no label, its recording is not in the recordings
  manifest, its audio is not one file (a URL, a command, several files per channel, a recording with
  transforms), that file does not exist, or it lies outside the recording; a repeated supervision id is
  left out too (the first is kept). Only "no clip at all" is fatal.
- channels are mixed down as for every source (a supervision's `channel` is not read).
- relative audio paths are relative to the current directory, as lhotse reads them.
- the class list is the sorted set of labels of every segment (also those left out for their audio).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..audio import SEGMENT_OVERSHOOT, segment_location
from .audio_files import missing_reason
from .records import Clip, Dataset, Missing, detect_task
from .source import Source

log = logging.getLogger("audiotokens")


@dataclass
class Segment:
    """One supervision with the recording it belongs to (None: not in the recordings manifest)."""

    supervision: Any  # lhotse.SupervisionSegment
    recording: Any  # lhotse.Recording | None
    start: float  # seconds from the start of the recording
    listed_in: str  # the manifest that lists the supervision


def import_lhotse():
    """The `lhotse` package, or one line saying how to install it."""
    try:
        import lhotse
    except ImportError as exc:
        raise UserError(f"data.source = lhotse needs the lhotse package ({exc.name} is missing); install it "
                        "with `pip install 'audiotokens[formats]'`") from None
    return lhotse


def load_lhotse(data) -> Dataset:
    lhotse = import_lhotse()
    if data.lhotse_cuts:
        if data.lhotse_recordings or data.lhotse_supervisions:
            raise UserError("set either data.lhotse_cuts or data.lhotse_recordings with data.lhotse_supervisions, "
                            "not both")
        segments = _cut_segments(_manifest(lhotse, data.lhotse_cuts, "lhotse_cuts", lhotse.CutSet),
                                 data.lhotse_cuts)
    else:
        for key in ("lhotse_recordings", "lhotse_supervisions"):
            if not getattr(data, key):
                raise UserError(f"data.{key} is empty; set data.lhotse_recordings and data.lhotse_supervisions "
                                "(lhotse manifests, jsonl or jsonl.gz), or data.lhotse_cuts")
        recordings = _manifest(lhotse, data.lhotse_recordings, "lhotse_recordings", lhotse.RecordingSet)
        supervisions = _manifest(lhotse, data.lhotse_supervisions, "lhotse_supervisions", lhotse.SupervisionSet)
        by_id = {recording.id: recording for recording in recordings}
        segments = [Segment(s, by_id.get(s.recording_id), s.start, data.lhotse_supervisions) for s in supervisions]
    fields = {field.name for field in dataclasses.fields(lhotse.SupervisionSegment)}
    return _catalog(segments, data.lhotse_label, data.lhotse_group, fields)


def _manifest(lhotse, path: str, key: str, kind):
    if not Path(path).is_file():
        raise UserError(f"data.{key} {path} not found; set it to a lhotse {kind.__name__} manifest (jsonl or "
                        "jsonl.gz)")
    try:
        manifest = lhotse.load_manifest(path)
    except Exception as exc:  # noqa: BLE001 - lhotse raises ValueError, KeyError, JSON errors, ... for bad files
        raise UserError(f"data.{key} {path} is not a readable lhotse manifest ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(manifest, kind):
        raise UserError(f"data.{key} {path} is a {type(manifest).__name__}, not a {kind.__name__}")
    return manifest


def _cut_segments(cuts, path: str) -> list[Segment]:
    """Every supervision of every cut, its start counted from the start of the recording."""
    segments = []
    for cut in cuts:
        recording = getattr(cut, "recording", None)  # a MixedCut has several, a PaddingCut none
        for supervision in cut.supervisions:
            segments.append(Segment(supervision, recording, cut.start + supervision.start, path))
    return segments


def value_of(supervision, key: str, fields: set[str]) -> Any:
    """A supervision's field, else its custom key (None when it has neither)."""
    if key in fields:
        return getattr(supervision, key)
    return (supervision.custom or {}).get(key)


def _names(value: Any) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    names = [str(item).strip() for item in values if item is not None]
    return list(dict.fromkeys(name for name in names if name))


def _catalog(segments: list[Segment], label_key: str, group_key: str, fields: set[str]) -> Dataset:
    if not label_key:
        raise UserError("data.lhotse_label is empty; set it to a supervision field (speaker, language, ...) or "
                        "a key of the supervisions' custom fields")
    labelled = [(segment, _names(value_of(segment.supervision, label_key, fields))) for segment in segments]
    classes = sorted({name for _, names in labelled for name in names})
    index = {name: i for i, name in enumerate(classes)}
    clips: list[Clip] = []
    missing: list[Missing] = []
    seen: set[str] = set()
    for segment, names in labelled:
        supervision = segment.supervision
        if supervision.id in seen:
            missing.append(Missing(supervision.id, "duplicate supervision id (the first is kept)", segment.listed_in))
            continue
        seen.add(supervision.id)
        audio, why = _audio(segment) if names else (None, f"no {label_key}")
        if audio is None:
            missing.append(Missing(supervision.id, why, segment.listed_in))
            continue
        group = value_of(supervision, group_key, fields) if group_key else None
        clips.append(Clip(supervision.id, audio, sorted({index[name] for name in names}),
                          None if group is None else str(group)))
    if not segments:
        raise UserError("the lhotse manifests list no supervision segment")
    if not clips:
        raise UserError(f"no usable segment in the lhotse manifests ({len(missing)} left out; first: "
                        f"{missing[0].id}: {missing[0].reason})")
    if missing:
        log.info("lhotse: %d of %d segments left out (no label, no audio, duplicates; listed in the split report)",
                 len(missing), len(segments))
    return Dataset("lhotse", clips, classes, detect_task(clip.labels for clip in clips), missing=missing)


def _audio(segment: Segment) -> tuple[str | None, str]:
    """The segment's location, or None and why it has none."""
    supervision, recording = segment.supervision, segment.recording
    if recording is None:
        return None, f"recording '{supervision.recording_id}' is in no recordings manifest"
    if recording.transforms:
        return None, f"recording '{recording.id}' has transforms (speed, volume, ...), which are not applied here"
    if len(recording.sources) != 1:
        return None, f"recording '{recording.id}' has {len(recording.sources)} audio sources; one file is read"
    source = recording.sources[0]
    if source.type != "file":
        return None, f"recording '{recording.id}' is a '{source.type}' source; only audio files are read"
    path = os.path.abspath(source.source)
    if not os.path.isfile(path):
        return None, missing_reason(path)
    end = segment.start + supervision.duration
    inside = 0 <= segment.start < recording.duration and end <= recording.duration + SEGMENT_OVERSHOOT
    if not inside or supervision.duration <= 0:
        return None, (f"segment {segment.start:g}-{end:g} s lies outside recording '{recording.id}' "
                      f"(0-{recording.duration:g} s)")
    return segment_location(path, segment.start, supervision.duration), ""


class LhotseSource(Source):
    """data.source = lhotse: lhotse manifests (data.lhotse_recordings + lhotse_supervisions, or lhotse_cuts)."""

    name = "lhotse"

    def read(self, with_eval: bool) -> Dataset:
        return load_lhotse(self.data)
