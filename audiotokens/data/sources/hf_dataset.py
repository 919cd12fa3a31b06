"""Hugging Face `datasets` on disk: a folder written by `save_to_disk`, or a local `audiofolder` tree.

data.hf_dataset names the folder: one with `dataset_dict.json` or `state.json` is read with
`datasets.load_from_disk`; any other folder is an audiofolder tree, read by datasets' own `audiofolder`
builder (its splits, labels inferred from folder names, metadata.csv/jsonl), without writing a cache.
Decisions:
- splits: the rows of data.hf_split are the clips; data.hf_eval_split is the official side
  (split.strategy = auto then means official) and data.hf_test_split the test split. A dataset saved
  without splits is one split: hf_split is not read and the other two must stay empty.
- audio: data.hf_audio_column, an `Audio` feature or a column of file paths. Bytes embedded in the table
  (what `save_to_disk` writes) are decoded from the Arrow file in memory ("<arrow file>::<column>::<row>"),
  nothing is copied; otherwise the row's path is the file (a relative path is relative to data.hf_dataset).
- labels: data.hf_label_column, a `ClassLabel` (its names, all of them in their order, are the class
  list), strings or numbers (the class list is the sorted set of values of every loaded split), or a list
  of either (multi-label). A row without a label (None, ClassLabel's -1) or whose audio file does not
  exist is left out and reported; a label id outside the ClassLabel's names is an error naming the row.
- ids: "<split>/<row>" (no split: "<row>"); in an audiofolder tree, the file's path below the folder.
- groups: data.hf_group_column (e.g. a speaker id), none when empty.
"""
from __future__ import annotations

import bisect
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..audio import table_location
from .audio_files import missing_reason
from .records import Clip, Dataset, Missing, detect_task
from .source import Source

log = logging.getLogger("audiotokens")

SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes beside the Arrow files
NO_SPLIT = ""  # the split name of a dataset saved without splits
SIDE_KEYS = {"train": "data.hf_split", "eval": "data.hf_eval_split", "test": "data.hf_test_split"}


@dataclass
class Row:
    """One row of a split, its audio already resolved to a location (None: no usable audio, see `why`)."""

    id: str
    audio: str | None
    labels: list[Any]  # as stored: names, numbers, or ClassLabel ids
    group: str | None
    why: str = ""


@dataclass
class Split:
    name: str
    rows: list[Row]
    class_names: list[str] | None  # the label column's ClassLabel names, if it is one
    where: str  # the folder it was read from, for the report


def import_datasets():
    """The `datasets` package, or one line saying how to install it."""
    try:
        import datasets
    except ImportError as exc:
        raise UserError(f"data.source = hf_dataset needs the Hugging Face datasets package ({exc.name} is "
                        "missing); install it with `pip install 'audiotokens[formats]'`") from None
    return datasets


def load_hf_dataset(data, with_eval: bool) -> Dataset:
    folder = _folder(data.hf_dataset)
    datasets = import_datasets()
    wanted = {"train": data.hf_split, "eval": data.hf_eval_split if with_eval else "", "test": data.hf_test_split}
    if any((folder / marker).is_file() for marker in SAVED_MARKERS):
        splits = _saved_splits(datasets, folder, wanted, data)
    else:
        splits = _audiofolder_splits(datasets, folder, wanted, data)
    classes = _class_list([split for split in splits.values() if split is not None])
    clips, missing = {}, []
    for side, split in splits.items():
        if split is not None:
            clips[side], left_out = _clips(split, classes)
            missing += left_out
            if not clips[side]:
                example = f"e.g. {left_out[0].id}: {left_out[0].reason}" if left_out else "it has no rows"
                raise UserError(f"{SIDE_KEYS[side]} = '{split.name}': no row of that split of {folder} has a "
                                f"label and audio ({example})")
    every = [clip for side in clips.values() for clip in side]
    log.info("%s: %d clips, %d left out (no label, no audio)", folder, len(every), len(missing))
    return Dataset("hf_dataset", clips["train"], classes, detect_task(clip.labels for clip in every),
                   missing=missing, eval_clips=clips.get("eval"), test_clips=clips.get("test"))


def _folder(setting: str) -> Path:
    if not setting:
        raise UserError("data.hf_dataset is empty; set it to a folder written by `save_to_disk` or an "
                        "audiofolder tree")
    folder = Path(setting)
    if not folder.is_dir():
        raise UserError(f"data.hf_dataset {folder} is not a folder; set it to a folder written by "
                        "`save_to_disk` or an audiofolder tree")
    return folder.absolute()


