"""Classical baselines beside the token models: MFCC statistics -> RBF SVM or logistic regression.

Features. Each clip is decoded, mixed down and resampled exactly as the spectrogram stage does
(audio.load_mono at spectrogram.sample_rate, first spectrogram.max_duration seconds), then its mel power
is computed with the stage's own STFT and Slaney mel filterbank (same sample_rate, n_fft, hop_length,
n_mels, fmin, fmax; spectrogram.MelPower). Where the stored frames continue
with dB (spectrogram.top_db) and a per-clip [0, 1] scaling, the MFCCs continue as librosa.feature.mfcc
does: power_to_db (ref 1, amin 1e-10, top_db 80), then a type-II orthonormal DCT over the mel axis,
keeping the first n_mfcc coefficients (baseline.n_mfcc; 0: min(40, n_mels)); no per-clip scaling. A clip's feature vector is the mean
and the standard deviation of each coefficient over time (2 * n_mfcc values), standardised over the
training clips inside the model (StandardScaler).

Models. StandardScaler + SVC (RBF kernel) or LogisticRegression, from scikit-learn; multi-label tasks
use one binary model per class (one-vs-rest). C is chosen from C_GRID by cross-validation on the
TRAINING clips only: GroupKFold when clips have groups (a clip without one is its own group),
StratifiedKFold for single-label, KFold for multi-label; the score is the tool's primary metric
(macro mAP from model.metrics for multi-label, accuracy for single-label), averaged over the
folds where it is defined. The chosen C is then refitted on every training clip.

Scores in [0, 1]: logistic regression gives probabilities. The SVM is used without Platt scaling
(no inner cross-validation, deterministic): a multi-label class scores sigmoid(decision value), so the
0.5 threshold is the SVM's own decision boundary; a single-label clip gets the softmax of the
one-vs-rest decision values, whose arg-max is the SVM's prediction. A class that is constant in the
training clips (never or always present) is not modelled: it scores that constant (0 or 1); a
single-label class absent from training scores 0.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import librosa
import numpy as np
from scipy.special import expit, softmax
from sklearn.base import clone
from sklearn.exceptions import FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from tqdm import tqdm

from ..config import SpectrogramConfig
from ..data.audio import AudioError, load_mono
from ..data.corrupt import Corruption, clip_seed
from ..errors import UserError
from ..features.spectrogram import MelPower, _cpu_count, _init_worker
from ..model.objectives import objective_for
from ..pipeline.files import atomic_path, remove_dir, write_json
from ..pipeline.layout import BASELINE_ESTIMATOR, BASELINE_FIT, SPLITS, Layout
from ..pipeline.stores import NOTHING_LEFT_OUT, LeftOut, SplitPlan
from .evaluate import Scored, write_reports

log = logging.getLogger("audiotokens")

MODELS = ("svm", "logreg")
N_MFCC = 40
C_GRID = (0.1, 1.0, 10.0, 100.0)
CV_FOLDS = 5
LOGREG_MAX_ITER = 5000  # lbfgs on standardised MFCC statistics converges well before this


def model_names(text: str) -> tuple[str, ...]:
    """baseline.models: comma-separated names of MODELS, or all."""
    models = MODELS if text == "all" else tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise UserError(f"'baseline.models' names unknown model '{unknown[0] if unknown else text}'; use one or "
                        f"more of {', '.join(MODELS)} (comma-separated) or all")
    return models


def mfcc_count(n_mfcc: int, n_mels: int) -> int:
    """The MFCCs the baseline keeps: baseline.n_mfcc, or (0) N_MFCC when there are that many mel bands."""
    return n_mfcc or min(N_MFCC, n_mels)


# ---------------------------------------------------------------- features


def mfcc_features(mono: np.ndarray, sample_rate: int, *, n_mfcc: int = N_MFCC, n_fft: int, hop_length: int,
                  n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(2 * n_mfcc,) float32: mean then standard deviation over time of the clip's MFCCs.

    The mel power is the spectrogram stage's (same STFT and filterbank); fmax = 0 means sample_rate / 2.
    Raises AudioError("too short") for fewer than n_fft samples, as the spectrogram stage does.
    """
    if n_mfcc > n_mels:
        raise UserError(f"the baseline's {n_mfcc} MFCCs need 'spectrogram.n_mels' >= {n_mfcc}, got {n_mels}")
    if mono.shape[-1] < n_fft:
        raise AudioError("too short", f"{mono.shape[-1]} samples at {sample_rate} Hz < n_fft {n_fft}")
    params = SpectrogramConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                               fmin=fmin, fmax=fmax)
    power = MelPower(length=mono.shape[-1], params=params)
    power.add(mono, last=True)
    mel = power.frames  # (frames, n_mels)
    coefficients = librosa.feature.mfcc(S=librosa.power_to_db(mel.T), n_mfcc=n_mfcc)  # (n_mfcc, frames)
    return np.concatenate([coefficients.mean(axis=1), coefficients.std(axis=1)]).astype(np.float32)


