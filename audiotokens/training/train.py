"""The train stage (ModelBuilder): a classifier made of parts, trained from scratch on tokens or frames.

Reads each split's view of tokenized/tokens.npy and output/vocabulary/ (model.input = "tokens"), or of
processed/frames/frames.npy (model.input = "frames", or "waveform": rows of samples that a pretrained speech
model, model.encoder = "ssl", is fine-tuned on); writes checkpoints/{last,best}.pt every epoch,
metrics.jsonl, curves.png and, from the best checkpoint, the portable bundle output/model/. The run's files
stay in output/train.partial/ until its bundle is written, then replace output/'s (run_files.py). The best
epoch is chosen on validation; when a test split exists, the best checkpoint is scored on it once at the
end, and those figures are reported as test. Under split.strategy = "kfold" (or "column" with a column of
folds) the validation split is the held-out fold, whose figures are the fold's result: it chooses nothing,
the kept epoch is the last (train.epochs, no early stop), so the figures reported on it are not selected on
it.

Train-side metrics come from the epoch's own forward passes (dropout on, weights moving during the
epoch); they cost nothing extra and are the usual way to watch over-fitting, but are not a clean
evaluation of the final weights. Validation metrics come from an eval-mode pass after each epoch.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import RESUMABLE, Config, keys_with_role
from ..errors import UserError
from ..features.ssl import model_config, model_dir, waveform_params_from_spec
from ..model.batching import longest_first
from ..model.bundle import save_bundle
from ..model.metrics import count_left_out
from ..model.modelcard import write_model_card
from ..model.objectives import Objective, objective_for
from ..model.parts import (
    ENCODERS,
    EXTRA_POSITIONS,
    HEADS,
    SPEECH_ENCODER,
    WAVEFORM,
    AudioClassifier,
    ModelSpec,
    check_parts,
    check_spec,
    decode_tables,
)
from ..pipeline import distributed
from ..pipeline.distributed import ONE_PROCESS, Ranks
from ..pipeline.layout import Layout
from ..pipeline.provenance import package_versions, recorded_fingerprint, stage_params
from ..pipeline.stores import NOTHING_LEFT_OUT, ClipIndex, LeftOut, SplitPlan, open_split, read_frame_spec
from ..tokens.vocabulary import load_vocabulary
from .augment import BatchAugmenter
from .checkpoint import (
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .contrastive import ContrastiveTrainer, check_positive_pairs, head_for, trainer_type
from .datasets import DATASETS, EpochShuffleSampler, make_loader
from .epoch_log import NoTrainingLog, TrainingLog, epoch_line, finite_or_none, format_figure
from .finetune import FineTuning
from .loaders import (
    LengthPlan,
    check_model_size,
    check_run_memory,
    evaluate_split,
    evaluation_loader,
    planned_steps,
    record_peak_memory,
    reset_peak_memory,
    set_loader_epoch,
    training_loader,
)
from .optimisation import (
    PassResult,
    Trainer,
    compile_model,
    describe_precision,
    divergence_error,
    divergence_hint,
    intra_op_threads,
    pick_device,
)
from .run_files import adopt, publish, resumable_runs, start_afresh
from .tracking import TokenUsage, Tracking, class_average_precision

log = logging.getLogger("audiotokens")

FIT_SPLITS = ("train", "validation")  # training and model selection; any other split is only reported
TEST_SPLIT = "test"
FRAME_INPUTS = ("frames", WAVEFORM)  # inputs read from the frame store (the rest from the token store)
LENGTH_KEYS = (("model", "max_length"), ("train", "crop_frames"), ("train", "eval_window"))  # what a clip is cut to


# ---------------------------------------------------------------- inputs (tokens, frames, vocabulary)


@dataclass(kw_only=True)
class SplitStore:
    """One split's rows (token ids or frames) and its index; `columns` = codebooks, mel bands or samples."""

    name: str
    path: Path
    index: ClipIndex
    columns: int
    frame_spec: dict[str, Any] | None = None  # of the frame store (frames and waveform inputs)
    left_out: LeftOut = NOTHING_LEFT_OUT  # what the split lost to classes without a training clip
    held_out_fold: bool = False  # the validation split of a k-fold split: reported on, never chosen on


def read_vocabulary(layout: Layout):
    """The vocabulary the tokens were made with; its codebook sizes size the embeddings (never a setting)."""
    return load_vocabulary(layout.vocabulary)


def read_split_tokens(layout: Layout, split: str, vocab) -> SplitStore:
    """One split's view of the token store, checked against the vocabulary that will ship with the model."""
    tokens, index = open_split(layout, "tokens", split)
    path = layout.tokens
    if index.extra.get("vocabulary_digest") != vocab.digest:
        raise UserError(f"{path} was made with another vocabulary than {vocab.path} (cluster ran again since "
                        "tokenize); re-run `audiotokens tokenize`")
    n_codebooks = len(vocab.codebook_sizes)
    if not np.issubdtype(tokens.dtype, np.integer) or tokens.ndim != 2 or tokens.shape[1] != n_codebooks:
        raise UserError(f"{path} holds {tokens.dtype} of shape {tokens.shape}, expected integer ids "
                        f"(tokens, {n_codebooks} codebooks); re-run `audiotokens tokenize`")
    _check_labels(index, layout.split_json)
    return SplitStore(name=split, path=path, index=index, columns=n_codebooks)


