"""The train stage: a BERT classifier over token sequences, trained from scratch (ModelBuilder).

Reads each split's view of tokenized/tokens.npy (artifacts.open_split) and output/vocabulary/; writes
output/checkpoints/{last,best}.pt every epoch, output/metrics.jsonl, output/curves.png and, from the
best checkpoint, the portable bundle output/model/.

Train-side metrics come from the epoch's own forward passes (dropout on, weights moving during the
epoch); they cost nothing extra and are the usual way to watch over-fitting, but are not a clean
evaluation of the final weights. Validation metrics come from an eval-mode pass after each epoch.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from .artifacts import ClipIndex, Layout, SplitPlan, open_split
from .bundle import save_bundle
from .checkpoint import (
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .classifier import AudioTokenClassifier, classifier_config
from .config import RESUMABLE, Config, keys_with_role
from .errors import UserError
from .metrics import classification_metrics, primary_metric
from .provenance import package_versions, recorded_fingerprint, stage_params
from .token_dataset import EpochShuffleSampler, TokenClipDataset, longest_first, make_loader
from .trainer import PassResult, Trainer, pick_device
from .training_log import TrainingLog, epoch_line, finite_or_none

log = logging.getLogger("audiotokens")



# ---------------------------------------------------------------- inputs


@dataclass
class SplitTokens:
    name: str
    path: Path
    index: ClipIndex
    n_codebooks: int


def read_vocabulary(layout: Layout):
    """The vocabulary the tokens were made with; its codebook sizes size the embeddings (never a setting)."""
    from .vocabulary import load_vocabulary

    return load_vocabulary(layout.vocabulary)


def read_split_tokens(layout: Layout, split: str, vocab) -> SplitTokens:
    """One split's view of the token store, checked against the vocabulary that will ship with the model."""
    tokens, index = open_split(layout, "tokens", split)
    path = layout.tokens
    if index.extra.get("vocabulary_digest") != vocab.digest:
        raise UserError(f"{path} was made with another vocabulary than {vocab.path} (cluster ran again since "
                        "tokenize); re-run `audiotokens tokenize`")
    if not np.issubdtype(tokens.dtype, np.integer) or tokens.ndim != 2 or tokens.shape[1] != len(vocab.codebook_sizes):
        raise UserError(f"{path} holds {tokens.dtype} of shape {tokens.shape}, expected integer ids "
                        f"(tokens, {len(vocab.codebook_sizes)} codebooks); re-run `audiotokens tokenize`")
    _check_labels(index, layout.split_json)
    return SplitTokens(split, path, index, int(tokens.shape[1]))


def _check_labels(index: ClipIndex, index_path: Path) -> None:
    if index.task not in ("multilabel", "singlelabel"):
        raise UserError(f"{index_path}: task is '{index.task}', expected multilabel or singlelabel")
    n_classes = len(index.classes)
    for clip, labels in zip(index.ids, index.labels):
        if any(not 0 <= label < n_classes for label in labels):
            raise UserError(f"{index_path}: clip {clip} has a label outside 0..{n_classes - 1}")
        if index.task == "singlelabel" and len(labels) != 1:
            raise UserError(f"{index_path}: clip {clip} has {len(labels)} labels but the task is singlelabel; "
                            "re-run `audiotokens split`")


def check_splits_agree(train: SplitTokens, validation: SplitTokens) -> None:
    if (train.index.classes, train.index.task) != (validation.index.classes, validation.index.task):
        raise UserError(f"{train.path.parent} and {validation.path.parent} disagree on classes or task; "
                        "re-run `audiotokens tokenize`")
    if train.n_codebooks != validation.n_codebooks:
        raise UserError(f"train tokens have {train.n_codebooks} codebooks, validation {validation.n_codebooks}; "
                        "re-run `audiotokens tokenize`")


# Full attention over more positions than this is out of reach of one GPU; past it the user must choose
# between cutting clips (train.max_length) and cropping audio (spectrogram.max_duration).
MAX_AUTO_POSITIONS = 8192


