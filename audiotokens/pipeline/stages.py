"""The one table of stages: name, runner class, config sections, inputs, provenance record, CLI flags.

cli, pipeline, provenance and Layout iterate over STAGES; a new stage is one entry here plus its class.
An input is another stage's output, optionally seen through some of its sections only: spectrogram
reads the clip catalogue of `split` (its [data] settings), not the assignment of clips to splits, so
changing the split re-runs cluster, tokenize and train but keeps the frames (unless augment.copies makes
corrupted copies of the training clips: then the assignment defines the frames too).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PRETRAIN, SPECTROGRAM, SPLIT, Config, keys_also_defining
from .layout import Layout


@dataclass(frozen=True)
class Input:
    stage: str
    sections: tuple[str, ...] = ()  # () = the whole stage; else only these sections of its parameters


@dataclass(frozen=True)
class Stage:
    name: str
    runner: str  # "wing.module:Class" under audiotokens; Class(config, **options).run() -> counts
    sections: tuple[str, ...]  # config sections whose values define the stage's output
    inputs: Callable[[Config], tuple[Input, ...]]  # may depend on the config (tokens or frames in)
    help: str
    flags: dict[str, str] = field(default_factory=dict)  # CLI option -> config key
    keys: tuple[str, ...] = ()  # keys of other sections that define the output too (config: also_defines)
    in_run: Callable[[Config], bool] = lambda config: True  # whether `run` includes the stage
    data_parallel: bool = False  # runs as N processes under torchrun (distributed.py)
    sharded: bool = False  # its work can be cut into shards run anywhere, then assembled (shards.py)
    resumable: bool = False  # continues from its checkpoint (Layout.resume_checkpoint) with --resume

    def runner_class(self):
        # by name, not imported: the table sits below every stage it lists, and the CLI starts faster
        module, name = self.runner.split(":")
        return getattr(importlib.import_module(f"audiotokens.{module}"), name)


def _fixed(*inputs: Input) -> Callable[[Config], tuple[Input, ...]]:
    return lambda config: inputs


def _train_inputs(config: Config) -> tuple[Input, ...]:
    features = "tokenize" if config.model.input == "tokens" else "spectrogram"
    return (Input("split"), Input(features)) + _pretrain_input(config)


def _pretrain_input(config: Config) -> tuple[Input, ...]:
    """The pretrain stage, when train.init names this workdir's pre-training."""
    if not config.train.init:
        return ()
    init = Path(config.train.init)
    init = init if init.is_absolute() else Path.cwd() / init
    own = Layout(config.workdir).pretrain_dir.absolute()
    return (Input("pretrain"),) if init.resolve() == own.resolve() else ()


def _spectrogram_inputs(config: Config) -> tuple[Input, ...]:
    """The clip catalogue; with corrupted copies (augment.copies) also which clips are training clips."""
    return (Input("split") if config.augment.copies else Input("split", ("data", "pretrain")),)


def _quantises(config: Config) -> bool:
    """Whether `run` fits and applies a vocabulary: when the model reads tokens or pre-trains on them, never
    over waveform rows (a speech model reads those). A frames model needs none."""
    if config.spectrogram.features == "waveform":
        return False
    return config.model.input == "tokens" or bool(_pretrain_input(config))


def _pretrain_inputs(config: Config) -> tuple[Input, ...]:
    frames = (Input("spectrogram"),) if config.pretrain.objective == "masked_frames" else ()
    return (Input("split"), Input("tokenize"), *frames)


STAGES: tuple[Stage, ...] = (
    Stage("split", "data.split:DatasetSplitter", ("data", "split"), _fixed(),
          "Assign clips to train, validation and test; writes processed/split.json.",
          {"--source": "data.source", "--manifest": "data.manifest", "--folder": "data.folder",
           "--audio-root": "data.audio_root", "--segments": "data.segments", "--strategy": "split.strategy",
           "--validation-ratio": "split.validation_ratio", "--test-ratio": "split.test_ratio",
           "--seed": "split.seed"}, keys=keys_also_defining(SPLIT)),
    Stage("spectrogram", "features.spectrogram:SpectrogramProcessor", ("spectrogram",), _spectrogram_inputs,
          "Mel-spectrogram frames of every clip, once per clip; writes processed/frames/.",
          {"--sample-rate": "spectrogram.sample_rate", "--n-fft": "spectrogram.n_fft",
           "--hop-length": "spectrogram.hop_length", "--n-mels": "spectrogram.n_mels",
           "--dtype": "spectrogram.dtype", "--max-duration": "spectrogram.max_duration",
           "--workers": "spectrogram.workers"}, keys=keys_also_defining(SPECTROGRAM), sharded=True),
    Stage("cluster", "tokens.cluster:ClusterCreator", ("cluster",), _fixed(Input("split"), Input("spectrogram")),
          "Fit the tokenizer (k-means vocabulary) on training frames; writes output/vocabulary/.",
          {"--quantizer": "cluster.quantizer", "--n-clusters": "cluster.n_clusters", "--niter": "cluster.niter",
           "--seed": "cluster.seed", "--max-frames": "cluster.max_frames",
           "--spherical/--no-spherical": "cluster.spherical", "--gpu/--no-gpu": "cluster.gpu"},
          in_run=_quantises),
    Stage("tokenize", "tokens.tokenize:SpecTokenizer", ("tokenize",), _fixed(Input("spectrogram"), Input("cluster")),
          "Token ids of every clip with the fitted vocabulary; writes tokenized/.",
          {"--batch-frames": "tokenize.batch_frames"}, in_run=_quantises, sharded=True),
    Stage("pretrain", "training.pretrain:Pretrainer", ("pretrain",), _pretrain_inputs,
          "Masked prediction of token ids on unlabelled and training clips; writes output/pretrain/.",
          {"--objective": "pretrain.objective"},
          keys=keys_also_defining(PRETRAIN), in_run=lambda config: bool(_pretrain_input(config)),
          resumable=True),
    Stage("train", "training.train:ModelBuilder", ("model", "train"), _train_inputs,
          "Train the classifier; writes output/model/ and output/metrics.jsonl.",
          {"--input": "model.input", "--epochs": "train.epochs", "--batch-size": "train.batch_size",
           "--learning-rate": "train.learning_rate", "--num-layers": "model.num_layers",
           "--hidden-size": "model.hidden_size", "--num-heads": "model.num_heads",
           "--max-length": "model.max_length", "--device": "train.device", "--amp/--no-amp": "train.amp",
           "--patience": "train.patience", "--seed": "train.seed"}, data_parallel=True, resumable=True),
    Stage("evaluate", "evaluation.evaluate:Evaluator", ("evaluate",), _fixed(Input("train")),
          "Per-class report, threshold sweep and plots in output/eval/<name>/.",
          {"--threshold": "evaluate.threshold"}),
    Stage("baseline", "evaluation.baseline:BaselineBuilder", ("baseline", "spectrogram"), _fixed(Input("split")),
          "MFCC + SVM / logistic regression on the same split; reports in output/baselines/<model>/<split>/.",
          {"--models": "baseline.models"}),
)

BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = tuple(stage.name for stage in STAGES)


def stage(name: str) -> Stage:
    return BY_NAME[name]


def input_names(name: str, config: Config) -> tuple[str, ...]:
    return tuple(i.stage for i in BY_NAME[name].inputs(config))
