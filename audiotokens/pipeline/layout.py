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
  tokenized/stats.json, tokenized/histogram_<split>.png (drawn when first shown: report, MLflow)
  tokenized/shards/N-K/             until assembled: tokens.npy + shard.json of shard K of N
  output/model/                     portable bundle (weights, JSON files, vocabulary, manifest.json, README.md)
  output/pretrain/                  pre-trained embedder and encoder, with its metrics.jsonl and curves.png
  output/checkpoints/{last,best}.pt training state for --resume (pretrain.pt: pre-training's)
  output/metrics.jsonl, output/curves.png
  output/train.partial/             a train run under way: its metrics.jsonl, curves.png and checkpoints/,
                                    swapped in for the files above with its bundle (RunFiles)
  output/tensorboard/<stage>-<time>/ TensorBoard event files of each train or pretrain run (train.tracking)
  output/mlflow/                    the local MLflow store (mlflow.db, artifacts/) when train.tracking names
                                    mlflow and MLFLOW_TRACKING_URI is unset
  output/eval/<name>/               evaluation reports (EVAL_* below)
  output/eval/<split>/robustness/<model | baseline_<name>>/   robustness reports (ROBUSTNESS_* below)
  output/baselines/<model>/<split>/ the MFCC baselines' reports (and <model>/fit.json, <model>/model.joblib)
  output/report.html                `audiotokens report`
  tune/study.db                     `audiotokens tune`: the Optuna studies (SQLite); tune/<study>/: best.toml,
                                    trials.csv/.md, history.png, importance.png, summary.json, and a workdir per
                                    trial, trial-N/ (its config.toml beside processed/, tokenized/, output/), or
                                    with split.strategy = "kfold" trial-N/fold-K/, one per fold
  logs/<stage>.log                  the log of each stage's latest run (logs/<stage>.shard-N-K.log: a shard's)
  .audiotokens.lock                 the workdir lock; .audiotokens.shards/<stage>-N-K.lock: each shard's
A split is a view: the ids listed for it in split.json over a store (open_split). Each stage also writes
a provenance record at `Layout.record(stage)`. Paths under a workdir are Layout's properties and methods;
names inside a folder that may sit anywhere (a bundle, a vocabulary, a report folder, a shard) are the
constants below. Tests spell the names out, as the documentation does, and so check this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")  # test is optional: a split with no clips is absent

# inside a model bundle (output/model/, or any copy of it)
BUNDLE_METADATA = "audiotokens.json"
BUNDLE_SPEC = "model_spec.json"
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_VOCABULARY = "vocabulary"
BUNDLE_CARD = "README.md"  # the model card (model/modelcard.py)
BUNDLE_MANIFEST = "manifest.json"  # digests of the bundle's other files but the card, written last
# inside a vocabulary folder (output/vocabulary/, and the bundle's copy)
VOCABULARY_METADATA = "vocabulary.json"
VOCABULARY_ARRAYS = "codebooks.npz"
VOCABULARY_REPORT = "report.json"

# a training log: in output/ for train, in output/pretrain/ for pretrain
METRICS_LOG = "metrics.jsonl"  # one JSON line per epoch
CURVES = "curves.png"

# inside an evaluation report folder (output/eval/<name>/, output/baselines/<model>/<split>/)
EVAL_METRICS = "metrics.json"
EVAL_PER_CLASS = "per_class.csv"
EVAL_PER_CLASS_TABLE = "per_class.md"
EVAL_SWEEP = "sweep.csv"
EVAL_CLASS_SWEEP = "sweep_{name}.csv"  # the sweep of one class (evaluate --class)
EVAL_CONFUSION = "confusion.csv"
EVAL_CONFUSION_PLOT = "confusion.png"
EVAL_AP_PLOT = "per_class_ap.png"
EVAL_PR_PLOT = "pr_curves.png"
EVAL_SCORES = "scores.npy"
EVAL_CLIPS = "clips.json"