def model_length(splits: dict[str, SplitTokens], max_length: int) -> int:
    """Frames fed per clip: train.max_length, or (0) the longest clip of any split, so nothing is cut."""
    if max_length > 0:
        return max_length
    name, split = max(splits.items(), key=lambda item: int(item[1].index.lengths.max()))
    row = int(split.index.lengths.argmax())
    longest = int(split.index.lengths[row])
    if longest > MAX_AUTO_POSITIONS:
        raise UserError(
            f"clip '{split.index.ids[row]}' ({name}) has {longest} frames; sizing the model to it would need "
            f"{longest} positions. Set train.max_length (e.g. 1024) to cut long clips (the cut is reported), "
            "or spectrogram.max_duration to crop the audio")
    return max(longest, 1)


def report_truncation(splits: dict[str, SplitTokens], max_frames: int) -> dict[str, int]:
    """Count and loudly log what max_frames cuts; nothing is truncated silently."""
    counts = {"truncated_clips": 0, "truncated_frames": 0}
    for split in splits.values():
        excess = split.index.lengths - max_frames
        clips, frames = int((excess > 0).sum()), int(excess[excess > 0].sum())
        if clips:
            log.warning("train.max_length=%d cuts %d of %d %s clips (%d frames, %.1f%% of the split's frames); "
                        "set train.max_length=0 to keep whole clips", max_frames, clips, len(split.index),
                        split.name, frames, 100 * frames / max(split.index.total_frames, 1))
        counts["truncated_clips"] += clips
        counts["truncated_frames"] += frames
    return counts


def make_split_loader(split: SplitTokens, max_frames: int, batch_size: int, shuffle_seed: int | None,
                      num_workers: int, pin_memory: bool, seed: int = 0) -> DataLoader:
    """Training loaders shuffle by (seed, epoch); evaluation loaders go longest first."""
    dataset = TokenClipDataset(split.path, split.index, max_frames)
    sampler = (EpochShuffleSampler(len(dataset), shuffle_seed) if shuffle_seed is not None
               else longest_first(dataset.lengths))
    return make_loader(dataset, batch_size, sampler, num_workers, pin_memory, seed)


# ---------------------------------------------------------------- stage


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    finished: bool = False


@dataclass
class TrainingRun:
    """Everything one training run works with, built once by ModelBuilder._prepare."""

    splits: dict[str, SplitTokens]
    task: str
    classes: list[str]
    max_frames: int
    truncation: dict[str, int]
    model: AudioTokenClassifier
    trainer: Trainer
    train_loader: DataLoader
    validation_loader: DataLoader
    identity: dict[str, Any]


