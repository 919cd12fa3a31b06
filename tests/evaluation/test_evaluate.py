"""Evaluation reports: every number checked against hand computation or scikit-learn."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from projects import copy_project, left_out_project, project_config, trained_project
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from audiotokens.cli import main
from audiotokens.errors import UserError
from audiotokens.evaluation import reports
from audiotokens.evaluation.evaluate import Evaluator
from audiotokens.model.objectives import objective_for
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.run import execute
from audiotokens.pipeline.stores import open_split

# ---------------------------------------------------------------- a trained project, built once per session


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "multilabel")


@pytest.fixture(scope="module")
def singlelabel(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "singlelabel")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def random_multilabel(seed=0, clips=60, classes=5):
    rng = np.random.default_rng(seed)
    y = (rng.random((clips, classes)) < 0.3).astype(np.float32)
    y[:, -1] = 0  # a class with no positives
    scores = np.clip(0.5 * y + 0.6 * rng.random((clips, classes)), 0, 1).astype(np.float32)
    return y, scores


# ---------------------------------------------------------------- pure report functions


def test_sweep_row_equals_hand_computation():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.55]])
    row = reports.threshold_sweep(y, scores, [0.5])[0]
    # at 0.5: (0,0) TP, (1,0) FP, (1,1) TP, (2,0) FN, (2,1) TP
    assert (row["true_positives"], row["false_positives"], row["false_negatives"]) == (3, 1, 1)
    assert row["precision"] == pytest.approx(3 / 4)
    assert row["recall"] == pytest.approx(3 / 4)
    assert row["f1"] == pytest.approx(3 / 4)
    # a threshold above every score predicts nothing: precision 0 by convention, not NaN
    empty = reports.threshold_sweep(y, scores, [0.95])[0]
    assert (empty["precision"], empty["recall"], empty["true_positives"]) == (0.0, 0.0, 0)
    assert empty["false_negatives"] == 4


def test_sweep_matches_sklearn_micro_on_random_data():
    y, scores = random_multilabel(1)
    rows = reports.threshold_sweep(y, scores)
    assert [r["threshold"] for r in rows] == pytest.approx(np.arange(1, 20) * 0.05)
    for row in rows:
        predicted = scores >= row["threshold"]
        assert row["precision"] == pytest.approx(precision_score(y, predicted, average="micro", zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y, predicted, average="micro", zero_division=0))
        assert row["f1"] == pytest.approx(f1_score(y, predicted, average="micro", zero_division=0))
        assert row["false_positives"] == int(((y == 0) & predicted).sum())
        assert row["false_negatives"] == int(((y == 1) & ~predicted).sum())


def test_one_class_sweep_matches_sklearn():
    y, scores = random_multilabel(2)
    for row in reports.threshold_sweep(y[:, 1], scores[:, 1]):
        predicted = scores[:, 1] >= row["threshold"]
        assert row["precision"] == pytest.approx(precision_score(y[:, 1], predicted, zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y[:, 1], predicted, zero_division=0))


def test_per_class_table_matches_sklearn():
    y, scores = random_multilabel(3)
    classes = [f"c{i}" for i in range(y.shape[1])]
    rows = reports.per_class_table(y, scores, classes, objective_for("multilabel"), 0.5)
    assert sorted(r["class"] for r in rows) == classes
    for row in rows:
        column = classes.index(row["class"])
        assert row["positives"] == int(y[:, column].sum())
        predicted = scores[:, column] >= 0.5
        assert row["f1"] == pytest.approx(f1_score(y[:, column], predicted, zero_division=0))
        assert row["precision"] == pytest.approx(precision_score(y[:, column], predicted, zero_division=0))
        if row["positives"]:
            assert row["ap"] == pytest.approx(average_precision_score(y[:, column], scores[:, column]))
        else:
            assert row["ap"] is None and row["best_f1"] is None
    aps = [r["ap"] for r in rows if r["ap"] is not None]
    assert aps == sorted(aps, reverse=True)
    assert rows[-1]["class"] == "c4"  # the class without positives sorts last


def test_best_f1_threshold_is_the_brute_force_optimum():
    y, scores = random_multilabel(4)
    for column in range(4):
        best_f1, threshold = reports.best_f1_threshold(y[:, column], scores[:, column])
        brute = max(f1_score(y[:, column], scores[:, column] >= t, zero_division=0)
                    for t in np.unique(scores[:, column]))
        assert best_f1 == pytest.approx(brute)
        assert f1_score(y[:, column], scores[:, column] >= threshold) == pytest.approx(brute)


def test_singlelabel_table_uses_argmax_and_confusion_matches_sklearn():
    rng = np.random.default_rng(5)
    true_ids = rng.integers(0, 4, size=50)
    logits = rng.normal(size=(50, 4)) + 1.5 * np.eye(4)[true_ids]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.eye(4)[true_ids]
    predicted_ids = scores.argmax(axis=1)
    matrix = reports.confusion_matrix(true_ids, predicted_ids, 4)
    assert matrix.sum() == 50
    np.testing.assert_array_equal(matrix, sk_confusion_matrix(true_ids, predicted_ids, labels=range(4)))
    classes = ["a", "b", "c", "d"]
    rows = {r["class"]: r for r in reports.per_class_table(y, scores, classes, objective_for("singlelabel"),
                                                           0.99)}
    expected_f1 = f1_score(true_ids, predicted_ids, average=None, labels=range(4), zero_division=0)
    expected_recall = recall_score(true_ids, predicted_ids, average=None, labels=range(4), zero_division=0)
    for i, name in enumerate(classes):
        assert rows[name]["f1"] == pytest.approx(expected_f1[i])
        assert rows[name]["recall"] == pytest.approx(expected_recall[i])


def test_nearest_names_suggests_close_spellings():
    classes = ["Dog", "Bark", "Cat", "Speech", "Male speech, man speaking"]
    assert reports.nearest_names("dgo", classes)[0] == "Dog"
    assert "Speech" in reports.nearest_names("speech", classes)
    assert "Male speech, man speaking" in reports.nearest_names("speech", classes)


def test_csv_and_markdown_round_trip(tmp_path):
    y, scores = random_multilabel(6)
    rows = reports.per_class_table(y, scores, list("vwxyz"), objective_for("multilabel"), 0.5)
    path = tmp_path / "t.csv"
    reports.write_csv(path, rows, reports.PER_CLASS_COLUMNS)
    with open(path) as handle:
        read = list(csv.DictReader(handle))
    assert [r["class"] for r in read] == [r["class"] for r in rows]
    for got, want in zip(read, rows):
        assert int(got["positives"]) == want["positives"]
        assert (got["ap"] == "") == (want["ap"] is None)
        if want["ap"] is not None:
            assert float(got["ap"]) == pytest.approx(want["ap"], abs=1e-6)
    text = reports.markdown_table(rows, reports.PER_CLASS_COLUMNS)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == len(reports.PER_CLASS_COLUMNS) + 1 for line in lines)
    assert "—" in lines[-1]  # the class without positives has no AP


def test_plots_write_readable_pngs(tmp_path):
    import matplotlib.image

    y, scores = random_multilabel(7, classes=6)
    classes = [f"class {i}" for i in range(6)]
    rows = reports.per_class_table(y, scores, classes, objective_for("multilabel"), 0.5)
    reports.plot_ap_bars(tmp_path / "ap.png", rows)
    reports.plot_pr_curves(tmp_path / "pr.png", y, scores, classes, rows)
    reports.plot_confusion(tmp_path / "cm.png", reports.confusion_matrix([0, 1, 1], [0, 1, 0], 6), classes)
    for name in ("ap.png", "pr.png", "cm.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100


# ---------------------------------------------------------------- the evaluate stage on real artifacts


def evaluated(root: Path, **options) -> tuple[dict, Path]:
    """One report (a manifest's, else one split's: validation unless named) and its folder."""
    if not options.get("manifest"):
        options.setdefault("split", "validation")
    counts = Evaluator(project_config(root), **options).run()
    name = Path(options["manifest"]).stem if options.get("manifest") else options["split"]
    return counts, Layout(root / "work").eval_dir(name)


def test_split_reports_match_sklearn_on_the_scores_they_hold(multilabel):
    counts, out = evaluated(multilabel, class_name="MID")
    metrics = json.loads((out / "metrics.json").read_text())
    _, index = open_split(Layout(multilabel / "work"), "tokens", "validation")
    clips = json.loads((out / "clips.json").read_text())
    assert clips["ids"] == index.ids and clips["classes"] == index.classes
    scores, targets = np.load(out / "scores.npy"), index.label_matrix()
    assert scores.shape == targets.shape and np.isfinite(scores).all()

    evaluated_classes = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    expected_map = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in evaluated_classes])
    assert metrics["mAP"] == pytest.approx(expected_map)
    assert metrics["micro_f1"] == pytest.approx(f1_score(targets, scores >= 0.5, average="micro"))
    assert metrics["clips"] == counts["clips"] == len(index.ids)
    assert counts["mAP"] == metrics["mAP"]

    for row in read_csv(out / "per_class.csv"):
        c = index.classes.index(row["class"])
        assert int(row["positives"]) == int(targets[:, c].sum())
        assert float(row["ap"]) == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-6)
        assert float(row["f1"]) == pytest.approx(f1_score(targets[:, c], scores[:, c] >= 0.5, zero_division=0),
                                                 abs=1e-6)
    for row in read_csv(out / "sweep.csv"):
        predicted = scores >= float(row["threshold"])
        assert float(row["precision"]) == pytest.approx(
            precision_score(targets, predicted, average="micro", zero_division=0), abs=1e-6)
        assert float(row["recall"]) == pytest.approx(recall_score(targets, predicted, average="micro"), abs=1e-6)
        assert int(row["false_positives"]) == int(((targets == 0) & predicted).sum())
    mid = index.classes.index("mid")
    class_rows = read_csv(out / "sweep_mid.csv")  # --class matched case-insensitively
    assert len(class_rows) == 19
    for row in class_rows:
        predicted = scores[:, mid] >= float(row["threshold"])
        assert int(row["false_negatives"]) == int(((targets[:, mid] == 1) & ~predicted).sum())
        assert float(row["recall"]) == pytest.approx(recall_score(targets[:, mid], predicted), abs=1e-6)
    assert (out / "per_class.md").read_text().count("\n| ") == 1 + len(index.classes)
    for png in ("per_class_ap.png", "pr_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "confusion.csv").exists()  # multi-label: no confusion matrix


def test_singlelabel_confusion_matrix_and_accuracy(singlelabel):
    _, out = evaluated(singlelabel)
    metrics = json.loads((out / "metrics.json").read_text())
    _, index = open_split(Layout(singlelabel / "work"), "tokens", "validation")
    scores = np.load(out / "scores.npy")
    true_ids = np.array([labels[0] for labels in index.labels])
    predicted = scores.argmax(axis=1)
    assert metrics["task"] == "singlelabel"
    assert metrics["accuracy"] == pytest.approx(accuracy_score(true_ids, predicted))
    with open(out / "confusion.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0][1:] == index.classes and [r[0] for r in table[1:]] == index.classes
    matrix = np.array([[int(v) for v in r[1:]] for r in table[1:]])
    assert matrix.sum() == len(index.ids)
    np.testing.assert_array_equal(matrix, sk_confusion_matrix(true_ids, predicted, labels=range(len(index.classes))))
    per_class = {r["class"]: r for r in read_csv(out / "per_class.csv")}
    recalls = recall_score(true_ids, predicted, labels=range(len(index.classes)), average=None, zero_division=0)
    for c, name in enumerate(index.classes):
        assert float(per_class[name]["recall"]) == pytest.approx(recalls[c], abs=1e-6)
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_class_names_close_matches(multilabel):
    with pytest.raises(UserError, match=r"'hihg'.*'high'"):
        Evaluator(project_config(multilabel), class_name="hihg").run()


def test_manifest_evaluation_scores_audio_like_the_split_and_reports_bad_files(multilabel, tmp_path):
    _, split_out = evaluated(multilabel)
    split_ids = json.loads((split_out / "clips.json").read_text())["ids"]
    split_scores = np.load(split_out / "scores.npy")
    labels = dict(line.split(",", 1) for line in (multilabel / "manifest.csv").read_text().splitlines()[1:])
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    rows = ["path,label"] + [f"{multilabel / clip},{labels[clip]}" for clip in split_ids]
    rows += [f"{tmp_path / 'broken.wav'},low", f"{tmp_path / 'absent.wav'},high"]
    manifest = tmp_path / "heldout.csv"
    manifest.write_text("\n".join(rows) + "\n")

    counts, out = evaluated(multilabel, manifest=manifest)
    assert out.name == "heldout" and counts["clips"] == len(split_ids) and counts["skipped"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    reasons = {Path(s["id"]).name: s["reason"] for s in metrics["skipped_clips"]}
    assert reasons.keys() == {"broken.wav", "absent.wav"}
    assert reasons["broken.wav"].startswith("undecodable") and reasons["absent.wav"].startswith("missing")
    ids = json.loads((out / "clips.json").read_text())["ids"]
    assert ids == [str(multilabel / clip) for clip in split_ids]
    np.testing.assert_allclose(np.load(out / "scores.npy"), split_scores, atol=1e-5)
    assert metrics["mAP"] == pytest.approx(json.loads((split_out / "metrics.json").read_text())["mAP"], abs=1e-6)

    manifest.write_text(f"path,label\n{multilabel / split_ids[0]},hgh\n")
    with pytest.raises(UserError, match=r"'hgh'.*not classes of the model.*'high'"):
        evaluated(multilabel, manifest=manifest)


def test_refuses_a_split_tokenized_with_another_vocabulary(multilabel, tmp_path):
    root = copy_project(multilabel, tmp_path / "copy")
    _, before = evaluated(root)
    scores = np.load(before / "scores.npy")
    config = project_config(root, "cluster.n_clusters=6")
    execute("cluster", config)
    execute("tokenize", config)
    with pytest.raises(UserError, match=r"tokens\.npy was made with another vocabulary than the model bundle"):
        Evaluator(config).run()

    # the same settings again give the same vocabulary: the digests agree and the scores come back
    execute("cluster", project_config(root))
    execute("tokenize", project_config(root))
    _, again = evaluated(root)
    np.testing.assert_array_equal(np.load(again / "scores.npy"), scores)

    # frames of other mel settings, a vocabulary fitted on them: not what the model was trained on
    config = project_config(root, "spectrogram.n_mels=32")
    for stage in ("spectrogram", "cluster", "tokenize"):
        execute(stage, config)
    with pytest.raises(UserError, match="another vocabulary"):
        Evaluator(config).run()


def test_reports_are_replaced_whole(multilabel, tmp_path):
    root = copy_project(multilabel, tmp_path / "copy")
    _, out = evaluated(root, class_name="low")
    assert (out / "sweep_low.csv").is_file()
    _, out = evaluated(root)
    assert not (out / "sweep_low.csv").exists()
    assert not list(out.parent.glob(".*"))  # no temporary folder left behind


def test_cli_prints_headline_and_paths(multilabel, tmp_path):
    root = copy_project(multilabel, tmp_path / "copy")
    result = CliRunner().invoke(main, ["evaluate", "--config", str(root / "run.toml"), "--workdir",
                                       str(root / "work"), "--class", "high"])
    assert result.exit_code == 0, result.output
    assert "validation: " in result.output and " mAP " in result.output
    assert str(root / "work/output/eval/validation") in result.output
    record = json.loads((root / "work/output/eval/validation.meta.json").read_text())
    metrics = json.loads((root / "work/output/eval/validation/metrics.json").read_text())
    assert record["counts"]["validation"]["mAP"] == metrics["mAP"]  # the stage scores validation, then test
    test = json.loads((root / "work/output/eval/test/metrics.json").read_text())
    assert record["counts"]["test"]["mAP"] == test["mAP"] and "test: " in result.output
    result = CliRunner().invoke(main, ["evaluate", "--workdir", str(root / "work"), "--split", "nope"])
    assert result.exit_code == 2 and "split 'nope' has no clips in processed/split.json" in result.output


def test_clips_of_a_class_without_training_clips_are_stated_and_count_as_errors(tmp_path_factory):
    """Class 'c' is only in the test split: its 2 clips left it (6 listed, 4 scored), and the figures say so."""
    layout = Layout(left_out_project(tmp_path_factory) / "work")
    out = layout.eval_dir("test")
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["clips"], metrics["skipped"], metrics["left_out_clips"]) == (4, 0, 2)
    assert metrics["left_out_classes"] == ["c"] and "2 clips of 1 class without a training clip (c)" in \
        metrics["left_out_note"]
    _, index = open_split(layout, "tokens", "test")
    kept = accuracy_score([labels[0] for labels in index.labels], np.load(out / "scores.npy").argmax(axis=1))
    assert metrics["accuracy_kept_classes"] == pytest.approx(kept)
    assert metrics["accuracy"] == pytest.approx(kept * 4 / 6)  # the left-out clips count as errors
    validation = json.loads((layout.eval_dir("validation") / "metrics.json").read_text())
    assert validation["left_out_clips"] == 0 and validation["left_out_classes"] == []
    assert "accuracy_kept_classes" not in validation
