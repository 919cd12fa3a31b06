"""Robustness reports: the same clips scored clean and under each corruption, side by side.

write_robustness(out_dir, ...) writes, for a model's scores per condition ("clean" first, then each
corruption by Corruption.name):
  robustness.csv, .md   one row per condition: clips, the headline metrics (the objective's headline) and
                        the change of the primary metric against clean
  per_class.csv         one row per class: its positives and AP under every condition
  robustness.png        the primary metric per condition
Each condition is scored on the clips that could be decoded under it (normally all of them).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..data.audio import AudioError, load_mono
from ..data.corrupt import clip_seed, parse_corruption
from ..features.spectrogram import compute_frames
from ..model.audio_tokenizer import AudioTokenizer
from ..model.metrics import per_class_average_precision
from ..model.objectives import objective_for
from ..pipeline.files import atomic_dir, write_json
from ..pipeline.layout import (
    ROBUSTNESS_BASELINE,
    ROBUSTNESS_JSON,
    ROBUSTNESS_MODEL,
    ROBUSTNESS_PER_CLASS,
    ROBUSTNESS_PLOT,
    ROBUSTNESS_TABLE,
    ROBUSTNESS_TABLE_MD,
    Layout,
)
from ..pipeline.stores import SplitPlan
from ..training.epoch_log import finite_or_none
from . import reports
from .baseline import mfcc_count, score_baseline, split_features
from .evaluate import Scored
from .predict import load_model

log = logging.getLogger("audiotokens")

CLEAN = "clean"


def write_robustness(out_dir: str | Path, *, conditions: dict[str, Scored], classes: list[str], task: str,
                     threshold: float) -> list[dict[str, Any]]:
    """The tables and the plot into out_dir (replaced whole); returns the per-condition rows."""
    if CLEAN not in conditions:
        raise ValueError("the robustness table needs the clean condition to compare against")
    names = [CLEAN, *[name for name in conditions if name != CLEAN]]
    rows = [condition_row(name, conditions[name], task, threshold) for name in names]
    primary = objective_for(task).primary_metric
    for row in rows:
        clean, value = rows[0][primary], row[primary]
        row[f"{primary} change"] = value - clean if value is not None and clean is not None else None
    columns = ["condition", "clips", *objective_for(task).headline, f"{primary} change"]
    per_class = per_class_rows(conditions, names, classes)
    with atomic_dir(out_dir) as folder:
        reports.write_csv(folder / ROBUSTNESS_TABLE, rows, columns)
        (folder / ROBUSTNESS_TABLE_MD).write_text(
            f"# Robustness: {primary} clean and under each corruption\n\n" + reports.markdown_table(rows, columns))
        reports.write_csv(folder / ROBUSTNESS_PER_CLASS, per_class,
                          ["class", "positives", *[f"ap {n}" for n in names]])
        _plot(folder / ROBUSTNESS_PLOT, rows, primary)
        write_json(folder / ROBUSTNESS_JSON, {"task": task, "threshold": threshold, "conditions": rows})
    return rows


def condition_row(name: str, scored: Scored, task: str, threshold: float) -> dict[str, Any]:
    """Headline metrics of one condition's scores (None where undefined, never NaN)."""
    objective = objective_for(task)
    metrics = objective.metrics(objective.metric_targets(scored.targets), scored.scores, threshold)
    return finite_or_none({"condition": name, "clips": len(scored.ids),
                           **{key: metrics[key] for key in objective.headline}})


def per_class_rows(conditions: dict[str, Scored], names: list[str], classes: list[str]) -> list[dict[str, Any]]:
    """Per class: positives under clean and AP under every condition (None without positives)."""
    ap = {name: per_class_average_precision(conditions[name].targets, conditions[name].scores) for name in names}
    positives = conditions[CLEAN].targets.sum(axis=0)
    return [finite_or_none({"class": c, "positives": int(positives[i]),
                            **{f"ap {name}": float(ap[name][i]) for name in names}})
            for i, c in enumerate(classes)]


