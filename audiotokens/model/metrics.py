"""Classification metrics, thin wrappers over scikit-learn with the conventions of audio tagging.

Macro mAP is the mean of per-class average precision over the classes with at least one positive in
the evaluated set (AP is undefined without positives); the number of classes left out is reported.
Macro F1 is averaged over the same classes, so both macro figures describe the same class set; micro
F1 and Hamming loss count every class (a false positive on an absent class still costs).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss


def classes_with_positives(targets: np.ndarray) -> np.ndarray:
    """Indices of the columns of a (clips, classes) 0/1 matrix that hold at least one positive."""
    return np.flatnonzero(np.asarray(targets).sum(axis=0) > 0)


def per_class_average_precision(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP of every class; NaN for classes without positives."""
    targets = np.asarray(targets)
    ap = np.full(targets.shape[1], np.nan)
    for column in classes_with_positives(targets):
        ap[column] = average_precision_score(targets[:, column], scores[:, column])
    return ap


def macro_average_precision(targets: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """(macro mAP over classes with >= 1 positive, number of classes excluded). mAP is NaN if none qualify."""
    ap = per_class_average_precision(targets, scores)
    evaluated = ~np.isnan(ap)
    value = float(ap[evaluated].mean()) if evaluated.any() else float("nan")
    return value, int((~evaluated).sum())


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of (clips, classes) 0/1 targets against sigmoid scores."""
    targets = np.asarray(targets).astype(np.int64)
    predicted = (np.asarray(scores) >= threshold).astype(np.int64)
    mean_ap, excluded = macro_average_precision(targets, scores)
    evaluated = classes_with_positives(targets)
    return {
        "mAP": mean_ap,
        "classes_excluded": excluded,
        "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "macro_f1": _macro_f1(targets[:, evaluated], predicted[:, evaluated]),
        "hamming": float(hamming_loss(targets, predicted)),
    }


def singlelabel_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Metrics of class-id targets (clips,) against softmax probabilities (clips, classes)."""
    targets = np.asarray(targets).astype(np.int64)
    predicted = np.asarray(probabilities).argmax(axis=1)
    present = np.unique(targets)
    return {
        "accuracy": float(accuracy_score(targets, predicted)),
        "macro_f1": float(f1_score(targets, predicted, labels=present, average="macro", zero_division=0))
        if len(present) else float("nan"),
        "classes_excluded": int(probabilities.shape[1] - len(present)),
    }


def _macro_f1(targets: np.ndarray, predicted: np.ndarray) -> float:
    if targets.shape[1] == 0:
        return float("nan")
    return float(f1_score(targets, predicted, average="macro", zero_division=0))


def count_left_out(metrics: dict[str, float], clips: int, left_out_clips: int) -> dict[str, float]:
    """Figures of a split that lost `left_out_clips` single-label clips of classes the model does not predict.

    Accuracy counts them as errors (the model can never name their class), so it stays the share of the
    split's clips the model gets right; `accuracy_kept_classes` is the figure over the `clips` scored. The
    per-class figures are left as they are: they cover the classes the model predicts.
    """
    if not left_out_clips or "accuracy" not in metrics:
        return metrics
    kept = metrics["accuracy"]
    correct = kept * clips if clips else 0.0
    figures = dict(metrics)
    figures["accuracy"] = float(correct / (clips + left_out_clips))
    figures["accuracy_kept_classes"] = kept
    return figures
