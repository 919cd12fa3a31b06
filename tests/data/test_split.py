"""`audiotokens split`: every strategy, the artifacts it writes, and the CLI."""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from audioset_metadata import AUDIOSET
from click.testing import CliRunner
from stores import write_frames

from audiotokens.cli import main
from audiotokens.config import load_config
from audiotokens.data.split import DatasetSplitter, group_sides, stratified_sides
from audiotokens.errors import UserError
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import SplitPlan, open_split

BALANCED = AUDIOSET / "balanced_train_segments.csv"
EVAL = AUDIOSET / "eval_segments.csv"
CLASS_LABELS = AUDIOSET / "class_labels_indices.csv"
needs_audioset = pytest.mark.skipif(not BALANCED.is_file(), reason="shared AudioSet metadata not present")


def raw_ids(path: Path) -> list[str]:
    return [line.split(",", 1)[0] for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def raw_labels(path: Path) -> list[list[str]]:
    return [line[line.index('"') + 1:line.rindex('"')].split(",") for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def audioset_root(tmp_path_factory):
    """An empty stand-in file for every id of both real CSVs (splitting never decodes audio)."""
    root = tmp_path_factory.mktemp("audioset_audio")
    for subset, path in (("bal_train", BALANCED), ("eval", EVAL)):
        (root / subset).mkdir()
        for ytid in raw_ids(path):
            (root / subset / f"{ytid}.flac").touch()
    yield root
    shutil.rmtree(root)  # 42k files: do not leave them to pytest's retained temp dirs


def run_split(workdir: Path, *overrides: str) -> tuple[dict, dict, dict]:
    counts = DatasetSplitter(load_config(None, overrides, workdir)).run()
    split = json.loads((workdir / "processed" / "split.json").read_text())
    report = json.loads((workdir / "processed" / "split_report.json").read_text())
    return counts, split, report


def ids(split: dict, side: str) -> list[str]:
    return list(split["splits"].get(side, []))


def clip_entry(split: dict, clip_id: str) -> dict:
    return next(clip for clip in split["clips"] if clip["id"] == clip_id)


def audioset_settings(root: Path) -> list[str]:
    return ["data.source=audioset", f"data.segments={BALANCED}", f"data.audio_root={root}",
            f"data.class_labels={CLASS_LABELS}"]


@needs_audioset
def test_prefix_rule_on_the_real_ids(tmp_path, audioset_root):
    counts, split, report = run_split(tmp_path, *audioset_settings(audioset_root), "split.test_ratio=0")
    assert split["strategy"] == "prefix"  # what `auto` means for an AudioSet source
    every = raw_ids(BALANCED)
    oracle = {ytid for ytid in every if ytid[0] in "ABCDEF"}
    assert len({ytid for ytid in every if ytid[-1] in "ABCDEF"}) != len(oracle)  # the two rules differ
    assert set(ids(split, "validation")) == oracle
    assert set(ids(split, "train")) == set(every) - oracle
    assert (counts["validation"], counts["train"], counts["missing"]) == (len(oracle), len(every) - len(oracle), 0)
    assert split["task"] == "multilabel" and len(split["classes"]) == 527 and len(split["class_ids"]) == 527
    # per-class counts in the report equal a count over the raw label lists
    side_of = {ytid: "validation" if ytid in oracle else "train" for ytid in every}
    expected = Counter((mid, side_of[ytid]) for ytid, mids in zip(every, raw_labels(BALANCED)) for mid in mids)
    for entry in report["per_class"]:
        assert (entry["train"], entry["validation"]) == (expected[entry["class_id"], "train"],
                                                        expected[entry["class_id"], "validation"])
    assert "test" not in split["splits"] and counts["test"] == 0


@needs_audioset
def test_prefix_rule_with_a_held_out_test_split(tmp_path, audioset_root):
    """The test split is drawn first; validation is then exactly the prefix ids among the rest."""
    counts, split, _ = run_split(tmp_path, *audioset_settings(audioset_root), "split.test_ratio=0.1")
    every, test = raw_ids(BALANCED), set(ids(split, "test"))
    assert abs(len(test) / len(every) - 0.1) < 0.01 and counts["test"] == len(test)
    assert set(ids(split, "validation")) == {ytid for ytid in every if ytid[0] in "ABCDEF"} - test
    assert set(ids(split, "train")) == {ytid for ytid in every if ytid[0] not in "ABCDEF"} - test


@needs_audioset
def test_official_split_uses_eval_segments(tmp_path, audioset_root):
    counts, split, _ = run_split(tmp_path, *audioset_settings(audioset_root), f"data.eval_segments={EVAL}",
                                 "split.strategy=official", "split.test_ratio=0")
    assert ids(split, "train") == raw_ids(BALANCED) and ids(split, "validation") == raw_ids(EVAL)
    assert split["strategy"] == "official" and counts["clips"] == 22160 + 20371
    audio = clip_entry(split, ids(split, "validation")[0])["audio"]
    assert audio.startswith(str(audioset_root / "eval")) and Path(audio).is_absolute()


@needs_audioset
def test_missing_audio_goes_to_the_report_not_the_split(tmp_path):
    every = raw_ids(BALANCED)
    present = every[::1000]
    for ytid in present:
        (tmp_path / "audio").mkdir(exist_ok=True)
        (tmp_path / "audio" / f"Y{ytid}.wav").touch()
    _, split, report = run_split(tmp_path / "work", *audioset_settings(tmp_path / "audio"),
                                 "split.strategy=random", "split.validation_ratio=0.3")
    assert sorted(ids(split, "train") + ids(split, "validation") + ids(split, "test")) == sorted(present)
    assert sorted(clip["id"] for clip in split["clips"]) == sorted(present)
    assert len(report["missing"]) == len(every) - len(present)
    assert {m["id"] for m in report["missing"]} == set(every) - set(present)
    assert all(m["reason"] and m["source"] == str(BALANCED) for m in report["missing"])


# ---------------------------------------------------------------- synthetic manifests


def write_manifest(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,group"]
    for path, label, group in rows:
        (root / path).touch()
        lines.append(f"{path},{label},{group}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def multilabel_rows(n: int, n_classes: int, seed: int) -> list[tuple[str, str, str]]:
    """Zipf-like class frequencies so several classes have only 2-3 clips."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_classes + 1) ** 1.3
    rows = []
    for i in range(n):
        k = rng.integers(1, 4)
        labels = rng.choice(n_classes, size=k, replace=False, p=weights / weights.sum())
        rows.append((f"clip{i:04d}.wav", ";".join(f"c{c:02d}" for c in labels), f"g{i % 37}"))
    return rows


def manifest_settings(manifest: Path, *more: str) -> list[str]:
    return ["data.source=manifest", f"data.manifest={manifest}", *more]


@pytest.mark.parametrize("strategy", ["random", "group", "stratified"])
def test_same_seed_same_split_and_other_seed_differs(tmp_path, strategy):
    manifest = write_manifest(tmp_path / "data", multilabel_rows(300, 12, seed=1))
    settings = manifest_settings(manifest, f"split.strategy={strategy}", "split.validation_ratio=0.2")
    _, first, _ = run_split(tmp_path / "a", *settings, "split.seed=5")
    _, again, _ = run_split(tmp_path / "b", *settings, "split.seed=5")
    _, other, _ = run_split(tmp_path / "c", *settings, "split.seed=6")
    assert first == again
    assert ids(first, "validation") != ids(other, "validation")
    assert ids(first, "test") and ids(first, "test") != ids(other, "test")  # split.seed draws the test split too


def test_a_kfold_split_says_so_for_the_train_stage(tmp_path):
    """The train stage keeps the last epoch when validation is a held-out fold: split.json must name the strategy."""
    manifest = write_manifest(tmp_path / "data", multilabel_rows(60, 4, seed=1))
    _, split, _ = run_split(tmp_path / "w", *manifest_settings(manifest, "split.strategy=kfold", "split.folds=3"))
    assert split["strategy"] == "kfold" and ids(split, "validation") and ids(split, "train")


def test_random_ratio(tmp_path):
    manifest = write_manifest(tmp_path / "data", multilabel_rows(200, 5, seed=2))
    counts, split, _ = run_split(tmp_path, *manifest_settings(manifest, "split.strategy=random",
                                                             "split.validation_ratio=0.25"))
    # validation_ratio and test_ratio (default 0.1) are shares of all the clips
    assert (counts["validation"], counts["test"], counts["train"]) == (50, 20, 130)
    sides = [set(ids(split, side)) for side in ("train", "validation", "test")]
    assert sum(map(len, sides)) == len(set.union(*sides)) == 200


def test_group_split_keeps_groups_whole(tmp_path):
    rows = multilabel_rows(400, 6, seed=3)
    rows = [(path, label, group if i % 10 else "") for i, (path, label, group) in enumerate(rows)]
    manifest = write_manifest(tmp_path / "data", rows)
    counts, split, _ = run_split(tmp_path, *manifest_settings(manifest, "split.strategy=group",
                                                             "split.validation_ratio=0.2"))
    group_of = {path: group for path, _, group in rows}
    groups = {side: {group_of[i] for i in ids(split, side) if group_of[i]} for side in ("train", "validation", "test")}
    assert all(groups.values())
    assert groups["train"].isdisjoint(groups["validation"]) and groups["train"].isdisjoint(groups["test"])
    assert groups["validation"].isdisjoint(groups["test"])
    assert all(clip["group"] == (group_of[clip["id"]] or None) for clip in split["clips"])
    assert abs(counts["validation"] / 400 - 0.2) < 0.05 and abs(counts["test"] / 400 - 0.1) < 0.05


def test_group_sides_ratio_and_errors():
    groups = [f"g{i % 50}" for i in range(1000)]  # 50 groups of 20
    side = group_sides(groups, [str(i) for i in range(1000)], 0.3, seed=0)
    assert side.sum() == 300
    with pytest.raises(UserError, match="at least 2 groups"):
        group_sides(["one"] * 5, list("abcde"), 0.2, seed=0)
    # clips without a group are groups of their own, so two ungrouped clips can be split
    assert sorted(group_sides([None, None], ["a", "b"], 0.5, seed=0).tolist()) == [0, 1]


def test_stratified_covers_every_class_with_two_clips(tmp_path):
    rows = multilabel_rows(250, 40, seed=4)
    manifest = write_manifest(tmp_path / "data", rows)
    counts, _, report = run_split(tmp_path, *manifest_settings(manifest, "split.strategy=stratified",
                                                                  "split.validation_ratio=0.1", "split.test_ratio=0"))
    totals = Counter(label for _, labels, _ in rows for label in labels.split(";"))
    assert min(totals.values()) <= 3  # the fixture really has rare classes
    for entry in report["per_class"]:
        assert entry["train"] + entry["validation"] == totals[entry["class"]]
        if totals[entry["class"]] >= 2:
            assert entry["train"] >= 1 and entry["validation"] >= 1, entry
    assert all(totals[c] == 1 for c in report["classes_missing_from_validation"])
    assert abs(counts["validation"] / 250 - 0.1) < 0.05


def test_stratified_single_label_keeps_class_proportions():
    labels = [[c] for c in range(4) for _ in range(25 * (c + 1))] + [[4], [4]]  # 25, 50, 75, 100 and 2 clips
    side, unmet = stratified_sides(labels, 5, 0.2, seed=0)
    assert unmet == []
    for c, size in enumerate([25, 50, 75, 100, 2]):
        in_validation = sum(side[i] for i, clip in enumerate(labels) if clip == [c])
        assert in_validation == (1 if size == 2 else round(0.2 * size))


def test_stratified_moves_a_clip_when_rarer_labels_placed_a_class_on_one_side():
    # class 0's two clips are placed while handling the singleton classes 1 and 2, both to train
    labels = [[0, 1], [0, 2]] + [[3]] * 18
    side, unmet = stratified_sides(labels, 4, 0.1, seed=0)
    assert unmet == [] and sorted(side[:2].tolist()) == [0, 1]
    assert side[2:].sum() == round(0.1 * 18)  # class 3 keeps its share


@needs_audioset
def test_stratified_on_real_audioset_labels():
    labels_by_mid = raw_labels(BALANCED)
    mids = sorted({mid for labels in labels_by_mid for mid in labels})
    index = {mid: i for i, mid in enumerate(mids)}
    labels = [sorted(index[mid] for mid in clip) for clip in labels_by_mid]
    side, unmet = stratified_sides(labels, len(mids), 0.1, seed=0)
    matrix = np.zeros((len(labels), len(mids)), dtype=bool)
    for i, clip in enumerate(labels):
        matrix[i, clip] = True
    per_class = matrix[side == 1].sum(0) / matrix.sum(0)
    assert unmet == [] and per_class.min() > 0.05 and per_class.max() < 0.2
    assert abs(side.mean() - 0.1) < 0.01


def test_official_with_a_validation_list(tmp_path):
    rows = multilabel_rows(30, 3, seed=5)
    manifest = write_manifest(tmp_path / "data", rows)
    listed = [rows[3][0], rows[7][0]]
    (tmp_path / "val.txt").write_text("\n".join(listed) + "\n")
    _, split, _report = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=official", f"split.validation_list={tmp_path / 'val.txt'}", "split.test_ratio=0"))
    assert ids(split, "validation") == listed and len(ids(split, "train")) == 28
    # a segments-style CSV works as a list too
    (tmp_path / "val.csv").write_text(f"# header\n{rows[5][0]}, 0.0, 10.0, \"x\"\n")
    _, split, _ = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=official", f"split.validation_list={tmp_path / 'val.csv'}"))
    assert ids(split, "validation") == [rows[5][0]]
    assert ids(split, "test") and rows[5][0] not in ids(split, "test")  # the test split comes from the rest


@pytest.mark.parametrize("settings, fragment", [
    (["split.strategy=prefix"], "no clip id starts with one of 'ABCDEF'.*split.validation_prefixes"),
    (["split.strategy=prefix", "split.validation_prefixes=c"], "every clip id starts.*train side is empty"),
    (["split.strategy=random", "split.validation_ratio=0.0"], "between 0 and 1"),
    (["split.strategy=official"], "split.validation_list"),
    (["split.strategy=group"], "at least 2 groups"),
    (["split.test_list=/no/such/list.txt"], "split.test_list /no/such/list.txt not found"),
])
def test_unusable_settings_say_what_to_change(tmp_path, settings, fragment):
    group = "g" if "split.strategy=group" in settings else ""
    manifest = write_manifest(tmp_path / "data", [(f"clip{i}.wav", "xy"[i % 2], group) for i in range(4)])
    with pytest.raises(UserError, match=fragment):
        run_split(tmp_path, *manifest_settings(manifest, "split.test_ratio=0", *settings))
    assert not (tmp_path / "processed" / "split.json").exists()


def test_cli_split_writes_split_json(tmp_path):
    rows = [(f"{'A' if i % 4 == 0 else 'z'}clip{i}.wav", "dog" if i % 2 else "cat", "") for i in range(12)]
    manifest = write_manifest(tmp_path / "data", rows)
    workdir = tmp_path / "work"
    result = CliRunner().invoke(main, ["split", "--workdir", str(workdir), "--set", "data.source=manifest",
                                       "--set", f"data.manifest={manifest}", "--strategy", "prefix",
                                       "--test-ratio", "0"])
    assert result.exit_code == 0, result.output
    split = json.loads((workdir / "processed" / "split.json").read_text())
    assert {"source", "strategy", "task", "classes", "dropped_classes", "clips", "splits"} <= set(split)
    assert split["classes"] == ["cat", "dog"] and split["task"] == "singlelabel"
    assert split["strategy"] == "prefix" and set(split["splits"]) == {"train", "validation"}
    assert ids(split, "validation") == [path for path, _, _ in rows if path.startswith("A")]
    assert [clip["id"] for clip in split["clips"]] == [path for path, _, _ in rows]  # the whole catalogue
    clip = clip_entry(split, ids(split, "train")[0])
    assert {"id", "audio", "labels", "group"} <= set(clip) and Path(clip["audio"]).is_file()
    number = int(clip["id"].split("clip")[1].split(".")[0])
    assert clip["labels"] == [split["classes"].index("dog" if number % 2 else "cat")]
    assert (workdir / "processed" / "split.meta.json").is_file()
    bad = CliRunner().invoke(main, ["split", "--workdir", str(workdir), "--set", "data.source=manifest",
                                    "--set", f"data.manifest={tmp_path / 'absent.csv'}"])
    assert bad.exit_code == 2 and "absent.csv" in bad.output


# ---------------------------------------------------------------- strategy auto, the test split


def single_label_rows(counts: dict[str, int], groups: int = 0) -> list[tuple[str, str, str]]:
    rows = [(f"{name}{i:03d}.wav", name) for name, n in counts.items() for i in range(n)]
    return [(path, name, f"g{k % groups}" if groups else "") for k, (path, name) in enumerate(rows)]


@pytest.mark.parametrize("groups, expected", [(0, "stratified"), (7, "group")])
def test_auto_strategy_is_group_with_groups_else_stratified(tmp_path, groups, expected):
    manifest = write_manifest(tmp_path / "data", single_label_rows({"cat": 30, "dog": 30}, groups))
    _, split, report = run_split(tmp_path / "w", *manifest_settings(manifest))
    assert split["strategy"] == report["strategy"] == expected


def test_test_split_is_disjoint_stratified_and_reproducible(tmp_path):
    rows = multilabel_rows(300, 8, seed=7)
    manifest = write_manifest(tmp_path / "data", rows)
    settings = manifest_settings(manifest, "split.strategy=stratified", "split.validation_ratio=0.2",
                                 "split.test_ratio=0.15")
    counts, split, report = run_split(tmp_path / "a", *settings)
    sides = {side: set(ids(split, side)) for side in ("train", "validation", "test")}
    assert all(sides.values()) and sum(map(len, sides.values())) == len(set.union(*sides.values())) == 300
    assert abs(len(sides["test"]) / 300 - 0.15) < 0.03 and abs(len(sides["validation"]) / 300 - 0.2) < 0.03
    assert counts["test"] == len(sides["test"]) and report["counts"]["test"] == len(sides["test"])
    # stratified: every class with enough clips is in the test split, counted per class in the report
    totals = Counter(label for _, labels, _ in rows for label in labels.split(";"))
    for entry in report["per_class"]:
        assert entry["train"] + entry["validation"] + entry["test"] == totals[entry["class"]]
        if totals[entry["class"]] >= 20:
            assert entry["test"] >= 1, entry
    _, again, _ = run_split(tmp_path / "b", *settings)
    assert again["splits"] == split["splits"]
    plan = SplitPlan.load(Layout(tmp_path / "a"))
    assert plan.names() == ["train", "validation", "test"] and plan.ids("test") == ids(split, "test")


def test_test_ratio_zero_means_no_test_split(tmp_path):
    manifest = write_manifest(tmp_path / "data", single_label_rows({"cat": 10, "dog": 10}))
    counts, split, _ = run_split(tmp_path / "w", *manifest_settings(manifest, "split.test_ratio=0"))
    assert "test" not in split["splits"] and counts["test"] == 0
    plan = SplitPlan.load(Layout(tmp_path / "w"))
    assert plan.names() == ["train", "validation"]
    with pytest.raises(UserError, match="split 'test' has no clips"):
        plan.ids("test")


def test_test_list_names_the_test_split(tmp_path):
    rows = single_label_rows({"cat": 20, "dog": 20})
    manifest = write_manifest(tmp_path / "data", rows)
    listed = [rows[1][0], rows[2][0], rows[25][0]]
    (tmp_path / "test.txt").write_text("# held out\n" + "\n".join(listed) + "\n")
    counts, split, _ = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=random", "split.validation_ratio=0.25", f"split.test_list={tmp_path / 'test.txt'}"))
    assert ids(split, "test") == listed  # the list replaces test_ratio (default 0.1 would give 4)
    assert not set(listed) & (set(ids(split, "train")) | set(ids(split, "validation")))
    assert counts["validation"] == 10 and counts["train"] == 27


@pytest.mark.parametrize("key, extra", [("split.test_list", ["split.strategy=random"]),
                                        ("split.validation_list", ["split.strategy=official", "split.test_ratio=0"])])
@pytest.mark.parametrize("typos", [1, 5])
def test_ids_of_a_list_that_match_no_clip_are_an_error_naming_them(tmp_path, key, extra, typos):
    """A misspelt id would silently leave its clip out of the split; all of them misspelt, the split itself."""
    rows = single_label_rows({"cat": 20, "dog": 20})
    manifest = write_manifest(tmp_path / "data", rows)
    misspelt = [f"kat{i:03d}.wav" for i in range(typos)]
    lines = [rows[1][0], rows[25][0], *misspelt] if typos == 1 else misspelt  # partly / all unknown
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as caught:
        run_split(tmp_path / "w", *manifest_settings(manifest, *extra, f"{key}={tmp_path / 'list.txt'}"))
    message = str(caught.value)
    assert f"{typos} of {len(lines)} ids in {tmp_path / 'list.txt'} ({key}) match no clip" in message
    assert all(name in message for name in misspelt[:3])
    assert typos <= 3 or (misspelt[3] not in message and ", ..." in message)  # the first few only
    assert "cat000.wav" in message and "\n" not in message  # what ids look like
    assert not (tmp_path / "w" / "processed" / "split.json").exists()


def test_listed_ids_whose_audio_is_missing_are_reported_not_refused(tmp_path):
    rows = single_label_rows({"cat": 20, "dog": 20})
    manifest = write_manifest(tmp_path / "data", rows)
    (tmp_path / "data" / rows[2][0]).unlink()  # listed by the source, audio gone
    (tmp_path / "test.txt").write_text(f"{rows[1][0]}\n{rows[2][0]}\n{rows[25][0]}\n")
    counts, split, report = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=random", f"split.test_list={tmp_path / 'test.txt'}"))
    assert ids(split, "test") == [rows[1][0], rows[25][0]] and counts["missing"] == 1
    assert [entry["id"] for entry in report["missing"]] == [rows[2][0]]


def test_official_side_test_draws_validation_from_the_training_clips(tmp_path):
    rows = single_label_rows({"cat": 30, "dog": 30})
    manifest = write_manifest(tmp_path / "data", rows)
    listed = [path for i, (path, _, _) in enumerate(rows) if i % 6 == 0]
    (tmp_path / "official.txt").write_text("\n".join(listed) + "\n")
    counts, split, report = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=official", f"split.validation_list={tmp_path / 'official.txt'}",
        "split.official_side=test", "split.validation_ratio=0.2"))
    assert ids(split, "test") == listed
    validation, train = set(ids(split, "validation")), set(ids(split, "train"))
    assert validation and not validation & train and not (validation | train) & set(listed)
    assert validation | train == {path for path, _, _ in rows} - set(listed)
    assert counts["validation"] == pytest.approx(0.2 * 60, abs=1)  # a share of all the clips
    entries = {entry["class"]: entry for entry in report["per_class"]}
    assert entries["cat"]["validation"] >= 1 and entries["dog"]["validation"] >= 1  # stratified


# ---------------------------------------------------------------- classes the model can predict


def test_a_class_without_a_training_clip_is_dropped(tmp_path):
    rows = single_label_rows({"cat": 12, "dog": 12, "rare": 2})
    manifest = write_manifest(tmp_path / "data", rows)
    rare = [path for path, label, _ in rows if label == "rare"]
    listed = rare + [rows[0][0], rows[12][0]]
    (tmp_path / "val.txt").write_text("\n".join(listed) + "\n")
    settings = manifest_settings(manifest, "split.strategy=official", f"split.validation_list={tmp_path / 'val.txt'}")
    counts, split, report = run_split(tmp_path / "w", *settings)
    assert split["classes"] == ["cat", "dog"] and split["dropped_classes"] == ["rare"]
    assert report["classes_dropped_no_training_clip"] == ["rare"] and counts["classes_dropped"] == 1
    # a single-label clip of a dropped class has no right answer: it leaves its split
    assert ids(split, "validation") == [rows[0][0], rows[12][0]]
    assert report["clips_of_dropped_classes"] == {"validation": rare}
    # split.json records it, for every metrics file of the split to state
    assert split["left_out"] == {"validation": {"clips": rare, "classes": ["rare"], "positives": 2}}
    assert all(clip_entry(split, path)["labels"] == [0] for path, label, _ in rows if label == "cat")
    assert all(clip_entry(split, path)["labels"] == [1] for path, label, _ in rows if label == "dog")
    # kept on request: the class stays a model output and its clips stay in validation
    _, kept, report = run_split(tmp_path / "k", *settings, "data.keep_unused_classes=true")
    assert kept["classes"] == ["cat", "dog", "rare"] and kept["dropped_classes"] == []
    assert report["classes_dropped_no_training_clip"] == [] and set(rare) <= set(ids(kept, "validation"))
    assert clip_entry(kept, rare[0])["labels"] == [2]


def test_multilabel_clips_lose_only_the_dropped_label(tmp_path):
    rows = [(f"c{i:02d}.wav", "a;b" if i % 2 else "a", "") for i in range(20)]
    rows += [("only_c.wav", "a;c", "")]
    manifest = write_manifest(tmp_path / "data", rows)
    (tmp_path / "val.txt").write_text("only_c.wav\nc00.wav\nc01.wav\n")
    _, split, report = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=official", f"split.validation_list={tmp_path / 'val.txt'}", "split.test_ratio=0"))
    assert split["classes"] == ["a", "b"] and report["classes_dropped_no_training_clip"] == ["c"]
    assert "only_c.wav" in ids(split, "validation") and clip_entry(split, "only_c.wav")["labels"] == [0]
    assert split["left_out"] == {"validation": {"clips": [], "classes": ["c"], "positives": 1}}


def test_a_source_of_one_class_is_a_one_line_error(tmp_path):
    manifest = write_manifest(tmp_path / "data", [(f"clip{i}.wav", "dog", "") for i in range(6)])
    with pytest.raises(UserError, match=r"only one class \('dog'\).*at least two") as caught:
        run_split(tmp_path / "w", *manifest_settings(manifest))
    assert "\n" not in str(caught.value)
    assert not Layout(tmp_path / "w").split_json.exists()


def test_prefix_strategy_on_a_folder_source_is_refused(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "folder" / name / f"{i}.wav").touch()
    settings = ["data.source=folder", f"data.folder={tmp_path / 'folder'}"]
    with pytest.raises(UserError, match="split.strategy=prefix.*folder.*use split.strategy=stratified"):
        run_split(tmp_path / "w", *settings, "split.strategy=prefix")
    _, split, _ = run_split(tmp_path / "w", *settings)  # auto: stratified
    assert split["strategy"] == "stratified" and split["classes"] == ["cat", "dog"]


# ---------------------------------------------------------------- splits as views over one store


def test_open_split_gives_each_splits_rows_and_labels(tmp_path):
    rows = single_label_rows({"cat": 9, "dog": 9, "owl": 9})
    manifest = write_manifest(tmp_path / "data", rows)
    workdir = tmp_path / "w"
    _, split, _ = run_split(workdir, *manifest_settings(manifest, "split.test_ratio=0.2"))
    label_of = {path: label for path, label, _ in rows}
    # a store in an order of its own (not split order), clip k's frames all equal k, one clip skipped
    skipped = ids(split, "validation")[0]
    order = [clip["id"] for clip in split["clips"] if clip["id"] != skipped][::-1]
    number = {clip_id: k for k, clip_id in enumerate(order)}
    write_frames(workdir, [(clip_id, np.full((3 + k % 4, 2), k, np.float32)) for clip_id, k in number.items()])
    for side in ("train", "validation", "test"):
        frames, view = open_split(Layout(workdir), "frames", side)
        assert view.split == side and view.classes == split["classes"]
        assert view.ids == [clip_id for clip_id in ids(split, side) if clip_id != skipped]
        for clip_id, offset, length, labels in zip(view.ids, view.offsets, view.lengths, view.labels):
            assert length == 3 + number[clip_id] % 4
            assert (np.asarray(frames[offset:offset + length]) == number[clip_id]).all()
            assert [view.classes[c] for c in labels] == [label_of[clip_id]]  # the manifest's label
        assert len(frames) == sum(3 + k % 4 for k in number.values())  # the whole store, not a copy


def test_open_split_refusals(tmp_path):
    manifest = write_manifest(tmp_path / "data", single_label_rows({"cat": 5, "dog": 5}))
    workdir = tmp_path / "w"
    _, split, _ = run_split(workdir, *manifest_settings(manifest, "split.test_ratio=0"))
    layout = Layout(workdir)
    with pytest.raises(UserError, match="run `audiotokens spectrogram` first|not found"):
        open_split(layout, "frames", "train")
    write_frames(workdir, [(clip_id, np.zeros((2, 3), np.float32)) for clip_id in ids(split, "train")])
    with pytest.raises(UserError, match="split 'test' has no clips"):
        open_split(layout, "frames", "test")
    with pytest.raises(UserError, match="no clip of split 'validation' has frames"):
        open_split(layout, "frames", "validation")  # every one of them skipped
    np.save(layout.frames, np.zeros((3, 3), np.float32))  # rows the index does not account for
    with pytest.raises(UserError, match="incomplete"):
        open_split(layout, "frames", "train")


def test_a_validation_share_that_would_starve_training_is_capped_and_said(tmp_path, caplog):
    manifest = write_manifest(tmp_path / "data", single_label_rows({"cat": 50, "dog": 50}))
    with caplog.at_level("WARNING", logger="audiotokens"):
        counts, _, _ = run_split(tmp_path / "w", *manifest_settings(
            manifest, "split.strategy=random", "split.validation_ratio=0.5", "split.test_ratio=0.49"))
    assert counts["train"] >= 5 and counts["validation"] == 46  # 90 % of the 51 clips outside the test split
    assert any("split.validation_ratio=0.5" in r.getMessage() and "90 %" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- split.strategy = column


def write_column_manifest(root: Path, column: str, rows: list[tuple[str, str, str]], absent: tuple[str, ...] = ()
                          ) -> Path:
    """A manifest path,label,<column>; the files of `absent` are listed but not created."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"path,label,{column}"]
    for path, label, value in rows:
        if path not in absent:
            (root / path).touch()
        lines.append(f"{path},{label},{value}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_a_column_of_side_names_is_the_split(tmp_path):
    names = ["train", "Train", "validation", "val", "dev", "test", "training", "valid"]
    side = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
            "dev": "validation", "valid": "validation", "test": "test"}
    rows = [(f"clip{i:02d}.wav", "cat" if i % 2 else "dog", names[i % len(names)]) for i in range(40)]
    manifest = write_column_manifest(tmp_path / "data", "split", rows, absent=("clip05.wav",))
    counts, split, report = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=column", "split.column=split", "split.test_ratio=0.3"))
    for name in ("train", "validation", "test"):  # the test ratio does not apply: the column names the test side
        assert ids(split, name) == [p for p, _, v in rows if side[v.lower()] == name and p != "clip05.wav"]
    assert [m["id"] for m in report["missing"]] == ["clip05.wav"]
    assert split["strategy"] == "column" and report["column"] == "split" and report["column_values"] == "sides"
    assert "validation_fold" not in split  # named sides: validation chooses the epoch as usual
    assert counts["clips"] == 39


def fold_rows(n: int, folds: list[str]) -> list[tuple[str, str, str]]:
    return [(f"clip{i:02d}.wav", "abc"[i % 3], folds[i % len(folds)]) for i in range(n)]


def test_a_column_of_folds_is_k_fold_over_its_values(tmp_path):
    folds = ["fold1", "fold2", "fold3", "fold10"]  # natural order: fold10 is the last
    rows = fold_rows(48, folds)
    manifest = write_column_manifest(tmp_path / "data", "fold", rows)
    clips_of = {fold: [p for p, _, v in rows if v == fold] for fold in folds}
    held_out = []
    for k, fold in enumerate(folds):
        _, split, report = run_split(tmp_path / f"w{k}", *manifest_settings(
            manifest, "split.strategy=column", f"split.fold={k}"))
        assert ids(split, "validation") == clips_of[fold]
        assert ids(split, "train") == [p for p, _, v in rows if v != fold] and not ids(split, "test")
        assert report["folds"] == folds and report["validation_fold"] == fold and report["test_fold"] is None
        assert split["validation_fold"] == fold  # the train stage then keeps the last epoch, as with kfold
        held_out += ids(split, "validation")
    assert sorted(held_out) == sorted(p for p, _, _ in rows)  # every clip validated exactly once


def test_a_fixed_test_fold_leaves_the_others_to_rotate(tmp_path):
    folds = ["1", "2", "3", "4", "5"]
    rows = fold_rows(50, folds)
    manifest = write_column_manifest(tmp_path / "data", "fold", rows)
    for k, fold in enumerate(["1", "2", "4", "5"]):
        _, split, report = run_split(tmp_path / f"w{k}", *manifest_settings(
            manifest, "split.strategy=column", "split.test_fold=3", f"split.fold={k}"))
        assert ids(split, "test") == [p for p, _, v in rows if v == "3"]
        assert ids(split, "validation") == [p for p, _, v in rows if v == fold]
        assert ids(split, "train") == [p for p, _, v in rows if v not in ("3", fold)]
        assert report["folds"] == ["1", "2", "4", "5"] and report["test_fold"] == "3"


@pytest.mark.parametrize("header, values, settings, fragments", [
    ("fold", ["1", "2"], ["split.column=split"], ["no column 'split'", "manifest.csv", "split.column"]),
    ("fold", ["1", ""], [], ["line 3: empty 'fold' value for clip01.wav", "manifest.csv"]),
    ("fold", ["train", "1"], [], ["mixes side names (train) with other values (1)", "column 'fold'"]),
    ("fold", ["1", "2", "3"], ["split.test_fold=9"], ["split.test_fold = '9' is not a fold", "1, 2, 3"]),
    ("fold", ["1", "2", "3"], ["split.fold=3"], ["split.fold = 3", "3 folds to rotate", "use 0 … 2"]),
    ("fold", ["1", "2"], ["split.test_fold=2"], ["1 fold(s) besides the test fold", "column 'fold'"]),
    ("split", ["train", "test"], ["split.column=split"], ["empty validation split", "column 'split'"]),
    ("split", ["train", "val"], ["split.column=split", "split.test_fold=1"], ["names sides"]),
    ("fold", ["1", "2"], ["split.test_list=ids.txt"], ["split.test_list and split.strategy=column"]),
])
def test_a_column_that_cannot_split_is_one_line(tmp_path, header, values, settings, fragments):
    rows = [(f"clip{i:02d}.wav", "xy"[i % 2], values[i % len(values)]) for i in range(6)]
    manifest = write_column_manifest(tmp_path / "data", header, rows)
    with pytest.raises(UserError) as error:
        run_split(tmp_path / "w", *manifest_settings(manifest, "split.strategy=column", *settings))
    message = str(error.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    assert not (tmp_path / "w" / "processed" / "split.json").exists()


def test_column_strategy_on_a_folder_source_is_refused(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "a.wav").touch()
    with pytest.raises(UserError, match="data.source = folder has none"):
        run_split(tmp_path / "w", "data.source=folder", f"data.folder={tmp_path / 'data'}", "split.strategy=column")


def test_kfold_script_rotates_over_the_column_folds(tmp_path):
    """scripts/kfold.sh CONFIG DIR column: the split stage runs for real, each fold's run is recorded."""
    rows = fold_rows(30, ["1", "2", "3", "4", "5"])
    manifest = write_column_manifest(tmp_path / "data", "fold", rows)
    config = tmp_path / "config.toml"
    config.write_text(f'[data]\nsource = "manifest"\nmanifest = "{manifest}"\n[split]\ntest_fold = "5"\n')
    stub = tmp_path / "bin" / "audiotokens"  # `run --to spectrogram` splits for real, any other run is logged
    stub.parent.mkdir()
    stub.write_text(f"""#!{sys.executable}
import sys
args = sys.argv[1:]
if "--to" in args:
    from audiotokens.cli import main
    at = args.index("--to")
    main(["split", *args[1:at], *args[at + 2:]], standalone_mode=False)
else:
    with open({str(tmp_path / 'runs.txt')!r}, "a") as log:
        log.write(" ".join(args) + "\\n")
""")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "scripts" / "kfold.sh"), str(config),
                           str(tmp_path / "cv"), "column"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    runs = (tmp_path / "runs.txt").read_text().splitlines()
    assert len(runs) == 4  # folds 1-4; fold 5 is the fixed test fold
    for k, run in enumerate(runs):
        assert f"--workdir {tmp_path / 'cv'}/fold_{k}" in run
        assert "--set split.strategy=column" in run and f"--set split.fold={k}" in run
    report = json.loads((tmp_path / "cv" / "base" / "processed" / "split_report.json").read_text())
    assert report["folds"] == ["1", "2", "3", "4"]
    assert len(json.loads((tmp_path / "cv" / "kfold_summary.json").read_text())["folds"]) == 4


def test_cli_column_error_is_one_line(tmp_path):
    manifest = write_column_manifest(tmp_path / "data", "fold", fold_rows(6, ["1", "2"]))
    result = CliRunner().invoke(main, ["split", "--workdir", str(tmp_path / "w"), "--set", "data.source=manifest",
                                       "--set", f"data.manifest={manifest}", "--strategy", "column",
                                       "--set", "split.column=official_fold"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert "no column 'official_fold'" in result.output and str(manifest) in result.output
