"""The one place that knows artifact file names and layouts, and how to write them safely.

Layout under a workdir:
  processed/split.json              the clip catalogue (id, audio, labels, group) + classes, task, and the
                                    ids of each split (train, validation, test)
  processed/split_report.json       clips whose audio was not found, per-class counts per split
  processed/frames/frames.npy       frames of every clip, once per clip whatever the split,
                                    (total_frames, dim), memory-mappable
  processed/frames/index.json       per clip: id, offset, length; the frame spec's digest
  processed/frames/spec.json        the frame spec: every setting that defines a frame
  processed/frames/report.json      clips skipped by the spectrogram stage, with reasons
  processed/frames/shards/N-K/      while the stage runs: finished parts of shard K of N (shards.py)
  output/vocabulary/                the fitted tokenizer (vocabulary.json + codebooks.npz + report.json)
  tokenized/tokens.npy              token ids of every clip, (total_tokens, codebooks), int16 while k < 32768
  tokenized/index.json              per clip: id, offset, length; vocabulary and frame spec digests
  tokenized/stats.json, tokenized/histogram_<split>.png
  tokenized/shards/N-K/             until assembled: tokens.npy + shard.json of shard K of N
  output/model/                     portable bundle (save_pretrained + audiotokens.json + vocabulary)
  output/checkpoints/{last,best}.pt training state for --resume
  output/metrics.jsonl, output/curves.png, output/tensorboard/ (when tensorboard is installed)
  output/eval/<name>/               evaluation reports
  logs/<stage>.log                  the log of each stage's latest run
  output/baselines/<model>/<split>/ the MFCC baselines' reports (and <model>/fit.json)
A split is a view: the ids listed for it in split.json over a store (open_split). Each stage also writes
a provenance record at `Layout.record(stage)`.
"""
from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "validation", "test")  # test is optional: a split with no clips is absent

# inside a model bundle (output/model/, or any copy of it)
BUNDLE_METADATA = "audiotokens.json"
BUNDLE_SPEC = "model_spec.json"
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_VOCABULARY = "vocabulary"
# inside a vocabulary folder (output/vocabulary/, and the bundle's copy)
VOCABULARY_METADATA = "vocabulary.json"
VOCABULARY_ARRAYS = "codebooks.npz"
VOCABULARY_REPORT = "report.json"

# an audio location inside a parquet shard in the clip catalogue: "<shard path>::<row>"
PARQUET_ROW_SEPARATOR = "::"

# each stage's provenance record, relative to the workdir
RECORDS = {
    "split": "processed/split.meta.json",
    "spectrogram": "processed/spectrogram.meta.json",
    "cluster": "output/vocabulary.meta.json",
    "tokenize": "tokenized/tokenize.meta.json",
    "pretrain": "output/pretrain.meta.json",
    "train": "output/model.meta.json",
    "evaluate": "output/eval/validation.meta.json",
    "baseline": "output/baselines.meta.json",
}


class Layout:
    """Paths of every artifact under one workdir."""

    def __init__(self, workdir: str | Path = "."):
        self.workdir = Path(workdir)
        self.processed = self.workdir / "processed"
        self.output = self.workdir / "output"
        self.tokenized = self.workdir / "tokenized"

    # split
    @property
    def split_json(self) -> Path:
        return self.processed / "split.json"

    @property
    def split_report(self) -> Path:
        return self.processed / "split_report.json"

    # spectrogram
    @property
    def frames_dir(self) -> Path:
        return self.processed / "frames"

    @property
    def frames(self) -> Path:
        return self.frames_dir / "frames.npy"

    @property
    def frames_index(self) -> Path:
        return self.frames_dir / "index.json"

    @property
    def frame_spec(self) -> Path:
        return self.frames_dir / "spec.json"

    @property
    def frames_report(self) -> Path:
        return self.frames_dir / "report.json"

    # cluster
    @property
    def vocabulary(self) -> Path:
        return self.output / "vocabulary"

    @property
    def cluster_report(self) -> Path:
        return self.vocabulary / "report.json"

    # tokenize
    @property
    def tokens(self) -> Path:
        return self.tokenized / "tokens.npy"

    @property
    def tokens_index(self) -> Path:
        return self.tokenized / "index.json"

    @property
    def token_stats(self) -> Path:
        return self.tokenized / "stats.json"

    def token_histogram(self, split: str) -> Path:
        return self.tokenized / f"histogram_{split}.png"

    def store(self, kind: str) -> tuple[Path, Path]:
        """(array, index) of the frames or tokens store."""
        return {"frames": (self.frames, self.frames_index), "tokens": (self.tokens, self.tokens_index)}[kind]

    # train
    @property
    def model_dir(self) -> Path:
        return self.output / "model"

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    def resume_checkpoint(self, stage: str) -> Path:
        """The training state `--resume` continues from (the pretrain or train stage's)."""
        return self.checkpoints / {"pretrain": "pretrain.pt", "train": "last.pt"}[stage]

    @property
    def metrics(self) -> Path:
        return self.output / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.output / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.output / "tensorboard"

    @property
    def pretrain_dir(self) -> Path:
        return self.output / "pretrain"

    @property
    def baselines(self) -> Path:
        return self.output / "baselines"

    # evaluate
    def eval_dir(self, name: str) -> Path:
        return self.output / "eval" / name

    # provenance
    def record(self, stage: str) -> Path:
        return self.workdir / RECORDS[stage]

    def stage_artifacts(self, stage: str) -> tuple[Path, ...]:
        """The files whose digests a stage's record keeps, so that `status` sees a damaged or replaced one."""
        bundle, pretrained = self.model_dir, self.pretrain_dir
        return {
            "split": (self.split_json,),
            "spectrogram": (self.frames, self.frames_index, self.frame_spec),
            "cluster": (self.vocabulary / VOCABULARY_METADATA, self.vocabulary / VOCABULARY_ARRAYS),
            "tokenize": (self.tokens, self.tokens_index),
            "pretrain": (pretrained / BUNDLE_WEIGHTS, pretrained / BUNDLE_SPEC),
            "train": (bundle / BUNDLE_WEIGHTS, bundle / BUNDLE_SPEC, bundle / BUNDLE_METADATA,
                      bundle / BUNDLE_VOCABULARY / VOCABULARY_METADATA),
            "evaluate": (self.eval_dir("validation") / "metrics.json",),
            "baseline": (self.baselines,),
        }[stage]

    def stage_log(self, stage: str) -> Path:
        """The log of a stage's latest run (what `status` quotes when a run was killed)."""
        return self.workdir / "logs" / f"{stage}.log"

    def failure(self, stage: str) -> Path:
        return self.record(stage).with_name(f"{stage}.failed.json")
