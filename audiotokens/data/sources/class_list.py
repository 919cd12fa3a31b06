"""AudioSet class lists: class_labels_indices.csv, ontology.json, or the labels present.

Order of preference:
1. `class_labels_indices.csv` (index,mid,display_name): the list as given, class id = index. A label MID
   that is not in it is an error: the metadata files do not belong together.
2. `ontology.json` alone: only the MIDs that occur as labels become classes (the ontology's 632 entries
   include abstract and never-labelled nodes that would be dead outputs), in ontology order, named by
   the ontology. A MID the ontology lacks is an error.
3. Neither: the MIDs present, sorted, named by names seen in the data (Hugging Face `human_labels`) or
   by the MID itself.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError


@dataclass
class ClassList:
    mids: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        self.index = {mid: i for i, mid in enumerate(self.mids)}


def read_class_labels(path: str | Path) -> ClassList:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.class_labels {path} not found; it should be AudioSet's class_labels_indices.csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = {"index", "mid", "display_name"} - set(reader.fieldnames or [])
            if missing:
                raise UserError(f"{path}: header lacks {', '.join(sorted(missing))}; "
                                "expected index,mid,display_name")
            entries = [(row["index"], row["mid"].strip(), row["display_name"].strip(), reader.line_num)
                       for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable CSV ({exc})") from None
    by_index: dict[int, tuple[str, str]] = {}
    for index, mid, name, line in entries:
        try:
            position = int(index)
        except (TypeError, ValueError):
            raise UserError(f"{path} line {line}: index {index!r} is not an integer") from None
        if position in by_index or not mid:
            raise UserError(f"{path} line {line}: duplicate index {position} or empty mid")
        by_index[position] = (mid, name or mid)
    if sorted(by_index) != list(range(len(by_index))):
        raise UserError(f"{path}: indices must be 0..{len(by_index) - 1} without gaps")
    mids = [by_index[i][0] for i in range(len(by_index))]
    if len(set(mids)) != len(mids):
        raise UserError(f"{path}: a mid is listed twice")
    return ClassList(mids, [by_index[i][1] for i in range(len(by_index))])


def read_ontology(path: str | Path) -> dict[str, str]:
    """MID -> name, in ontology order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.ontology {path} not found; it should be AudioSet's ontology.json")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return {entry["id"]: entry.get("name", entry["id"]) for entry in entries}
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as exc:
        raise UserError(f"{path} is not an AudioSet ontology (a JSON list of {{id, name}}): {exc}") from None


def build_class_list(
    mids_present: Iterable[str],
    class_labels: str = "",
    ontology: str = "",
    names_seen: dict[str, str] | None = None,
) -> ClassList:
    """The class list by the rules in the module docstring; unknown MIDs are checked by `class_id`."""
    if class_labels:
        return read_class_labels(class_labels)
    present = set(mids_present)
    if ontology:
        names = read_ontology(ontology)
        unknown = sorted(present - set(names))
        if unknown:
            raise UserError(f"label {unknown[0]} (and {len(unknown) - 1} more) is not in {ontology}; "
                            "use the ontology.json that matches the segments, or set data.class_labels")
        mids = [mid for mid in names if mid in present]
        return ClassList(mids, [names[mid] for mid in mids])
    names_seen = names_seen or {}
    mids = sorted(present)
    return ClassList(mids, [names_seen.get(mid) or mid for mid in mids])


def class_id(classes: ClassList, mid: str, where: str, class_source: str) -> int:
    try:
        return classes.index[mid]
    except KeyError:
        raise UserError(f"{where}: label {mid} is not in {class_source}; "
                        "use the class list that matches the segments file") from None
