"""Evaluation reports from a label matrix and a score matrix: tables, threshold sweeps, confusion, plots.

Every function here is pure (arrays in, rows or figures out) so each number can be checked against
scikit-learn on small cases. A prediction is positive when its score is >= the threshold.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from ..model.objectives import Objective

SWEEP_THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05 … 0.95
SWEEP_COLUMNS = ("threshold", "precision", "recall", "f1", "true_positives", "false_positives",
                 "false_negatives")
PER_CLASS_COLUMNS = ("class", "positives", "ap", "precision", "recall", "f1", "best_f1", "best_threshold")


# ---------------------------------------------------------------- numbers


def _ratio(numerator: float, denominator: float) -> float:
    """A ratio that is 0 when undefined (scikit-learn's zero_division=0), never NaN."""
    return float(numerator / denominator) if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def counts_at(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Precision, recall, F1 and the error counts of 0/1 predictions (any shape, pooled = micro)."""
    truth = np.asarray(y_true) > 0
    predicted = np.asarray(predicted, dtype=bool)
    tp = int(np.sum(truth & predicted))
    fp = int(np.sum(~truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "true_positives": tp, "false_positives": fp, "false_negatives": fn}


def threshold_sweep(y_true: np.ndarray, scores: np.ndarray,
                    thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> list[dict[str, Any]]:
    """One row per threshold, pooled over every (clip, class) cell given (micro for a matrix)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    return [{"threshold": float(t), **counts_at(y_true, scores >= t)} for t in thresholds]


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """(best F1, the score threshold reaching it) for one class; (None, None) without positives.

    Searched over every distinct score, not a grid, so it is the exact optimum for this data.
    """
    y_true = np.asarray(y_true) > 0
    if not y_true.any():
        return None, None
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    # the last (precision=1, recall=0) point has no threshold
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def per_class_table(y_true: np.ndarray, scores: np.ndarray, classes: Sequence[str], objective: Objective,
                    threshold: float) -> list[dict[str, Any]]:
    """One row per class, best AP first; classes without positives (AP undefined) last with ap None.

    precision/recall/F1 are at `threshold` (multi-label) or of the arg-max decision (single-label);
    best_f1/best_threshold are the one-vs-rest optimum of that class's scores.
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    predicted = objective.decisions(scores, threshold)
    rows = []
    for column, name in enumerate(classes):
        truth = y_true[:, column] > 0
        positives = int(truth.sum())
        ap = float(average_precision_score(truth, scores[:, column])) if positives else None
        best_f1, best_threshold = best_f1_threshold(truth, scores[:, column])
        at = counts_at(truth, predicted[:, column])
        rows.append({"class": name, "positives": positives, "ap": ap, "precision": at["precision"],
                     "recall": at["recall"], "f1": at["f1"], "best_f1": best_f1,
                     "best_threshold": best_threshold})
    return sort_by_ap(rows)


def sort_by_ap(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest AP first, then by name; rows whose AP is undefined go last."""
    return sorted(rows, key=lambda r: (r["ap"] is None, -(r["ap"] or 0.0), r["class"]))


def confusion_matrix(true_ids: np.ndarray, predicted_ids: np.ndarray, n_classes: int) -> np.ndarray:
    """(true class, predicted class) clip counts."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_ids, dtype=np.int64), np.asarray(predicted_ids, dtype=np.int64)), 1)
    return matrix


def nearest_names(name: str, choices: Sequence[str], limit: int = 5) -> list[str]:
    """Choices closest to a misspelt name: case-insensitive substring matches, then similar spellings."""
    import difflib

    lowered = name.lower()
    contains = [c for c in choices if lowered in c.lower() or c.lower() in lowered]
    by_lower = {c.lower(): c for c in choices}
    similar = [by_lower[c] for c in difflib.get_close_matches(lowered, list(by_lower), n=limit, cutoff=0.5)]
    return list(dict.fromkeys(contains + similar))[:limit]


# ---------------------------------------------------------------- text files


def _cell(value: Any, digits: int | None = None) -> str:
    """Text of one cell: None/NaN empty; floats rounded to 6 decimals (CSV) or fixed `digits` (Markdown)."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}f}" if digits is not None else str(round(float(value), 6))
    return str(value)


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV; None becomes an empty cell, floats are rounded to 6 decimals."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table; an undefined value shows as an em dash."""
    def text(value: Any) -> str:
        return (_cell(value, 4) or "—").replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(text(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_confusion_csv(path: str | Path, matrix: np.ndarray, classes: Sequence[str]) -> None:
    """Rows are true classes, columns predicted classes."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, matrix):
            writer.writerow([name, *map(int, row)])


# ---------------------------------------------------------------- plots


def pyplot():
    """matplotlib.pyplot on the Agg backend: plots are files, no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MAX_BARS = 60  # beyond this the AP chart shows the best and worst halves


def plot_ap_bars(path: str | Path, rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """Horizontal AP bars, best class at the top (rows as from per_class_table)."""
    plt = pyplot()
    rated = [r for r in rows if r["ap"] is not None]
    if len(rated) > MAX_BARS:
        shown = rated[:MAX_BARS // 2] + rated[-MAX_BARS // 2:]
        note = f" (best and worst {MAX_BARS // 2} of {len(rated)} classes)"
    else:
        shown, note = rated, ""
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * max(len(shown), 1)))
    names = [r["class"] for r in shown][::-1]
    values = [r["ap"] for r in shown][::-1]
    ax.barh(range(len(shown)), values, color="tab:blue")
    ax.set_yticks(range(len(shown)), names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title((title or "per-class AP") + note, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pr_curves(path: str | Path, y_true: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                   rows: Sequence[dict[str, Any]], n: int = 3) -> None:
    """Precision–recall curves of the n best and n worst classes by AP, side by side (no class in both)."""
    plt = pyplot()
    index = {name: i for i, name in enumerate(classes)}
    rated = [r for r in rows if r["ap"] is not None]
    n_best = min(n, math.ceil(len(rated) / 2))
    best, worst = rated[:n_best], rated[n_best:][::-1][:n]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, chosen, label in ((axes[0], best, "best"), (axes[1], worst, "worst")):
        for row in chosen:
            column = index[row["class"]]
            precision, recall, _ = precision_recall_curve(np.asarray(y_true)[:, column] > 0,
                                                          np.asarray(scores)[:, column])
            ax.step(recall, precision, where="post", label=f"{row['class']} (AP {row['ap']:.3f})")
        ax.set_title(f"{label} classes by AP", fontsize=10)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.01)
        if chosen:
            ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("precision")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: str | Path, matrix: np.ndarray, classes: Sequence[str]) -> None:
    """Confusion matrix coloured by row share (recall), annotated with counts when small enough to read."""
    plt = pyplot()
    n = len(classes)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = min(4 + 0.35 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