# output/eval/<split>/robustness/ holds one folder per scorer, each with the ROBUSTNESS_* files
ROBUSTNESS_DIR = "robustness"
ROBUSTNESS_MODEL = "model"
ROBUSTNESS_BASELINE = "baseline_{name}"
ROBUSTNESS_TABLE = "robustness.csv"
ROBUSTNESS_TABLE_MD = "robustness.md"
ROBUSTNESS_PER_CLASS = "per_class.csv"
ROBUSTNESS_PLOT = "robustness.png"
ROBUSTNESS_JSON = "robustness.json"
ROBUSTNESS_TOKEN_CHANGE = "token_change.csv"  # token models: the share of changed tokens per codebook

# inside output/baselines/<model>/, beside its <split>/ report folders
BASELINE_FIT = "fit.json"
BASELINE_ESTIMATOR = "model.joblib"

# `audiotokens compare` (into its --out folder) and a k-fold workdir's summary (scripts/kfold.sh)
COMPARE_FILES = {"markdown": "compare.md", "csv": "compare.csv", "plot": "compare.png"}
COMPARE_BITS_PLOT = "compare_bits.png"
# where some run has robustness tables
COMPARE_ROBUSTNESS = {"robustness_csv": "compare_robustness.csv",
                      "robustness_markdown": "compare_robustness.md", "snr_plot": "compare_snr.png"}
KFOLD_SUMMARY = "kfold_summary.json"

# sharded stages: <store folder>/shards/N-K/ (pipeline/shards.py)
SHARDS_DIR = "shards"
SHARD_META = "shard.json"  # tokenize: written last in a shard's folder, so the shard is finished
PART_KEY = "key.json"  # spectrogram: the key the shard's parts were written under
PART_FRAMES = "frames.partial"  # spectrogram: the frames of a shard's parts, in order; the store's once assembled
PART_META = "part-{number:05d}.json"

# `audiotokens export` (beside the bundle folder unless --out says otherwise); beside <name>.onnx go
# <name>.onnx.json (what a runtime needs) and <name>.vocabulary/ (tokens models)
ONNX_GRAPH = "model.onnx"
ONNX_METADATA = "{name}.json"
ONNX_VOCABULARY = "{stem}.vocabulary"

# `audiotokens predict --picture` (in the current folder unless --out says otherwise)
TOKEN_PICTURE = "{stem}.tokens.png"

# `audiotokens predict --timeline` (in the current folder unless --out says otherwise): the scores of every
# window, the events (CSV and JSON) and the picture of one recording
TIMELINE_SCORES = "{stem}.timeline.csv"
TIMELINE_EVENTS = "{stem}.events.csv"
TIMELINE_EVENTS_JSON = "{stem}.events.json"
TIMELINE_PICTURE = "{stem}.timeline.png"

# a local Hugging Face speech model folder (spectrogram.ssl_model)
HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"

# `audiotokens tune`: in tune/<study>/ (StudyLayout below); inside a trial's workdir (tune/<study>/trial-N/),
# the configuration the trial ran with; a k-fold trial has one workdir per fold inside it
TUNE_SUMMARY = "summary.json"
TRIAL_CONFIG = "config.toml"
TRIAL_FOLD = "fold-{fold}"

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


