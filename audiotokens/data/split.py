"""`audiotokens split`: assign the clips of a source to train, validation and test.

Strategies (split.strategy) choose the validation side:
  auto        prefix for AudioSet sources (YouTube ids), official for a Hugging Face dataset whose
              validation split is named (data.hf_eval_split), else group when the clips have groups, else
              stratified
  prefix      validation = clips whose id's FIRST character is in split.validation_prefixes (case as written)
  random      validation_ratio of the clips, drawn with split.seed
  group       whole groups on one side (clips without a group are their own group), ratio approximately met
  stratified  iterative multi-label stratification (Sechidis et al. 2011); every class with >= 2 clips
              lands on both sides
  official    the side given by data.eval_segments / eval_parquet / hf_eval_split, or the ids in
              split.validation_list; split.official_side says whether it is the validation or the test split
  kfold       split.folds folds (group-aware, stratified where labels allow); fold split.fold is validation
  column      a manifest column (split.column) names each clip's side, or its predefined fold: fold
              split.fold is validation, split.test_fold (if set) test (column_split.py)
The test split is the source's own (data.hf_test_split), or split.test_list, or the official side when
split.official_side = "test", or else split.test_ratio of the clips drawn before validation (whole groups
when the clips have groups, else stratified, or random with the random strategy); 0 means no test split.

Classes without a training clip are dropped from the model's class list (listed in the report) unless
data.keep_unused_classes; a single-label clip of a dropped class leaves its split, a multi-label positive
of one is stripped, and split.json's "left_out" records both per split for every metrics file to state.
Writes processed/split.json (the catalogue, read by the spectrogram stage, and the ids of each split) and
processed/split_report.json (clips left out with reasons, per-class counts per split).
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import UserError
from ..pipeline.files import write_json
from ..pipeline.layout import SPLITS, Layout
from ..pipeline.provenance import file_stat
from ..pipeline.stores import LeftOut
from . import sources
from .column_split import column_sides
from .folds import fold_split, kfold_sides
from .sources import Clip, Dataset
from .sources.unlabelled import catalogue_entries

log = logging.getLogger("audiotokens")

TRAIN, VALIDATION, TEST = 0, 1, 2
TABLE_MAX_CLASSES = 30
LIST_MAX = 20
UNKNOWN_SHOWN = 3  # unknown ids of a list named in its error
MAX_VALIDATION_SHARE = 0.9  # of the clips outside the test split: training keeps at least the rest


class DatasetSplitter:
    def __init__(self, config: Config, **options: Any):
        self.config = config
        self.layout = Layout(config.workdir)

    def run(self) -> dict[str, Any]:
        data = self.config.data
        # the catalogue depends on [data] alone, so that a new split never recomputes spectrograms
        source = sources.source_of(data)
        dataset = source.load(with_eval=bool(source.eval_file))
        strategy = resolved_strategy(self.config, dataset)
        if strategy == "official":
            _check_official_side(self.config)
        if strategy != "official" and dataset.eval_clips:
            log.info("data.%s names the official side, used only by split.strategy=official; its clips are "
                     "left out of this split", source.eval_key)
        _check_classes(dataset)
        sides, notes = assign(dataset, self.config, strategy)
        splits = {name: [clip for clip, side in zip(dataset.all_clips(), sides) if side == number]
                  for number, name in enumerate(SPLITS)}
        kept, dropped = model_classes(dataset, splits["train"], data.keep_unused_classes)
        left_out = left_out_of_splits(dataset, splits, dropped)
        splits = _leave_out_unpredictable(dataset, splits, kept, notes)
        self._write(dataset, strategy, splits, kept, dropped, notes, left_out)
        print_summary(dataset, strategy, splits, kept, dropped, self.layout.split_report)
        counts = {"clips": sum(len(c) for c in splits.values()), **{n: len(c) for n, c in splits.items()},
                  "missing": len(dataset.missing), "classes": len(kept), "classes_dropped": len(dropped)}
        counts["classes_missing_from_validation"] = len(_absent_classes(dataset, kept, splits["validation"]))
        return counts

    def _write(self, dataset: Dataset, strategy: str, splits: dict[str, list[Clip]], kept: list[int],
               dropped: list[int], notes: dict[str, Any], left_out: dict[str, LeftOut]) -> None:
        plan = {"source": dataset.source, "strategy": strategy, "task": dataset.task,
                "classes": [dataset.classes[c] for c in kept],
                "dropped_classes": [dataset.classes[c] for c in dropped],
                "left_out": {name: entry.to_json() for name, entry in left_out.items()}}
        if dataset.class_ids is not None:
            plan["class_ids"] = [dataset.class_ids[c] for c in kept]
        model_id = {source: model for model, source in enumerate(kept)}
        plan["clips"] = [{**clip.to_json(), "labels": [model_id[c] for c in clip.labels if c in model_id],
                          "stat": file_stat(clip.audio)} for clip in dataset.all_clips()]
        plan["splits"] = {name: [clip.id for clip in clips] for name, clips in splits.items() if clips}
        if "validation_fold" in notes:  # a column of folds: validation is a held-out fold, as with kfold
            plan["validation_fold"] = notes["validation_fold"]
        pretrain = self.config.pretrain  # unlabelled audio: in the catalogue, in no split (sources/unlabelled.py)
        plan["clips"] += catalogue_entries(pretrain.manifest, pretrain.folder, {c["id"] for c in plan["clips"]},
                                           file_stat)
        write_json(self.layout.split_report, split_report(dataset, strategy, splits, kept, dropped, notes))
        write_json(self.layout.split_json, plan)


def resolved_strategy(config: Config, dataset: Dataset) -> str:
    """split.strategy, with `auto` replaced by what suits the source."""
    strategy = config.split.strategy
    source = sources.source_of(config.data)
    if strategy != "auto":
        if strategy == "prefix" and source.ids_lead_with_class:
            raise UserError(f"split.strategy=prefix splits by the first character of clip ids, but {source.name} "
                            "ids start with their class, so whole classes would land on one side; use "
                            "split.strategy=stratified (or auto)")
        return strategy
    if source.auto_strategy:
        return source.auto_strategy
    return "group" if _grouped(dataset) else "stratified"


def _grouped(dataset: Dataset) -> bool:
    return any(clip.group is not None for clip in dataset.clips)


def _check_official_side(config: Config) -> None:
    source = sources.source_of(config.data)
    if source.eval_file and config.split.validation_list:
        raise UserError(f"split.strategy=official: set either the eval files (data.{source.eval_key}) or "
                        "split.validation_list, not both")
    if not source.eval_file and not config.split.validation_list:
        own = ", ".join(f"data.{kind.eval_key} ({name})" for name, kind in sources.SOURCES.items() if kind.eval_key)
        raise UserError(f"split.strategy=official needs the official side: set {own} or split.validation_list "
                        "(a file of clip ids)")


def _check_classes(dataset: Dataset) -> None:
    """A classifier needs two classes; with one, every clip would be a positive of it."""
    if len(dataset.classes) < 2:
        name = dataset.classes[0] if dataset.classes else ""
        raise UserError(f"the {dataset.source} source has only one class ('{name}'); a classifier needs at "
                        "least two: add clips of another class (or a 'background' class of negatives)")


def model_classes(dataset: Dataset, train: list[Clip], keep_unused: bool) -> tuple[list[int], list[int]]:
    """(classes the model predicts, classes dropped because no training clip carries them)."""
    counts = class_counts(len(dataset.classes), train)
    if keep_unused:
        return list(range(len(dataset.classes))), []
    kept = [c for c in range(len(dataset.classes)) if counts[c] > 0]
    dropped = [c for c in range(len(dataset.classes)) if counts[c] == 0]
    if len(kept) < 2:
        raise UserError(f"only {len(kept)} class has training clips; a classifier needs at least two — "
                        "check the split (split.strategy, ratios) and the labels")
    return kept, dropped


def left_out_of_splits(dataset: Dataset, splits: dict[str, list[Clip]], dropped: list[int]) -> dict[str, LeftOut]:
    """Per split, what the classes without a training clip take from its figures: their single-label clips
    (which leave the split) or their multi-label positives (which are stripped). Every metrics file states it."""
    unpredictable = set(dropped)
    left_out = {}
    for name, clips in splits.items():
        hits = [(clip, [c for c in clip.labels if c in unpredictable]) for clip in clips]
        hits = [(clip, labels) for clip, labels in hits if labels]
        if not hits:
            continue
        classes = sorted({c for _, labels in hits for c in labels})
        left_out[name] = LeftOut(
            clips=tuple(clip.id for clip, _ in hits) if dataset.task == sources.SINGLELABEL else (),
            classes=tuple(dataset.classes[c] for c in classes), positives=sum(len(labels) for _, labels in hits))
    return left_out


def _leave_out_unpredictable(dataset: Dataset, splits: dict[str, list[Clip]], kept: list[int],
                             notes: dict[str, Any]) -> dict[str, list[Clip]]:
    """A single-label clip of a class the model cannot predict has no right answer: it leaves its split."""
    if dataset.task != sources.SINGLELABEL or len(kept) == len(dataset.classes):
        return splits
    keep = set(kept)
    left_out = {name: [c.id for c in clips if c.labels[0] not in keep] for name, clips in splits.items()}
    notes["clips_of_dropped_classes"] = {name: ids for name, ids in left_out.items() if ids}
    return {name: [c for c in clips if c.labels[0] in keep] for name, clips in splits.items()}


# ---------------------------------------------------------------- strategies


def assign(dataset: Dataset, config: Config, strategy: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The side (TRAIN, VALIDATION, TEST, or -1: unused) of every clip of dataset.all_clips()."""
    split = config.split
    clips = dataset.clips
    grouped = _grouped(dataset)
    notes: dict[str, Any] = {}
    sides = np.full(len(dataset.all_clips()), -1, dtype=np.int8)
    sides[:len(clips)] = TRAIN
    if strategy == "column":  # the column names every side, the test split included
        sides[:len(clips)], notes = column_sides(dataset, config)
        _check_not_empty(sides, dataset, config, strategy)
        return sides, notes
    pool = np.arange(len(clips))
    official_test = strategy == "official" and split.official_side == "test"
    if strategy == "official":
        official = _official(dataset, split.validation_list)
        sides[official] = TEST if official_test else VALIDATION
        pool = np.flatnonzero(sides == TRAIN)
    if dataset.test_clips:
        _check_own_test(config, official_test)
        sides[len(sides) - len(dataset.test_clips):] = TEST
    elif split.test_list:
        usable = [i for i in range(len(sides)) if sides[i] >= 0]
        sides[listed_positions(dataset, usable, split.test_list, "split.test_list")] = TEST
    elif not official_test and split.test_ratio > 0:
        method = "random" if strategy == "random" else "group" if grouped else "stratified"
        sides[pool[carve(dataset, pool, split.test_ratio, split.seed + 1, method)]] = TEST
    pool = np.flatnonzero(sides == TRAIN)
    if strategy == "prefix":
        if not split.validation_prefixes:
            raise UserError("split.validation_prefixes is empty; give the first characters of validation ids")
        sides[[i for i in pool if clips[i].id[:1] in split.validation_prefixes]] = VALIDATION
    elif strategy in ("random", "group", "stratified") or official_test:
        if not 0.0 < split.validation_ratio < 1.0:
            raise UserError(f"'split.validation_ratio' must be between 0 and 1 (exclusive), got "
                            f"{split.validation_ratio}")
        method = "stratified" if official_test and not grouped else "group" if official_test else strategy
        share = split.validation_ratio / max(len(pool) / max(len(clips), 1), 1e-9)
        if share > MAX_VALIDATION_SHARE:
            log.warning("split.validation_ratio=%g of all clips would leave under %.0f %% of the %d clips outside "
                        "the test split for training; validation takes %.0f %% of them", split.validation_ratio,
                        100 * (1 - MAX_VALIDATION_SHARE), len(pool), 100 * MAX_VALIDATION_SHARE)
            share = MAX_VALIDATION_SHARE
        chosen = carve(dataset, pool, share, split.seed, method, notes)
        sides[pool[chosen]] = VALIDATION
    elif strategy == "kfold":
        fold_of = kfold_sides([clips[i].labels for i in pool], len(dataset.classes),
                              [clips[i].group for i in pool] if grouped else None,
                              [clips[i].id for i in pool], split.folds, split.seed)
        sides[pool[fold_split(fold_of, split.fold)[1]]] = VALIDATION
    elif strategy != "official":
        raise UserError(f"unknown split.strategy '{strategy}'")
    _check_not_empty(sides, dataset, config, strategy)
    return sides, notes


