from __future__ import annotations

import math

import numpy as np
import torch

from audiotokens.model.contrastive import nearest_class_mean, supervised_contrastive_loss


def loop_supcon(embeddings: np.ndarray, positive, temperature: float) -> float:
    """Khosla et al. L_out written out term by term."""
    z = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    n = len(z)
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and positive(i, p)]
        if not positives:
            continue
        denominator = sum(math.exp(z[i] @ z[a] / temperature) for a in range(n) if a != i)
        losses.append(-sum(math.log(math.exp(z[i] @ z[p] / temperature) / denominator) for p in positives)
                      / len(positives))
    return sum(losses) / len(losses)


HAND = np.array([[1.0, 0.0, 0.5], [0.8, 0.3, 0.1], [-0.2, 1.0, 0.0], [0.0, 0.9, -0.4], [0.3, 0.3, 2.0]])


def test_single_label_loss_equals_the_loop_and_skips_anchors_without_positives():
    labels = np.array([0, 0, 1, 1, 2])  # clip 4 is alone in its class: not an anchor, only a negative
    loss = supervised_contrastive_loss(torch.tensor(HAND), torch.tensor(labels), temperature=0.5)
    expected = loop_supcon(HAND, lambda i, p: labels[i] == labels[p], 0.5)
    assert math.isclose(float(loss), expected, rel_tol=1e-5)


def test_multilabel_positives_are_clips_sharing_any_label():
    multi_hot = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    loss = supervised_contrastive_loss(torch.tensor(HAND), torch.tensor(multi_hot), temperature=0.2)
    expected = loop_supcon(HAND, lambda i, p: bool((multi_hot[i] * multi_hot[p]).sum() > 0), 0.2)
    assert math.isclose(float(loss), expected, rel_tol=1e-5)


def test_loss_is_zero_with_a_gradient_path_when_no_anchor_has_a_positive():
    embeddings = torch.tensor(HAND, requires_grad=True)
    loss = supervised_contrastive_loss(embeddings, torch.arange(5))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_loss_is_lower_when_classes_cluster():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = clustered[[0, 2, 1, 3]]
    assert supervised_contrastive_loss(clustered, labels) < supervised_contrastive_loss(mixed, labels)


def separable(n_per_class: int = 20, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), 4, generator=generator), labels


def test_nearest_class_mean_picks_the_right_class_on_a_separable_set():
    train, train_labels = separable()
    test, test_labels = separable(seed=1)
    scores = nearest_class_mean(train, train_labels, test, temperature=0.1)
    assert scores.shape == (60, 3)
    torch.testing.assert_close(scores.sum(1), torch.ones(60))
    assert torch.equal(scores.argmax(1), test_labels)


def test_nearest_class_mean_multilabel_scores_each_class_and_zero_for_unseen():
    train, train_labels = separable()
    multi_hot = torch.nn.functional.one_hot(train_labels, 4).float()  # class 3 has no training clip
    test, test_labels = separable(seed=1)
    scores = nearest_class_mean(train, multi_hot, test)
    assert scores.shape == (60, 4) and (scores[:, 3] == 0).all()
    assert torch.equal(scores.argmax(1), test_labels)
    assert ((scores >= 0) & (scores <= 1)).all() and not scores.isnan().any()