def _pick(available: list[str], wanted: dict[str, str], folder: Path) -> dict[str, str | None]:
    """The split name of each side (None: not asked for), each one checked against what the dataset has."""
    picked: dict[str, str | None] = {}
    for side, name in wanted.items():
        if side != "train" and not name:
            picked[side] = None
        elif name not in available:
            raise UserError(f"{SIDE_KEYS[side]} = '{name}' is not a split of {folder}; it has "
                            f"{', '.join(available)}")
        else:
            picked[side] = name
    named = [name for name in picked.values() if name is not None]
    if len(set(named)) < len(named):
        raise UserError(f"data.hf_split, hf_eval_split and hf_test_split name the same split of {folder} twice "
                        f"({', '.join(named)}); give each side its own split")
    return picked


# ---------------------------------------------------------------- save_to_disk


def _saved_splits(datasets, folder: Path, wanted: dict[str, str], data) -> dict[str, Split | None]:
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, ... for bad folders
        raise UserError(f"data.hf_dataset {folder} cannot be read with datasets.load_from_disk "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(loaded, datasets.DatasetDict):
        picked = _pick(list(loaded), wanted, folder)
        return {side: None if name is None else _saved_split(datasets, loaded[name], name, data, folder)
                for side, name in picked.items()}
    if wanted["eval"] or wanted["test"]:
        raise UserError(f"{folder} holds one dataset without splits; leave data.hf_eval_split and "
                        "data.hf_test_split empty (the split stage draws validation and test)")
    return {"train": _saved_split(datasets, loaded, NO_SPLIT, data, folder), "eval": None, "test": None}


def _saved_split(datasets, table, name: str, data, folder: Path) -> Split:
    audio_column, label_column, group_column = _columns(table.column_names, data, f"{folder} ({name or 'data'})")
    locate = _audio_locations(datasets, table, audio_column, folder)
    labels = table.data.column(label_column).to_pylist()
    groups = table.data.column(group_column).to_pylist() if group_column else [None] * len(labels)
    prefix = f"{name}/" if name else ""
    rows = []
    for row, (label, group) in enumerate(zip(labels, groups)):
        audio, why = locate(row)
        rows.append(Row(f"{prefix}{row}", audio, _as_list(label), None if group is None else str(group), why))
    return Split(name or "data", rows, _class_names(datasets, table.features[label_column]), str(folder / name))


def _columns(available: list[str], data, where: str) -> tuple[str, str, str]:
    """The audio, label and group (may be "") columns the settings name, each one checked."""
    for key in ("hf_audio_column", "hf_label_column", "hf_group_column"):
        column = getattr(data, key)
        if (column or key != "hf_group_column") and column not in available:
            raise UserError(f"data.{key} = '{column}' is not a column of {where}; its columns are "
                            f"{', '.join(available)}")
    return data.hf_audio_column, data.hf_label_column, data.hf_group_column


def _audio_locations(datasets, table, column: str, folder: Path):
    """row -> (location, why there is none) for the audio column of one split of a saved dataset."""
    import pyarrow.compute as pc

    feature = table.features[column]
    cells = table.data.column(column)
    if isinstance(feature, datasets.Audio):
        paths = pc.struct_field(cells, "path").to_pylist()
        embedded = pc.is_valid(pc.struct_field(cells, "bytes")).to_pylist()  # the bytes stay in the file
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        paths, embedded = cells.to_pylist(), [False] * len(cells)
    else:
        raise UserError(f"data.hf_audio_column = '{column}' of {folder} is {feature}; it must be an Audio "
                        "feature or a column of audio file paths")
    files = _row_files(table, folder)

    def locate(row: int) -> tuple[str | None, str]:
        if embedded[row]:
            path, first = files(row)
            return table_location(path, row - first, column), ""
        if not paths[row]:
            return None, f"no audio in row {row}"
        path = os.path.abspath(folder / paths[row])
        return (path, "") if os.path.isfile(path) else (None, missing_reason(path))

    return locate


def _row_files(table, folder: Path):
    """row -> (Arrow file holding it, that file's first row), from the files the dataset was loaded from."""
    import pyarrow as pa

    starts, names, total = [], [], 0
    for entry in table.cache_files:
        with pa.memory_map(entry["filename"]) as source:
            rows = pa.ipc.open_stream(source).read_all().num_rows  # memory-mapped: no data is read
        starts.append(total)
        names.append(os.path.abspath(entry["filename"]))
        total += rows
    if total != len(table):
        raise UserError(f"{folder}: its Arrow files hold {total} rows, the dataset {len(table)}; save it again "
                        "with save_to_disk")

    def file_of(row: int) -> tuple[str, int]:
        at = bisect.bisect_right(starts, row) - 1
        return names[at], starts[at]

    return file_of


# ---------------------------------------------------------------- audiofolder


def _audiofolder_splits(datasets, folder: Path, wanted: dict[str, str], data) -> dict[str, Split | None]:
    """The splits of an audiofolder tree, as datasets' builder finds them, read without encoding audio."""
    try:  # the builder's cache folder is never written to; a temporary one keeps it out of the user's
        with tempfile.TemporaryDirectory() as cache:
            builder = datasets.load_dataset_builder("audiofolder", data_dir=str(folder), cache_dir=cache)
            generators = {str(g.name): g for g in builder._split_generators(
                datasets.StreamingDownloadManager(base_path=builder.base_path))}
    except Exception as exc:  # noqa: BLE001 - the builder raises many types for a tree it cannot read
        raise UserError(f"data.hf_dataset {folder} is neither a save_to_disk folder nor a readable audiofolder "
                        f"tree ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    picked = _pick(list(generators), wanted, folder)
    features = builder.info.features
    splits: dict[str, Split | None] = {}
    for side, name in picked.items():
        if name is None:
            splits[side] = None
            continue
        examples = [example for _, example in builder._generate_examples(**generators[name].gen_kwargs)]
        audio_column, label_column, group_column = _columns(list(features), data, f"{folder} ({name})")
        rows = []
        for example in examples:
            path = os.path.abspath(str(example[audio_column]))
            clip_id = Path(os.path.relpath(path, folder)).as_posix()
            group = example.get(group_column) if group_column else None
            why = "" if os.path.isfile(path) else missing_reason(path)
            rows.append(Row(clip_id, path if not why else None, _as_list(example[label_column]),
                            None if group is None else str(group), why))
        splits[side] = Split(name, rows, _class_names(datasets, features[label_column]), str(folder))
    return splits


# ---------------------------------------------------------------- labels


def _class_names(datasets, feature) -> list[str] | None:
    """The ClassLabel names of a label column (or of the items of a list column), else None."""
    inner = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def _as_list(label: Any) -> list[Any]:
    if label is None:
        return []
    return [item for item in label if item is not None] if isinstance(label, (list, tuple)) else [label]


def _class_list(splits: list[Split]) -> list[str]:
    named = [split.class_names for split in splits if split.class_names is not None]
    if named:
        if any(names != named[0] for names in named):
            raise UserError("the splits of data.hf_dataset have different ClassLabel names; they must share one "
                            "class list")
        return named[0]
    values = {_name(label, None, "", "") for split in splits for row in split.rows for label in row.labels}
    return sorted(value for value in values if value)


def _name(label: Any, names: list[str] | None, split: str, row: str) -> str:
    """A label as a class name; "" for no label (ClassLabel's -1, an empty string)."""
    if names is None or isinstance(label, str):
        return str(label).strip()
    if label == -1:
        return ""
    if not isinstance(label, int) or not 0 <= label < len(names):
        raise UserError(f"data.hf_dataset split '{split}' row {row}: label {label!r} is not an id of its "
                        f"ClassLabel (0..{len(names) - 1})")
    return names[label]


def _clips(split: Split, classes: list[str]) -> tuple[list[Clip], list[Missing]]:
    index = {name: i for i, name in enumerate(classes)}
    clips, missing = [], []
    for row in split.rows:
        names = [name for name in (_name(label, split.class_names, split.name, row.id) for label in row.labels)
                 if name]
        if not names:
            missing.append(Missing(row.id, "no label", split.where))
        elif row.audio is None:
            missing.append(Missing(row.id, row.why, split.where))
        else:
            if any(name not in index for name in names):  # an audiofolder label outside its ClassLabel
                unknown = next(name for name in names if name not in index)
                raise UserError(f"data.hf_dataset split '{split.name}' row {row.id}: label '{unknown}' is not "
                                f"one of its class names ({', '.join(classes)})")
            clips.append(Clip(row.id, row.audio, sorted({index[name] for name in names}), row.group))
    return clips, missing


class HfDatasetSource(Source):
    """data.source = hf_dataset: a `save_to_disk` folder or audiofolder tree (data.hf_dataset)."""

    name = "hf_dataset"
    eval_key = "hf_eval_split"
    eval_hint = "the name of the dataset's validation split (e.g. 'validation')"
    test_key = "hf_test_split"

    @property
    def auto_strategy(self) -> str:  # type: ignore[override]
        return "official" if self.data.hf_eval_split else ""

    def read(self, with_eval: bool) -> Dataset:
        return load_hf_dataset(self.data, with_eval)