def read_split_frames(layout: Layout, split: str, input_kind: str = "frames") -> SplitStore:
    """One split's view of the frame store (the spectrogram stage's output) for a frames- or waveform-input
    model; the store must hold that kind of rows (waveform rows for waveform input, and only then)."""
    frames, index = open_split(layout, "frames", split)
    if not np.issubdtype(frames.dtype, np.floating) or frames.ndim != 2:
        raise UserError(f"{layout.frames} holds {frames.dtype} of shape {frames.shape}, expected float frames "
                        "(frames, n_mels); re-run `audiotokens spectrogram`")
    frame_spec = read_frame_spec(layout)
    check_frame_kind(frame_spec.get("features", "mel"), input_kind, layout.frames)
    _check_labels(index, layout.split_json)
    return SplitStore(name=split, path=layout.frames, index=index, columns=int(frames.shape[1]),
                      frame_spec=frame_spec)


def check_frame_kind(features: str, input_kind: str, path: Path) -> None:
    """Waveform rows feed a speech model and nothing else; a speech model reads nothing else."""
    if (features == WAVEFORM) == (input_kind == WAVEFORM):
        return
    if input_kind == WAVEFORM:
        raise UserError(f"model.input={WAVEFORM} reads waveform rows but {path} holds {features} frames; set "
                        f"spectrogram.features={WAVEFORM} (and spectrogram.ssl_model) and re-run `audiotokens "
                        "spectrogram`")
    raise UserError(f"{path} holds waveform rows (spectrogram.features={WAVEFORM}), which only "
                    f"model.input={WAVEFORM} with model.encoder={SPEECH_ENCODER} reads; set those, or "
                    "spectrogram.features to mel or ssl and re-run `audiotokens spectrogram`")


def _check_labels(index: ClipIndex, index_path: Path) -> None:
    try:
        objective = objective_for(index.task)
    except UserError as exc:
        raise UserError(f"{index_path}: {exc}") from None
    n_classes = len(index.classes)
    for clip, labels in zip(index.ids, index.labels):
        if any(not 0 <= label < n_classes for label in labels):
            raise UserError(f"{index_path}: clip {clip} has a label outside 0..{n_classes - 1}")
        problem = objective.label_problem(labels)
        if problem:
            raise UserError(f"{index_path}: clip {clip} {problem}; re-run `audiotokens split`")


def check_splits_agree(train: SplitStore, other: SplitStore) -> None:
    if (train.index.classes, train.index.task) != (other.index.classes, other.index.task):
        raise UserError(f"the {train.name} and {other.name} splits disagree on classes or task; "
                        "re-run `audiotokens split`")
    if train.columns != other.columns:
        raise UserError(f"{train.name} rows have {train.columns} columns (codebooks or mel bands), {other.name} "
                        f"{other.columns}; re-run the stage that wrote {other.path.name}")


def read_splits(layout: Layout, input_kind: str) -> tuple[dict[str, SplitStore], Any]:
    """Train and validation (required) and test (when the split has one), with the vocabulary for tokens."""
    plan = SplitPlan.load(layout)
    for required in FIT_SPLITS:
        plan.ids(required)  # a one-line UserError naming split.json when the split has no clips
    names = plan.names()
    if input_kind in FRAME_INPUTS:
        splits, vocab = {name: read_split_frames(layout, name, input_kind) for name in names}, None
    else:
        vocab = read_vocabulary(layout)
        splits = {name: read_split_tokens(layout, name, vocab) for name in names}
        check_token_ids(layout.tokens, vocab)
    for name, split in splits.items():
        split.left_out = plan.left_out(name)
    splits["validation"].held_out_fold = plan.held_out_fold
    return splits, vocab


def check_token_ids(path: Path, vocab) -> None:
    """Every id inside its codebook: the digest can match while the array was damaged or edited, and an id
    past a table would otherwise fail deep in the embedding lookup."""
    tokens = np.load(path, mmap_mode="r")
    sizes = np.asarray(vocab.codebook_sizes)
    if len(tokens) and (int(tokens.min()) < 0 or (tokens.max(axis=0) >= sizes).any()):
        raise UserError(f"{path} holds ids outside the codebook sizes {sizes.tolist()} of {vocab.path}; "
                        "re-run `audiotokens tokenize`")


def run_identity(layout: Layout, config: Config, vocab, max_frames: int,
                 splits: dict[str, SplitStore]) -> dict[str, Any]:
    """What a checkpoint must share with the current run to be resumed."""
    params = {k: v for k, v in stage_params(config, "train").items() if k not in keys_with_role(RESUMABLE)}
    source = "spectrogram" if config.model.input in FRAME_INPUTS else "tokenize"
    return {"params": params, source: recorded_fingerprint(layout, source),
            "split": recorded_fingerprint(layout, "split"),
            "vocabulary": vocab.digest if vocab is not None else None, "max_frames": max_frames,
            "clips": {name: len(s.index) for name, s in splits.items()}}


def split_figures(objective: Objective, result: PassResult, threshold: float, left_out: LeftOut) -> dict[str, Any]:
    """A held-out split's metrics, with the numbers it lost to classes without a training clip (accuracy counts
    those clips as errors, as evaluate's metrics.json does; the setup lines name the classes)."""
    metrics = count_left_out(objective.metrics(result.targets, result.scores, threshold), len(result.targets),
                             len(left_out.clips))
    if not left_out:
        return metrics
    return {**metrics, "left_out_clips": len(left_out.clips), "left_out_positives": left_out.positives}


