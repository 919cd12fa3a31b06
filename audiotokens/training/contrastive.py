"""train.objective = "contrastive": the training path that learns embeddings and classifies by class means.

A clearly separated path beside the classification one: the model keeps its encoder and pooling, its head
is the class-mean head (modelparts.ClassMeanHead). Training steps minimise the supervised contrastive loss
(contrastive.supervised_contrastive_loss) on the pooled embeddings (AudioClassifier.embed); after every
epoch the class means are refitted from an evaluation-mode pass over the training split, so validation,
the checkpoints and the bundle (predict, evaluate, API) classify by nearest class mean with no extra step.
Train-side figures of an epoch use the means of the epoch before (none in the first epoch).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from ..errors import UserError
from ..model.contrastive import class_means, positive_pairs, supervised_contrastive_loss
from .optimisation import PassResult, Trainer

log = logging.getLogger("audiotokens")

# A SupCon loss within this share of its chance level after this many epochs means the embeddings have not
# started to separate (seen with cls pooling and dropout 0.2 on a small speaker set: no epoch ever left it)
CHANCE_SHARE, CHANCE_EPOCHS = 0.98, 3
# Batches without two clips of a class add nothing to the loss; past this share of an epoch's batches it is
# said (a last short batch of one clip alone is common and harmless)
PAIRLESS_SHARE = 0.1

CLASS_MEANS_HEAD = "class_means"


def head_for(objective: str, head: str) -> str:
    """The head a run's model gets: class means for the contrastive train.objective, else model.head."""
    if objective == "contrastive":
        if head not in ("linear", CLASS_MEANS_HEAD):
            raise UserError(f"train.objective=contrastive classifies by class means and ignores model.head; "
                            f"set model.head=linear (got '{head}')")
        return CLASS_MEANS_HEAD
    if head == CLASS_MEANS_HEAD:
        raise UserError("model.head=class_means is fitted by train.objective=contrastive; set that, "
                        "or another head")
    return head


def check_positive_pairs(batch_size: int, labels: Sequence[Sequence[int]]) -> None:
    """SupCon learns from clips of a class that meet in a batch: refuse settings and training data where
    no batch can hold such a pair (every loss would be exactly 0 and the run would learn nothing)."""
    if batch_size < 2:
        raise UserError(f"train.objective=contrastive learns from pairs of clips of a class within a batch; "
                        f"train.batch_size={batch_size} makes batches of one clip, which hold none; use "
                        "train.batch_size >= 2 (e.g. 16)")
    clips_per_class = Counter(label for clip in labels for label in set(clip))
    if not any(count >= 2 for count in clips_per_class.values()):
        raise UserError("train.objective=contrastive learns from pairs of clips of a class, but no class has "
                        "two training clips; add clips or use train.objective=classify")


def trainer_type(objective: str) -> type[Trainer]:
    return ContrastiveTrainer if objective == "contrastive" else Trainer


class ContrastiveTrainer(Trainer):
    """A Trainer whose training loss is SupCon on embeddings and whose head is refitted after each epoch.

    `reference` (set before training) reads the training split in evaluation order without augmentation.
    """

    reference: DataLoader | None = None
    epochs_done = 0
    warned = False
    warned_pairless = False
    chance_sum = 0.0  # the epoch's chance-level loss, summed like the loss (times each batch's clips)
    pairless: torch.Tensor | int = 0  # the epoch's batches without two clips of a class (on the device)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.model.training:
            return super().forward(batch)
        inputs, mask, targets = (batch[key].to(self.device, non_blocking=True)
                                 for key in ("inputs", "mask", "targets"))
        with self.autocast():
            embeddings = self.model.embed(inputs, mask)
        logits = self.model.head(embeddings.float()).float()
        self.chance_sum += chance_level(len(targets)) * len(targets)
        self.pairless = self.pairless + (~positive_pairs(targets).any()).long()
        return supervised_contrastive_loss(embeddings, targets), logits, targets

    def train_epoch(self, batches, n_batches: int) -> PassResult:
        self.chance_sum, self.pairless = 0.0, 0
        result = super().train_epoch(batches, n_batches)
        self.check_pairs(int(self.pairless), n_batches)
        self.refit_means()
        self.epochs_done += 1
        self.warn_at_chance(result.loss, self.chance_sum / max(result.samples, 1))
        return result

    def check_pairs(self, pairless: int, n_batches: int) -> None:
        """No batch of the epoch held two clips of a class: the loss was exactly 0 throughout, refused; many
        such batches: said once."""
        if n_batches and pairless == n_batches:
            raise UserError("train.objective=contrastive: no batch of the epoch held two clips of a class, "
                            "so every loss was 0 and nothing was learned; raise train.batch_size or "
                            "train.batch_frames (batches of more clips), or set train.sampler=balanced")
        if not self.warned_pairless and pairless > PAIRLESS_SHARE * n_batches:
            self.warned_pairless = True
            log.warning("train.objective=contrastive: %d of %d batches of an epoch held no two clips of a "
                        "class and added nothing to the loss; a larger train.batch_size (or "
                        "train.batch_frames) or train.sampler=balanced gives more pairs", pairless, n_batches)

    def warn_at_chance(self, loss: float, chance: float) -> None:
        if self.warned or self.epochs_done < CHANCE_EPOCHS or loss < CHANCE_SHARE * chance:
            return
        self.warned = True
        log.warning("train.objective=contrastive: after %d epochs the SupCon loss (%.3f) is still at its chance "
                    "level (%.3f): the embeddings are not separating. Try a lower model.dropout, "
                    "model.pooling=mean or another train.learning_rate", self.epochs_done, loss, chance)

    @torch.no_grad()
    def refit_means(self) -> None:
        if self.reference is None:
            raise RuntimeError("ContrastiveTrainer.reference must be set before training")
        self.model.eval()
        embeddings, targets = [], []
        for batch in self.reference:
            with self.autocast():
                inputs, mask = batch["inputs"].to(self.device), batch["mask"].to(self.device)
                embeddings.append(self.model.embed(inputs, mask))
            targets.append(batch["targets"].to(self.device))
        n_classes = self.model.spec.n_classes
        self.model.head.set_means(class_means(torch.cat(embeddings).float(), torch.cat(targets), n_classes))


def chance_level(batch_size: int) -> float:
    """The SupCon loss of a batch whose embeddings are all alike: each anchor's log-probability of a positive
    among the other batch_size - 1 clips is -ln(batch_size - 1)."""
    return math.log(batch_size - 1) if batch_size > 1 else 0.0
