"""Run tracking (train.tracking): TensorBoard event files and MLflow runs beside output/metrics.jsonl.

A train or pretrain run keeps one `Tracking` in the process that writes its files (rank 0 under torchrun;
the other processes keep an empty one). Every tracker receives the same record:
  start   the stage's settings (stage_params) and the token usage of tokenized/stats.json (TensorBoard:
          one histogram per split and codebook; MLflow: stats.json and the histogram plots), then the epochs
          a resumed run already has, so a run's record holds every epoch, as metrics.jsonl does
  epoch   every number of the epoch's metrics row: each side's figures as `<metric>/<side>` (loss/train,
          mAP/validation, loss/heldout), lr, peak_memory_gib, epoch_time_s, train_samples_per_s; step = epoch
  finish  the final figures (best validation, test) as `final/<name>`, which TensorBoard's hparams view
          pairs with the settings; each class's validation AP at the best epoch as `class_ap/<class>`; for
          MLflow the bundle and the report (metrics.jsonl, curves.png, the stage's summary) as artifacts
Each train or pretrain run is a run of its own: output/tensorboard/<stage>-<time>/, and an MLflow run of
that name in the experiment MLFLOW_EXPERIMENT_NAME (default "audiotokens") of the store MLFLOW_TRACKING_URI
names, else of the local store output/mlflow/ (SQLite and an artifact folder: MLflow's file store is
deprecated).

Neither package is needed to run the tool. TensorBoard, the default, is skipped with a one-line note when it
is not installed; MLflow, asked for by name, must be installed and its store must open (a one-line error
before the first epoch). Tracking never stops a training: a tracker that fails mid-run (a tracking server
gone) is dropped with a warning and the run goes on with metrics.jsonl.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import tracker_names
from ..errors import UserError
from ..model.metrics import per_class_average_precision
from ..pipeline.layout import Layout
from ..tokens.histograms import token_histograms
from .epoch_log import finite_or_none

log = logging.getLogger("audiotokens")

NOT_SCALARS = ("epoch", "step", "best")  # a row's position and flags, not figures to plot
FINAL = "final"  # tag group of a run's final figures (the hparams view's metrics)
CLASS_AP = "class_ap"  # tag group of the per-class AP at the best epoch
TOKENS = "tokens"  # tag group of the token histograms
EXPERIMENT = "audiotokens"  # the MLflow experiment when MLFLOW_EXPERIMENT_NAME is unset
MLFLOW_NAME = re.compile(r"[^\w.\- ]")  # what MLflow refuses in a name part (and '/', a path separator)


# ---------------------------------------------------------------- what is tracked


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """Every figure of a metrics row: a side's figures as `<metric>/<side>`, the others by their key."""
    scalars = {}
    for key, value in row.items():
        if isinstance(value, dict):
            scalars.update({f"{name}/{key}": float(v) for name, v in value.items() if _is_figure(v)})
        elif key not in NOT_SCALARS and _is_figure(value):
            scalars[key] = float(value)
    return scalars


