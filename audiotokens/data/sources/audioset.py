"""AudioSet segments CSVs with audio files under `data.audio_root`.

A segments CSV has '#' comment lines, then rows `YTID, start, end, "mid,mid,..."` (ids may start with
'-'). Decisions:
- a malformed row is an error naming the file and line (the metadata file is broken, not one clip);
- a label MID outside the class list is an error (see class_list.py);
- a row without labels, a repeated YouTube id (the first row is kept) and an id with no audio file
  are left out and listed in the report; only "no audio found at all" is fatal.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from .audio_index import AudioIndex
from .class_list import ClassList, build_class_list, class_id
from .records import Clip, Dataset, Missing
from .source import Source, catalog

log = logging.getLogger("audiotokens")


@dataclass
class Segment:
    ytid: str
    start: float
    end: float
    mids: list[str]
    line: int


def read_segments(path: str | Path, key: str = "data.segments") -> list[Segment]:
    """All rows of a segments CSV, in file order (duplicates included)."""
    if not str(path):
        raise UserError(f"{key} is empty; set it to an AudioSet segments CSV (e.g. balanced_train_segments.csv)")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key} {path} not found; set it to an AudioSet segments CSV")
    segments: list[Segment] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, skipinitialspace=True)
            for cells in reader:
                if not cells or cells[0].lstrip().startswith("#") or not "".join(cells).strip():
                    continue
                segments.append(_segment(path, cells, reader.line_num))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable segments CSV ({exc})") from None
    if not segments:
        raise UserError(f"{path} lists no segments; expected rows like: YTID, 30.000, 40.000, \"/m/09x0r\"")
    return segments


def _segment(path: Path, cells: list[str], line: int) -> Segment:
    if len(cells) < 4:
        raise UserError(f"{path} line {line}: expected YTID, start, end, \"labels\"; got {cells}")
    ytid = cells[0].strip()
    try:
        start, end = float(cells[1]), float(cells[2])
    except ValueError:
        raise UserError(f"{path} line {line}: start/end {cells[1]!r}, {cells[2]!r} are not numbers") from None
    # labels are one quoted field; a row written without quotes spreads them over the remaining cells
    mids = [mid.strip() for cell in cells[3:] for mid in cell.split(",") if mid.strip()]
    return Segment(ytid, start, end, mids, line)


def segments_to_clips(
    path: str | Path,
    segments: list[Segment],
    classes: ClassList,
    class_source: str,
    audio: AudioIndex,
) -> tuple[list[Clip], list[Missing]]:
    """Clips for the segments whose audio exists; the rest (and duplicates, unlabelled rows) as Missing."""
    source = str(path)
    clips: list[Clip] = []
    missing: list[Missing] = []
    seen: dict[str, int] = {}
    for segment in segments:
        if segment.ytid in seen:
            missing.append(Missing(segment.ytid, f"duplicate id on line {segment.line} "
                                                 f"(first on line {seen[segment.ytid]}, which is kept)", source))
            continue
        seen[segment.ytid] = segment.line
        labels = [class_id(classes, mid, f"{path} line {segment.line}", class_source) for mid in segment.mids]
        if not labels:
            missing.append(Missing(segment.ytid, f"no labels on line {segment.line}", source))
            continue
        location = audio.get(segment.ytid)
        if location is None:
            missing.append(Missing(segment.ytid, f"no audio file for this id under {audio.root}", source))
            continue
        clips.append(Clip(segment.ytid, location, sorted(set(labels)), None))
    log.info("%s: %d segments, %d with audio, %d left out (missing audio, duplicates, no labels)",
             Path(path).name, len(segments), len(clips), len(missing))
    if not clips:
        raise UserError(f"no audio found under {audio.root} for any of the {len(seen)} ids in {path} "
                        f"({audio.files} audio files indexed); check data.audio_root")
    return clips, missing


def load_audioset(
    segments: str,
    audio_root: str,
    class_labels: str = "",
    ontology: str = "",
    eval_segments: str = "",
) -> tuple[list[Clip], list[Clip] | None, ClassList, list[Missing]]:
    """Training-side clips, eval-side clips (when `eval_segments` is given), the class list, left-outs.

    The class list covers the labels of both files, and one walk of `audio_root` serves both.
    """
    train_rows = read_segments(segments)
    eval_rows = read_segments(eval_segments, "data.eval_segments") if eval_segments else None
    mids = {mid for row in train_rows + (eval_rows or []) for mid in row.mids}
    classes = build_class_list(mids, class_labels, ontology)
    class_source = class_labels or ontology or "the labels present"
    if not class_labels and not ontology:
        log.warning("no data.class_labels or data.ontology given: classes are the %d MIDs present, "
                    "named by their MID", len(classes.mids))
    audio = AudioIndex(audio_root)
    log.info("indexed %d audio files under %s (%d distinct ids)", audio.files, audio_root, len(audio.paths))
    clips, missing = segments_to_clips(segments, train_rows, classes, class_source, audio)
    eval_clips = None
    if eval_rows is not None:
        eval_clips, eval_missing = segments_to_clips(eval_segments, eval_rows, classes, class_source, audio)
        missing += eval_missing
    return clips, eval_clips, classes, missing


class AudioSetSource(Source):
    """data.source = audioset: segments CSVs (data.segments, data.eval_segments) and audio under data.audio_root."""

    name = "audioset"
    eval_key = "eval_segments"
    eval_hint = "the eval segments CSV (e.g. eval_segments.csv)"
    auto_strategy = "prefix"  # YouTube ids: the validation side is the ids starting with split.validation_prefixes

    def read(self, with_eval: bool) -> Dataset:
        data = self.data
        found = load_audioset(data.segments, data.audio_root, data.class_labels, data.ontology,
                              data.eval_segments if with_eval else "")
        return catalog(self.name, *found)
