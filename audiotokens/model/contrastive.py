"""The contrastive objective's two halves: a supervised contrastive loss and nearest-class-mean scoring.

Loss (Khosla et al. 2020, L_out): embeddings are L2-normalised; for anchor i with positives P(i) (the other
clips of its class) and all other clips A(i),
    l_i = -1/|P(i)| · Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )
and the loss is the mean of l_i over anchors that have at least one positive (others carry no signal).
Multi-label targets (a (batch, n_classes) multi-hot): positives are the clips sharing any label with the
anchor, each weighted equally; a clip without labels is never a positive and is not an anchor.

Classification afterwards: nearest class mean, cosine similarity of a clip's normalised embedding to each
class's normalised mean of normalised training embeddings, divided by a temperature, then softmax across
classes (single-label) or sigmoid per class (multi-label, where a clip may belong to several).
A class with no training clip scores 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 0.1  # of the loss and of nearest-class-mean scoring (the bundle's class-mean head uses it too)


def positive_pairs(labels: torch.Tensor) -> torch.Tensor:
    """(batch, batch) bool: j is a positive of anchor i (same class, or any shared label), never i itself."""
    if labels.dim() == 1:
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
    else:
        multi_hot = labels.float()
        same = (multi_hot @ multi_hot.T) > 0
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def supervised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE,
) -> torch.Tensor:
    """Mean SupCon loss over anchors with a positive; 0 (still attached to the graph) when none has one."""
    z = F.normalize(embeddings.float(), dim=-1)
    logits = z @ z.T / temperature
    self_pair = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_pair, float("-inf")), dim=1, keepdim=True)
    positives = positive_pairs(labels)
    counts = positives.sum(dim=1)
    anchors = counts > 0
    if not anchors.any():
        return embeddings.sum() * 0.0
    mean_positive = (log_prob * positives).sum(dim=1)[anchors] / counts[anchors]
    return -mean_positive.mean()


def class_means(train_embeddings: torch.Tensor, train_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes, dim) normalised mean of normalised embeddings per class; a zero row for an empty class."""
    z = F.normalize(train_embeddings.float(), dim=-1)
    if train_labels.dim() == 1:
        membership = F.one_hot(train_labels.long(), n_classes).float()
    else:
        membership = train_labels.float()
    sums = membership.T @ z
    return F.normalize(sums, dim=-1)  # a zero row stays zero (normalize divides by max(norm, eps))


def nearest_class_mean(
    train_embeddings: torch.Tensor, train_labels: torch.Tensor, embeddings: torch.Tensor, *,
    temperature: float = TEMPERATURE, n_classes: int | None = None,
) -> torch.Tensor:
    """(clips, n_classes) scores in [0, 1] from cosine similarity to each class mean (see module docstring).

    `train_labels` are class ids (batch,) for single-label or multi-hot (batch, n_classes) for multi-label.
    """
    multilabel = train_labels.dim() == 2
    if n_classes is None:
        n_classes = train_labels.shape[1] if multilabel else int(train_labels.max()) + 1
    means = class_means(train_embeddings, train_labels, n_classes)
    logits = F.normalize(embeddings.float(), dim=-1) @ means.T / temperature
    empty = means.norm(dim=-1) == 0
    if multilabel:
        return torch.sigmoid(logits).masked_fill(empty, 0.0)
    return torch.softmax(logits.masked_fill(empty, float("-inf")), dim=-1)