def _check_own_test(config: Config, official_test: bool) -> None:
    """A source's own test split is the test split: nothing else may claim that role."""
    key = f"data.{sources.source_of(config.data).test_key}"
    if config.split.test_list:
        raise UserError(f"{key} names the test split; leave split.test_list empty (or {key})")
    if official_test:
        raise UserError(f"{key} names the test split; split.official_side = \"test\" would make the official "
                        "side a second one: set split.official_side = \"validation\"")


def carve(dataset: Dataset, pool: np.ndarray, ratio: float, seed: int, method: str,
          notes: dict[str, Any] | None = None) -> np.ndarray:
    """A boolean mask over `pool` (clip positions): the `ratio` share drawn by `method`."""
    clips = dataset.clips
    if method == "random":
        return random_sides(len(pool), ratio, seed).astype(bool)
    if method == "group":
        return group_sides([clips[i].group for i in pool], [clips[i].id for i in pool], ratio, seed).astype(bool)
    side, unmet = stratified_sides([clips[i].labels for i in pool], len(dataset.classes), ratio, seed)
    if unmet and notes is not None:
        notes["classes_not_on_both_sides"] = [dataset.classes[c] for c in unmet]
    return side.astype(bool)


def _check_not_empty(sides: np.ndarray, dataset: Dataset, config: Config, strategy: str) -> None:
    train, validation = int((sides == TRAIN).sum()), int((sides == VALIDATION).sum())
    if train and validation:
        return
    empty, full = ("validation", "train") if not validation else ("train", "validation")
    n = int((sides >= 0).sum())
    split = config.split
    if strategy == "prefix":
        rule = "no clip id starts" if not validation else "every clip id starts"
        hint = (f"{rule} with one of '{split.validation_prefixes}' (split.validation_prefixes, case-sensitive), "
                "so the " + empty + " side is empty; change split.validation_prefixes or use "
                "split.strategy=random or stratified")
    elif strategy == "group":
        hint = (f"split.validation_ratio={split.validation_ratio} puts every group on the {full} side; "
                "change split.validation_ratio or give more groups")
    elif strategy == "column":
        hint = (f"column '{split.column}' of {config.data.manifest} puts no clip whose audio exists on the "
                f"{empty} side; check its values (and split.fold, split.test_fold)")
    elif strategy == "official":
        hint = ("the official list matches every clip" if not train else "the official list matches no clip id")
        hint += "; check split.validation_list against the clip ids in the source"
    else:
        hint = (f"split.validation_ratio={split.validation_ratio} and split.test_ratio={split.test_ratio} of "
                f"{n} clips leave the {empty} side empty; change the ratios or add clips")
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