# ---------------------------------------------------------------- sizes and settings


# Full attention over more positions than this is out of reach of one GPU; past it the user must choose
# between cutting clips (model.max_length) and cropping audio (spectrogram.max_duration).
MAX_AUTO_POSITIONS = 8192


def model_length(splits: dict[str, SplitStore], max_length: int) -> int:
    """Frames fed per clip: model.max_length, or (0) the longest clip of any split, so nothing is cut."""
    if max_length > 0:
        return max_length
    name, split = max(splits.items(), key=lambda item: int(item[1].index.lengths.max()))
    row = int(split.index.lengths.argmax())
    longest = int(split.index.lengths[row])
    if longest > MAX_AUTO_POSITIONS:
        raise UserError(
            f"clip '{split.index.ids[row]}' ({name}) has {longest} frames; sizing the model to it would need "
            f"{longest} positions. Set model.max_length (e.g. 1024) to cut long clips (the cut is reported), "
            "or spectrogram.max_duration to crop the audio")
    return max(longest, 1)


def report_truncation(splits: dict[str, SplitStore], max_frames: int,
                      windowed: bool = False) -> dict[str, int]:
    """Count and loudly log what max_frames cuts; nothing is truncated silently. Scored in windows
    (`windowed`), validation and test clips are read whole: only training clips are cut."""
    counts = {"truncated_clips": 0, "truncated_frames": 0}
    for split in splits.values():
        if windowed and split.name != "train":
            continue
        excess = split.index.lengths - max_frames
        clips, frames = int((excess > 0).sum()), int(excess[excess > 0].sum())
        if clips:
            log.warning("model.max_length=%d cuts %d of %d %s clips (%d frames, %.1f%% of the split's frames); "
                        "set model.max_length=0 to keep whole clips", max_frames, clips, len(split.index),
                        split.name, frames, 100 * frames / max(split.index.total_frames, 1))
        counts["truncated_clips"] += clips
        counts["truncated_frames"] += frames
    return counts


def make_split_loader(split: SplitStore, input_kind: str, objective: Objective, max_frames: int, batch_size: int,
                      shuffle_seed: int | None, num_workers: int, pin_memory: bool, seed: int = 0,
                      plan: LengthPlan | None = None, ranks: Ranks = ONE_PROCESS) -> DataLoader:
    """Training loaders shuffle by (seed, epoch); evaluation loaders go longest first. A LengthPlan
    (train.batch_frames, crop_frames, eval_window) makes batches by budget, crops and windows, and shares
    batches between torchrun processes (training/loaders.py); the plain loaders below are the one-process ones."""
    dataset = DATASETS[input_kind](store_path=split.path, index=split.index, max_frames=max_frames,
                                   objective=objective)
    copies = shuffle_seed is not None and dataset.copies is not None  # training reads corrupted copies too
    if plan is not None and (not plan.plain or ranks.active or copies):
        build = training_loader if shuffle_seed is not None else evaluation_loader
        return build(dataset, plan, seed=seed if shuffle_seed is None else shuffle_seed, num_workers=num_workers,
                     pin_memory=pin_memory, ranks=ranks)
    sampler = (EpochShuffleSampler(len(dataset), shuffle_seed) if shuffle_seed is not None
               else longest_first(dataset.lengths))
    return make_loader(dataset, batch_size, sampler, num_workers, pin_memory, seed)


def scored_frames(split: SplitStore, scoring: LengthPlan, max_frames: int) -> int:
    """Frames of each clip a validation or test pass reads: whole clips when it scores windows (as the bundle
    does, whatever model.max_length), else the first max_frames."""
    return max(int(split.index.lengths.max(initial=1)), 1) if scoring.eval_window else max_frames


def length_metadata(settings) -> dict[str, int]:
    """What the bundle needs to score clips the way validation did: budget and windows."""
    plan = LengthPlan.from_settings(settings)
    return {"batch_frames": plan.batch_frames, "crop_frames": plan.crop_frames, "eval_window": plan.eval_window,
            "eval_hop": plan.eval_hop}


def model_spec(config: Config, classes: list[str], max_frames: int, splits: dict[str, SplitStore],
               vocab, tables: list[np.ndarray]) -> ModelSpec:
    """The network [model] describes (its head as train.objective has it), sized by the data (vocabulary,
    frame size, lengths)."""
    settings = config.model
    if settings.input == WAVEFORM:
        return speech_model_spec(config, classes, max_frames, splits["train"])
    columns = splits["train"].columns
    tokens = settings.input == "tokens"
    spec = ModelSpec(
        classes=list(classes), input=settings.input, token_embedding=settings.token_embedding,
        codebook_sizes=list(vocab.codebook_sizes) if tokens else [], codebook_fusion=settings.codebook_fusion,
        decode_dims=[int(t.shape[1]) for t in tables], decode_combine=vocab.quantizer.combine if tokens else "concat",
        input_dim=vocab.quantizer.input_dim if tokens else columns,
        encoder=settings.encoder, hidden_size=settings.hidden_size, dropout=settings.dropout,
        encoder_params={"num_layers": settings.num_layers, "num_heads": settings.num_heads,
                        "intermediate_size": settings.intermediate_size},
        pooling=settings.pooling, head=head_for(config.train.objective, settings.head), margin=settings.margin,
        scale=settings.scale, max_positions=max_frames + EXTRA_POSITIONS)
    check_spec(spec)
    check_lengths_reach(config, spec)
    return spec


