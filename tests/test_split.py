"""`audiotokens split`: every strategy, the artifacts it writes, and the CLI."""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from audioset_metadata import AUDIOSET
from click.testing import CliRunner

from audiotokens.cli import main
from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.split import DatasetSplitter, group_sides, stratified_sides

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
    return [clip["id"] for clip in split["splits"][side]]


def audioset_settings(root: Path) -> list[str]:
    return ["data.source=audioset", f"data.segments={BALANCED}", f"data.audio_root={root}",
            f"data.class_labels={CLASS_LABELS}"]


@needs_audioset
def test_prefix_rule_on_the_real_ids(tmp_path, audioset_root):
    counts, split, report = run_split(tmp_path, *audioset_settings(audioset_root))
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


@needs_audioset
def test_official_split_uses_eval_segments(tmp_path, audioset_root):
    counts, split, _ = run_split(tmp_path, *audioset_settings(audioset_root), f"data.eval_segments={EVAL}",
                                 "split.strategy=official")
    assert ids(split, "train") == raw_ids(BALANCED) and ids(split, "validation") == raw_ids(EVAL)
    assert split["strategy"] == "official" and counts["clips"] == 22160 + 20371
    audio = split["splits"]["validation"][0]["audio"]
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
    assert sorted(ids(split, "train") + ids(split, "validation")) == sorted(present)
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


def test_random_ratio(tmp_path):
    manifest = write_manifest(tmp_path / "data", multilabel_rows(200, 5, seed=2))
    counts, split, _ = run_split(tmp_path, *manifest_settings(manifest, "split.strategy=random",
                                                             "split.validation_ratio=0.25"))
    assert counts["validation"] == 50 and counts["train"] == 150
    assert set(ids(split, "train")).isdisjoint(ids(split, "validation"))


def test_group_split_keeps_groups_whole(tmp_path):
    rows = multilabel_rows(400, 6, seed=3)
    rows = [(path, label, group if i % 10 else "") for i, (path, label, group) in enumerate(rows)]
    manifest = write_manifest(tmp_path / "data", rows)
    counts, split, _ = run_split(tmp_path, *manifest_settings(manifest, "split.strategy=group",
                                                             "split.validation_ratio=0.2"))
    group_of = {path: group for path, _, group in rows}
    train_groups = {group_of[i] for i in ids(split, "train") if group_of[i]}
    validation_groups = {group_of[i] for i in ids(split, "validation") if group_of[i]}
    assert train_groups and validation_groups and train_groups.isdisjoint(validation_groups)
    assert all(clip["group"] == (group_of[clip["id"]] or None) for side in ("train", "validation")
               for clip in split["splits"][side])
    assert abs(counts["validation"] / 400 - 0.2) < 0.05


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
                                                                  "split.validation_ratio=0.1"))
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
    listed = [rows[3][0], rows[7][0], "not_in_source.wav"]
    (tmp_path / "val.txt").write_text("\n".join(listed) + "\n")
    _, split, report = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=official", f"split.validation_list={tmp_path / 'val.txt'}"))
    assert ids(split, "validation") == listed[:2] and len(ids(split, "train")) == 28
    assert report["validation_list_ids_not_in_source"] == ["not_in_source.wav"]
    # a segments-style CSV works as a list too
    (tmp_path / "val.csv").write_text(f"# header\n{rows[5][0]}, 0.0, 10.0, \"x\"\n")
    _, split, _ = run_split(tmp_path / "w", *manifest_settings(
        manifest, "split.strategy=official", f"split.validation_list={tmp_path / 'val.csv'}"))
    assert ids(split, "validation") == [rows[5][0]]


@pytest.mark.parametrize("settings, fragment", [
    (["split.strategy=prefix"], "no clip id starts with one of 'ABCDEF'.*split.validation_prefixes"),
    (["split.strategy=prefix", "split.validation_prefixes=c"], "every clip id starts.*train side is empty"),
    (["split.strategy=random", "split.validation_ratio=1.0"], "between 0 and 1"),
    (["split.strategy=official"], "split.validation_list"),
    (["split.strategy=group"], "at least 2 groups"),
])
def test_unusable_settings_say_what_to_change(tmp_path, settings, fragment):
    manifest = write_manifest(tmp_path / "data", [(f"clip{i}.wav", "x", "") for i in range(2)])
    if "split.strategy=group" in settings:
        manifest = write_manifest(tmp_path / "data", [(f"clip{i}.wav", "x", "g") for i in range(2)])
    with pytest.raises(UserError, match=fragment):
        run_split(tmp_path, *manifest_settings(manifest, *settings))
    assert not (tmp_path / "processed" / "split.json").exists()


def test_cli_split_writes_split_json(tmp_path):
    rows = [(f"{'A' if i % 4 == 0 else 'z'}clip{i}.wav", "dog" if i % 2 else "cat", "") for i in range(12)]
    manifest = write_manifest(tmp_path / "data", rows)
    workdir = tmp_path / "work"
    result = CliRunner().invoke(main, ["split", "--workdir", str(workdir), "--set", "data.source=manifest",
                                       "--set", f"data.manifest={manifest}"])
    assert result.exit_code == 0, result.output
    split = json.loads((workdir / "processed" / "split.json").read_text())
    assert set(split) == {"source", "strategy", "task", "classes", "splits"}
    assert split["classes"] == ["cat", "dog"] and split["task"] == "singlelabel"
    assert ids(split, "validation") == [path for path, _, _ in rows if path.startswith("A")]
    clip = split["splits"]["train"][0]
    assert set(clip) == {"id", "audio", "labels", "group"} and Path(clip["audio"]).is_file()
    assert (workdir / "processed" / "split.meta.json").is_file()
    bad = CliRunner().invoke(main, ["split", "--workdir", str(workdir), "--set", "data.source=manifest",
                                    "--set", f"data.manifest={tmp_path / 'absent.csv'}"])
    assert bad.exit_code == 2 and "absent.csv" in bad.output
