"""Evaluation reports: every number checked against hand computation or scikit-learn."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from audiotokens import reports


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
    rows = reports.per_class_table(y, scores, classes, "multilabel", 0.5)
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
    rows = {r["class"]: r for r in reports.per_class_table(y, scores, classes, "singlelabel", 0.99)}
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
    rows = reports.per_class_table(y, scores, list("vwxyz"), "multilabel", 0.5)
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
    rows = reports.per_class_table(y, scores, classes, "multilabel", 0.5)
    reports.plot_ap_bars(tmp_path / "ap.png", rows)
    reports.plot_pr_curves(tmp_path / "pr.png", y, scores, classes, rows)
    reports.plot_confusion(tmp_path / "cm.png", reports.confusion_matrix([0, 1, 1], [0, 1, 0], 6), classes)
    for name in ("ap.png", "pr.png", "cm.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100
