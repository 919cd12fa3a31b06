"""Hugging Face AudioSet parquet shards (agkphysics/AudioSet): columns video_id, audio {bytes, path},
labels (list of MIDs), human_labels (list of names).

Only the metadata columns are read here; a clip's audio location is "<absolute shard path>::<row number>"
and the spectrogram stage decodes the bytes of that row. Rows without labels and repeated video ids (the
first is kept) are left out and reported.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ...pipeline.layout import PARQUET_ROW_SEPARATOR
from .class_list import ClassList, build_class_list, class_id
from .records import Clip, Dataset, Missing
from .source import Source, catalog

log = logging.getLogger("audiotokens")

METADATA_COLUMNS = ("video_id", "labels")


@dataclass
class ParquetRow:
    video_id: str
    mids: list[str]
    names: list[str]
    shard: str  # absolute path
    row: int


def parquet_location(shard: str | Path, row: int) -> str:
    return f"{os.path.abspath(shard)}{PARQUET_ROW_SEPARATOR}{row}"


def split_location(location: str) -> tuple[str, int] | None:
    """(shard path, row) for a parquet location, None for a plain file path."""
    shard, sep, row = location.rpartition(PARQUET_ROW_SEPARATOR)
    if not sep or not row.isdigit():
        return None
    return shard, int(row)


def find_shards(pattern: str, key: str = "data.parquet") -> list[str]:
    """Shards matching a glob (a directory means every .parquet under it)."""
    if not pattern:
        raise UserError(f"{key} is empty; set it to a glob of parquet shards, e.g. 'data/bal_train/*.parquet'")
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**", "*.parquet")
    shards = sorted(os.path.abspath(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not shards:
        raise UserError(f"{key} {pattern!r} matches no file")
    return shards


def read_rows(shards: list[str]) -> list[ParquetRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[ParquetRow] = []
    for shard in shards:
        try:
            names = set(pq.ParquetFile(shard).schema_arrow.names)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise UserError(f"{shard} is not a readable parquet file ({exc})") from None
        absent = [c for c in (*METADATA_COLUMNS, "audio") if c not in names]
        if absent:
            raise UserError(f"{shard} lacks column(s) {', '.join(absent)}; expected the Hugging Face AudioSet "
                            f"layout video_id, audio, labels[, human_labels] (found {', '.join(sorted(names))})")
        columns = [*METADATA_COLUMNS, *(["human_labels"] if "human_labels" in names else [])]
        table = pq.read_table(shard, columns=columns)
        ids = table.column("video_id").to_pylist()
        labels = table.column("labels").to_pylist()
        human = table.column("human_labels").to_pylist() if "human_labels" in names else [None] * len(ids)
        for row, (video_id, mids, names_) in enumerate(zip(ids, labels, human)):
            rows.append(ParquetRow(str(video_id), [str(m) for m in mids or []], list(names_ or []), shard, row))
    return rows


def rows_to_clips(rows: list[ParquetRow], classes: ClassList, class_source: str,
                  what: str) -> tuple[list[Clip], list[Missing]]:
    clips: list[Clip] = []
    missing: list[Missing] = []
    seen: dict[str, str] = {}
    for item in rows:
        where = parquet_location(item.shard, item.row)
        if item.video_id in seen:
            missing.append(Missing(item.video_id, f"duplicate id at {where} (first at {seen[item.video_id]}, "
                                                  "which is kept)", item.shard))
            continue
        seen[item.video_id] = where
        if not item.mids:
            missing.append(Missing(item.video_id, f"no labels at {where}", item.shard))
            continue
        labels = sorted({class_id(classes, mid, where, class_source) for mid in item.mids})
        clips.append(Clip(item.video_id, where, labels, None))
    if not clips:
        raise UserError(f"the parquet shards of {what} hold no labelled clip")
    log.info("%s: %d rows, %d clips, %d left out (duplicates, no labels)", what, len(rows), len(clips),
             len(missing))
    return clips, missing


def load_hf_parquet(
    pattern: str,
    class_labels: str = "",
    ontology: str = "",
    eval_pattern: str = "",
) -> tuple[list[Clip], list[Clip] | None, ClassList, list[Missing]]:
    rows = read_rows(find_shards(pattern))
    eval_rows = read_rows(find_shards(eval_pattern, "data.eval_parquet")) if eval_pattern else None
    every = rows + (eval_rows or [])
    names_seen: dict[str, str] = {}
    for item in every:
        for mid, name in zip(item.mids, item.names):
            names_seen.setdefault(mid, name)
    classes = build_class_list({mid for item in every for mid in item.mids}, class_labels, ontology, names_seen)
    class_source = class_labels or ontology or "the labels present"
    clips, missing = rows_to_clips(rows, classes, class_source, "data.parquet")
    eval_clips = None
    if eval_rows is not None:
        eval_clips, eval_missing = rows_to_clips(eval_rows, classes, class_source, "data.eval_parquet")
        missing += eval_missing
    return clips, eval_clips, classes, missing


class HfParquetSource(Source):
    """data.source = hf_parquet: Hugging Face AudioSet parquet shards (data.parquet, data.eval_parquet)."""

    name = "hf_parquet"
    eval_key = "eval_parquet"
    eval_hint = "a glob of the eval shards"
    auto_strategy = "prefix"  # YouTube ids, as for the audioset source

    def read(self, with_eval: bool) -> Dataset:
        data = self.data
        found = load_hf_parquet(data.parquet, data.class_labels, data.ontology,
                                data.eval_parquet if with_eval else "")
        return catalog(self.name, *found)
