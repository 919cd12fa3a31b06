"""Training objectives: what a task means for the loss, the output activation, the metrics and the decisions.

The data side decides a split's task (the string `ClipIndex.task`, see sources.records); everything after it
asks `objective_for(task)` and never compares task strings again. A new objective is one class here plus
its entry in OBJECTIVES.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.sources.records import MULTILABEL, SINGLELABEL
from ..errors import UserError
from .metrics import multilabel_metrics, singlelabel_metrics


class Objective(ABC):
    """Loss on logits, scores in [0, 1], per-clip targets, metrics and the class decisions of a task."""

    task: ClassVar[str]
    primary_metric: ClassVar[str]  # the validation figure that picks the best checkpoint
    headline: ClassVar[tuple[str, ...]]  # the figures logs and summaries show
    uses_threshold: ClassVar[bool]  # whether decisions depend on a score threshold
    independent_classes: ClassVar[bool]  # one binary problem per class (else one choice among the classes)

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def clip_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(batch,) the loss of each clip (or window): `loss` is their mean."""

    @abstractmethod
    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities, always float32 whatever the logits' dtype."""

    @abstractmethod
    def target(self, labels: Sequence[int], n_classes: int) -> torch.Tensor:
        """One clip's training target from its class ids."""

    @abstractmethod
    def metric_targets(self, label_matrix: np.ndarray) -> np.ndarray:
        """What `metrics` takes as targets, from a (clips, classes) 0/1 matrix."""

    @abstractmethod
    def metrics(self, targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]: ...

    @abstractmethod
    def decisions(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        """(clips, classes) booleans: the classes the model predicts for each clip."""

    def label_problem(self, labels: Sequence[int]) -> str | None:
        """Why one clip's labels do not fit the task, or None."""
        return None


class MultiLabel(Objective):
    """Independent classes: binary cross-entropy on logits, sigmoid scores, decisions at a threshold."""

    task = MULTILABEL
    primary_metric = "mAP"
    headline = ("mAP", "micro_f1", "macro_f1")
    uses_threshold = True
    independent_classes = True

    def __init__(self):
        self._loss = nn.BCEWithLogitsLoss()

    def loss(self, logits, targets):
        return self._loss(logits, targets)

    def clip_losses(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)

    def scores(self, logits):
        return torch.sigmoid(logits.float())

    def target(self, labels, n_classes):
        vector = torch.zeros(n_classes, dtype=torch.float32)
        vector[list(labels)] = 1.0
        return vector

    def metric_targets(self, label_matrix):
        return np.asarray(label_matrix)

    def metrics(self, targets, scores, threshold):
        return multilabel_metrics(targets, scores, threshold)

    def decisions(self, scores, threshold):
        return np.asarray(scores) >= threshold


class SingleLabel(Objective):
    """Exactly one class per clip: cross-entropy, softmax scores, the arg-max class is the decision."""

    task = SINGLELABEL
    primary_metric = "accuracy"
    headline = ("accuracy", "macro_f1")
    uses_threshold = False
    independent_classes = False

    def __init__(self):
        self._loss = nn.CrossEntropyLoss()

    def loss(self, logits, targets):
        return self._loss(logits, targets)

    def clip_losses(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")

    def scores(self, logits):
        return torch.softmax(logits.float(), dim=-1)

    def target(self, labels, n_classes):
        return torch.tensor(labels[0], dtype=torch.long)

    def metric_targets(self, label_matrix):
        matrix = np.asarray(label_matrix)
        if len(matrix) and not (matrix.sum(axis=1) == 1).all():
            row = int(np.flatnonzero(matrix.sum(axis=1) != 1)[0])
            raise UserError(f"clip {row} does not have exactly one label, but the model is single-label")
        return matrix.argmax(axis=1) if len(matrix) else np.zeros(0, dtype=np.int64)

    def metrics(self, targets, scores, threshold):
        return singlelabel_metrics(targets, scores)

    def decisions(self, scores, threshold):
        scores = np.asarray(scores)
        predicted = np.zeros(scores.shape, dtype=bool)
        if scores.size:
            predicted[np.arange(len(scores)), scores.argmax(axis=1)] = True
        return predicted

    def label_problem(self, labels):
        return None if len(labels) == 1 else f"has {len(labels)} labels but the task is single-label"


OBJECTIVES: dict[str, type[Objective]] = {kind.task: kind for kind in (MultiLabel, SingleLabel)}


def objective_for(task: str) -> Objective:
    """The objective of a task string as the data side records it."""
    if task not in OBJECTIVES:
        raise UserError(f"task '{task}' is unknown; expected one of {', '.join(OBJECTIVES)} "
                        "(re-run `audiotokens split`)")
    return OBJECTIVES[task]()