def _is_figure(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def class_average_precision(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Each class's AP (one against the rest for single-label targets, class ids), for the classes with a
    positive; the others have none defined and are left out."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = np.eye(len(classes), dtype=np.int64)[targets.astype(np.int64)]
    ap = per_class_average_precision(targets, np.asarray(scores))
    return {name: float(value) for name, value in zip(classes, ap) if not math.isnan(value)}


@dataclass
class TokenUsage:
    """Counts of each token id per split and codebook (tokenized/stats.json) and the files that show them."""

    counts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    layout: Layout | None = None

    @property
    def files(self) -> list[Path]:
        """tokenized/stats.json and its histograms, drawn now where missing (only MLflow logs files)."""
        return [self.layout.token_stats, *token_histograms(self.layout).values()] if self.layout else []

    @classmethod
    def read(cls, layout: Layout) -> TokenUsage | None:
        """None when the token store has no statistics (made by hand, not by the tokenize stage)."""
        if not layout.token_stats.is_file():
            log.debug("no %s: no token histograms are tracked", layout.token_stats)
            return None
        try:
            stats = json.loads(layout.token_stats.read_text())
            counts = {split: [np.asarray(book["counts"], dtype=np.int64) for book in view["codebooks"]]
                      for split, view in stats["splits"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged by hand: the histograms only are lost
            log.warning("%s cannot be read (%s); no token histograms are tracked; re-run `audiotokens tokenize` "
                        "to rewrite it", layout.token_stats, _first_line(exc))
            return None
        return cls(counts, layout=layout)


def hparam_values(params: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """Settings as TensorBoard's hparams take them: numbers, booleans and strings; anything else as JSON."""
    return {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for key, value in params.items()}


# ---------------------------------------------------------------- trackers


class Tracker:
    """One tracking backend; each call is one step of the record the module docstring describes."""

    name = ""

    def params(self, params: dict[str, Any]) -> None:
        pass

    def tokens(self, usage: TokenUsage) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def finish(self, params: dict[str, Any], figures: dict[str, float], step: int,
               artifacts: list[tuple[Path, str]], summary: dict[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files in one run folder, read by `tensorboard --logdir output/tensorboard`."""

    name = "tensorboard"

    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def open(cls, path: Path) -> TensorBoardTracker | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("note: tensorboard is not installed, so this run writes no TensorBoard files (pip install "
                     "'audiotokens[tensorboard]'; train.tracking = \"none\" silences this note)")
            return None
        return cls(SummaryWriter(str(path)))

    def tokens(self, usage: TokenUsage) -> None:
        for split, books in usage.counts.items():
            for book, counts in enumerate(books):
                self._histogram(f"{TOKENS}/{split}/codebook{book}", counts)
        self.writer.flush()

    def _histogram(self, tag: str, counts: np.ndarray) -> None:
        """Token ids 0..k-1 as k buckets, bucket i ending at i + 0.5 (so each holds exactly one id)."""
        used = np.flatnonzero(counts)
        if not len(used):
            return
        ids = np.arange(len(counts), dtype=np.float64)
        self.writer.add_histogram_raw(tag, min=float(used[0]), max=float(used[-1]), num=int(counts.sum()),
                                      sum=float(ids @ counts), sum_squares=float((ids * ids) @ counts),
                                      bucket_limits=(ids + 0.5).tolist(), bucket_counts=counts.tolist(),
                                      global_step=0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # the curves show up while the run goes on

    def finish(self, params, figures, step, artifacts, summary) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {f"{FINAL}/{name}": value for name, value in figures.items()}
        for summary_proto in hparams(hparam_values(params), final):
            self.writer.file_writer.add_summary(summary_proto)
        self.scalars(final, step)

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run: the settings as params, every figure per epoch as metrics, the files as artifacts."""

    name = "mlflow"

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, layout: Layout, run_name: str, stage: str) -> MlflowTracker:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("train.tracking names mlflow, which is not installed: pip install "
                            "'audiotokens[mlflow]', or leave mlflow out of train.tracking") from None
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        uri = _local_store(layout) if local else os.environ["MLFLOW_TRACKING_URI"]
        try:
            if local:
                layout.mlflow.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(uri)
            experiment = _experiment(client, layout, local)
            run = client.create_run(experiment, run_name=run_name, tags={
                "audiotokens.stage": stage, "audiotokens.workdir": str(layout.workdir.resolve())})
        except Exception as exc:  # noqa: BLE001 - a bad URI, a server that does not answer, a damaged store
            raise UserError(f"cannot open the MLflow store {uri} ({_first_line(exc)}); check "
                            "MLFLOW_TRACKING_URI, or leave mlflow out of train.tracking") from None
        log.info("MLflow run %s (%s) in %s", run_name, run.info.run_id, uri)
        return cls(client, run.info.run_id)

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(_mlflow_key(key), str(value)) for key, value in params.items()]
        for batch in _batches(entries, 100):  # MLflow's limit of params per call
            self.client.log_batch(self.run_id, params=batch)

    def tokens(self, usage: TokenUsage) -> None:
        for path in usage.files:
            self.client.log_artifact(self.run_id, str(path), TOKENS)

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(_mlflow_key(tag), value, now, step) for tag, value in values.items()]
        for batch in _batches(entries, 1000):  # MLflow's limit of metrics per call
            self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, params, figures, step, artifacts, summary) -> None:
        self.scalars({f"{FINAL}/{name}": value for name, value in figures.items()}, step)
        for path, folder in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), folder)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)
        self.client.log_dict(self.run_id, summary, "report/summary.json")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def _new_run_name(layout: Layout, stage: str) -> str:
    """`<stage>-<time>`, with a suffix when a run of the same second has that name already."""
    name = base = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    copy = 1
    while layout.tensorboard_run(name).exists():
        copy += 1
        name = f"{base}-{copy}"
    return name


