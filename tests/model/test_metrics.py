import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from audiotokens.model.metrics import (
    macro_average_precision,
    multilabel_metrics,
    per_class_average_precision,
    singlelabel_metrics,
)
from audiotokens.model.objectives import objective_for


@pytest.fixture
def multilabel_data():
    rng = np.random.default_rng(3)
    targets = (rng.random((200, 7)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # a class with no positive clip
    scores = np.clip(targets * 0.3 + rng.random(targets.shape) * 0.8, 0, 1)
    return targets, scores


def test_macro_map_equals_sklearn_over_classes_with_positives(multilabel_data):
    targets, scores = multilabel_data
    keep = [c for c in range(targets.shape[1]) if c != 4]
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in keep])
    value, excluded = macro_average_precision(targets, scores)
    assert excluded == 1
    assert value == pytest.approx(expected, abs=1e-12)
    assert value == pytest.approx(average_precision_score(targets[:, keep], scores[:, keep], average="macro"))
    # macro, not the flattened (micro) figure
    assert value != pytest.approx(average_precision_score(targets[:, keep], scores[:, keep], average="micro"))
    ap = per_class_average_precision(targets, scores)
    assert np.isnan(ap[4]) and np.isfinite(np.delete(ap, 4)).all()


def test_multilabel_metrics_equal_sklearn(multilabel_data):
    targets, scores = multilabel_data
    threshold = 0.55
    predicted = (scores >= threshold).astype(int)
    keep = [c for c in range(targets.shape[1]) if c != 4]
    result = multilabel_metrics(targets, scores, threshold)
    assert result["classes_excluded"] == 1
    assert result["micro_f1"] == pytest.approx(f1_score(targets, predicted, average="micro", zero_division=0))
    assert result["macro_f1"] == pytest.approx(
        f1_score(targets[:, keep], predicted[:, keep], average="macro", zero_division=0))
    assert result["hamming"] == pytest.approx(hamming_loss(targets, predicted))
    assert objective_for("multilabel").metrics(targets, scores, threshold) == result


def test_map_undefined_without_any_positive():
    value, excluded = macro_average_precision(np.zeros((5, 3)), np.random.default_rng(0).random((5, 3)))
    assert np.isnan(value) and excluded == 3


def test_singlelabel_metrics_equal_sklearn():
    rng = np.random.default_rng(5)
    targets = rng.choice([0, 1, 2, 4], size=150)  # class 3 never occurs
    logits = rng.normal(size=(150, 5))
    logits[np.arange(150), targets] += 1.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    result = singlelabel_metrics(targets, probabilities)
    assert result["accuracy"] == pytest.approx(accuracy_score(targets, predicted))
    assert result["macro_f1"] == pytest.approx(
        f1_score(targets, predicted, labels=[0, 1, 2, 4], average="macro", zero_division=0))
    assert result["classes_excluded"] == 1
    assert objective_for("singlelabel").metrics(targets, probabilities, 0.5) == result


def test_primary_metric():
    assert objective_for("multilabel").primary_metric == "mAP"
    assert objective_for("singlelabel").primary_metric == "accuracy"
