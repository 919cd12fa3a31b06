"""Per-epoch training records: metrics.jsonl and curves.png of a run's files (layout.RunFiles:
output/train.partial/ while the run is under way), and, through tracking.py, TensorBoard and MLflow."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..model.objectives import Objective
from ..pipeline.files import append_jsonl, atomic_path, write_jsonl
from ..pipeline.layout import RunFiles

log = logging.getLogger("audiotokens")


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined metrics (e.g. mAP with no positive class) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value


class TrainingLog:
    """One JSON line per epoch with train and validation side by side; the file always matches the history.

    A fresh run starts an empty file; a resumed run rewrites it from the checkpoint's history, so epochs
    that ran after the last checkpoint (and were lost with it) do not appear twice. Each epoch also goes to
    the run's tracking (TensorBoard, MLflow: tracking.py), which replays the history itself.
    """

    def __init__(self, files: RunFiles, objective: Objective, history: list[dict[str, Any]], tracking=None):
        self.files, self.objective, self.tracking = files, objective, tracking
        self.history = list(history)
        write_jsonl(files.metrics, self.history)

    def record(self, row: dict[str, Any]) -> None:
        row = finite_or_none(row)
        self.history.append(row)
        append_jsonl(self.files.metrics, row)
        if self.tracking is not None:
            self.tracking.epoch(row)
        draw_curves(self.history, self.objective, self.files.curves)

    @staticmethod
    def append_result(files: RunFiles, row: dict[str, Any]) -> None:
        """A line that is not an epoch (e.g. the test split's figures), after the epochs it summarises."""
        append_jsonl(files.metrics, finite_or_none(row))


class NoTrainingLog:
    """What a torchrun process other than rank 0 keeps instead of a TrainingLog: nothing."""

    def record(self, row: dict[str, Any]) -> None:
        pass


def epoch_line(row: dict[str, Any], epochs: int, objective: Objective) -> str:
    """A compact one-line summary: each figure as `train | validation`."""
    train, validation = row["train"], row["validation"]
    names = ["loss", *objective.headline]
    figures = "  ".join(f"{name} {format_figure(train.get(name))} | {format_figure(validation.get(name))}" for name in names)
    best = "  *best" if row.get("best") else ""
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  {figures}  lr {row['lr']:.2e}  "
            f"{row['train_samples_per_s']:.0f} clips/s{best}")


def format_figure(value: Any) -> str:
    """A metric as logged: 4 decimals, n/a (padded to the same width) when undefined."""
    return "  n/a" if value is None else f"{value:.4f}"


def draw_curves(history: list[dict[str, Any]], objective: Objective, path: Path) -> None:
    """Loss and the primary score per epoch, train against validation."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

    score = objective.primary_metric
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    for axis, name in zip(axes, ("loss", score)):
        for side, style in (("train", "-o"), ("validation", "-s")):
            values = [row[side].get(name) for row in history]
            axis.plot(epochs, [math.nan if v is None else v for v in values], style, label=side, markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
