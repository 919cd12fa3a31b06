"""Robustness reports: the same clips scored clean and under each corruption, side by side.

write_robustness(out_dir, ...) writes, for a model's scores per condition ("clean" first, then each
corruption by Corruption.name):
  robustness.csv, .md   one row per condition: clips, the headline metrics (the objective's headline) and
                        the change of the primary metric against clean; for the model also how far its
                        input moved (below)
  per_class.csv         one row per class: its positives and AP under every condition
  token_change.csv      token models: one row per condition, the token change of every codebook
  robustness.png        the primary metric per condition
Each condition is scored on the clips that could be decoded under it (normally all of them).

How far the model's input moves (Stability), from the clean and the corrupted version of each clip, which
have the same length and so the same frames and token positions: "token change" is the share of token
positions whose id differs, per codebook (token_change.csv, and "token change per codebook" in
robustness.json) and over all codebooks (the tables); "frame change" is ||corrupted - clean|| / ||clean||
of the clip's frames (Frobenius norms), averaged over clips. Clean is 0 for both by definition. A model
that reads frames has no token change (empty, never NaN).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.audio import AudioError, load_mono
from ..data.corrupt import Corruption, clip_seed, parse_corruption
from ..data.sources.manifest import read_manifest
from ..errors import UserError
from ..features.spectrogram import frames_from_samples
from ..model.audio_tokenizer import AudioTokenizer, single_threaded
from ..model.metrics import count_left_out, per_class_average_precision
from ..model.objectives import objective_for
from ..pipeline.files import atomic_dir, write_json
from ..pipeline.layout import (
    BUNDLE_METADATA,
    ROBUSTNESS_BASELINE,
    ROBUSTNESS_JSON,
    ROBUSTNESS_MODEL,
    ROBUSTNESS_PER_CLASS,
    ROBUSTNESS_PLOT,
    ROBUSTNESS_TABLE,
    ROBUSTNESS_TABLE_MD,
    ROBUSTNESS_TOKEN_CHANGE,
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
TOKEN_CHANGE, FRAME_CHANGE, PER_CODEBOOK = "token change", "frame change", "token change per codebook"


# ---------------------------------------------------------------- how far the model's input moves


def token_change(clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """Per codebook, the share of positions whose id differs: (codebooks,) from two (positions, codebooks) id
    arrays of one clip aligned by frame."""
    if clean.shape != corrupted.shape:
        raise ValueError(f"token arrays of one clip differ in shape: {clean.shape} vs {corrupted.shape}")
    if not len(clean):
        return np.zeros(clean.shape[1])
    return (clean != corrupted).mean(axis=0)


def frame_change(clean: np.ndarray, corrupted: np.ndarray) -> float | None:
    """||corrupted - clean|| / ||clean|| of one clip's frames; None when the clean frames are all zero and the
    corrupted ones are not (nothing to measure the change against)."""
    if clean.shape != corrupted.shape:
        raise ValueError(f"frames of one clip differ in shape: {clean.shape} vs {corrupted.shape}")
    size = float(np.linalg.norm(clean.astype(np.float64)))
    moved = float(np.linalg.norm(corrupted.astype(np.float64) - clean))
    if size == 0:
        return 0.0 if moved == 0 else None
    return moved / size


@dataclass
class Stability:
    """One condition's change of the model input against clean, summed over the clips seen in both."""

    changed: np.ndarray | None = None  # per codebook: positions whose id changed (None: no tokens)
    positions: int = 0  # positions compared, per codebook
    frame_changes: list[float] = field(default_factory=list)

    def add(self, clean: ClipInput, corrupted: ClipInput) -> None:
        if clean.tokens is not None:
            share = token_change(clean.tokens, corrupted.tokens)
            counts = share * len(clean.tokens)
            self.changed = counts if self.changed is None else self.changed + counts
            self.positions += len(clean.tokens)
        change = frame_change(clean.frames, corrupted.frames)
        if change is not None:
            self.frame_changes.append(change)

    def row(self) -> dict[str, Any]:
        """The figures of one table row: token change (all codebooks), per codebook, frame change."""
        per_codebook = None
        if self.changed is not None and self.positions:
            per_codebook = (self.changed / self.positions).tolist()
        return {TOKEN_CHANGE: float(np.mean(per_codebook)) if per_codebook else None,
                PER_CODEBOOK: per_codebook,
                FRAME_CHANGE: float(np.mean(self.frame_changes)) if self.frame_changes else None}


