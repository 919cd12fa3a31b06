"""`audiotokens split`: assign the clips of a source to train and validation.

Strategies (split.strategy):
  prefix      validation = clips whose id's FIRST character is in split.validation_prefixes (case as written)
  random      validation_ratio of the clips, drawn with split.seed
  group       whole groups on one side (clips without a group are their own group), ratio approximately met
  stratified  iterative multi-label stratification (Sechidis et al. 2011); every class with >= 2 clips
              lands on both sides
  official    the eval side given by data.eval_segments / data.eval_parquet, or the ids in
              split.validation_list
Writes processed/split.json (the contract read by the spectrogram stage) and processed/split_report.json
(clips left out with reasons, per-class counts per side, classes missing from a side).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import sources
from .artifacts import Layout, write_json
from .config import Config
from .errors import UserError
from .sources import Clip, Dataset

log = logging.getLogger("audiotokens")

TRAIN, VALIDATION = 0, 1
TABLE_MAX_CLASSES = 30
LIST_MAX = 20


class DatasetSplitter:
    def __init__(self, config: Config, **options: Any):
        self.config = config
        self.layout = Layout(config.workdir)

    def run(self) -> dict[str, Any]:
        split, data = self.config.split, self.config.data
        with_eval = split.strategy == "official" and _uses_eval_files(self.config)
        if split.strategy != "official" and (data.eval_segments or data.eval_parquet):
            log.info("data.eval_segments / data.eval_parquet are only used by split.strategy=official; ignored")
        dataset = sources.load(data, with_eval=with_eval)
        train, validation, notes = assign(dataset, self.config)
        self._write(dataset, train, validation, notes)
        counts = {"clips": len(train) + len(validation), "train": len(train), "validation": len(validation),
                  "missing": len(dataset.missing), "classes": len(dataset.classes)}
        absent = _absent_classes(dataset.classes, validation)
        counts["classes_missing_from_validation"] = len(absent)
        print_summary(dataset, self.config.split.strategy, train, validation, self.layout.split_report)
        return counts

    def _write(self, dataset: Dataset, train: list[Clip], validation: list[Clip], notes: dict[str, Any]) -> None:
        split = {"source": dataset.source, "strategy": self.config.split.strategy, "task": dataset.task,
                 "classes": dataset.classes}
        if dataset.class_ids is not None:
            split["class_ids"] = dataset.class_ids
        split["splits"] = {"train": [c.to_json() for c in train], "validation": [c.to_json() for c in validation]}
        write_json(self.layout.split_report, split_report(dataset, self.config.split.strategy, train, validation,
                                                          notes))
        write_json(self.layout.split_json, split)


def _uses_eval_files(config: Config) -> bool:
    data, split = config.data, config.split
    eval_file = {"audioset": data.eval_segments, "hf_parquet": data.eval_parquet}.get(data.source, "")
    if eval_file and split.validation_list:
        raise UserError("split.strategy=official: set either the eval files (data.eval_segments / "
                        "data.eval_parquet) or split.validation_list, not both")
    if not eval_file and not split.validation_list:
        raise UserError("split.strategy=official needs the validation side: set data.eval_segments (audioset), "
                        "data.eval_parquet (hf_parquet) or split.validation_list (a file of clip ids)")
    return bool(eval_file)


# ---------------------------------------------------------------- strategies


def assign(dataset: Dataset, config: Config) -> tuple[list[Clip], list[Clip], dict[str, Any]]:
    """(train clips, validation clips, notes for the report) by config.split.strategy."""
    split = config.split
    clips = dataset.clips
    notes: dict[str, Any] = {}
    if split.strategy == "official":
        return _official(dataset, split.validation_list, notes)
    if split.strategy == "prefix":
        if not split.validation_prefixes:
            raise UserError("split.validation_prefixes is empty; give the first characters of validation ids")
        side = np.array([clip.id[:1] in split.validation_prefixes for clip in clips], dtype=np.int8)
    else:
        _check_ratio(split.validation_ratio)
        if split.strategy == "random":
            side = random_sides(len(clips), split.validation_ratio, split.seed)
        elif split.strategy == "group":
            side = group_sides([clip.group for clip in clips], [clip.id for clip in clips],
                               split.validation_ratio, split.seed)
        elif split.strategy == "stratified":
            side, unmet = stratified_sides([clip.labels for clip in clips], len(dataset.classes),
                                           split.validation_ratio, split.seed)
            if unmet:
                notes["classes_not_on_both_sides"] = [dataset.classes[c] for c in unmet]
        else:
            raise UserError(f"unknown split.strategy '{split.strategy}'")
    train = [clip for clip, s in zip(clips, side) if s == TRAIN]
    validation = [clip for clip, s in zip(clips, side) if s == VALIDATION]
    _check_not_empty(train, validation, config)
    return train, validation, notes


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise UserError(f"'split.validation_ratio' must be between 0 and 1 (exclusive), got {ratio}")


def _check_not_empty(train: list[Clip], validation: list[Clip], config: Config) -> None:
    if train and validation:
        return
    empty, full = ("validation", "train") if not validation else ("train", "validation")
    n = len(train) + len(validation)
    split = config.split
    if split.strategy == "prefix":
        rule = "no clip id starts" if not validation else "every clip id starts"
        hint = (f"{rule} with one of '{split.validation_prefixes}' (split.validation_prefixes, case-sensitive), "
                "so the " + empty + " side is empty; change split.validation_prefixes or use "
                "split.strategy=random or stratified")
    elif split.strategy == "group":
        hint = (f"split.validation_ratio={split.validation_ratio} puts every group on the {full} side; "
                "change split.validation_ratio or give more groups")
    elif split.strategy == "official":
        hint = ("the validation list matches every clip" if not train else "the validation list matches no clip id")
        hint += "; check split.validation_list against the clip ids in the source"
    else:
        hint = (f"split.validation_ratio={split.validation_ratio} of {n} clips leaves the {empty} side empty; "
                "change split.validation_ratio or add clips")
    raise UserError(f"empty {empty} split: {hint}")


def random_sides(n: int, ratio: float, seed: int) -> np.ndarray:
    """round(ratio * n) clips (at least one, at most n - 1) to validation, drawn with `seed`."""
    n_validation = min(max(round(ratio * n), 1), max(n - 1, 0))
    side = np.zeros(n, dtype=np.int8)
    side[np.random.default_rng(seed).permutation(n)[:n_validation]] = VALIDATION
    return side


def group_sides(groups: list[str | None], ids: list[str], ratio: float, seed: int) -> np.ndarray:
    """Whole groups to validation, in a seeded random order, each one only if it brings the count closer to
    ratio * n; a clip without a group is a group of its own."""
    keys = [g if g is not None else f"\0clip:{clip_id}" for g, clip_id in zip(groups, ids)]
    names = list(dict.fromkeys(keys))  # first-appearance order: the same input gives the same order
    if len(names) < 2:
        raise UserError(f"split.strategy=group needs at least 2 groups, found {len(names)} "
                        f"('{names[0] if names else ''}'); fill the group column or use another strategy")
    code = {name: i for i, name in enumerate(names)}
    member = np.array([code[k] for k in keys])
    sizes = np.bincount(member, minlength=len(names))
    target = ratio * len(keys)
    chosen = np.zeros(len(names), dtype=bool)
    count = 0
    order = np.random.default_rng(seed).permutation(len(names))
    for g in order:
        if abs(count + sizes[g] - target) < abs(count - target):
            chosen[g] = True
            count += sizes[g]
    if not chosen.any():  # every group alone overshoots: the smallest one is the closest
        chosen[order[np.argmin(sizes[order])]] = True
    if chosen.all():
        chosen[order[np.flatnonzero(chosen[order])[-1]]] = False
    return chosen[member].astype(np.int8)


def stratified_sides(labels: list[list[int]], n_classes: int, ratio: float,
                     seed: int) -> tuple[np.ndarray, list[int]]:
    """Iterative stratification (Sechidis, Tsoumakas, Vlahavas 2011) into train/validation.

    The rarest remaining label is handled first; each of its clips goes to the side that still wants
    most of that label (ties: the side wanting most clips, then random). Wanted counts are ratio-based,
    raised to at least one per side for classes with >= 2 clips so both sides get one. A final pass moves
    single clips to fix any class still on one side only. Returns sides and the classes left unfixed.
    """
    rng = np.random.default_rng(seed)
    ratios = (1.0 - ratio, ratio)
    by_class: list[list[int]] = [[] for _ in range(n_classes)]
    for i, clip_labels in enumerate(labels):
        for c in clip_labels:
            by_class[c].append(i)
    sizes = np.array([len(members) for members in by_class])
    wanted = [[size * r for r in ratios] for size in sizes]
    for c in np.flatnonzero(sizes >= 2):
        wanted[c] = [max(w, 1.0) for w in wanted[c]]
    wanted_total = [len(labels) * r for r in ratios]
    remaining = sizes.astype(np.int64)
    side = np.full(len(labels), -1, dtype=np.int8)

    def place(i: int, s: int) -> None:
        side[i] = s
        wanted_total[s] -= 1
        for c in labels[i]:
            wanted[c][s] -= 1
            remaining[c] -= 1

    def best_side(scores: list[float], tie_break: list[float]) -> int:
        if scores[0] != scores[1]:
            return int(scores[1] > scores[0])
        if tie_break[0] != tie_break[1]:
            return int(tie_break[1] > tie_break[0])
        return int(rng.integers(2))

    while (remaining > 0).any():
        live = np.flatnonzero(remaining > 0)
        rarest = live[remaining[live] == remaining[live].min()]
        label = int(rarest[rng.integers(len(rarest))])
        for i in rng.permutation(by_class[label]):
            if side[i] < 0:
                place(int(i), best_side(wanted[label], wanted_total))
    for i in np.flatnonzero(side < 0):  # clips without labels
        place(int(i), best_side(wanted_total, [0.0, 0.0]))
    unmet = _cover_both_sides(side, labels, by_class, sizes, rng)
    return side, unmet


def _cover_both_sides(side: np.ndarray, labels: list[list[int]], by_class: list[list[int]],
                      sizes: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Move one clip per class that sits on one side only, never emptying another class's side."""
    counts = np.zeros((len(by_class), 2), dtype=np.int64)
    for i, clip_labels in enumerate(labels):
        counts[clip_labels, side[i]] += 1
    unmet = []
    for c in np.argsort(sizes, kind="stable"):
        if sizes[c] < 2 or counts[c].min() > 0:
            continue
        source = int(counts[c].argmax())
        movable = [i for i in by_class[c]
                   if side[i] == source and all(counts[m, source] >= 2 or sizes[m] < 2 for m in labels[i])]
        if not movable:
            unmet.append(int(c))
            continue
        # fewest labels first: the move disturbs the other classes least
        fewest = min(len(labels[i]) for i in movable)
        candidates = [i for i in movable if len(labels[i]) == fewest]
        i = candidates[rng.integers(len(candidates))]
        side[i] = 1 - source
        counts[labels[i], source] -= 1
        counts[labels[i], 1 - source] += 1
    return unmet