def clip_features(locations: list[str], params: SpectrogramConfig, workers: int = 0, n_mfcc: int = N_MFCC, *,
                  corruption: Corruption | None = None,
                  seeds: list[int] | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Features of every clip that decodes, in order: ((kept clips, 2 * n_mfcc), [(index, reason)] of the rest).

    Decoding follows the spectrogram stage (same locations, parquet rows included). workers = 0 uses
    every core; a clip that fails costs only itself. With a corruption, clip i is corrupted with
    seeds[i] (corrupt.clip_seed) after resampling, as the robustness evaluation does before its frames.
    """
    if n_mfcc > params.n_mels:
        raise UserError(f"the baseline's {n_mfcc} MFCCs need 'spectrogram.n_mels' >= {n_mfcc}, got {params.n_mels}")
    if corruption is not None and (seeds is None or len(seeds) != len(locations)):
        raise ValueError("a corruption needs one seed per location")
    work = functools.partial(_clip_task, params, n_mfcc, corruption)
    tasks = [(i, str(location), seeds[i] if seeds is not None else 0) for i, location in enumerate(locations)]
    workers = min(workers or _cpu_count(), max(len(tasks), 1))
    rows: list[np.ndarray] = []
    failed: list[tuple[int, str]] = []
    with _OrderedMap(work, workers) as mapper, \
            tqdm(total=len(tasks), unit="clip", desc="mfcc", disable=None, leave=False) as bar:
        for index, features, reason in mapper(tasks):
            if features is None:
                failed.append((index, reason))
            else:
                rows.append(features)
            bar.update(1)
    matrix = np.stack(rows) if rows else np.zeros((0, 2 * n_mfcc), dtype=np.float32)
    return matrix, failed


def _clip_task(params: SpectrogramConfig, n_mfcc: int, corruption: Corruption | None,
               task: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    index, location, seed = task
    try:
        mono = load_mono(location, params.sample_rate, params.max_duration)
        if corruption is not None:
            mono = corruption.apply(mono, params.sample_rate, seed)
        return index, mfcc_features(mono, params.sample_rate, n_mfcc=n_mfcc, n_fft=params.n_fft,
                                    hop_length=params.hop_length, n_mels=params.n_mels, fmin=params.fmin,
                                    fmax=params.fmax), ""
    except AudioError as exc:
        return index, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - an odd file must cost one clip, not the whole run
        return index, None, f"unexpected error: {type(exc).__name__}: {exc}"


class _OrderedMap:
    """map() in-process for one worker, else an ordered imap over a forked pool (as the spectrogram stage)."""

    def __init__(self, work, workers: int):
        self.work, self.workers, self.pool = work, workers, None

    def __enter__(self):
        if self.workers <= 1:
            return lambda tasks: map(self.work, tasks)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        self.pool = context.Pool(self.workers, initializer=_init_worker)
        return lambda tasks: self.pool.imap(self.work, tasks, chunksize=4)

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


@dataclass(kw_only=True)
class SplitFeatures:
    """Feature rows of one split's usable clips, their 0/1 targets (clips, classes) and groups."""

    ids: list[str]
    features: np.ndarray
    targets: np.ndarray
    groups: list[str | None] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason"}, as evaluate lists them


def split_features(clips: list[dict[str, Any]], n_classes: int, params: SpectrogramConfig, workers: int = 0,
                   n_mfcc: int = N_MFCC, *, corruption: Corruption | None = None, seed: int = 0) -> SplitFeatures:
    """SplitFeatures of split.json clip entries ({"id", "audio", "labels", "group"?}); failed clips are skipped.

    With a corruption, each clip is corrupted with clip_seed(seed, its id).
    """
    seeds = [clip_seed(seed, str(clip["id"])) for clip in clips] if corruption is not None else None
    features, failed = clip_features([clip["audio"] for clip in clips], params, workers, n_mfcc,
                                     corruption=corruption, seeds=seeds)
    lost = dict(failed)
    kept = [clip for i, clip in enumerate(clips) if i not in lost]
    targets = np.zeros((len(kept), n_classes), dtype=np.float32)
    for row, clip in enumerate(kept):
        targets[row, clip["labels"]] = 1.0
    groups = [clip.get("group") for clip in kept]
    if lost:
        log.warning("mfcc: %d of %d clips skipped (first: %s: %s)", len(lost), len(clips), clips[failed[0][0]]["id"],
                    failed[0][1])
    return SplitFeatures(ids=[str(clip["id"]) for clip in kept], features=features, targets=targets,
                         groups=groups if any(g is not None for g in groups) else None,
                         skipped=[{"id": str(clips[i]["id"]), "reason": reason} for i, reason in failed])


# ---------------------------------------------------------------- models


def _independent(task: str) -> bool:
    """One binary problem per class (multi-label: one-vs-rest) rather than one choice among them."""
    return objective_for(task).independent_classes


@dataclass(kw_only=True)
class FittedBaseline:
    """A fitted baseline: the estimator over the modelled columns and the constant scores of the others."""

    model: str  # svm | logreg
    task: str
    n_classes: int
    columns: np.ndarray  # class columns the estimator scores (multi-label) or may predict (single-label)
    constant: np.ndarray  # (n_classes,) scores of the columns the estimator does not score
    estimator: Any = None  # fitted Pipeline, or None when every class is constant in training
    C: float | None = None
    cv_scores: dict[str, float | None] = field(default_factory=dict)  # str(C) -> mean fold score
    cv: str = ""  # how C was chosen
    # what its features were computed with (feature_settings); None in baselines saved before it was recorded
    features: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "C": self.C, "cv": self.cv,
                "cv_metric": objective_for(self.task).primary_metric, "cv_scores": self.cv_scores,
                "modelled_classes": len(self.columns), "classes": self.n_classes,
                "feature_settings": self.features}


