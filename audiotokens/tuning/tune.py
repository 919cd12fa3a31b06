"""`audiotokens tune`: an Optuna study over a search space, each trial a workdir under tune/<study>/.

How a study runs:
  - The base workdir's split and spectrogram are brought up to date once (another tune process preparing
    the same workdir is waited for).
  - A new study's first trial is the base configuration itself when its values are a point of the space
    (unless --no-base-trial), so the search is measured against where it started, in the same table.
  - A trial: the sampler draws its values (the base trial's are fixed); tune/<study>/trial-N/config.toml
    is the base configuration with them (the file `status --config` in that workdir judges against);
    every stage before train whose output another workdir already holds with the same fingerprint (the
    base workdir, earlier trials of any study: the same frames, or the same tokens when [cluster] and
    [spectrogram] agree) is taken over as hard links of its files plus its record, the rest is computed;
    then train runs with a per-epoch callback that reports the validation figure to the pruner, which may
    stop it (a pruned trial), and with the test split unread.
  - The objective is the figure the train stage selects its best epoch on (mAP for multi-label, accuracy
    for single-label), at the best epoch, maximised. With split.strategy = "kfold" a trial trains every
    fold (trial-N/fold-K, split.fold = K) and the objective is the mean over the folds; the pruner's
    steps count epochs across them. Test is never used during the study: once the study ends, the best
    trial alone is evaluated on validation and test (a k-fold trial: every fold's model, and the means).
  - The study lives in tune/study.db (SQLite, beside the workdir's other studies), or in the database
    --storage names (several processes or machines on one study: Optuna's own distributed mode).
    `--trials N` counts the study's finished trials (complete or pruned), earlier runs and other
    processes included, so an interrupted study run again goes on where it stopped.
  - Outputs in tune/<study>/: best.toml (for `audiotokens run --config`), trials.csv and trials.md,
    history.png and importance.png (Optuna's plots), summary.json; one progress line per trial on stderr
    (the stages' own lines go to each trial's logs/, and to the console with -v).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as optuna_plots
from sqlalchemy.exc import SQLAlchemyError

from ..config import RUNTIME, Config, keys_with_role, load_config
from ..errors import UserError
from ..pipeline.files import atomic_path, read_json, write_json
from ..pipeline.layout import EVAL_METRICS, SHARDS_DIR, SPLITS, TRIAL_CONFIG, TRIAL_FOLD, Layout
from ..pipeline.lock import workdir_lock
from ..pipeline.provenance import output_identity, read_record, stage_states
from ..pipeline.run import execute, run
from ..pipeline.stages import BY_NAME, NAMES
from . import DEFAULT_STUDY
from .configs import config_with
from .space import TUNABLE, SearchSpace, load_space

log = logging.getLogger("audiotokens")

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a folder name: tune/<study>/
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BEFORE_TRAIN = NAMES[:NAMES.index("train")]  # the stages a trial may take over from another workdir
BASE_ATTR = "base"  # the user attribute marking the trial of the base configuration
HEARTBEAT_S, GRACE_S = 60, 300  # a trial whose process died is marked failed once its heartbeat is this old


def default_prune_after(epochs: int) -> int:
    """The first epoch the default pruner may judge: a quarter of the training, at least the second epoch.
    Early figures are noisy, and some tasks sit at chance level for several epochs before they learn
    (language identification on the speech sets: 4 to 18), so the first epochs say little of the last."""
    return max(2, epochs // 4)


def default_pruner(prune_after: int) -> optuna.pruners.BasePruner:
    """Stop a trial whose validation figure after an epoch is below the median of earlier trials' at that
    epoch, once five trials have finished, from epoch `prune_after` on."""
    return named_pruner("median", prune_after)


PRUNERS = "median, percentile:P (stop below the P-th percentile, 0 < P < 100) or none"


def named_pruner(name: str, prune_after: int) -> optuna.pruners.BasePruner:
    """The pruner --pruner names (PRUNERS), judging from epoch `prune_after` once five trials have finished.
    A lower percentile stops only the clearly hopeless: fewer trials saved, fewer slow starters lost."""
    if prune_after < 1:
        raise UserError(f"--prune-after must be at least 1 (an epoch), got {prune_after}")
    kind, _, value = name.partition(":")
    if kind == "none" and not value:
        return optuna.pruners.NopPruner()
    if kind == "median" and not value:
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=prune_after)
    if kind == "percentile":
        try:
            percentile = float(value)
        except ValueError:
            percentile = math.nan
        if 0 < percentile < 100:
            # Optuna's percentile is the share of trials kept: stopping below the P-th is keeping 100 - P
            return optuna.pruners.PercentilePruner(100 - percentile, n_startup_trials=5,
                                                   n_warmup_steps=prune_after)
    raise UserError(f"--pruner {name!r} is not a pruner; give {PRUNERS}")


def tune(config: Config, space_path: str | Path, trials: int, storage: str | None = None,
         study_name: str = DEFAULT_STUDY, timeout: float | None = None,
         pruner: optuna.pruners.BasePruner | None = None,
         sampler: optuna.samplers.BaseSampler | None = None, prune_after: int | None = None,
         base_trial: bool = True, seed: int | None = None, pruner_name: str = "median") -> dict[str, Any]:
    """Run (or go on with) a study until it has `trials` finished trials or `timeout` seconds pass; returns
    what summary.json holds. Without a `pruner`, the default one judges from epoch `prune_after` on
    (default_prune_after of train.epochs when None); `pruner_name` picks another (named_pruner). With
    `base_trial`, a new study's first trial is the base configuration (when the space can draw its values).
    Without a `sampler`, Optuna's default (TPE) draws, seeded with `seed` when given."""
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if not STUDY_NAME.fullmatch(study_name):
        raise UserError(f"--study '{study_name}' names the study's folder tune/<study>/: use letters, digits, "
                        "'_', '-' and '.' (not first), at most 100")
    space = load_space(space_path, config)
    if sampler is None and seed is not None:
        # one process draws the same trials again; several draw from the shared history, so they differ
        sampler = optuna.samplers.TPESampler(seed=seed)
    if pruner is None:
        pruner = named_pruner(pruner_name,
                              default_prune_after(config.train.epochs) if prune_after is None else prune_after)
    return Tuner(config, space, storage, study_name, pruner, sampler, base_trial).run(trials, timeout)