def _local_store(layout: Layout) -> str:
    return f"sqlite:///{layout.mlflow_store.resolve()}"


def _experiment(client, layout: Layout, local: bool) -> str:
    """The experiment's id, made when absent; in the local store its artifacts go to output/mlflow/."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = layout.mlflow_artifacts.resolve().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location)


def _mlflow_key(name: str) -> str:
    """A tag as an MLflow name: each part between slashes keeps what MLflow accepts ('_' for the rest)."""
    return "/".join(MLFLOW_NAME.sub("_", part) or "_" for part in name.split("/"))[:250]


def _batches(items: list, size: int) -> Iterable[list]:
    return (items[start:start + size] for start in range(0, len(items), size))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- a run's tracking


class Tracking:
    """The trackers of one run (none: an empty Tracking, whose calls do nothing)."""

    def __init__(self, trackers: list[Tracker], run_name: str = ""):
        self.trackers, self.run_name = trackers, run_name
        self.params: dict[str, Any] = {}

    @classmethod
    def open(cls, setting: str, layout: Layout, stage: str) -> Tracking:
        """The trackers train.tracking names, each starting a run named `<stage>-<time>`."""
        names = tracker_names(setting)
        run_name = _new_run_name(layout, stage)
        # MLflow first: when its store does not open, no TensorBoard run folder is left behind
        opened = [MlflowTracker.open(layout, run_name, stage) if name == "mlflow"
                  else TensorBoardTracker.open(layout.tensorboard_run(run_name))
                  for name in sorted(names, key=lambda name: name != "mlflow")]
        return cls([tracker for tracker in opened if tracker is not None], run_name)

    @property
    def active(self) -> bool:
        return bool(self.trackers)

    def start(self, params: dict[str, Any], history: list[dict[str, Any]], tokens: TokenUsage | None) -> None:
        """The settings, the token usage, and the epochs a resumed run already has."""
        self.params = params
        self._each(lambda tracker: tracker.params(params))
        if tokens is not None:
            self._each(lambda tracker: tracker.tokens(tokens))
        for row in history:
            self.epoch(row)

    def epoch(self, row: dict[str, Any]) -> None:
        values = epoch_scalars(row)
        self._each(lambda tracker: tracker.scalars(values, row["epoch"]))

    def finish(self, *, figures: dict[str, Any], best_epoch: int, class_ap: dict[str, float] | None,
               artifacts: list[tuple[Path, str]], summary: dict[str, Any]) -> None:
        """The final figures (undefined ones left out), per-class AP at the best epoch, the files."""
        final = {name: float(value) for name, value in figures.items() if _is_figure(value)}
        if class_ap:
            per_class = {f"{CLASS_AP}/{name}": value for name, value in class_ap.items()}
            self._each(lambda tracker: tracker.scalars(per_class, best_epoch))
        summary = finite_or_none(summary)
        self._each(lambda tracker: tracker.finish(self.params, final, best_epoch, artifacts, summary))

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        self._each(lambda tracker: tracker.close(status))
        self.trackers = []

    def _each(self, call: Callable[[Tracker], None]) -> None:
        """Call every tracker; one that fails is dropped with a warning, and the training goes on."""
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracking backend must never end the training
                log.warning("%s tracking failed and stops for this run (%s); metrics.jsonl goes on",
                            tracker.name, _first_line(exc))
                self.trackers.remove(tracker)
                with contextlib.suppress(Exception):  # already reported above
                    tracker.close("FAILED")
