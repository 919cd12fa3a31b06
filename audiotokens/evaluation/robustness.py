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
from tqdm import tqdm

from ..data.audio import AudioError, load_mono
from ..data.corrupt import clip_seed, parse_corruption
from ..data.sources.manifest import read_manifest
from ..errors import UserError
from ..model.audio_tokenizer import AudioTokenizer, single_threaded
from ..model.metrics import count_left_out, per_class_average_precision
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
from ..pipeline.stores import NOTHING_LEFT_OUT, LeftOut, SplitPlan
from ..training.epoch_log import finite_or_none
from . import reports
from .baseline import fitted_feature_settings, score_baseline, split_features
from .evaluate import Scored, check_manifest_labels
from .predict import load_model

log = logging.getLogger("audiotokens")

CLEAN = "clean"


def write_robustness(out_dir: str | Path, *, conditions: dict[str, Scored], classes: list[str], task: str,
                     threshold: float, left_out: LeftOut = NOTHING_LEFT_OUT) -> list[dict[str, Any]]:
    """The tables and the plot into out_dir (replaced whole); returns the per-condition rows.

    `left_out`: what the split lost to classes without a training clip; accuracy counts those clips as
    errors, as evaluate's metrics.json does, and robustness.json states it.
    """
    if CLEAN not in conditions:
        raise ValueError("the robustness table needs the clean condition to compare against")
    names = [CLEAN, *[name for name in conditions if name != CLEAN]]
    rows = [condition_row(name, conditions[name], task, threshold, len(left_out.clips)) for name in names]
    primary = objective_for(task).primary_metric
    for row in rows:
        clean, value = rows[0][primary], row[primary]
        row[f"{primary} change"] = value - clean if value is not None and clean is not None else None
    columns = ["condition", "clips", *objective_for(task).headline, f"{primary} change"]
    per_class = per_class_rows(conditions, names, classes)
    with atomic_dir(out_dir) as folder:
        reports.write_csv(folder / ROBUSTNESS_TABLE, rows, columns)
        note = f"{left_out.note()}.\n\n" if left_out else ""
        (folder / ROBUSTNESS_TABLE_MD).write_text(
            f"# Robustness: {primary} clean and under each corruption\n\n{note}" + reports.markdown_table(rows, columns))
        reports.write_csv(folder / ROBUSTNESS_PER_CLASS, per_class,
                          ["class", "positives", *[f"ap {n}" for n in names]])
        _plot(folder / ROBUSTNESS_PLOT, rows, primary)
        write_json(folder / ROBUSTNESS_JSON, {"task": task, "threshold": threshold, **left_out.counts(),
                                              "left_out_note": left_out.note(), "conditions": rows})
    return rows


def condition_row(name: str, scored: Scored, task: str, threshold: float, left_out_clips: int = 0) -> dict[str, Any]:
    """Headline metrics of one condition's scores (None where undefined, never NaN)."""
    objective = objective_for(task)
    metrics = count_left_out(objective.metrics(objective.metric_targets(scored.targets), scored.scores, threshold),
                             len(scored.ids), left_out_clips)
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


# ---------------------------------------------------------------- scoring audio under corruptions


def evaluate_robustness(config, split: str | None, specs: list[str], model_dir: Path | None = None,
                        manifest: str | Path | None = None) -> dict[str, Any]:
    """`audiotokens evaluate --corrupt SPEC ...`: the model (and every saved baseline) on the audio of a split
    or of a manifest's clips, clean and under each corruption (fixed seed per clip), into
    output/eval/<split or manifest name>/robustness/."""
    layout = Layout(config.workdir)
    corruptions = [parse_corruption(spec) for spec in specs]
    bundle = load_model(model_dir or layout.model_dir, device=config.train.device)
    plan = SplitPlan.load(layout) if manifest is None or layout.split_json.is_file() else None
    left_out = NOTHING_LEFT_OUT
    if manifest is not None:
        name, clips = Path(manifest).stem, manifest_clips(Path(manifest), bundle, config.data.label_delimiter)
    else:
        name, clips = split or "validation", split_clips(plan, split or "validation", bundle, layout)
        left_out = plan.left_out(name)
    out = layout.robustness_dir(name)
    conditions = {}
    for number, corruption in enumerate((None, *corruptions), 1):
        condition = CLEAN if corruption is None else corruption.name
        log.info("robustness of the model on %s: %s (condition %d of %d, %d clips)", name, condition, number,
                 len(corruptions) + 1, len(clips))
        conditions[condition] = _model_scores(bundle, clips, corruption, config.split.seed, condition)
    results = {"model": write_robustness(out / ROBUSTNESS_MODEL, conditions=conditions, classes=bundle.classes,
                                         task=bundle.task, threshold=bundle.threshold, left_out=left_out)}
    for saved in layout.baseline_estimators():
        if plan is None or list(plan.classes) != list(bundle.classes):
            log.info("the baselines in %s were fitted on other classes than the model's; not scored on %s",
                     layout.baselines, name)
            break
        rows = _baseline_robustness(config, saved, clips, corruptions, plan,
                                    out / ROBUSTNESS_BASELINE.format(name=saved.parent.name), left_out)
        if rows is not None:
            results[saved.parent.name] = rows
    primary = objective_for(bundle.task).primary_metric
    for scorer, rows in results.items():
        figures = [f"{row['condition']} {row[primary]:.4f}" for row in rows if row[primary] is not None]
        log.info("robustness of %s on %s (%s): %s", scorer, name, primary, ", ".join(figures))
    log.info("robustness tables in %s", out)
    return results