@dataclass(frozen=True)
class RunFiles:
    """A train run's log, curves and checkpoints, under one folder: output/ for the run whose bundle is
    output/model/, output/train.partial/ for a run under way (training/run_files.py). TensorBoard and MLflow
    keep every run apart already (a folder or record per run), so they are written in place."""

    folder: Path

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS_LOG

    @property
    def curves(self) -> Path:
        return self.folder / CURVES

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"


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

    @property
    def tokens_staging(self) -> Path:
        """Where a new token store is written before it replaces tokenized/'s files (a hidden folder beside)."""
        return self.tokenized / "store"

    # train
    @property
    def model_dir(self) -> Path:
        return self.output / "model"

    @property
    def run_files(self) -> RunFiles:
        """The files of the run whose bundle is output/model/."""
        return RunFiles(self.output)

    @property
    def staged_run_files(self) -> RunFiles:
        """The files of a train run under way (or failed, or interrupted: what --resume continues)."""
        return RunFiles(self.output / "train.partial")

    @property
    def checkpoints(self) -> Path:
        return self.run_files.checkpoints

    def resume_checkpoint(self, stage: str) -> Path:
        """The training state `--resume` continues from (the pretrain or train stage's; for train, the
        finished run's, unless a run under way in output/train.partial/ matches: training/run_files.py)."""
        return {"pretrain": self.pretrain_checkpoint, "train": self.last_checkpoint}[stage]

    @property
    def last_checkpoint(self) -> Path:
        return self.run_files.last_checkpoint

    @property
    def best_checkpoint(self) -> Path:
        return self.run_files.best_checkpoint

    @property
    def pretrain_checkpoint(self) -> Path:
        return self.checkpoints / "pretrain.pt"

    @property
    def metrics(self) -> Path:
        return self.run_files.metrics

    @property
    def curves(self) -> Path:
        return self.run_files.curves

    @property
    def tensorboard(self) -> Path:
        return self.output / "tensorboard"

    def tensorboard_run(self, run_name: str) -> Path:
        """One run's event files (run_name: `<stage>-<time>`), so TensorBoard shows each run as its own."""
        return self.tensorboard / run_name

    @property
    def mlflow(self) -> Path:
        return self.output / "mlflow"

    @property
    def mlflow_store(self) -> Path:
        """The SQLite database of the local MLflow store (MLflow's file store is deprecated)."""
        return self.mlflow / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

    @property
    def pretrain_dir(self) -> Path:
        return self.output / "pretrain"

    # evaluate
    @property
    def evaluations(self) -> Path:
        return self.output / "eval"

    def eval_dir(self, name: str) -> Path:
        return self.evaluations / name

    def eval_reports(self) -> list[Path]:
        """Every evaluation report folder (output/eval/<name>/ with its metrics.json), by name."""
        return [path.parent for path in sorted(self.evaluations.glob(f"*/{EVAL_METRICS}"))]

    def robustness_dir(self, split: str) -> Path:
        return self.eval_dir(split) / ROBUSTNESS_DIR

    def robustness_reports(self) -> list[Path]:
        """Every robustness report folder (output/eval/<split>/robustness/<scorer>/ with its table)."""
        return [path.parent for path in sorted(self.evaluations.glob(f"*/{ROBUSTNESS_DIR}/*/{ROBUSTNESS_TABLE}"))]

    # baseline
    @property
    def baselines(self) -> Path:
        return self.output / "baselines"

    def baseline_reports(self) -> list[Path]:
        """Every baseline report folder (output/baselines/<model>/<split>/ with its metrics.json)."""
        return [path.parent for path in sorted(self.baselines.glob(f"*/*/{EVAL_METRICS}"))]

    def baseline_estimators(self) -> list[Path]:
        """The saved estimator of every fitted baseline (output/baselines/<model>/model.joblib)."""
        return sorted(self.baselines.glob(f"*/{BASELINE_ESTIMATOR}"))

    # report
    @property
    def html_report(self) -> Path:
        return self.output / "report.html"

    # provenance
    def record(self, stage: str) -> Path:
        return self.workdir / RECORDS[stage]

    def stage_artifacts(self, stage: str) -> tuple[Path, ...]:
        """The files and report folders a stage writes (a folder stands for every file in it: stage_files)."""
        bundle, pretrained = self.model_dir, self.pretrain_dir
        return {
            "split": (self.split_json,),
            "spectrogram": (self.frames, self.frames_index, self.frame_spec),
            "cluster": (self.vocabulary / VOCABULARY_METADATA, self.vocabulary / VOCABULARY_ARRAYS),
            "tokenize": (self.tokens, self.tokens_index, self.token_stats),
            "pretrain": (pretrained / BUNDLE_WEIGHTS, pretrained / BUNDLE_SPEC),
            "train": (bundle / BUNDLE_WEIGHTS, bundle / BUNDLE_SPEC, bundle / BUNDLE_METADATA,
                      bundle / BUNDLE_VOCABULARY / VOCABULARY_METADATA, bundle / BUNDLE_MANIFEST),
            "evaluate": tuple(self.eval_dir(split) for split in SPLITS if split != "train"),
            "baseline": (self.baselines,),
        }[stage]

    def stage_files(self, stage: str) -> list[Path]:
        """The files whose digests a stage's record keeps, so that `status` sees a damaged, removed or replaced
        one: the stage's artifacts, each report folder as the files in it, but robustness reports (written
        later by `evaluate --corrupt`) and hidden temporary files."""
        files = []
        for artifact in self.stage_artifacts(stage):
            if not artifact.is_dir():
                files.append(artifact)
                continue
            for path in sorted(artifact.rglob("*")):
                inside = path.relative_to(artifact).parts
                if path.is_file() and ROBUSTNESS_DIR not in inside[:-1] and not inside[-1].startswith("."):
                    files.append(path)
        return files

    def stage_outputs(self, stage: str) -> tuple[Path, ...]:
        """Everything a stage writes (files and folders) that another workdir may take over whole (tune
        links a stage's outputs and record into a trial's workdir instead of computing them again)."""
        return {
            "split": (self.split_json, self.split_report),
            "spectrogram": (self.frames_dir,),
            "cluster": (self.vocabulary,),
            "tokenize": (self.tokenized,),
            "pretrain": (self.pretrain_dir,),
        }[stage]

    # tune
    @property
    def tune_dir(self) -> Path:
        return self.workdir / "tune"

    @property
    def tune_database(self) -> Path:
        """The SQLite database of the workdir's studies (unless --storage names another database)."""
        return self.tune_dir / "study.db"

    def study(self, name: str) -> StudyLayout:
        return StudyLayout(self.tune_dir / name)

    def studies(self) -> list[StudyLayout]:
        """The studies whose outcome is written (summary.json), by name."""
        return [StudyLayout(path.parent) for path in sorted(self.tune_dir.glob(f"*/{TUNE_SUMMARY}"))]

    def trial_workdirs(self) -> list[Path]:
        """Every trial's workdir and its folds' workdirs, of every study, in trial order within a study."""
        folders = sorted(path for path in self.tune_dir.glob("*") if path.is_dir())
        return [workdir for folder in folders for workdir in StudyLayout(folder).workdirs()]

    # runs
    def stage_log(self, stage: str) -> Path:
        """The log of a stage's latest run (what `status` quotes when a run was killed)."""
        return self.workdir / "logs" / f"{stage}.log"

    def shard_log(self, stage: str, shard: str) -> Path:
        """The log of one shard's run (`shard` as Shard.name, N-K)."""
        return self.stage_log(stage).with_name(f"{stage}.shard-{shard}.log")

    @property
    def lock(self) -> Path:
        """The workdir lock (pipeline/lock.py)."""
        return self.workdir / ".audiotokens.lock"

    @property
    def shard_locks(self) -> Path:
        return self.workdir / ".audiotokens.shards"

    def shard_lock(self, stage: str, shard: str) -> Path:
        """The lock of one shard of a stage (`shard` as Shard.name, N-K)."""
        return self.shard_locks / f"{stage}-{shard}.lock"

    def failure(self, stage: str) -> Path:
        return self.record(stage).with_name(f"{stage}.failed.json")