FEATURE_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "max_duration")


def feature_settings(params: SpectrogramConfig, n_mfcc: int) -> dict[str, Any]:
    """The settings that make a clip's MFCC statistics: decoding, STFT, mel filterbank and n_mfcc."""
    return {"spectrogram": {key: getattr(params, key) for key in FEATURE_KEYS}, "n_mfcc": n_mfcc}


def fitted_feature_settings(fitted: FittedBaseline) -> tuple[SpectrogramConfig, int] | None:
    """(spectrogram settings, n_mfcc) the baseline was fitted with; None when they were not recorded."""
    if not fitted.features:
        return None
    return SpectrogramConfig(**fitted.features["spectrogram"]), int(fitted.features["n_mfcc"])


def fit_baseline(model: str, X_train: np.ndarray, Y_train: np.ndarray, task: str, groups: list | None,
                 seed: int, *, grid: tuple[float, ...] = C_GRID, cv_folds: int = CV_FOLDS,
                 n_jobs: int | None = None) -> FittedBaseline:
    """Scaler + model with C chosen by cross-validation on these (training) rows, refitted on all of them.

    n_jobs runs the grid's fits in parallel (joblib); the SVM's cost grows about quadratically with clips.
    """
    if model not in MODELS:
        raise UserError(f"unknown baseline model '{model}'; use one of {', '.join(MODELS)}")
    Y_train = np.asarray(Y_train)
    columns, y, constant = _modelled_targets(Y_train, task)
    fitted = FittedBaseline(model=model, task=task, n_classes=Y_train.shape[1], columns=columns, constant=constant)
    if y is None:
        log.warning("%s: every class is constant in the training clips; the baseline predicts that constant", model)
        return fitted
    pipeline = _pipeline(model, task, multilabel_columns=len(columns))
    splits, fitted.cv = _cv_splits(X_train, y, task, groups, seed, cv_folds)
    fitted.C, fitted.cv_scores = _choose_c(pipeline, X_train, y, splits, task, model, grid, len(columns), n_jobs)
    fitted.estimator = _quiet_fit(clone(pipeline).set_params(**{_c_param(pipeline): fitted.C}), X_train, y)
    return fitted