def check_lengths_reach(config: Config, spec: ModelSpec) -> None:
    """Cuts, crops and windows hold at least the frames the encoder needs to tell clips apart (a CNN's time
    axis halves in every block)."""
    fewest = ENCODERS[spec.encoder].min_frames(spec)
    for section, key in LENGTH_KEYS:
        value = getattr(getattr(config, section), key)
        if 0 < value < fewest:
            raise UserError(f"'{section}.{key}' ({value}) is shorter than the {fewest} frames model.encoder="
                            f"{spec.encoder} reads with model.num_layers={config.model.num_layers}; use at "
                            f"least {fewest}")


def report_short_clips(splits: dict[str, SplitStore], spec: ModelSpec) -> None:
    """Clips shorter than the encoder reads are padded with zero frames (CnnEncoder): said once, counted."""
    fewest = ENCODERS[spec.encoder].min_frames(spec)
    short = {name: int((split.index.lengths < fewest).sum()) for name, split in splits.items()}
    if any(short.values()):
        counts = ", ".join(f"{count} of {len(splits[name].index)} {name}" for name, count in short.items() if count)
        log.warning("%s clips are shorter than the %d frames model.encoder=%s reads; they are padded with zero "
                    "frames to %d", counts, fewest, spec.encoder, fewest)


def speech_model_spec(config: Config, classes: list[str], max_frames: int, train: SplitStore) -> ModelSpec:
    """A pretrained speech model fine-tuned on waveform rows: its config (so the bundle needs no folder), its
    normalisation and where its weights come from (the folder and digest the frame spec recorded), mean
    pooling, a hidden layer of model.hidden_size, the head."""

    settings = config.model
    frame_spec = train.frame_spec or {}
    params = waveform_params_from_spec(frame_spec)
    speech_config, normalize = model_config(model_dir(params))
    check_rows_cover_a_frame(config, params.n_fft, params.hop_length)
    spec = ModelSpec(
        classes=list(classes), input=WAVEFORM, input_dim=train.columns, encoder=SPEECH_ENCODER,
        encoder_params={"speech_config": speech_config, "normalize": normalize,
                        "pretrained": {"path": frame_spec["ssl_model"], "digest": frame_spec["ssl_digest"]}},
        hidden_size=settings.hidden_size, hidden_layer=settings.hidden_size, dropout=settings.dropout,
        pooling=settings.pooling, head=head_for(config.train.objective, settings.head), margin=settings.margin,
        scale=settings.scale, max_positions=max_frames + EXTRA_POSITIONS)
    check_spec(spec)
    return spec


