"""Generic sources: a CSV manifest `path,label[,group]` and a folder-per-class tree.

Manifest rules: a header row naming at least `path` and `label` (other columns are ignored); paths are
relative to the manifest's folder (absolute paths are kept); a clip's id is its path exactly as written;
several labels in one cell are separated by `label_delimiter`. The class list is the sorted set of labels
in the manifest (all rows, so class ids do not depend on which files are currently on disk). A broken
manifest (missing column, empty path or label, duplicate path, undecodable text) is an error naming the
row; a listed file that does not exist is left out and reported, and only "no file exists" is fatal.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from .audio_files import describe_passed, is_audio_file, missing_reason, scan_audio
from .records import SINGLELABEL, Clip, Dataset, Missing, detect_task
from .source import Source

log = logging.getLogger("audiotokens")

REQUIRED_COLUMNS = ("path", "label")


@dataclass
class ManifestRow:
    """One manifest row with its labels still as names (evaluation maps them to a model's classes)."""

    id: str  # the path exactly as written
    audio: str  # absolute path
    labels: list[str]
    group: str | None
    line: int  # line number in the file, for messages


def read_manifest(path: str | Path, delimiter: str = ";") -> list[ManifestRow]:
    if not str(path):
        raise UserError("data.manifest is empty; set it to a CSV with columns path,label[,group]")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} not found; set data.manifest to a CSV with columns path,label[,group]")
    if not delimiter:
        raise UserError("data.label_delimiter is empty; set it to the character separating labels, e.g. ';'")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return _parse_rows(path, csv.reader(handle), delimiter)
    except UnicodeDecodeError as exc:
        raise UserError(f"manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise UserError(f"manifest {path}: unreadable CSV ({exc}); check quoting") from None


def _parse_rows(path: Path, reader, delimiter: str) -> list[ManifestRow]:
    header = next(reader, None)
    if header is None:
        raise UserError(f"manifest {path} is empty; it needs a header row path,label[,group] and one row per clip")
    columns = [name.strip().lower() for name in header]
    absent = [name for name in REQUIRED_COLUMNS if name not in columns]
    if absent:
        raise UserError(f"manifest {path}: header row {header} lacks column(s) {', '.join(absent)}; "
                        "the first row must name the columns path,label[,group]")
    at = {name: columns.index(name) for name in (*REQUIRED_COLUMNS, "group") if name in columns}
    base = path.parent
    rows: list[ManifestRow] = []
    first_line: dict[str, int] = {}
    for cells in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) <= max(at.values()):
            raise UserError(f"manifest {path} line {line}: {len(cells)} column(s), expected {len(columns)}")
        clip_path = cells[at["path"]].strip()
        if not clip_path:
            raise UserError(f"manifest {path} line {line}: empty path")
        labels = _split_labels(cells[at["label"]], delimiter)
        if not labels:
            raise UserError(f"manifest {path} line {line}: no label for {clip_path}")
        if clip_path in first_line:
            raise UserError(f"manifest {path} line {line}: {clip_path} is listed again "
                            f"(first on line {first_line[clip_path]}); list each file once with all its labels")
        first_line[clip_path] = line
        group = cells[at["group"]].strip() if "group" in at else ""
        audio = os.path.abspath(base / clip_path)
        rows.append(ManifestRow(clip_path, audio, labels, group or None, line))
    if not rows:
        raise UserError(f"manifest {path} lists no clips; add one row per audio file below the header (path,label)")
    return rows


def read_column(path: str | Path, column: str, key: str) -> dict[str, tuple[str, int]]:
    """Each clip's value in one more column of a manifest that read_manifest accepted: {clip id: (value,
    line)}; a missing column or an empty value is a one-line error naming the manifest, the column and `key`."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        columns = [name.strip().lower() for name in header]
        if column.strip().lower() not in columns:
            raise UserError(f"manifest {path} has no column '{column}' ({key}); its columns are "
                            f"{', '.join(name.strip() for name in header)}")
        at, where = columns.index(column.strip().lower()), columns.index("path")
        values: dict[str, tuple[str, int]] = {}
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            value = cells[at].strip() if at < len(cells) else ""
            if not value:
                raise UserError(f"manifest {path} line {reader.line_num}: empty '{column}' value for "
                                f"{cells[where].strip()} ({key}); give every clip one")
            values[cells[where].strip()] = (value, reader.line_num)
    return values


def _split_labels(cell: str, delimiter: str) -> list[str]:
    labels: list[str] = []
    for part in cell.split(delimiter):
        label = part.strip()
        if label and label not in labels:
            labels.append(label)
    return labels


def load_manifest(path: str | Path, delimiter: str = ";") -> Dataset:
    rows = read_manifest(path, delimiter)
    classes = sorted({label for row in rows for label in row.labels})
    class_id = {name: i for i, name in enumerate(classes)}
    clips: list[Clip] = []
    missing: list[Missing] = []
    for row in rows:
        if not os.path.isfile(row.audio):
            missing.append(Missing(row.id, missing_reason(row.audio), str(path)))
            continue
        clips.append(Clip(row.id, row.audio, [class_id[label] for label in row.labels], row.group))
    if not clips:
        raise UserError(f"none of the {len(rows)} files listed in {path} exists (first: {rows[0].audio}); "
                        "paths are relative to the manifest's folder")
    if missing:
        log.info("%d of %d files listed in %s do not exist (listed in the split report)",
                    len(missing), len(rows), path)
    task = detect_task(row.labels for row in rows)
    return Dataset("manifest", clips, classes, task, missing=missing)


def load_folder(folder: str | Path) -> Dataset:
    """<folder>/<class>/<audio files, in any subfolder>; one label per clip, id = path relative to folder."""
    if not str(folder):
        raise UserError("data.folder is empty; set it to a folder holding one subfolder per class")
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data.folder {folder} is not a directory; it should hold one subfolder per class")
    class_files: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files, passed = scan_audio(class_dir)
        if passed:
            log.warning(describe_passed(class_dir, passed))
        if files:
            class_files[class_dir.name] = files
        else:
            log.info("ignoring %s: no audio files in it", class_dir)
    if not class_files:
        raise UserError(f"no audio files found under {folder}/<class>/; expected one subfolder per class "
                        "holding audio files (wav, flac, ogg, ...)")
    loose = [p.name for p in folder.iterdir() if p.is_file() and is_audio_file(p)]
    if loose:
        log.warning("ignoring %d audio file(s) directly in %s (e.g. %s): they are in no class folder",
                    len(loose), folder, loose[0])
    classes = sorted(class_files)
    clips = [
        Clip(file.relative_to(folder).as_posix(), os.path.abspath(file), [class_id], None)
        for class_id, name in enumerate(classes)
        for file in class_files[name]
    ]
    return Dataset("folder", clips, classes, SINGLELABEL)


class ManifestSource(Source):
    """data.source = manifest: a CSV manifest (data.manifest) with labels split by data.label_delimiter."""

    name = "manifest"

    def read(self, with_eval: bool) -> Dataset:
        return load_manifest(self.data.manifest, self.data.label_delimiter)


class FolderSource(Source):
    """data.source = folder: one subfolder of data.folder per class."""

    name = "folder"
    ids_lead_with_class = True  # an id is the path below data.folder, so it starts with the class folder

    def read(self, with_eval: bool) -> Dataset:
        return load_folder(self.data.folder)