def _plot(path: Path, rows: list[dict[str, Any]], primary: str) -> None:
    plt = reports.pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 4))
    values = [row[primary] if row[primary] is not None else 0.0 for row in rows]
    ax.bar(np.arange(len(rows)), values, color=["tab:green"] + ["tab:red"] * (len(rows) - 1))
    ax.set_xticks(range(len(rows)), [row["condition"] for row in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(primary)
    ax.set_title(f"{primary}: clean vs corrupted", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- scoring a split under corruptions


def evaluate_robustness(config, split: str, specs: list[str], model_dir: Path | None = None) -> dict[str, Any]:
    """`audiotokens evaluate --corrupt SPEC ...`: the model (and every saved baseline) on a split's audio,
    clean and under each corruption (fixed seed per clip), into output/eval/<split>/robustness/."""

    layout = Layout(config.workdir)
    corruptions = [parse_corruption(spec) for spec in specs]
    plan = SplitPlan.load(layout)
    by_id = {clip["id"]: clip for clip in plan.clips}
    clips = [by_id[clip_id] for clip_id in plan.ids(split)]
    bundle = load_model(model_dir or layout.model_dir, device=config.train.device)
    out = layout.robustness_dir(split)
    conditions = {CLEAN: _model_scores(bundle, clips, None, plan.classes, config.split.seed)}
    for corruption in corruptions:
        conditions[corruption.name] = _model_scores(bundle, clips, corruption, plan.classes, config.split.seed)
    results = {"model": write_robustness(out / ROBUSTNESS_MODEL, conditions=conditions, classes=bundle.classes,
                                         task=bundle.task, threshold=bundle.threshold)}
    for saved in layout.baseline_estimators():
        results[saved.parent.name] = _baseline_robustness(config, saved, clips, corruptions, plan,
                                                          out / ROBUSTNESS_BASELINE.format(name=saved.parent.name))
    primary = objective_for(plan.task).primary_metric
    for name, rows in results.items():
        log.info("robustness of %s on the %s split (%s): %s", name, split, primary,
                 ", ".join(f"{row['condition']} {row[primary]:.4f}" for row in rows if row[primary] is not None))
    log.info("robustness tables in %s", out)
    return results


def _model_scores(bundle, clips: list[dict], corruption, classes: list[str], seed: int) -> Scored:
    """Decode, corrupt, frame and tokenize each clip with the bundle's settings, then score them all."""
    tokenizer = AudioTokenizer.of_bundle(bundle)
    params = tokenizer.params
    ids, sequences, targets, skipped = [], [], [], []
    for clip in clips:
        try:
            mono = load_mono(clip["audio"], params.sample_rate, params.max_duration)
            if corruption is not None:
                mono = corruption.apply(mono, params.sample_rate, clip_seed(seed, str(clip["id"])))
            frames = compute_frames(mono, params).astype(params.dtype, copy=False)
        except AudioError as exc:
            skipped.append({"id": clip["id"], "reason": str(exc)})
            continue
        ids.append(clip["id"])
        sequences.append(tokenizer.model_input(frames))
        target = np.zeros(len(classes), dtype=np.float32)
        target[clip["labels"]] = 1.0
        targets.append(target)
    scores = bundle.scores(sequences) if sequences else np.zeros((0, len(classes)), np.float32)
    return Scored(ids, np.stack(targets) if targets else np.zeros((0, len(classes)), np.float32), scores, skipped)


def _baseline_robustness(config, saved: Path, clips: list[dict], corruptions, plan, out: Path):
    import joblib


    fitted = joblib.load(saved)
    conditions = {}
    for corruption in (None, *corruptions):
        features = split_features(clips, len(plan.classes), config.spectrogram, config.baseline.workers,
                                  mfcc_count(config.baseline.n_mfcc, config.spectrogram.n_mels),
                                  corruption=corruption, seed=config.split.seed)
        conditions[CLEAN if corruption is None else corruption.name] = Scored(
            features.ids, features.targets, score_baseline(fitted, features.features), features.skipped)
    return write_robustness(out, conditions=conditions, classes=plan.classes, task=plan.task,
                            threshold=config.train.threshold)