def score_baseline(fitted: FittedBaseline, X: np.ndarray) -> np.ndarray:
    """(clips, classes) float32 scores in [0, 1] (see the module docstring for how each model maps)."""
    scores = np.tile(fitted.constant.astype(np.float32), (len(X), 1))
    if fitted.estimator is not None and len(X):
        scores[:, fitted.columns] = _model_scores(fitted.estimator, X, fitted.task, fitted.model, fitted.columns)
    return scores


def _modelled_targets(Y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(columns to model, the y the estimator fits, constant scores) of a 0/1 target matrix."""
    if _independent(task):
        rate = Y.mean(axis=0) if len(Y) else np.zeros(Y.shape[1])
        columns = np.flatnonzero((rate > 0) & (rate < 1))
        constant = np.where(rate >= 1, 1.0, 0.0)
        if len(columns) == 0:
            return columns, None, constant
        y = Y[:, columns].astype(np.int64)
        return columns, (y[:, 0] if len(columns) == 1 else y), constant
    ids = Y.argmax(axis=1)
    columns = np.unique(ids)
    constant = np.zeros(Y.shape[1])
    if len(columns) == 1:
        constant[columns[0]] = 1.0
        return columns, None, constant
    return columns, ids, constant


def _pipeline(model: str, task: str, multilabel_columns: int) -> Pipeline:
    if model == "svm":
        classifier = SVC(kernel="rbf", gamma="scale", decision_function_shape="ovr")
    else:
        classifier = LogisticRegression(max_iter=LOGREG_MAX_ITER)
    if _independent(task) and multilabel_columns > 1:
        classifier = OneVsRestClassifier(classifier)
    return Pipeline([("scale", StandardScaler()), ("classify", classifier)])


def _c_param(pipeline: Pipeline) -> str:
    nested = isinstance(pipeline.named_steps["classify"], OneVsRestClassifier)
    return "classify__estimator__C" if nested else "classify__C"


def _model_scores(estimator: Pipeline, X: np.ndarray, task: str, model: str, columns: np.ndarray) -> np.ndarray:
    """(clips, len(columns)) scores in [0, 1] from a fitted pipeline, its output mapped onto `columns`."""
    if _independent(task):
        if model == "logreg":
            raw = estimator.predict_proba(X)
            raw = raw[:, 1:] if raw.shape[1] == 2 and len(columns) == 1 else raw  # a single binary model
            return raw.reshape(len(X), -1)
        return expit(estimator.decision_function(X).reshape(len(X), -1))
    # single-label: probabilities over the classes this estimator saw, placed in their columns
    seen = estimator.classes_
    if model == "logreg":
        probabilities = estimator.predict_proba(X)
    else:
        decision = estimator.decision_function(X)
        probabilities = softmax(np.stack([-decision, decision], axis=1) if decision.ndim == 1 else decision, axis=1)
    out = np.zeros((len(X), len(columns)))
    out[:, np.searchsorted(columns, seen)] = probabilities
    return out


def _cv_splits(X: np.ndarray, y: np.ndarray, task: str, groups: list | None, seed: int,
               cv_folds: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Train/test row indices of the folds over the training rows, and a description of them."""
    if groups is not None and any(g is not None for g in groups):
        keys = [g if g is not None else f"\0clip:{i}" for i, g in enumerate(groups)]
        n_groups = len(set(keys))
        folds = min(cv_folds, n_groups)
        if folds < 2:
            return [], f"none (only {n_groups} group)"
        return list(GroupKFold(n_splits=folds).split(X, y, keys)), f"GroupKFold({folds}) over {n_groups} groups"
    folds = min(cv_folds, len(X))
    if folds < 2:
        return [], f"none ({len(X)} clip)"
    if not _independent(task):
        # StratifiedKFold needs some class with >= folds clips; rarer classes miss some folds (scored as is)
        folds = max(2, min(folds, int(np.bincount(y).max())))
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class with fewer clips than folds
            return list(splitter.split(X, y)), f"StratifiedKFold({folds})"
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(X)), f"KFold({folds})"