class StudyLayout:
    """The files of one `audiotokens tune` study: tune/<study>/ (the database is the workdir's, shared)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def best(self) -> Path:
        """The best trial's configuration, for `audiotokens run --config`."""
        return self.folder / "best.toml"

    def trials(self, suffix: str) -> Path:
        """The table of trials: suffix csv or md."""
        return self.folder / f"trials.{suffix}"

    @property
    def history_plot(self) -> Path:
        return self.folder / "history.png"

    @property
    def importance_plot(self) -> Path:
        return self.folder / "importance.png"

    @property
    def summary(self) -> Path:
        """The study's outcome: metric, best trial, its values, validation and test figures."""
        return self.folder / TUNE_SUMMARY

    def trial_workdir(self, number: int, fold: int | None = None) -> Path:
        """A trial's workdir, or (split.strategy = "kfold") the workdir of one of its folds."""
        trial = self.folder / f"trial-{number}"
        return trial if fold is None else trial / TRIAL_FOLD.format(fold=fold)

    def workdirs(self) -> list[Path]:
        """Every trial's workdir and its folds' workdirs, in trial order."""
        found = [path for path in self.folder.glob("trial-*") if path.name[6:].isdigit() and path.is_dir()]
        trials = sorted(found, key=lambda path: int(path.name[6:]))
        return [workdir for trial in trials
                for workdir in (trial, *sorted(trial.glob(TRIAL_FOLD.format(fold="*"))))]