def split_clips(plan: SplitPlan, split: str, bundle, layout: Layout) -> list[dict]:
    """split.json entries of a split's clips, refused when the split's classes are not the bundle's."""
    if list(plan.classes) != list(bundle.classes) or plan.task != bundle.task:
        raise UserError(f"{layout.split_json} has {len(plan.classes)} {plan.task} classes, the model bundle "
                        f"{len(bundle.classes)} {bundle.task} ones; evaluate the bundle in its own workdir, or "
                        "audio with --manifest")
    by_id = {clip["id"]: clip for clip in plan.clips}
    return [by_id[clip_id] for clip_id in plan.ids(split)]


def manifest_clips(manifest: Path, bundle, delimiter: str) -> list[dict]:
    """A manifest's rows as clip entries ({"id", "audio", "labels"}), labels as the bundle's class ids."""
    rows = read_manifest(manifest, delimiter)
    check_manifest_labels(manifest, rows, bundle)
    class_of = {name: i for i, name in enumerate(bundle.classes)}
    return [{"id": row.id, "audio": row.audio, "labels": [class_of[label] for label in row.labels]}
            for row in rows]


def _model_scores(bundle, clips: list[dict], corruption, seed: int, condition: str) -> Scored:
    """Decode, corrupt and frame each clip as the bundle's AudioTokenizer does (mel, speech-model or waveform
    frames), tokenize them when the bundle reads tokens, then score them all."""
    tokenizer = AudioTokenizer.of_bundle(bundle)
    params = tokenizer.params
    classes = len(bundle.classes)
    ids, sequences, targets, skipped = [], [], [], []
    for clip in tqdm(clips, desc=f"robustness {condition}", unit="clip", disable=None, leave=False):
        try:
            mono = load_mono(clip["audio"], params.sample_rate, params.max_duration)
            if corruption is not None:
                mono = corruption.apply(mono, params.sample_rate, clip_seed(seed, str(clip["id"])))
            with single_threaded():
                sequences.append(tokenizer.model_input(tokenizer.frames(mono, params.sample_rate)))
        except (AudioError, UserError) as exc:  # this clip cannot be framed: it costs only itself
            skipped.append({"id": clip["id"], "reason": str(exc)})
            continue
        ids.append(clip["id"])
        target = np.zeros(classes, dtype=np.float32)
        target[clip["labels"]] = 1.0
        targets.append(target)
    if skipped:
        log.warning("robustness %s: %d of %d clips could not be scored (first: %s: %s)", condition,
                    len(skipped), len(clips), skipped[0]["id"], skipped[0]["reason"])
    scores = bundle.scores(sequences) if sequences else np.zeros((0, classes), np.float32)
    return Scored(ids, np.stack(targets) if targets else np.zeros((0, classes), np.float32), scores, skipped)


def _baseline_robustness(config, saved: Path, clips: list[dict], corruptions, plan, out: Path,
                         left_out: LeftOut):
    """A saved baseline's table, its features computed with the settings it was fitted with (not the
    current config's); None, with a warning, for a baseline saved before those were recorded."""
    import joblib

    fitted = joblib.load(saved)
    settings = fitted_feature_settings(fitted)
    if settings is None:
        log.warning("%s does not record the spectrogram settings it was fitted with; re-run `audiotokens "
                    "baseline` to score it under corruptions", saved)
        return None
    params, n_mfcc = settings
    conditions = {}
    for corruption in (None, *corruptions):
        features = split_features(clips, len(plan.classes), params, config.baseline.workers, n_mfcc,
                                  corruption=corruption, seed=config.split.seed)
        conditions[CLEAN if corruption is None else corruption.name] = Scored(
            features.ids, features.targets, score_baseline(fitted, features.features), features.skipped)
    return write_robustness(out, conditions=conditions, classes=plan.classes, task=plan.task,
                            threshold=config.train.threshold, left_out=left_out)