class ModelBuilder:
    def __init__(self, config: Config, resume: bool = False):
        self.config = config
        self.settings = config.train
        self.resume = resume
        self.layout = Layout(config.workdir)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        run = self._prepare()
        progress = self._restore(run.trainer, run.identity) if self.resume else Progress()
        epochs_at_start = progress.epoch
        samples, seconds = self._fit(run, progress)
        self._write_bundle(run.model, run.classes, run.task, run.max_frames)
        return {
            "epochs_run": progress.epoch - epochs_at_start,
            "epochs_completed": progress.epoch,
            "best_epoch": progress.best_epoch,
            f"best_validation_{primary_metric(run.task)}": progress.best_score,
            "train_clips": len(run.splits["train"].index),
            "validation_clips": len(run.splits["validation"].index),
            "max_frames": run.max_frames,
            **run.truncation,
            "wall_time_s": round(time.perf_counter() - started, 3),
            "device": str(run.trainer.device),
            "precision": run.trainer.precision,
            "samples_per_s": round(samples / seconds, 2) if seconds else None,
        }

    def _prepare(self) -> TrainingRun:
        """Check the inputs, then build the model, the loaders and the trainer (seeded)."""
        settings = self.settings
        if self.resume and not self._checkpoint_paths()[0].is_file():
            raise UserError(f"no checkpoint at {self._checkpoint_paths()[0]}; train without --resume to start")
        vocab = read_vocabulary(self.layout)
        n_clusters = max(vocab.codebook_sizes)
        splits = {name: read_split_tokens(self.layout, name, vocab) for name in SplitPlan.load(self.layout).names()}
        train, validation = splits["train"], splits["validation"]
        check_splits_agree(train, validation)
        task, classes = train.index.task, train.index.classes
        max_frames = model_length(splits, settings.max_length)
        truncation = report_truncation(splits, max_frames)

        seed_everything(settings.seed)
        model = AudioTokenClassifier(classifier_config(
            n_clusters, train.n_codebooks, classes, task, max_frames, settings.num_layers, settings.hidden_size,
            settings.num_heads, settings.intermediate_size, settings.dropout))
        device = pick_device(settings.device)
        pin = device.type == "cuda"
        train_loader = make_split_loader(train, max_frames, settings.batch_size, settings.seed,
                                         settings.num_workers, pin, settings.seed)
        validation_loader = make_split_loader(validation, max_frames, settings.batch_size, None,
                                              settings.num_workers, pin, settings.seed)
        steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum)
        trainer = Trainer(model, task, device, settings.learning_rate, settings.weight_decay,
                          settings.warmup_ratio, settings.epochs * steps_per_epoch, settings.grad_clip,
                          settings.grad_accum, settings.amp)
        self._log_setup(model, trainer, splits, n_clusters, max_frames)
        return TrainingRun(splits, task, classes, max_frames, truncation, model, trainer, train_loader,
                           validation_loader, self._identity(n_clusters, max_frames, splits))

    def _fit(self, run: TrainingRun, progress: Progress) -> tuple[int, float]:
        """Epochs until done, early-stopped or interrupted; returns (training samples, training seconds)."""
        epochs, task = self.settings.epochs, run.task
        training_log = TrainingLog(self.layout, task, progress.history)
        samples, seconds = 0, 0.0
        log.info("per epoch, each figure as train | validation (train figures from the epoch's forward passes)")
        try:
            while not progress.finished and progress.epoch < epochs:
                run.train_loader.sampler.set_epoch(progress.epoch)
                batches = tqdm(run.train_loader, desc=f"epoch {progress.epoch + 1}", leave=False, disable=None)
                fit = run.trainer.train_epoch(batches, len(run.train_loader))
                checked = run.trainer.evaluate(run.validation_loader)
                samples, seconds = samples + fit.samples, seconds + fit.seconds
                row = self._epoch_row(progress, run.trainer, task, fit, checked)
                self._advance(progress, row, task)
                self._checkpoint(run.model, run.trainer, progress, run.identity, improved=row["best"])
                training_log.record(row)
                log.info(epoch_line(row, epochs, task))
        finally:
            training_log.close()
        return samples, seconds

    # ------------------------------------------------------------ epochs

    def _epoch_row(self, progress: Progress, trainer: Trainer, task: str, fit: PassResult,
                   checked: PassResult) -> dict[str, Any]:
        threshold = self.settings.threshold
        return finite_or_none({
            "epoch": progress.epoch + 1,
            "step": trainer.step,
            "lr": trainer.scheduler.get_last_lr()[0],
            "train": {"loss": fit.loss, **classification_metrics(task, fit.targets, fit.scores, threshold)},
            "validation": {"loss": checked.loss,
                           **classification_metrics(task, checked.targets, checked.scores, threshold)},
            "train_samples_per_s": fit.samples / fit.seconds if fit.seconds else 0.0,
            "epoch_time_s": fit.seconds + checked.seconds,
        })

    def _advance(self, progress: Progress, row: dict[str, Any], task: str) -> None:
        score = row["validation"][primary_metric(task)]
        score = -math.inf if score is None or math.isnan(score) else score
        row["best"] = progress.best_epoch == 0 or score > progress.best_score
        progress.epoch += 1
        progress.history.append(row)
        if row["best"]:
            progress.best_score, progress.best_epoch, progress.stale_epochs = score, progress.epoch, 0
        else:
            progress.stale_epochs += 1
        patience = self.settings.patience
        if patience > 0 and progress.stale_epochs >= patience and progress.epoch < self.settings.epochs:
            log.info("early stop: validation %s has not improved for %d epochs (best %.4f at epoch %d)",
                     primary_metric(task), patience, progress.best_score, progress.best_epoch)
            progress.finished = True

    # ------------------------------------------------------------ checkpoints

    def _identity(self, n_clusters: int, max_frames: int, splits: dict[str, SplitTokens]) -> dict[str, Any]:
        """What a checkpoint must share with the current run to be resumed."""
        params = {k: v for k, v in stage_params(self.config, "train").items() if k not in keys_with_role(RESUMABLE)}
        return {"params": params, "tokenize": recorded_fingerprint(self.layout, "tokenize"),
                "split": recorded_fingerprint(self.layout, "split"),
                "n_clusters": n_clusters, "max_frames": max_frames,
                "clips": {name: len(s.index) for name, s in splits.items()}}

    def _checkpoint(self, model: AudioTokenClassifier, trainer: Trainer, progress: Progress,
                    identity: dict[str, Any], improved: bool) -> None:
        state = {"model": model.state_dict(), "trainer": trainer.state_dict(), "rng": rng_state(),
                 "identity": identity, **progress.__dict__}
        last, best = self._checkpoint_paths()
        if improved:
            # best first: killed between the two writes, last.pt is an epoch behind and --resume
            # recomputes that epoch; the other order would leave a last.pt naming a best.pt never written
            save_checkpoint(best, state)
            copy_checkpoint(best, last)
        else:
            save_checkpoint(last, state)

    def _checkpoint_paths(self) -> tuple[Path, Path]:
        return self.layout.checkpoints / "last.pt", self.layout.checkpoints / "best.pt"

    def _restore(self, trainer: Trainer, identity: dict[str, Any]) -> Progress:
        last, _ = self._checkpoint_paths()
        state = load_checkpoint(last)
        differences = _differences(state.get("identity", {}), identity)
        if differences:
            raise UserError(f"{last} was written by a different run ({'; '.join(differences)}); "
                            "train without --resume to start over")
        trainer.model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        set_rng_state(state["rng"])
        progress = Progress(**{k: state[k] for k in Progress.__dataclass_fields__})
        if progress.finished or progress.epoch >= self.settings.epochs:
            log.info("resume: training had already finished after epoch %d; rewriting the bundle", progress.epoch)
        else:
            log.info("resume: continuing after epoch %d (best %.4f at epoch %d)", progress.epoch,
                     progress.best_score, progress.best_epoch)
        return progress

    # ------------------------------------------------------------ results

    def _write_bundle(self, model: AudioTokenClassifier, classes: list[str], task: str, max_frames: int) -> None:
        """The best epoch's model with the vocabulary (and through it the frame spec) its tokens were made with."""
        _, best = self._checkpoint_paths()
        model.load_state_dict(load_checkpoint(best)["model"])
        save_bundle(model.cpu(), self.layout.model_dir, classes=classes, task=task,
                    threshold=self.settings.threshold, max_frames=max_frames,
                    vocabulary=read_vocabulary(self.layout), versions=package_versions())
        log.info("model bundle (best epoch) written to %s", self.layout.model_dir)

    def _log_setup(self, model, trainer: Trainer, splits: dict[str, SplitTokens], n_clusters: int,
                   max_frames: int) -> None:
        parameters = sum(p.numel() for p in model.parameters())
        train, validation = splits["train"], splits["validation"]
        log.info("train: %d clips, validation: %d clips, %d classes (%s)", len(train.index), len(validation.index),
                 len(train.index.classes), train.index.task)
        log.info("model: %d layers x %d hidden, %.1fM parameters, vocabulary %d clusters + 4 special tokens, "
                 "%d codebook(s), %d positions ([CLS] + %d frames + [SEP])", self.settings.num_layers,
                 self.settings.hidden_size, parameters / 1e6, n_clusters, train.n_codebooks,
                 max_frames + 2, max_frames)
        log.info("device %s, %s, batch %d x %d accumulation", trainer.device, trainer.precision,
                 self.settings.batch_size, self.settings.grad_accum)
        if train.index.task == "multilabel":
            absent = len(train.index.classes) - int((validation.index.label_matrix().sum(axis=0) > 0).sum())
            if absent:
                log.warning("%d classes have no positive validation clip; validation mAP averages the other %d",
                            absent, len(train.index.classes) - absent)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        if key == "params":
            params_old, params_new = old.get(key, {}), new.get(key, {})
            changes += [f"{k} {params_old.get(k)!r} → {params_new.get(k)!r}"
                        for k in sorted(set(params_old) | set(params_new)) if params_old.get(k) != params_new.get(k)]
        elif old.get(key) != new.get(key):
            changes.append(f"{key} changed")
    return changes