def unchanged(stability: Stability) -> Stability:
    """The clean condition's figures: nothing moved, in as many codebooks as the corrupted ones have."""
    changed = None if stability.changed is None else np.zeros_like(stability.changed)
    return Stability(changed, max(stability.positions, 1), [0.0] if stability.frame_changes else [])


# ---------------------------------------------------------------- tables


def write_robustness(out_dir: str | Path, *, conditions: dict[str, Scored], classes: list[str], task: str,
                     threshold: float, left_out: LeftOut = NOTHING_LEFT_OUT,
                     stability: dict[str, Stability] | None = None) -> list[dict[str, Any]]:
    """The tables and the plot into out_dir (replaced whole); returns the per-condition rows.

    `left_out`: what the split lost to classes without a training clip; accuracy counts those clips as
    errors, as evaluate's metrics.json does, and robustness.json states it. With `stability` (the model's
    input change per corrupted condition) the rows carry token and frame change too.
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
    if stability is not None:
        for row in rows:
            row.update(_stability_of(row["condition"], stability))
        columns += [TOKEN_CHANGE, FRAME_CHANGE]
    per_class = per_class_rows(conditions, names, classes)
    with atomic_dir(out_dir) as folder:
        reports.write_csv(folder / ROBUSTNESS_TABLE, rows, columns)
        note = f"{left_out.note()}.\n\n" if left_out else ""
        (folder / ROBUSTNESS_TABLE_MD).write_text(
            f"# Robustness: {primary} clean and under each corruption\n\n{note}" + reports.markdown_table(rows, columns))
        reports.write_csv(folder / ROBUSTNESS_PER_CLASS, per_class,
                          ["class", "positives", *[f"ap {n}" for n in names]])
        if any(row.get(PER_CODEBOOK) for row in rows):
            _write_token_change(folder / ROBUSTNESS_TOKEN_CHANGE, rows)
        _plot(folder / ROBUSTNESS_PLOT, rows, primary)
        write_json(folder / ROBUSTNESS_JSON, {"task": task, "threshold": threshold, **left_out.counts(),
                                              "left_out_note": left_out.note(), "conditions": rows})
    return rows


def _stability_of(name: str, stability: dict[str, Stability]) -> dict[str, Any]:
    if name != CLEAN:
        return stability[name].row() if name in stability else {TOKEN_CHANGE: None, PER_CODEBOOK: None,
                                                                 FRAME_CHANGE: None}
    return unchanged(next(iter(stability.values()), Stability())).row()


def _write_token_change(path: Path, rows: list[dict[str, Any]]) -> None:
    codebooks = max(len(row[PER_CODEBOOK] or ()) for row in rows)
    table = [{"condition": row["condition"], **{f"codebook {c}": share for c, share in
                                                enumerate(row[PER_CODEBOOK] or ())}} for row in rows]
    reports.write_csv(path, table, ["condition", *[f"codebook {c}" for c in range(codebooks)]])


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


def baselines_only(config, model_dir: Path | None = None) -> bool:
    """Whether the workdir has fitted baselines but no model bundle (and none is named): then `evaluate
    --corrupt` scores the baselines alone, as in a tokenizer sweep's base workdir."""
    layout = Layout(config.workdir)
    return model_dir is None and not (layout.model_dir / BUNDLE_METADATA).is_file() \
        and bool(layout.baseline_estimators())


def evaluate_robustness(config, split: str | None, specs: list[str], model_dir: Path | None = None,
                        manifest: str | Path | None = None) -> dict[str, Any]:
    """`audiotokens evaluate --corrupt SPEC ...`: the model (and every saved baseline) on the audio of a split
    or of a manifest's clips, clean and under each corruption (fixed seed per clip), into
    output/eval/<split or manifest name>/robustness/. Without a model bundle, the baselines alone."""
    layout = Layout(config.workdir)
    corruptions = [parse_corruption(spec) for spec in specs]
    only_baselines = manifest is None and baselines_only(config, model_dir)
    bundle = None if only_baselines else load_model(model_dir or layout.model_dir, device=config.train.device)
    plan = SplitPlan.load(layout) if manifest is None or layout.split_json.is_file() else None
    left_out = NOTHING_LEFT_OUT
    if manifest is not None:
        name, clips = Path(manifest).stem, manifest_clips(Path(manifest), bundle, config.data.label_delimiter)
    else:
        name, clips = split or "validation", split_clips(plan, split or "validation", bundle, layout)
        left_out = plan.left_out(name)
    out = layout.robustness_dir(name)
    results = {}
    if bundle is None:
        log.info("no model bundle in %s: scoring the fitted baselines only", layout.model_dir)
    else:
        conditions, stability = model_conditions(bundle, clips, corruptions, bundle.classes, config.split.seed)
        results["model"] = write_robustness(out / ROBUSTNESS_MODEL, conditions=conditions, classes=bundle.classes,
                                            task=bundle.task, threshold=bundle.threshold, left_out=left_out,
                                            stability=stability)
    for saved in layout.baseline_estimators():
        if plan is None or (bundle is not None and list(plan.classes) != list(bundle.classes)):
            log.info("the baselines in %s were fitted on other classes than the model's; not scored on %s",
                     layout.baselines, name)
            break
        rows = _baseline_robustness(config, saved, clips, corruptions, plan,
                                    out / ROBUSTNESS_BASELINE.format(name=saved.parent.name), left_out)
        if rows is not None:
            results[saved.parent.name] = rows
    primary = objective_for(bundle.task if bundle is not None else plan.task).primary_metric
    for scorer, rows in results.items():
        figures = [f"{row['condition']} {row[primary]:.4f}" for row in rows if row[primary] is not None]
        log.info("robustness of %s on %s (%s): %s", scorer, name, primary, ", ".join(figures))
    log.info("robustness tables in %s", out)
    return results