def _choose_c(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, splits: list, task: str, model: str,
              grid: tuple[float, ...], n_columns: int, n_jobs: int | None) -> tuple[float, dict[str, float | None]]:
    """The grid value with the best mean fold score (ties: the smaller C); C = 1 when nothing can be scored."""
    if not splits:
        log.warning("%s: too few training clips or groups to cross-validate C; using C = 1", model)
        return 1.0, {}
    search = GridSearchCV(pipeline, {_c_param(pipeline): list(grid)}, cv=splits, refit=False,
                          scoring=_fold_scorer(task, model, n_columns), error_score=np.nan, n_jobs=n_jobs)
    with warnings.catch_warnings():
        # folds where a class is constant or a single-label fold lacks classes: scored as NaN and skipped
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        search.fit(X, y)
    fold_scores = np.array([search.cv_results_[f"split{i}_test_score"] for i in range(len(splits))], dtype=float)
    means = [float(np.mean(column[np.isfinite(column)])) if np.isfinite(column).any() else None
             for column in fold_scores.T]
    scores = {f"{c:g}": mean for c, mean in zip(grid, means)}
    scored = [(mean, -i) for i, mean in enumerate(means) if mean is not None]
    if not scored:
        log.warning("%s: no cross-validation fold could be scored; using C = 1", model)
        return 1.0, scores
    best = -max(scored)[1]
    log.info("%s: C = %g (cross-validated %s %.4f)", model, grid[best], objective_for(task).primary_metric, means[best])
    return float(grid[best]), scores


def _fold_scorer(task: str, model: str, n_columns: int):
    """GridSearchCV scoring: the tool's primary metric of the fold's held-out rows (NaN when undefined)."""
    objective = objective_for(task)
    metric = objective.primary_metric

    def score(estimator, X, y) -> float:
        columns = np.arange(n_columns) if _independent(task) else np.unique(np.concatenate([estimator.classes_, y]))
        scores = _model_scores(estimator, X, task, model, columns)
        if not _independent(task):
            y = np.searchsorted(columns, y)
        targets = y.reshape(len(X), -1) if _independent(task) else y
        return float(objective.metrics(targets, scores, 0.5)[metric])

    return score


def _quiet_fit(estimator: Pipeline, X: np.ndarray, y: np.ndarray) -> Pipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return estimator.fit(X, y)


# ---------------------------------------------------------------- the runner


class BaselineRunner:
    """Fits each baseline on the training features and writes evaluate's reports for every split.

    out_dir/<model>/<split>/ holds metrics.json, per_class.csv/.md, sweep.csv, plots, (single-label)
    confusion.csv/.png, scores.npy and clips.json (evaluate.write_reports); out_dir/<model>/fit.json
    the chosen C, the cross-validation scores and the fit time.
    """

    def __init__(self, *, train: SplitFeatures, validation: SplitFeatures, test: SplitFeatures | None = None,
                 task: str, classes: list[str], out_dir: str | Path, models: tuple[str, ...] = MODELS,
                 seed: int = 0, threshold: float = 0.5, n_jobs: int | None = None,
                 features: dict[str, Any] | None = None, left_out: dict[str, LeftOut] | None = None):
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise UserError(f"unknown baseline model '{unknown[0]}'; use one of {', '.join(MODELS)} or all")
        if len(train.ids) == 0:
            raise UserError("the baseline has no usable training clip (every clip failed to decode)")
        self.splits = {"train": train, "validation": validation, **({"test": test} if test is not None else {})}
        self.task, self.classes, self.out_dir = task, list(classes), Path(out_dir)
        self.models, self.seed, self.threshold, self.n_jobs = tuple(models), seed, threshold, n_jobs
        self.features = features  # feature_settings() of the features given, saved with each fitted model
        self.left_out = left_out or {}  # per split: clips and classes it lost to classes without training clips

    def run(self) -> dict[str, Any]:
        """Per model: C, cross-validation, fit time and the headline metrics of each split.

        Reports of a model no longer asked for, or of a split without usable clips (test, after
        split.test_ratio = 0), are removed once the new ones are written: they would read as this run's."""
        results = {model: self._run_model(model) for model in self.models}
        for model in MODELS:
            if model not in self.models:
                remove_dir(self.out_dir / model)
        for model in self.models:
            for split in SPLITS:
                if split not in results[model]:
                    remove_dir(self.out_dir / model / split)
        return results

    def _run_model(self, model: str) -> dict[str, Any]:
        train = self.splits["train"]
        started = time.perf_counter()
        fitted = fit_baseline(model, train.features, train.targets, self.task, train.groups, self.seed,
                              n_jobs=self.n_jobs)
        fitted.features = self.features
        summary = {**fitted.describe(), "fit_time_s": round(time.perf_counter() - started, 3),
                   "features": f"{train.features.shape[1]} MFCC statistics (mean, std)"}
        write_json(self.out_dir / model / BASELINE_FIT, summary)
        save_estimator(self.out_dir / model / BASELINE_ESTIMATOR, fitted)
        for name, split in self.splits.items():
            if not len(split.ids):
                log.warning("%s: no usable clip in %s; no report written", model, name)
                continue
            scored = Scored(split.ids, split.targets, score_baseline(fitted, split.features), split.skipped)
            metrics = write_reports(self.out_dir / model / name, scored, self.classes, objective_for(self.task),
                                    self.threshold,
                                    None, {"name": f"{model} {name}", "source": f"{name} (MFCC features)",
                                           "model": model, "C": fitted.C},
                                    self.left_out.get(name, NOTHING_LEFT_OUT))
            summary[name] = {key: metrics.get(key)
                             for key in ("clips", "left_out_clips", *objective_for(self.task).headline)}
        return summary