def check_rows_cover_a_frame(config: Config, receptive_field: int, stride: int) -> None:
    """Crops, windows and cuts of waveform rows must hold at least the samples of one output frame."""
    fewest = -(-receptive_field // stride)
    for section, key in LENGTH_KEYS:
        value = getattr(getattr(config, section), key)
        if 0 < value < fewest:
            raise UserError(f"'{section}.{key}' ({value} rows of {stride} samples) is shorter than the speech model's "
                            f"receptive field ({receptive_field} samples); use at least {fewest} rows")


def still_improving(best_epoch: int, epochs: int) -> bool:
    """Whether the kept epoch is among the last tenth of the epochs (at least the last one)."""
    return best_epoch > epochs - max(1, epochs // 10)


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
    best_class_ap: dict[str, float] | None = None  # validation AP per class at the best epoch, when tracked


@dataclass
class TrainingRun:
    """Everything one training run works with, built once by ModelBuilder._prepare."""

    splits: dict[str, SplitStore]
    objective: Objective
    classes: list[str]
    max_frames: int
    truncation: dict[str, int]
    model: AudioClassifier
    trainer: Trainer
    loaders: dict[str, DataLoader]
    steps_per_epoch: int
    identity: dict[str, Any]


EpochCallback = Callable[[int, float | None], None]


class ModelBuilder:
    """Runner options beside `resume`, for a caller that trains many runs (audiotokens tune):
    `epoch_callback(epoch, validation score)` after every epoch, the score being the figure the best epoch is
    chosen on (None when undefined); an exception it raises stops training (a pruned trial). With
    `score_test=False` no loader is made for the test split and it is never scored (its clip lengths still
    size the model, as in any run, so that a tuned run and a plain one build the same network)."""

    def __init__(self, config: Config, resume: bool = False, epoch_callback: EpochCallback | None = None,
                 score_test: bool = True):
        self.config = config
        self.settings = config.train
        self.network = config.model
        self.resume = resume
        self.epoch_callback = epoch_callback
        self.score_test = score_test
        self.layout = Layout(config.workdir)
        self.files = self.layout.staged_run_files  # this run's log, curves and checkpoints, until its bundle
        self.ranks = distributed.launched()  # one process, or this one of torchrun's

    @staticmethod
    def check_settings(config: Config) -> None:
        """What the config alone says is wrong with the network (pipeline.run checks it before any stage)."""
        check_parts(config.model)

    def run(self) -> dict[str, Any]:
        try:
            with intra_op_threads(self.settings.threads):
                return self._run()
        finally:
            distributed.leave(self.ranks)

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        run = self._prepare()
        if not self.resume and self.ranks.writer:
            start_afresh(self.files)
        progress = self._restore(run) if self.resume else Progress()
        with self._tracking(progress) as tracking:
            result, test = self._train(run, progress, tracking, started)
            primary = run.objective.primary_metric
            tracking.finish(figures={f"validation_{primary}": progress.best_score, **test},
                            best_epoch=progress.best_epoch, class_ap=progress.best_class_ap, summary=result,
                            artifacts=[(self.layout.model_dir, "model"), (self.layout.metrics, "report"),
                                       (self.layout.curves, "report")])
        return result

    def _tracking(self, progress: Progress) -> Tracking:
        """The run's TensorBoard and MLflow records (train.tracking), kept by the process that writes files."""
        if not self.ranks.writer:
            return Tracking([])
        tracking = Tracking.open(self.settings.tracking, self.layout, "train")
        tokens = TokenUsage.read(self.layout) if self.network.input == "tokens" and tracking.active else None
        tracking.start(stage_params(self.config, "train"), progress.history, tokens)
        return tracking

    def _train(self, run: TrainingRun, progress: Progress, tracking: Tracking,
               started: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Epochs, the test split, the bundle: (the stage's counts, the test figures)."""
        epochs_at_start = progress.epoch
        samples, seconds = self._fit(run, progress, tracking)
        if self.ranks.writer and not run.splits["validation"].held_out_fold:
            self._say_if_still_improving(progress, run.objective.primary_metric)
        self._load_best(run.model)
        test = self._score_test(run, progress)
        if self.ranks.writer:
            self._write_bundle(run)
            publish(self.files, self.layout.run_files)
        primary = run.objective.primary_metric
        return {
            "epochs_run": progress.epoch - epochs_at_start,
            "epochs_completed": progress.epoch,
            "best_epoch": progress.best_epoch,
            f"best_validation_{primary}": progress.best_score,
            **{f"{split}_clips": len(s.index) for split, s in run.splits.items()},
            **test,
            "max_frames": run.max_frames,
            **run.truncation,
            "wall_time_s": round(time.perf_counter() - started, 3),
            "device": str(run.trainer.device),
            "precision": run.trainer.precision,
            "threads": torch.get_num_threads(),  # intra-op threads of this process (train.threads)
            "samples_per_s": round(samples / seconds, 2) if seconds else None,
            "processes": self.ranks.world,
        }, test

    def _prepare(self) -> TrainingRun:
        """Check the inputs, then build the model, the loaders and the trainer (seeded)."""
        settings, network = self.settings, self.network
        check_parts(network)
        if self.resume and not resumable_runs(self.layout):
            raise UserError(f"no checkpoint at {self.files.last_checkpoint} or "
                            f"{self.layout.last_checkpoint}; train without --resume to start")
        splits, vocab = read_splits(self.layout, network.input)
        for split in splits.values():
            if split.name != "train":
                check_splits_agree(splits["train"], split)
        train = splits["train"]
        objective, classes = objective_for(train.index.task), train.index.classes
        if settings.objective == "contrastive":
            check_positive_pairs(settings.batch_size, train.index.labels)
        if HEADS[head_for(settings.objective, network.head)].single_label_only and objective.uses_threshold:
            raise UserError(f"model.head={network.head} needs single-label data but the task is "
                            f"{objective.task}; use model.head=linear")
        max_frames = model_length(splits, network.max_length)
        plan = LengthPlan.from_settings(settings)
        truncation = report_truncation(splits, max_frames, windowed=bool(plan.eval_window))
        tables = decode_tables(network.input, network.token_embedding, vocab)
        spec = model_spec(self.config, classes, plan.model_frames(max_frames), splits, vocab, tables)
        scoring = plan.within(spec.max_frames)  # validation and test windows: the bundle's
        report_short_clips(splits, spec)

        check_model_size(spec=spec, tables=tables, device=pick_device(settings.device), network=network)
        seed_everything(settings.seed)
        model = AudioClassifier(spec=spec, decode_tables=[torch.from_numpy(t) for t in tables])
        self.fine_tuning = FineTuning.from_settings(settings)
        self.fine_tuning.initialise(model, frame_spec=vocab.frame_spec if vocab else read_frame_spec(self.layout),
                                    vocabulary_digest=vocab.digest if vocab else None)
        device = self._join(pick_device(settings.device))
        pin = device.type == "cuda"
        loaders = {name: make_split_loader(split, network.input, objective, max_frames, settings.batch_size,
                                           settings.seed, settings.num_workers, pin, settings.seed, plan,
                                           self.ranks)
                   if name == "train" else
                   make_split_loader(split, network.input, objective,
                                     scored_frames(split, scoring, max_frames), settings.batch_size, None,
                                     settings.num_workers, pin, settings.seed, scoring, self.ranks)
                   for name, split in splits.items() if self.score_test or name != TEST_SPLIT}
        steps_per_epoch = math.ceil(len(loaders["train"]) / settings.grad_accum)
        trainer = trainer_type(settings.objective)(
            model=model, objective=objective, device=device, learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio,
            total_steps=planned_steps(loaders["train"], settings.epochs, settings.grad_accum),
            grad_clip=settings.grad_clip, grad_accum=settings.grad_accum, amp=settings.amp, ranks=self.ranks)
        if settings.compile:
            compile_model(model, device)
        if isinstance(trainer, ContrastiveTrainer):
            trainer.reference = make_split_loader(train, network.input, objective, max_frames, settings.batch_size,
                                                  None, settings.num_workers, device.type == "cuda", settings.seed,
                                                  plan)
        self.fine_tuning.freeze_parts(model)
        self._log_setup(model, trainer, splits, objective, vocab)
        check_run_memory(model=model, settings=settings, max_length=network.max_length,
                         dataset=loaders["train"].dataset, ids=train.index.ids, device=device,
                         amp_dtype=trainer.amp_dtype, n_classes=len(classes),
                         input_features=train.columns if network.input != "tokens" else 0)
        reset_peak_memory(device)
        return TrainingRun(splits, objective, classes, max_frames, truncation, model, trainer, loaders,
                           steps_per_epoch, run_identity(self.layout, self.config, vocab, max_frames, splits))

    def _join(self, device: torch.device) -> torch.device:
        """Under torchrun: this process's device, in the process group."""
        if self.ranks.active and self.settings.objective == "contrastive":
            raise UserError("train.objective=contrastive trains in one process (its loss compares clips across "
                            "the whole batch); run it without torchrun")
        return distributed.join(device, self.ranks)

    def _fit(self, run: TrainingRun, progress: Progress, tracking: Tracking) -> tuple[int, float]:
        """Epochs until done, early-stopped or interrupted; returns (training samples, training seconds)."""
        epochs, objective = self.settings.epochs, run.objective
        training_log = (TrainingLog(self.files, objective, progress.history, tracking) if self.ranks.writer
                        else NoTrainingLog())
        samples, seconds = 0, 0.0
        train_loader = run.loaders["train"]
        augmenter = BatchAugmenter.from_settings(self.settings, self.network.input, objective)
        log.info("per epoch, each figure as train | validation (train figures from the epoch's forward passes)")
        while not progress.finished and progress.epoch < epochs:
            set_loader_epoch(train_loader, progress.epoch)
            self.fine_tuning.epoch_starts(progress.epoch)
            batches = tqdm(augmenter.epoch(train_loader, progress.epoch), total=len(train_loader),
                           desc=f"epoch {progress.epoch + 1}", leave=False,
                           disable=None if self.ranks.writer else True)
            fit = run.trainer.train_epoch(batches, len(train_loader))
            self._stop_if_diverged(run.trainer, progress)
            checked = evaluate_split(run.trainer, run.loaders["validation"])
            self._stop_if_diverged(run.trainer, progress, checked)
            samples, seconds = samples + fit.samples, seconds + fit.seconds
            row = self._epoch_row(progress, run.trainer, objective, fit, checked,
                                  run.splits["validation"].left_out)
            record_peak_memory(row, run.trainer.device)
            self._advance(progress, row, objective, chooses=not run.splits["validation"].held_out_fold)
            if row["best"] and tracking.active:  # kept in the checkpoint, so a resumed run still has it
                progress.best_class_ap = class_average_precision(checked.targets, checked.scores, run.classes)
            self._checkpoint(run.model, run.trainer, progress, run.identity, improved=row["best"])
            training_log.record(row)
            log.info(epoch_line(row, epochs, objective))
            if self.epoch_callback is not None:
                self.epoch_callback(progress.epoch, row["validation"].get(objective.primary_metric))
        return samples, seconds

    # ------------------------------------------------------------ epochs

    def _stop_if_diverged(self, trainer: Trainer, progress: Progress,
                          checked: PassResult | None = None) -> None:
        """A NaN or infinite loss, weight or validation score ends the run in one line, before anything of
        the epoch is written: the bundle and the checkpoints stay those of the last sound run."""
        found = trainer.nonfinite()
        if found is None and checked is not None and not np.isfinite(checked.scores).all():
            found = ("validation scores", trainer.step)
        if found is not None:
            settings = self.settings
            hint = divergence_hint(learning_rate=settings.learning_rate,
                                   learning_rate_key="train.learning_rate",
                                   weight_decay=settings.weight_decay, grad_clip=settings.grad_clip,
                                   precision=trainer.precision)
            raise divergence_error(found, epoch=progress.epoch + 1, hint=hint, kept=self.layout.model_dir)

    def _epoch_row(self, progress: Progress, trainer: Trainer, objective: Objective, fit: PassResult,
                   checked: PassResult, left_out: LeftOut) -> dict[str, Any]:
        threshold = self.settings.threshold
        return finite_or_none({
            "epoch": progress.epoch + 1,
            "step": trainer.step,
            "lr": trainer.scheduler.get_last_lr()[0],
            "train": {"loss": fit.loss, **objective.metrics(fit.targets, fit.scores, threshold)},
            "validation": {"loss": checked.loss, **split_figures(objective, checked, threshold, left_out)},
            "train_samples_per_s": fit.samples / fit.seconds if fit.seconds else 0.0,
            "epoch_time_s": fit.seconds + checked.seconds,
        })

    def _advance(self, progress: Progress, row: dict[str, Any], objective: Objective,
                 chooses: bool = True) -> None:
        """Count the epoch; `row["best"]`: it is the epoch kept so far (the best on validation, or, where
        validation must not choose, the latest)."""
        score = row["validation"][objective.primary_metric]
        score = -math.inf if score is None or math.isnan(score) else score
        row["best"] = not chooses or progress.best_epoch == 0 or score > progress.best_score
        progress.epoch += 1
        progress.history.append(row)
        if row["best"]:
            progress.best_score, progress.best_epoch, progress.stale_epochs = score, progress.epoch, 0
        else:
            progress.stale_epochs += 1
        patience = self.settings.patience if chooses else 0
        if patience > 0 and progress.stale_epochs >= patience and progress.epoch < self.settings.epochs:
            log.info("early stop: validation %s has not improved for %d epochs (best %.4f at epoch %d)",
                     objective.primary_metric, patience, progress.best_score, progress.best_epoch)
            progress.finished = True

    def _say_if_still_improving(self, progress: Progress, metric: str) -> None:
        """Warn when the run ended on a rising validation figure: its answer is likely not its best."""
        epochs = self.settings.epochs
        if progress.finished or progress.epoch < epochs or not still_improving(progress.best_epoch, epochs):
            return
        log.warning("validation %s was still improving when training ended (best %.4f at epoch %d of %d): more "
                    "epochs may score higher; train again with a larger train.epochs (e.g. --set train.epochs=%d) "
                    "and compare on validation", metric, progress.best_score, progress.best_epoch, epochs, 2 * epochs)

    # ------------------------------------------------------------ checkpoints

    def _checkpoint(self, model: AudioClassifier, trainer: Trainer, progress: Progress,
                    identity: dict[str, Any], improved: bool) -> None:
        rng_by_rank = distributed.gather(rng_state(), self.ranks)  # a collective: every process calls it
        if not self.ranks.writer:
            return
        state = {"model": model.state_dict(), "trainer": trainer.state_dict(), "rng": rng_by_rank[0],
                 "rng_by_rank": rng_by_rank, "identity": identity, **progress.__dict__}
        last, best = self._checkpoint_paths()
        if improved:
            # best first: killed between the two writes, last.pt is an epoch behind and --resume
            # recomputes that epoch; the other order would leave a last.pt naming a best.pt never written
            save_checkpoint(best, state)
            copy_checkpoint(best, last)
        else:
            save_checkpoint(last, state)

    def _checkpoint_paths(self) -> tuple[Path, Path]:
        return self.files.last_checkpoint, self.files.best_checkpoint

    def _resumable_state(self, identity: dict[str, Any]) -> tuple[dict[str, Any], Path]:
        """The checkpoint --resume continues: of the run under way, else of the finished run (then copied
        aside), the first one written with this run's settings."""
        refusals = []
        for files in resumable_runs(self.layout):
            state = load_checkpoint(files.last_checkpoint)
            differences = _differences(state.get("identity", {}), identity)
            if not differences:
                if files != self.files and self.ranks.writer:
                    adopt(files, self.files)
                return state, files.last_checkpoint
            changes = "; ".join(differences)
            refusals.append(f"{files.last_checkpoint} was written by a different run ({changes})")
        raise UserError(f"{refusals[0]}; train without --resume to start over")

    def _restore(self, run: TrainingRun) -> Progress:
        state, last = self._resumable_state(run.identity)
        trainer = run.trainer
        trainer.model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        set_rng_state(self._own_rng_state(state, last))
        progress = Progress(**{k: state[k] for k in Progress.__dataclass_fields__ if k in state})
        self._reconsider_early_stop(progress)
        if progress.finished or progress.epoch >= self.settings.epochs:
            log.info("resume: training had already finished after epoch %d; rewriting the bundle", progress.epoch)
            return progress
        total_steps = planned_steps(run.loaders["train"], self.settings.epochs, self.settings.grad_accum)
        self._extend_schedule(trainer, total_steps, last)
        log.info("resume: continuing after epoch %d (best %.4f at epoch %d)", progress.epoch,
                 progress.best_score, progress.best_epoch)
        return progress

    def _own_rng_state(self, state: dict[str, Any], last: Path) -> dict[str, Any]:
        """This process's random state when the checkpoint was written by as many processes; else rank 0's
        (the run goes on, but dropout then draws differently from an uninterrupted run)."""
        by_rank = state.get("rng_by_rank") or [state["rng"]]
        if len(by_rank) == self.ranks.world:
            return by_rank[self.ranks.rank]
        log.warning("resume: %s was written by %d process(es), this run has %d; training continues, but not "
                    "bit for bit as an uninterrupted run would", last, len(by_rank), self.ranks.world)
        return by_rank[0]

    def _reconsider_early_stop(self, progress: Progress) -> None:
        """An early stop holds only under the patience that made it: a larger patience (or 0) continues."""
        if not progress.finished or progress.epoch >= self.settings.epochs:
            return
        patience = self.settings.patience
        progress.finished = patience > 0 and progress.stale_epochs >= patience
        if not progress.finished:
            log.info("resume: the run stopped early after %d epochs without improvement; train.patience=%d "
                     "lets it continue", progress.stale_epochs, patience)

    @staticmethod
    def _extend_schedule(trainer: Trainer, total_steps: int, last: Path) -> None:
        """More (or fewer) epochs than the checkpoint planned: the lr goes on from its current value to 0
        at the new horizon."""
        if trainer.extend_schedule(total_steps, last, "train without --resume"):
            log.info("resume: the learning-rate schedule now ends at step %d, continuing from lr factor %.3g",
                     total_steps, trainer.lr_factor)

    # ------------------------------------------------------------ results

    def _load_best(self, model: AudioClassifier) -> None:
        distributed.barrier(self.ranks)  # rank 0 has written best.pt before anyone reads it
        _, best = self._checkpoint_paths()
        model.load_state_dict(load_checkpoint(best)["model"])

    def _score_test(self, run: TrainingRun, progress: Progress) -> dict[str, Any]:
        """The best checkpoint scored once on the test split (never used to choose anything)."""
        if TEST_SPLIT not in run.loaders:
            return {}
        result = evaluate_split(run.trainer, run.loaders[TEST_SPLIT])
        left_out = run.splits[TEST_SPLIT].left_out
        metrics = finite_or_none({"loss": result.loss,
                                  **split_figures(run.objective, result, self.settings.threshold, left_out)})
        headline = {f"test_{name}": metrics.get(name) for name in ("loss", *run.objective.headline)}
        if self.ranks.writer:
            TrainingLog.append_result(self.files, {"split": TEST_SPLIT, "epoch": progress.best_epoch,
                                                   TEST_SPLIT: {**metrics, **(left_out.counts() if left_out else {})}})
            figures = "  ".join(f"{name[5:]} {format_figure(value)}" for name, value in headline.items())
            lost = f" + {len(left_out.clips)} left out, counted as errors" if left_out.clips else ""
            kept = "last epoch %d" if run.splits["validation"].held_out_fold else "best epoch %d by validation"
            log.info("test (%d clips%s, " + kept + "): %s", len(run.splits[TEST_SPLIT].index), lost,
                     progress.best_epoch, figures)
        return headline

    def _write_bundle(self, run: TrainingRun) -> None:
        """The model with the vocabulary its tokens were made with (and through it the frame spec), or, for a
        frames model, the frame spec of the frames it read."""
        vocab = read_vocabulary(self.layout) if self.network.input == "tokens" else None
        save_bundle(run.model.cpu(), self.layout.model_dir, classes=run.classes, task=run.objective.task,
                    threshold=self.settings.threshold, max_frames=run.model.spec.max_frames, vocabulary=vocab,
                    spectrogram=vocab.frame_spec if vocab else read_frame_spec(self.layout),
                    versions=package_versions(), extra=length_metadata(self.settings))
        write_model_card(self.layout.model_dir, self.layout, stage_params(self.config, "train"),
                         training_log=self.files.metrics)
        log.info("model bundle (best epoch) written to %s", self.layout.model_dir)

    def _log_setup(self, model: AudioClassifier, trainer: Trainer, splits: dict[str, SplitStore],
                   objective: Objective, vocab) -> None:
        parameters = sum(p.numel() for p in model.parameters())
        train, validation = splits["train"], splits["validation"]
        sizes = ", ".join(f"{name}: {len(s.index)} clips" for name, s in splits.items())
        log.info("%s, %d classes (%s)", sizes, len(train.index.classes), objective.task)
        for name, split in splits.items():
            if split.left_out:
                log.warning("%s: %s", name, split.left_out.note())
        if validation.held_out_fold:
            log.info("k-fold: validation is the held-out fold, so it chooses nothing: the bundle is the last epoch "
                     "(train.epochs = %d)%s", self.settings.epochs,
                     ", train.patience is not used" if self.settings.patience else "")
        spec = model.spec
        if spec.input == WAVEFORM:
            speech = spec.encoder_params["speech_config"]
            log.info("model: %s speech model from %s, %d layers x %d hidden, %s pooling of its last hidden "
                     "states, hidden layer of %d, %s head, %.1fM parameters; waveform rows of %d samples, at most "
                     "%d rows", speech.get("model_type"), spec.encoder_params["pretrained"]["path"],
                     speech["num_hidden_layers"], speech["hidden_size"], spec.pooling, spec.hidden_layer,
                     spec.head, parameters / 1e6, train.columns, spec.max_positions - EXTRA_POSITIONS)
        else:
            source = (f"{vocab.describe()} + 4 special tokens, {spec.token_embedding} embeddings"
                      if spec.input == "tokens" else f"frames of {train.columns}")
            log.info("model: %s encoder, %d layers x %d hidden, %s pooling, %s head, %.1fM parameters; %s; "
                     "%d positions ([CLS] + %d frames + [SEP])", spec.encoder, self.network.num_layers,
                     spec.hidden_size, spec.pooling, spec.head, parameters / 1e6, source, spec.max_positions,
                     spec.max_positions - EXTRA_POSITIONS)  # what the model holds: the crop when cropping
        log.info("device %s, %s, batch %d x %d accumulation", trainer.device,
                 describe_precision(trainer.device, self.settings.amp, trainer.amp_dtype),
                 self.settings.batch_size, self.settings.grad_accum)
        absent = len(train.index.classes) - int((validation.index.label_matrix().sum(axis=0) > 0).sum())
        if absent:
            log.warning("%d classes have no positive validation clip; per-class averages (mAP, macro F1) "
                        "cover the other %d", absent, len(train.index.classes) - absent)


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
