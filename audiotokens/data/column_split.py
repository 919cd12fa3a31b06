"""split.strategy = "column": each clip's side, or its fold, read from a manifest column (split.column).

When every value of the column is a side name (train; validation, valid, val, dev; test — any case), the
values are the sides. Otherwise the values are the data set's own folds (ESC-50's 1 … 5, UrbanSound8K's
fold1 … fold10): split.test_fold, when set, is the test split; the other folds, in natural order (fold2
before fold10), are counted from 0, fold split.fold is validation and the rest train. Rotating split.fold
is k-fold over the predefined folds (scripts/kfold.sh CONFIG DIR column runs them all). The folds are
read from every row of the manifest, so a fold's number does not depend on which files are on disk.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from ..config import Config
from ..errors import UserError
from ..pipeline.layout import SPLITS
from .sources import Dataset
from .sources.manifest import read_column

log = logging.getLogger("audiotokens")

SIDE = {name: number for number, name in enumerate(SPLITS)}  # the side numbers split.assign uses
SIDE_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
              "val": "validation", "dev": "validation", "test": "test"}
SHOWN = 12  # values named in a message


def column_sides(dataset: Dataset, config: Config) -> tuple[np.ndarray, dict[str, Any]]:
    """The side of every clip of dataset.clips, and notes for the split report."""
    split, data = config.split, config.data
    if data.source != "manifest":
        raise UserError(f"split.strategy=column reads a column of a CSV manifest (data.source = manifest); "
                        f"data.source = {data.source} has none: use split.strategy=official or kfold")
    if split.test_list:
        raise UserError("split.test_list and split.strategy=column would both name the test split; leave "
                        "split.test_list empty (the column's 'test' rows or split.test_fold name it)")
    values = read_column(data.manifest, split.column, "split.column")
    where = f"column '{split.column}' of {data.manifest}"
    clip_values = [values[clip.id][0] for clip in dataset.clips]
    names = sorted({value for value, _ in values.values()}, key=natural_order)
    sides = [name for name in names if name.lower() in SIDE_NAMES]
    if sides and len(sides) < len(names):
        others = [name for name in names if name.lower() not in SIDE_NAMES]
        raise UserError(f"the {where} mixes side names ({shown(sides)}) with other values ({shown(others)}); "
                        "use train/validation/test on every row, or fold names only")
    if sides:
        return _named_sides(clip_values, where, split.test_fold, names, split.column)
    return _fold_sides(clip_values, where, names, split.fold, split.test_fold, split.column)


def _named_sides(clip_values: list[str], where: str, test_fold: str, names: list[str],
                 column: str) -> tuple[np.ndarray, dict[str, Any]]:
    if test_fold:
        raise UserError(f"split.test_fold = '{test_fold}' names a fold, but the {where} names sides "
                        f"({shown(names)}); leave split.test_fold empty")
    sides = np.array([SIDE[SIDE_NAMES[value.lower()]] for value in clip_values], dtype=np.int8)
    return sides, {"column": column, "column_values": "sides"}


def _fold_sides(clip_values: list[str], where: str, folds: list[str], fold: int, test_fold: str,
                column: str) -> tuple[np.ndarray, dict[str, Any]]:
    if test_fold and test_fold not in folds:
        raise UserError(f"split.test_fold = '{test_fold}' is not a fold of the {where}; its folds are "
                        f"{shown(folds)}")
    rotating = [name for name in folds if name != test_fold]
    if len(rotating) < 2:
        raise UserError(f"the {where} has {len(rotating)} fold(s) besides the test fold ({shown(folds)}); "
                        "one for validation and one for training make at least 2")
    if fold >= len(rotating):
        raise UserError(f"split.fold = {fold}, but the {where} has {len(rotating)} folds to rotate "
                        f"({shown(rotating)}); split.fold counts them from 0, so use 0 … {len(rotating) - 1}")
    validation = rotating[fold]
    side_of = {name: SIDE["validation"] if name == validation else SIDE["train"] for name in rotating}
    side_of[test_fold] = SIDE["test"]
    sides = np.array([side_of[value] for value in clip_values], dtype=np.int8)
    log.info("split.strategy=column: fold '%s' of column '%s' is validation (split.fold = %d of %d folds: "
             "%s)%s", validation, column, fold, len(rotating), shown(rotating),
             f", fold '{test_fold}' is test" if test_fold else "")
    return sides, {"column": column, "column_values": "folds", "folds": rotating,
                   "validation_fold": validation, "test_fold": test_fold or None}


def natural_order(value: str) -> list:
    """Sort key that puts fold2 before fold10 and 2 before 10."""
    parts = [part for part in re.split(r"(\d+)", value) if part]
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts]


def shown(values: list[str]) -> str:
    return ", ".join(values[:SHOWN]) + (f", … ({len(values) - SHOWN} more)" if len(values) > SHOWN else "")