def save_estimator(path: Path, fitted: FittedBaseline) -> None:
    """The fitted baseline, for robustness evaluation (`evaluate --corrupt`) without refitting."""
    import joblib

    with atomic_path(path) as tmp:
        joblib.dump(fitted, tmp)


# ---------------------------------------------------------------- the stage


class BaselineBuilder:
    """`audiotokens baseline`: MFCC statistics -> SVM / logistic regression on the same split and reports.

    The features are computed from the audio at the spectrogram stage's sample rate and STFT settings (not
    from the stored frames, which are min-max scaled per clip); the same split views, the same metric code
    and the same report files as `evaluate`, under output/baselines/<model>/<split>/.
    """

    def __init__(self, config, **options: Any):
        self.config = config
        self.layout = Layout(config.workdir)

    @staticmethod
    def check_settings(config) -> None:
        """What the config alone says is wrong with the baselines (pipeline.run checks it before any stage)."""
        model_names(config.baseline.models)

    def run(self) -> dict[str, Any]:
        settings = self.config.baseline
        models = model_names(settings.models)
        n_mfcc = mfcc_count(settings.n_mfcc, self.config.spectrogram.n_mels)
        log.info("baseline features: mean and standard deviation of %d MFCCs%s", n_mfcc,
                 "" if settings.n_mfcc else f" (baseline.n_mfcc = 0: min({N_MFCC}, spectrogram.n_mels))")
        plan = SplitPlan.load(self.layout)
        by_id = {clip["id"]: clip for clip in plan.clips}
        features = {name: split_features([by_id[i] for i in plan.ids(name)], len(plan.classes),
                                         self.config.spectrogram, settings.workers, n_mfcc)
                    for name in plan.names()}
        runner = BaselineRunner(train=features["train"], validation=features["validation"],
                                test=features.get("test"), task=plan.task, classes=plan.classes,
                                out_dir=self.layout.baselines, models=models, seed=settings.seed,
                                threshold=self.config.train.threshold,
                                features=feature_settings(self.config.spectrogram, n_mfcc),
                                left_out={name: plan.left_out(name) for name in plan.names()})
        results = runner.run()
        for model, summary in results.items():
            figures = ", ".join(f"{split} {key} {value:.4f}" for split in ("validation", "test")
                                for key, value in (summary.get(split) or {}).items()
                                if key == objective_for(plan.task).primary_metric and value is not None)
            log.info("baseline %s (C = %s): %s", model, summary.get("C"), figures)
        for name in plan.names():
            if plan.left_out(name):
                log.warning("baselines, %s: %s", name, plan.left_out(name).note())
        return {model: {split: summary.get(split) for split in plan.names()} for model, summary in results.items()}