def _official(dataset: Dataset, validation_list: str) -> np.ndarray:
    """Positions (in dataset.all_clips()) of the official side."""
    if dataset.eval_clips is not None:
        return np.arange(len(dataset.clips), len(dataset.clips) + len(dataset.eval_clips))
    chosen = np.asarray(listed_positions(dataset, range(len(dataset.clips)), validation_list,
                                         "split.validation_list"), dtype=np.int64)
    if not len(chosen):
        raise UserError(f"no clip id of the source is listed in {validation_list} (split.validation_list); "
                        f"ids look like '{dataset.clips[0].id}'")
    if len(chosen) == len(dataset.clips):
        raise UserError(f"every clip is listed in {validation_list} (split.validation_list); nothing is left "
                        "for training")
    return chosen


def listed_positions(dataset: Dataset, candidates: Iterable[int], path: str, key: str) -> list[int]:
    """Positions (in dataset.all_clips(), among `candidates`) of the clips a list of ids names.

    Every id must be a candidate clip or a clip the source lists without audio (reported as missing): an id
    that matches nothing (a typo, another data set's list) would silently leave its clip out of the split.
    """
    wanted = read_id_list(path, key)
    clips = dataset.all_clips()
    chosen = [i for i in candidates if clips[i].id in wanted]
    unknown = sorted(wanted - {clips[i].id for i in chosen} - {m.id for m in dataset.missing})
    if unknown:
        shown = ", ".join(unknown[:UNKNOWN_SHOWN]) + (", ..." if len(unknown) > UNKNOWN_SHOWN else "")
        raise UserError(f"{len(unknown)} of {len(wanted)} ids in {path} ({key}) match no clip of the source: "
                        f"{shown}; clip ids look like '{clips[0].id}': correct or remove them")
    return chosen