def split_clips(plan: SplitPlan, split: str, bundle, layout: Layout) -> list[dict]:
    """split.json entries of a split's clips, refused when the split's classes are not the bundle's (when
    there is one)."""
    if bundle is not None and (list(plan.classes) != list(bundle.classes) or plan.task != bundle.task):
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


@dataclass
class ClipInput:
    """One clip's frames and the token ids the model reads (None for a frames model)."""

    frames: np.ndarray
    tokens: np.ndarray | None


@dataclass
class _Inputs:
    """One condition's model inputs, clip by clip, until the model scores them all."""

    ids: list[str] = field(default_factory=list)
    sequences: list[np.ndarray] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def scored(self, bundle, classes: list[str]) -> Scored:
        targets = np.zeros((len(self.ids), len(classes)), dtype=np.float32)
        for row, labels in enumerate(self.labels):
            targets[row, labels] = 1.0
        scores = bundle.scores(self.sequences) if self.sequences else np.zeros((0, len(classes)), np.float32)
        return Scored(self.ids, targets, scores, self.skipped)


def model_conditions(bundle, clips: list[dict], corruptions: list[Corruption], classes: list[str],
                     seed: int) -> tuple[dict[str, Scored], dict[str, Stability]]:
    """Each clip decoded once, framed and tokenized with the bundle's settings clean and under each corruption
    (seeded per clip), then every condition scored; with how far each corruption moved the model's input."""
    tokenizer = AudioTokenizer.of_bundle(bundle)
    params = tokenizer.params
    inputs = {CLEAN: _Inputs(), **{corruption.name: _Inputs() for corruption in corruptions}}
    stability = {corruption.name: Stability() for corruption in corruptions}
    for clip in tqdm(clips, unit="clip", desc=f"robustness, {len(inputs)} conditions", disable=None):
        try:
            mono = load_mono(clip["audio"], params.sample_rate, params.max_duration)
        except AudioError as exc:
            for condition in inputs.values():
                condition.skipped.append({"id": clip["id"], "reason": str(exc)})
            continue
        clean = _clip_input(tokenizer, mono, clip, inputs[CLEAN])
        for corruption in corruptions:
            corrupted = _clip_input(tokenizer, corruption.apply(mono, params.sample_rate,
                                                                clip_seed(seed, str(clip["id"]))),
                                    clip, inputs[corruption.name])
            if clean is not None and corrupted is not None:
                stability[corruption.name].add(clean, corrupted)
    return {name: condition.scored(bundle, classes) for name, condition in inputs.items()}, stability


def _clip_input(tokenizer: AudioTokenizer, mono: np.ndarray, clip: dict,
                condition: _Inputs) -> ClipInput | None:
    """The clip's frames and model input, added to the condition; None (and the clip listed as skipped) when
    its frames cannot be made."""
    params = tokenizer.params
    try:
        with single_threaded():
            frames = frames_from_samples(mono, params).astype(params.dtype, copy=False)
        if not np.isfinite(frames).all():
            raise AudioError("non-finite frames", f"values overflow {params.dtype}")
    except AudioError as exc:
        condition.skipped.append({"id": clip["id"], "reason": str(exc)})
        return None
    model_input = tokenizer.model_input(frames)
    condition.ids.append(clip["id"])
    condition.sequences.append(model_input)
    condition.labels.append(list(clip["labels"]))
    return ClipInput(frames, None if tokenizer.vocabulary is None else model_input)


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