class Tuner:
    def __init__(self, config: Config, space: SearchSpace, storage: str | None, study_name: str,
                 pruner: optuna.pruners.BasePruner | None, sampler: optuna.samplers.BaseSampler | None,
                 base_trial: bool = True):
        self.base, self.space, self.study_name, self.base_trial = config, space, study_name, base_trial
        self.layout = Layout(config.workdir)
        self.files = self.layout.study(study_name)
        self.storage_url = storage or f"sqlite:///{self.layout.tune_database.resolve()}"
        self.pruner = pruner or default_pruner(default_prune_after(config.train.epochs))
        self.sampler = sampler

    def run(self, trials: int, timeout: float | None) -> dict[str, Any]:
        self.files.folder.mkdir(parents=True, exist_ok=True)
        # processes starting together would race to create the database's tables
        with workdir_lock(self.layout.workdir, "tune: opening the study", wait=True):
            study = self.open_study()
            self.queue_base_trial(study)
        self.prepare_base()
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        self.goal = trials
        if done >= trials:
            log.info("tune: study '%s' already has %d finished trials (--trials %d)", self.study_name, done, trials)
        else:
            log.info("tune: study '%s', %d of %d trials finished before; searching %s", self.study_name, done,
                     trials, "; ".join(param.describe() for param in self.space.params))
            try:
                with quiet_console():
                    study.optimize(self.objective, n_trials=trials - done, timeout=timeout,
                                   callbacks=[MaxTrialsCallback(trials, states=FINISHED), self.progress])
            finally:
                with workdir_lock(self.layout.workdir, "tune: trials table", wait=True):
                    self.write_table(study)
        with workdir_lock(self.layout.workdir, "tune: results", wait=True):
            return self.conclude(study)

    # ------------------------------------------------------------ the study

    def open_study(self) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.logging.disable_default_handler()  # the progress lines below say what Optuna's would
        url = self.storage_url
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        try:
            with warnings.catch_warnings():  # the heartbeat is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                     grace_period=GRACE_S)
            study = optuna.create_study(storage=storage, study_name=self.study_name, direction="maximize",
                                        pruner=self.pruner, sampler=self.sampler, load_if_exists=True)
        except (ImportError, ValueError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise UserError(f"cannot open the study '{self.study_name}' in {_safe_url(url)}: "
                            f"{str(exc).splitlines()[0]}") from None
        self.check_same_search(study)
        return study

    def check_same_search(self, study: optuna.Study) -> None:
        """A study goes on only with the space and base configuration it was started with."""
        identity = {"space": self.space.digest(), "base": base_digest(self.base)}
        for name, value in identity.items():
            recorded = study.user_attrs.get(name)
            if recorded is None:
                study.set_user_attr(name, value)
            elif recorded != value:
                what = "search space" if name == "space" else "base configuration (outside runtime keys)"
                raise UserError(f"study '{self.study_name}' was started with another {what}; go on with the "
                                "one it was started with, or start a new study with --study NAME")
        if "keys" not in study.user_attrs:
            study.set_user_attr("keys", self.space.keys)

    def queue_base_trial(self, study: optuna.Study) -> None:
        """A new study's first trial (unless base_trial is off): the base configuration's own values, when the
        space can draw them. Once per study: another process (or machine) opening it later finds trials
        there, and Optuna skips a second identical queued trial all the same."""
        if not self.base_trial or study.get_trials(deepcopy=False):
            return
        values, outside = self.space.point_of(self.base)
        if outside:
            log.info("tune: the base configuration is not a point of the search space (%s): no trial of it "
                     "is queued; compare the best trial with a run of it", "; ".join(outside))
            return
        study.enqueue_trial(values, user_attrs={BASE_ATTR: True}, skip_if_exists=True)
        log.info("tune: the base configuration is queued as trial 0 (%s)", _values_text(values))

    def prepare_base(self) -> None:
        """Split and spectrogram in the base workdir, once for every trial."""
        with workdir_lock(self.layout.workdir, "tune: split and spectrogram", wait=True):
            run(self.base, stop="spectrogram")

    # ------------------------------------------------------------ one trial

    def objective(self, trial: optuna.Trial) -> float:
        values = self.space.suggest(trial)
        workdir = self.files.trial_workdir(trial.number)
        shutil.rmtree(workdir, ignore_errors=True)  # left by a killed attempt or an earlier study of this name
        trial.set_user_attr("workdir", str(workdir.resolve()))
        trial.set_user_attr("host", socket.gethostname())
        report, scores = PrunerReport(trial), []
        try:
            for fold in self.folds():
                metric, score, epochs = self.train_fold(trial, values, fold, report)
                trial.set_user_attr("metric", metric)
                if score is None or not math.isfinite(score):
                    where = "" if fold is None else f" of fold {fold}"
                    trial.set_user_attr("error", f"validation {metric}{where} is undefined (no positive "
                                                 "validation clip?)")
                    return math.nan
                scores.append(float(score))
                report.offset += epochs
        except UserError as exc:
            trial.set_user_attr("error", str(exc))
            return math.nan  # a failed trial; the study goes on
        trial.set_user_attr("epochs", report.offset)
        if len(scores) > 1:
            trial.set_user_attr("folds", scores)
        return sum(scores) / len(scores)

    def folds(self) -> list[int | None]:
        """The folds a trial trains: every fold with split.strategy = "kfold", else the one split (None)."""
        split = self.base.split
        return list(range(split.folds)) if split.strategy == "kfold" else [None]

    def train_fold(self, trial: optuna.Trial, values: dict[str, Any], fold: int | None,
                   report: PrunerReport) -> tuple[str, float | None, int]:
        """One training of the trial (of one fold): its workdir's configuration, stages before train taken over
        or computed, train with the pruner's callback and test unread. Returns metric, best figure, epochs."""
        workdir = self.files.trial_workdir(trial.number, fold)
        name = f"trial {trial.number}" + ("" if fold is None else f" fold {fold}")
        config = config_with(self.base, values, workdir / TRIAL_CONFIG, workdir,
                             header=f"{name} of study '{self.study_name}' (audiotokens tune)",
                             fixed=None if fold is None else {"split.fold": fold})
        self.prepare_inputs(config)
        run(config, stop=BEFORE_TRAIN[-1])  # nothing left, unless a stage judged fresh went stale since
        counts = execute("train", config, epoch_callback=report, score_test=False)
        metric = next(key for key in counts if key.startswith("best_validation_"))[len("best_validation_"):]
        return metric, counts[f"best_validation_{metric}"], counts["epochs_run"]

    def prepare_inputs(self, config: Config) -> None:
        """Each stage before train, in order: taken over from another workdir that already computed it with
        the fingerprint this trial gives it (linked), else computed here. In order, because a stage's
        fingerprint is known only once its inputs are in place (a k-fold trial's split is its own; the
        frames it feeds are the base workdir's all the same)."""
        target = Layout(config.workdir)
        sources = [self.layout, *(Layout(w) for w in self.layout.trial_workdirs() if w != target.workdir)]
        for stage in BEFORE_TRAIN:
            if not BY_NAME[stage].in_run(config) or stage_states(target, config)[stage].state == "fresh":
                continue
            if not self.take_over(stage, config, target, sources):
                run(config, start=stage, stop=stage)

    @staticmethod
    def take_over(stage: str, config: Config, target: Layout, sources: list[Layout]) -> bool:
        # the split's fingerprint covers the audio its own catalogue lists: known only once it is there
        expected = None if stage == "split" else stage_states(target, config)[stage].expected
        for source in sources:
            if holds_output(source, stage, expected):
                link_outputs(source, target, stage)
                if stage_states(target, config)[stage].state == "fresh":
                    log.debug("tune: %s of %s taken over from %s", stage, target.workdir, source.workdir)
                    return True
                remove_outputs(target, stage)
        return False

    def progress(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """One line per trial on stderr, whatever the console's log level."""
        print(progress_line(study, trial, self.goal), file=sys.stderr, flush=True)

    # ------------------------------------------------------------ outputs

    def write_table(self, study: optuna.Study) -> None:
        rows = trial_rows(study, self.space.keys)
        with atomic_path(self.files.trials("csv")) as tmp:
            tmp.write_text(rows_csv(rows))
        with atomic_path(self.files.trials("md")) as tmp:
            tmp.write_text(rows_markdown(rows))

    def conclude(self, study: optuna.Study) -> dict[str, Any]:
        """Table, plots, best.toml, the best trial's validation and test figures, summary.json."""
        self.write_table(study)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.write_plots(study, len(complete))
        counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
                  for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
        if not complete:
            failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            first = next((t.user_attrs["error"] for t in failed if "error" in t.user_attrs), "")
            raise UserError(f"no trial of study '{self.study_name}' completed ({counts['pruned']} pruned, "
                            f"{counts['fail']} failed{'; first failure: ' + first if first else ''})")
        best = study.best_trial
        metric = best.user_attrs.get("metric", "score")
        header = (f"The best trial of study '{self.study_name}' (audiotokens tune): trial {best.number}, validation "
                  f"{metric} {best.value:.4f}, of {counts['complete'] + counts['pruned']} finished trials.\n"
                  f"Run it with: audiotokens run --config {self.files.best} --workdir NEW_WORKDIR")
        if "folds" in best.user_attrs:
            fold = self.base.split.fold
            header += (f"\nThe figure is the mean over {len(best.user_attrs['folds'])} folds; `run` trains fold "
                       f"{fold} alone (validation {metric} {best.user_attrs['folds'][fold]:.4f}); "
                       f"scripts/kfold.sh {self.files.best} DIR runs every fold.")
        config_with(self.base, best.params, self.files.best, self.layout.workdir, header=header)
        summary = {
            "study": self.study_name, "metric": metric, "direction": "maximize", "trials": counts,
            "space": {"file": str(self.space.path), "keys": self.space.keys},
            "best": {"trial": best.number, "validation": best.value, "folds": best.user_attrs.get("folds"),
                     "params": best.params,
                     "epochs": best.user_attrs.get("epochs"), "workdir": best.user_attrs.get("workdir"),
                     "config": str(self.files.best)},
            "evaluation": self.evaluate_best(best, metric),
            "base": base_outcome(study),
        }
        write_json(self.files.summary, summary)
        if summary["base"] is not None:
            print(base_line(summary["base"], best, metric), file=sys.stderr, flush=True)
        return summary

    def evaluate_best(self, best: FrozenTrial, metric: str) -> dict[str, Any]:
        """The best trial's model scored by the evaluate stage, on validation and (the only time) on test; a
        k-fold trial's figures are the means over its folds' models, each fold's under "folds"."""
        trial = Path(best.user_attrs.get("workdir", ""))
        folds = self.folds()
        workdirs = [trial if fold is None else trial / TRIAL_FOLD.format(fold=fold) for fold in folds]
        if not all((workdir / TRIAL_CONFIG).is_file() for workdir in workdirs):
            log.warning("tune: the best trial (%d) ran on %s in %s; evaluate it there", best.number,
                        best.user_attrs.get("host", "another machine"), trial)
            return {}
        per_fold = [evaluated_figures(workdir, metric) for workdir in workdirs]
        figures = per_fold[0] if len(per_fold) == 1 else {**mean_figures(per_fold), "folds": per_fold}
        line = "  ".join(f"{name} {metric} {values.get(metric, float('nan')):.4f}"
                         for name, values in figures.items() if name in SPLITS)
        mean = "" if len(per_fold) == 1 else f" (means over {len(per_fold)} folds)"
        print(f"tune: best trial {best.number} ({_values_text(best.params)}): {line}{mean}; config in "
              f"{self.files.best}", file=sys.stderr, flush=True)
        return figures

    def write_plots(self, study: optuna.Study, complete: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            save_axes(optuna_plots.plot_optimization_history(study, target_name="validation figure"),
                      self.files.history_plot)
            importance = self.files.importance_plot
            if complete < 2:
                importance.unlink(missing_ok=True)
                log.info("tune: no parameter-importance plot with fewer than 2 complete trials")
                return
            try:
                axes = optuna_plots.plot_param_importances(study)
            except (ValueError, RuntimeError) as exc:
                importance.unlink(missing_ok=True)
                log.warning("tune: no parameter-importance plot: %s", exc)
                return
            save_axes(axes, importance)


def evaluated_figures(workdir: Path, metric: str) -> dict[str, dict[str, Any]]:
    """The evaluate stage's headline figures of a trial's workdir per split (the stage run if not fresh)."""
    config = load_config(workdir / TRIAL_CONFIG, workdir=workdir)
    layout = Layout(workdir)
    if stage_states(layout, config)["evaluate"].state != "fresh":
        with quiet_console():
            execute("evaluate", config)
    figures = {}
    for split in SPLITS[1:]:
        path = layout.eval_dir(split) / EVAL_METRICS
        if path.is_file():
            metrics = read_json(path)
            figures[split] = {key: metrics[key] for key in ("clips", metric, "micro_f1", "macro_f1")
                              if key in metrics}
    return figures


def mean_figures(per_fold: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per split, the mean of each figure over the folds that have it (None where one is undefined)."""
    means: dict[str, dict[str, Any]] = {}
    for split in SPLITS[1:]:
        folds = [figures[split] for figures in per_fold if split in figures]
        if folds:
            keys = dict.fromkeys(key for figures in folds for key in figures)
            values = {key: [figures.get(key) for figures in folds] for key in keys}
            means[split] = {key: None if any(v is None for v in found) else sum(found) / len(found)
                            for key, found in values.items()}
    return means


# ---------------------------------------------------------------- pruning


class PrunerReport:
    """The train stage's epoch callback: each epoch's validation figure to the study's pruner, which may stop
    the trial (optuna.TrialPruned, raised through the train stage). Steps count the trial's epochs across
    its folds (`offset`: the epochs of the folds before this one), so a k-fold trial can be stopped in any
    fold, most often in the first."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.offset = 0

    def __call__(self, epoch: int, score: float | None) -> None:
        step = self.offset + epoch
        self.trial.set_user_attr("epochs", step)
        if score is None or not math.isfinite(score):
            return
        self.trial.report(score, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned by the tuner after epoch {step} (validation {score:.4f})")


# ---------------------------------------------------------------- taking over another workdir's outputs


def holds_output(source: Layout, stage: str, expected: str | None) -> bool:
    """Whether `source` holds `stage`'s finished output, undamaged (and with fingerprint `expected`, if given)."""
    record = read_record(source, stage)
    if not record or source.failure(stage).exists():
        return False
    if expected is not None and record.get("fingerprint") != expected:
        return False
    return all(output_identity(source.workdir / name) == identity
               for name, identity in record.get("outputs", {}).items())


def link_outputs(source: Layout, target: Layout, stage: str) -> None:
    """The stage's files as hard links (copies across file systems) and its record, so that `status` in the
    target workdir finds the stage fresh. Stages replace files whole, never write into them: a link keeps
    the content it was made with."""
    for path in source.stage_outputs(stage):
        _link(path, target.workdir / path.relative_to(source.workdir))
    _link(source.record(stage), target.record(stage))


def remove_outputs(layout: Layout, stage: str) -> None:
    for path in layout.stage_outputs(stage):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    layout.record(stage).unlink(missing_ok=True)


def _link(source: Path, target: Path) -> None:
    if source.is_dir():
        for child in source.iterdir():
            if child.name != SHARDS_DIR and not child.name.startswith("."):  # unfinished work, staging
                _link(child, target / child.name)
        return
    if not source.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ---------------------------------------------------------------- identity, progress and the table


def base_digest(config: Config) -> str:
    """The base configuration as it defines trials: the sections that make a model, less runtime keys."""
    runtime = keys_with_role(RUNTIME)
    table = {f"{section}.{key}": value for section, values in config.to_dict().items()
             if section in (*TUNABLE, "data", "split") for key, value in values.items()
             if f"{section}.{key}" not in runtime}
    return hashlib.sha256(json.dumps(table, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_outcome(study: optuna.Study) -> dict[str, Any] | None:
    """The base configuration's trial: number, state, validation figure (None unless complete), epochs."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASE_ATTR)), None)
    if trial is None:
        return None
    return {"trial": trial.number, "state": trial.state.name.lower(),
            "validation": trial.value if trial.state == TrialState.COMPLETE else None,
            "epochs": trial.user_attrs.get("epochs")}


def base_line(base: dict[str, Any], best: FrozenTrial, metric: str) -> str:
    """Where the search ended against where it started, on validation."""
    head = f"tune: the base configuration (trial {base['trial']})"
    if base["trial"] == best.number:
        return f"{head} is the best trial: no trial beat it on validation {metric}"
    if base["validation"] is None:
        return f"{head} was {base['state']} after epoch {base['epochs']}; the best trial is {best.number}"
    return (f"{head}: validation {metric} {base['validation']:.4f}; the best trial {best.number} is "
            f"{best.value - base['validation']:+.4f} from it")


def _values_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in params.items())


def _seconds(trial: FrozenTrial) -> float | None:
    return trial.duration.total_seconds() if trial.duration is not None else None


def pruned_text(trial: FrozenTrial) -> str:
    """Where a pruned trial stood when it was stopped, from the figures it reported: its value is only the
    figure at the stopping epoch, which alone does not tell a hopeless trial from a slow starter."""
    reported = trial.intermediate_values
    if not reported:
        return f"pruned after epoch {trial.user_attrs.get('epochs')}"
    last = max(reported)
    best = max(reported, key=lambda step: (reported[step], -step))
    text = f"pruned after epoch {last} (validation {reported[last]:.4f} there"
    if best != last:
        text += f"; its best {reported[best]:.4f} at epoch {best}"
    return text + ")"


def progress_line(study: optuna.Study, trial: FrozenTrial, goal: int) -> str:
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    metric = trial.user_attrs.get("metric", "validation")
    epochs = trial.user_attrs.get("epochs")
    parts = [f"trial {trial.number}" + (" (the base configuration)" if trial.user_attrs.get(BASE_ATTR) else "")]
    if trial.state == TrialState.COMPLETE:
        best = study.best_trial
        folds = trial.user_attrs.get("folds")
        mean = f" (mean of {len(folds)} folds)" if folds else ""
        parts.append(f"{metric} {trial.value:.4f}{mean} (best {best.value:.4f}, trial {best.number})")
    elif trial.state == TrialState.PRUNED:
        parts.append(pruned_text(trial))
    else:
        parts.append(f"failed: {trial.user_attrs.get('error', 'see its logs/')}")
    if epochs is not None and trial.state == TrialState.COMPLETE:
        parts.append(f"{epochs} epochs")
    seconds = _seconds(trial)
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    parts += [_values_text(trial.params), f"[{finished}/{goal} finished]"]
    return "tune: " + "  ".join(parts)


def trial_rows(study: optuna.Study, keys: list[str]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value (k-fold: the mean, and each fold's), epochs, seconds, the
    values drawn, a note."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial.number if complete else None
    metric = next((t.user_attrs["metric"] for t in complete if "metric" in t.user_attrs), "validation")
    kfold = any("folds" in t.user_attrs for t in trials)
    rows = []
    for trial in trials:
        notes = ["best" if trial.number == best else trial.user_attrs.get("error", ""),
                 pruned_text(trial) if trial.state == TrialState.PRUNED else "",
                 "base configuration" if trial.user_attrs.get(BASE_ATTR) else ""]
        note = "; ".join(text for text in notes if text)
        seconds = _seconds(trial)
        folds = {"folds": " ".join(f"{v:.4f}" for v in trial.user_attrs.get("folds", []))} if kfold else {}
        rows.append({"trial": trial.number, "state": trial.state.name.lower(),
                     f"validation {metric}": trial.value, **folds, "epochs": trial.user_attrs.get("epochs"),
                     "seconds": round(seconds, 1) if seconds is not None else None,
                     **{key: trial.params.get(key) for key in keys}, "note": note})
    return rows


def rows_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def rows_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No trials yet.\n"

    def cell(value: Any) -> str:
        if value is None:
            return ""
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(row[name]) for name in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_axes(axes, path: Path) -> None:
    figure = axes.figure
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _safe_url(url: str) -> str:
    """A database URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{rest}"


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """Stages log to each trial's logs/ in full; the console shows only their warnings (all of it with -v)."""
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    if root.level <= logging.DEBUG:
        yield
        return
    levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)