def read_id_list(path: str, key: str) -> set[str]:
    """Ids from a text file (one per line) or, for a .csv, the first field of each row (segments CSVs)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{key} {path} not found")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{key} {path} is not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if file.suffix.lower() == ".csv":
        ids = {row[0].strip() for row in csv.reader(lines, skipinitialspace=True) if row and row[0].strip()}
    else:
        ids = {line.strip() for line in lines}
    if not ids:
        raise UserError(f"{key} {path} lists no ids")
    return ids


# ---------------------------------------------------------------- report and summary


def class_counts(n_classes: int, clips: list[Clip]) -> np.ndarray:
    counts = np.zeros(n_classes, dtype=np.int64)
    for clip in clips:
        counts[clip.labels] += 1
    return counts


def _absent_classes(dataset: Dataset, kept: list[int], clips: list[Clip]) -> list[str]:
    counts = class_counts(len(dataset.classes), clips)
    return [dataset.classes[c] for c in kept if counts[c] == 0]


def split_report(dataset: Dataset, strategy: str, splits: dict[str, list[Clip]], kept: list[int],
                 dropped: list[int], notes: dict[str, Any]) -> dict[str, Any]:
    counts = {name: class_counts(len(dataset.classes), clips) for name, clips in splits.items()}
    per_class = []
    for c, name in enumerate(dataset.classes):
        entry: dict[str, Any] = {"class": name}
        if dataset.class_ids is not None:
            entry["class_id"] = dataset.class_ids[c]
        entry.update({split: int(counts[split][c]) for split in splits}, predicted=c in kept)
        per_class.append(entry)
    return {
        "source": dataset.source,
        "strategy": strategy,
        "task": dataset.task,
        "counts": {**{name: len(clips) for name, clips in splits.items()}, "missing": len(dataset.missing)},
        "classes_dropped_no_training_clip": [dataset.classes[c] for c in dropped],
        **{f"classes_missing_from_{name}": _absent_classes(dataset, kept, clips)
           for name, clips in splits.items() if clips},
        **notes,
        "per_class": per_class,
        "missing": [m.to_json() for m in dataset.missing],
    }


def print_summary(dataset: Dataset, strategy: str, splits: dict[str, list[Clip]], kept: list[int],
                  dropped: list[int], report_path: Path) -> None:
    n = sum(len(clips) for clips in splits.values())
    sizes = " / ".join(f"{len(clips)} {name}" for name, clips in splits.items() if clips)
    log.info("split (%s source, %s, strategy %s): %s clips (%.1f %% validation), %d classes", dataset.source,
             dataset.task, strategy, sizes, 100.0 * len(splits["validation"]) / max(n, 1), len(kept))
    if dataset.missing:
        log.warning("%d listed clips left out (audio not found, duplicates, ...); reasons in %s",
                    len(dataset.missing), report_path)
    if dropped:
        names = [dataset.classes[c] for c in dropped]
        log.warning("%d classes have no training clip and are not model outputs: %s%s (set "
                    "data.keep_unused_classes = true to keep them; all in %s)", len(dropped),
                    ", ".join(names[:LIST_MAX]), ", ..." if len(names) > LIST_MAX else "", report_path)
    present = {name: class_counts(len(dataset.classes), clips) for name, clips in splits.items() if clips}
    if len(kept) <= TABLE_MAX_CLASSES:
        width = max(len("class"), *(len(dataset.classes[c]) for c in kept))
        log.info("%s  %s", "class".ljust(width), "  ".join(f"{name:>10}" for name in present))
        for c in kept:
            log.info("%s  %s", dataset.classes[c].ljust(width), "  ".join(f"{counts[c]:>10d}"
                                                                          for counts in present.values()))
    else:
        for name, counts in present.items():
            log.info("clips per class, %s: min %d, median %d, max %d", name, counts[kept].min(),
                     int(np.median(counts[kept])), counts[kept].max())
    for name, counts in present.items():
        if name == "train":
            continue
        absent = [dataset.classes[c] for c in kept if counts[c] == 0]
        if absent:
            shown = ", ".join(absent[:LIST_MAX]) + (f", ... ({len(absent) - LIST_MAX} more)"
                                                    if len(absent) > LIST_MAX else "")
            log.warning("%d classes have no %s clip: %s (all in %s)", len(absent), name, shown, report_path)