def _official(dataset: Dataset, validation_list: str,
              notes: dict[str, Any]) -> tuple[list[Clip], list[Clip], dict[str, Any]]:
    if dataset.eval_clips is not None:
        return dataset.clips, dataset.eval_clips, notes
    wanted = read_id_list(validation_list)
    train = [clip for clip in dataset.clips if clip.id not in wanted]
    validation = [clip for clip in dataset.clips if clip.id in wanted]
    known = {clip.id for clip in dataset.clips} | {m.id for m in dataset.missing}
    unknown = sorted(wanted - known)
    if unknown:
        log.warning("%d of %d ids in %s are not in the source (first: %s)", len(unknown), len(wanted),
                    validation_list, unknown[0])
        notes["validation_list_ids_not_in_source"] = unknown
    if not validation:
        raise UserError(f"empty validation split: no clip id of the source is listed in {validation_list} "
                        f"(split.validation_list); ids look like '{dataset.clips[0].id}'")
    if not train:
        raise UserError(f"empty train split: every clip is listed in {validation_list} (split.validation_list)")
    return train, validation, notes


def read_id_list(path: str) -> set[str]:
    """Ids from a text file (one per line) or, for a .csv, the first field of each row (segments CSVs)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"split.validation_list {path} not found")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"split.validation_list {path} is not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if file.suffix.lower() == ".csv":
        ids = {row[0].strip() for row in csv.reader(lines, skipinitialspace=True) if row and row[0].strip()}
    else:
        ids = {line.strip() for line in lines}
    if not ids:
        raise UserError(f"split.validation_list {path} lists no ids")
    return ids


# ---------------------------------------------------------------- report and summary


def class_counts(n_classes: int, clips: list[Clip]) -> np.ndarray:
    counts = np.zeros(n_classes, dtype=np.int64)
    for clip in clips:
        counts[clip.labels] += 1
    return counts


def _absent_classes(classes: list[str], clips: list[Clip]) -> list[str]:
    counts = class_counts(len(classes), clips)
    return [name for name, n in zip(classes, counts) if n == 0]


def split_report(dataset: Dataset, strategy: str, train: list[Clip], validation: list[Clip],
                 notes: dict[str, Any]) -> dict[str, Any]:
    train_counts = class_counts(len(dataset.classes), train)
    validation_counts = class_counts(len(dataset.classes), validation)
    per_class = []
    for c, name in enumerate(dataset.classes):
        entry: dict[str, Any] = {"class": name}
        if dataset.class_ids is not None:
            entry["class_id"] = dataset.class_ids[c]
        entry.update(train=int(train_counts[c]), validation=int(validation_counts[c]))
        per_class.append(entry)
    return {
        "source": dataset.source,
        "strategy": strategy,
        "task": dataset.task,
        "counts": {"train": len(train), "validation": len(validation), "missing": len(dataset.missing)},
        "classes_missing_from_validation": [e["class"] for e in per_class if e["validation"] == 0],
        "classes_missing_from_train": [e["class"] for e in per_class if e["train"] == 0],
        **notes,
        "per_class": per_class,
        "missing": [m.to_json() for m in dataset.missing],
    }


def print_summary(dataset: Dataset, strategy: str, train: list[Clip], validation: list[Clip],
                  report_path: Path) -> None:
    n = len(train) + len(validation)
    log.info("split (%s source, %s, strategy %s): %d train / %d validation clips (%.1f %% validation), "
             "%d classes", dataset.source, dataset.task, strategy, len(train), len(validation),
             100.0 * len(validation) / n, len(dataset.classes))
    if dataset.missing:
        log.warning("%d listed clips left out (audio not found, duplicates, ...); reasons in %s",
                    len(dataset.missing), report_path)
    train_counts = class_counts(len(dataset.classes), train)
    validation_counts = class_counts(len(dataset.classes), validation)
    if len(dataset.classes) <= TABLE_MAX_CLASSES:
        width = max(len("class"), *(len(name) for name in dataset.classes))
        log.info("%s  %7s  %10s", "class".ljust(width), "train", "validation")
        for name, a, b in zip(dataset.classes, train_counts, validation_counts):
            log.info("%s  %7d  %10d", name.ljust(width), a, b)
    else:
        for side, counts in (("train", train_counts), ("validation", validation_counts)):
            log.info("clips per class, %s: min %d, median %d, max %d", side, counts.min(),
                     int(np.median(counts)), counts.max())
    for side, counts in (("validation", validation_counts), ("train", train_counts)):
        absent = [name for name, k in zip(dataset.classes, counts) if k == 0]
        if absent:
            shown = ", ".join(absent[:LIST_MAX]) + (f", ... ({len(absent) - LIST_MAX} more)"
                                                    if len(absent) > LIST_MAX else "")
            log.warning("%d classes have no %s clip: %s (all in %s)", len(absent), side, shown, report_path)
