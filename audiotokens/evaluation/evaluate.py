"""`audiotokens evaluate`: the model bundle scored on a split (its tokens, or its frames for a frames model)
or on a manifest of audio files. The decision threshold is the bundle's (train.threshold) unless
evaluate.threshold / --threshold sets one.

Writes output/eval/<name>/ (name = the split or the manifest's stem), swapped in whole:
  metrics.json               the training metrics (same code), counts, skipped clips, and the clips and
                             classes left out because their class has no training clip (split.json)
  per_class.csv, .md         class, positives, AP, precision/recall/F1 at the threshold, best-F1 threshold
  sweep.csv                  micro precision/recall/F1/FP/FN at thresholds 0.05 … 0.95
  sweep_<class>.csv          the same for the class given with --class
  confusion.csv, .png        single-label only: true × predicted clip counts
  per_class_ap.png, pr_curves.png
  scores.npy + clips.json    the score matrix and the clip ids / classes of its rows and columns
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import Config
from ..data.sources.manifest import read_manifest
from ..errors import UserError
from ..model.audio_tokenizer import AudioTokenizer
from ..model.metrics import count_left_out
from ..model.objectives import Objective
from ..pipeline.files import atomic_dir, read_json, remove_dir, save_npy, write_json
from ..pipeline.layout import (
    EVAL_AP_PLOT,
    EVAL_CLASS_SWEEP,
    EVAL_CLIPS,
    EVAL_CONFUSION,
    EVAL_CONFUSION_PLOT,
    EVAL_METRICS,
    EVAL_PER_CLASS,
    EVAL_PER_CLASS_TABLE,
    EVAL_PR_PLOT,
    EVAL_SCORES,
    EVAL_SWEEP,
    SPLITS,
    Layout,
)
from ..pipeline.stores import NOTHING_LEFT_OUT, ClipIndex, LeftOut, SplitPlan, open_split, spec_digest
from . import reports
from .predict import load_model, score_files

log = logging.getLogger("audiotokens")

CLIPS_PER_CALL = 1024  # clips handed to the model at a time (progress and bounded memory)


@dataclass
class Scored:
    """Rows = clips (ids), columns = the bundle's classes."""

    ids: list[str]
    targets: np.ndarray  # (clips, classes) 0/1
    scores: np.ndarray  # (clips, classes) probabilities
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason"}


class Evaluator:
    """Scores splits (or a manifest's audio, with the bundle's settings) and writes the reports.

    As a stage (no split named) it scores validation, then test when the split has one: the model was picked
    on validation, so test is the figure to report. The model runs on `train.device`; the threshold is
    `evaluate.threshold` when set (>= 0), else the bundle's.
    """

    def __init__(self, config: Config, split: str | None = None, manifest: str | Path | None = None,
                 class_name: str | None = None, model_dir: str | Path | None = None):
        self.config = config
        self.layout = Layout(config.workdir)
        self.split = split
        self.manifest = Path(manifest) if manifest else None
        self.class_name = class_name
        self.model_dir = Path(model_dir) if model_dir else self.layout.model_dir
        self.threshold = config.evaluate.threshold  # < 0: the bundle's
        if self.threshold > 1.0:
            raise UserError(f"'evaluate.threshold' must be between 0 and 1 (or < 0 for the model's), "
                            f"got {self.threshold}")

    def run(self) -> dict[str, Any]:
        bundle = load_model(self.model_dir, device=self.config.train.device)
        if self.manifest:
            return self._report(bundle, self.manifest.stem, self._score_manifest(bundle), str(self.manifest))
        plan = SplitPlan.load(self.layout)
        names = [self.split] if self.split else [n for n in plan.names() if n != "train"]
        relative = Layout()  # the store as the workdir names it
        store = relative.tokenized if bundle.input == "tokens" else relative.frames_dir
        results = {name: self._report(bundle, name, self._score_split(bundle, name), f"the {name} split of {store}/",
                                      plan.left_out(name))
                   for name in names}
        if not self.split:
            self._remove_reports_of_absent_splits(names)
        return results[names[0]] if len(names) == 1 else results

    def _remove_reports_of_absent_splits(self, names: list[str]) -> None:
        """A report of a split the split no longer has (test, after split.test_ratio = 0) would read as this
        model's figures; removed once the current reports are written, so a failed run keeps them all."""
        for name in SPLITS:
            if name != "train" and name not in names and self.layout.eval_dir(name).is_dir():
                log.info("removing %s: the split has no %s clips any more", self.layout.eval_dir(name), name)
                remove_dir(self.layout.eval_dir(name))

    def _report(self, bundle, name: str, scored: Scored, source: str,
                left_out: LeftOut = NOTHING_LEFT_OUT) -> dict[str, Any]:
        sweep_class = resolve_class(self.class_name, bundle.classes) if self.class_name else None
        out_dir = self.layout.eval_dir(name)
        threshold = self.threshold if self.threshold >= 0 else bundle.threshold
        metrics = write_reports(out_dir, scored, bundle.classes, bundle.objective, threshold, sweep_class,
                                {"name": name, "source": source, "model": str(self.model_dir)}, left_out)
        log_headline(name, metrics, out_dir, bundle.objective)
        return {key: metrics[key] for key in ("clips", "skipped", "left_out_clips", "task", "threshold",
                                              *bundle.objective.headline)}

    # ------------------------------------------------------------ a split of the stores

    def _score_split(self, bundle, split: str) -> Scored:
        frames = bundle.input != "tokens"  # frames or waveform rows: both in the frame store
        index_path = self.layout.frames_index if frames else self.layout.tokens_index
        if not index_path.is_file():
            stage = "spectrogram" if frames else "tokenize"
            raise UserError(f"{index_path} not found; run `audiotokens {stage}` first, or evaluate audio with "
                            "--manifest FILE")
        rows, index = open_split(self.layout, "frames" if frames else "tokens", split)
        check_split_matches_bundle(self.layout, split, index, bundle, self.model_dir)
        scores = np.zeros((len(index), len(bundle.classes)), dtype=np.float32)
        with tqdm(total=len(index), unit="clip", desc=f"evaluate {split}", disable=None, leave=False) as bar:
            for start in range(0, len(index), CLIPS_PER_CALL):
                clips = range(start, min(start + CLIPS_PER_CALL, len(index)))
                # copies: torch refuses to wrap read-only memmap slices without a warning
                sequences = [np.array(rows[index.offsets[i]:index.offsets[i] + index.lengths[i]]) for i in clips]
                scores[start:start + len(sequences)] = bundle.scores(sequences)
                bar.update(len(sequences))
        return Scored(list(index.ids), index.label_matrix(), scores, self._split_skips(split))

    def _split_skips(self, split: str) -> list[dict[str, str]]:
        """Clips of this split the spectrogram stage could not use (they have no tokens to score)."""
        path = self.layout.frames_report
        if not path.is_file():
            return []
        members = set(SplitPlan.load(self.layout).ids(split))
        return [{"id": s.get("id", ""), "reason": " ".join(filter(None, (s.get("reason"), s.get("detail"))))}
                for s in read_json(path).get("skipped", []) if s.get("id") in members]

    # ------------------------------------------------------------ a manifest of audio files

    def _score_manifest(self, bundle) -> Scored:
        rows = read_manifest(self.manifest, self.config.data.label_delimiter)
        class_of = {name: i for i, name in enumerate(bundle.classes)}
        check_manifest_labels(self.manifest, rows, bundle)
        tokenizer = AudioTokenizer.of_bundle(bundle)
        ids, targets, scores, skipped = [], [], [], []
        with tqdm(total=len(rows), unit="clip", desc=f"evaluate {self.manifest.stem}", disable=None,
                  leave=False) as bar:
            for start in range(0, len(rows), CLIPS_PER_CALL):
                batch = rows[start:start + CLIPS_PER_CALL]
                for row, (item, clip_scores) in zip(batch, score_files([r.audio for r in batch], bundle, tokenizer)):
                    if clip_scores is None:
                        skipped.append({"id": row.id, "reason": item.error})
                        continue
                    ids.append(row.id)
                    target = np.zeros(len(bundle.classes), dtype=np.float32)
                    target[[class_of[label] for label in row.labels]] = 1.0
                    targets.append(target)
                    scores.append(clip_scores)
                bar.update(len(batch))
        if skipped:
            log.warning("%d of %d clips of %s could not be scored (listed in metrics.json), e.g. %s: %s",
                        len(skipped), len(rows), self.manifest, skipped[0]["id"], skipped[0]["reason"])
        if not ids:
            raise UserError(f"no clip of {self.manifest} could be scored (first: {skipped[0]['id']}: "
                            f"{skipped[0]['reason']})")
        return Scored(ids, np.stack(targets), np.stack(scores).astype(np.float32), skipped)


# ---------------------------------------------------------------- checks


def resolve_class(name: str, classes: list[str]) -> int:
    """Column of a class given by name (exact, else case-insensitive); UserError with close names."""
    if name in classes:
        return classes.index(name)
    folded = [c for c in classes if c.casefold() == name.casefold()]
    if len(folded) == 1:
        return classes.index(folded[0])
    close = reports.nearest_names(name, classes)
    hint = f"; close names: {', '.join(repr(c) for c in close)}" if close else ""
    raise UserError(f"--class '{name}' is not a class of the model ({len(classes)} classes){hint}")


def check_manifest_labels(manifest: Path, rows, bundle) -> None:
    known = set(bundle.classes)
    unknown = sorted({label for row in rows for label in row.labels if label not in known})
    if unknown:
        close = reports.nearest_names(unknown[0], bundle.classes)
        hint = f" (close: {', '.join(repr(c) for c in close)})" if close else ""
        raise UserError(f"{manifest}: label(s) {', '.join(repr(u) for u in unknown[:5])}"
                        f"{' …' if len(unknown) > 5 else ''} are not classes of the model{hint}; "
                        "labels must be the model's class names")
    wrong = next((row for row in rows if bundle.objective.label_problem(row.labels)), None)
    if wrong is not None:
        raise UserError(f"{manifest} line {wrong.line}: {wrong.id} {bundle.objective.label_problem(wrong.labels)}; "
                        "give labels that fit the model's task")


def check_split_matches_bundle(layout: Layout, split: str, index: ClipIndex, bundle, model_dir: Path) -> None:
    """Refuse a store made with another vocabulary or frame spec than the bundle's, or other classes.

    The digests say it all: the token index records the vocabulary it was made with (the bundle carries
    that vocabulary and the frame spec it was fitted on); the frames index records its frame spec.
    """
    if bundle.vocabulary is not None:
        if index.extra.get("vocabulary_digest") != bundle.vocabulary.digest:
            raise UserError(f"{layout.tokens} was made with another vocabulary than the model bundle {model_dir} "
                            "(cluster or spectrogram ran again after training); re-run `audiotokens train` (or "
                            "`audiotokens run`), or evaluate audio with --manifest, which uses the bundle's vocabulary")
    elif index.extra.get("frame_spec_digest") != spec_digest(bundle.spectrogram):
        raise UserError(f"{layout.frames} was made with other spectrogram settings than the model bundle "
                        f"{model_dir}; re-run `audiotokens train` (or `audiotokens run`), or evaluate audio with "
                        "--manifest, which uses the bundle's settings")
    _check_same_classes(layout, split, index, bundle, model_dir)


def _check_same_classes(layout: Layout, split: str, index: ClipIndex, bundle, model_dir: Path) -> None:
    if list(index.classes) != list(bundle.classes) or index.task != bundle.task:
        raise UserError(f"the {split} split of {layout.split_json} has {len(index.classes)} {index.task} classes, the model "
                        f"bundle {model_dir} {len(bundle.classes)} {bundle.task} ones (the split was made again "
                        "after training); re-run `audiotokens train`")


# ---------------------------------------------------------------- reports


def _finite(value: Any) -> Any:
    """JSON has no NaN: an undefined metric is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def safe_name(name: str) -> str:
    """A class name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def write_reports(out_dir: Path, scored: Scored, classes: list[str], objective: Objective, threshold: float,
                  sweep_class: int | None, about: dict[str, Any], left_out: LeftOut = NOTHING_LEFT_OUT) -> dict[str, Any]:
    """Every report file into a temporary directory that then replaces out_dir; returns metrics.json.

    `left_out`: what the split lost to classes without a training clip; metrics.json states it, and
    accuracy counts its clips as errors (model.metrics.count_left_out).
    """
    with atomic_dir(out_dir) as tmp:
        metrics = _write_all(tmp, scored, classes, objective, threshold, sweep_class, about, left_out)
    metrics["files"] = {name: str(out_dir / name) for name in metrics["files"]}
    return metrics


def _write_all(folder: Path, scored: Scored, classes: list[str], objective: Objective, threshold: float,
               sweep_class: int | None, about: dict[str, Any], left_out: LeftOut) -> dict[str, Any]:
    targets, scores = scored.targets, scored.scores
    for row, labels in enumerate(targets):
        problem = objective.label_problem(np.flatnonzero(labels).tolist())
        if problem:
            raise UserError(f"{about['source']}: clip {scored.ids[row]} {problem}")
    metric_targets = objective.metric_targets(targets)
    metrics = count_left_out(objective.metrics(metric_targets, scores, threshold), len(scored.ids),
                             len(left_out.clips))
    at_threshold = reports.counts_at(targets, objective.decisions(scores, threshold))
    rows = reports.per_class_table(targets, scores, classes, objective, threshold)
    files = [EVAL_METRICS, EVAL_PER_CLASS, EVAL_PER_CLASS_TABLE, EVAL_SWEEP, EVAL_AP_PLOT, EVAL_PR_PLOT, EVAL_SCORES,
             EVAL_CLIPS]

    reports.write_csv(folder / EVAL_PER_CLASS, rows, reports.PER_CLASS_COLUMNS)
    decision = f"at threshold {threshold}" if objective.uses_threshold else "of the arg-max class"
    (folder / EVAL_PER_CLASS_TABLE).write_text(
        f"# {about['name']}: per-class results ({len(scored.ids)} clips, sorted by AP)\n\n"
        f"precision, recall and F1 {decision}; best_f1 at best_threshold is each class's optimum.\n\n"
        + reports.markdown_table(rows, reports.PER_CLASS_COLUMNS))
    reports.write_csv(folder / EVAL_SWEEP, reports.threshold_sweep(targets, scores), reports.SWEEP_COLUMNS)
    if sweep_class is not None:
        name = EVAL_CLASS_SWEEP.format(name=safe_name(classes[sweep_class]))
        reports.write_csv(folder / name, reports.threshold_sweep(targets[:, sweep_class], scores[:, sweep_class]),
                          reports.SWEEP_COLUMNS)
        files.append(name)
    if not objective.uses_threshold:  # one class per clip: a confusion matrix is defined
        matrix = reports.confusion_matrix(metric_targets, scores.argmax(axis=1), len(classes))
        reports.write_confusion_csv(folder / EVAL_CONFUSION, matrix, classes)
        reports.plot_confusion(folder / EVAL_CONFUSION_PLOT, matrix, classes)
        files += [EVAL_CONFUSION, EVAL_CONFUSION_PLOT]
    reports.plot_ap_bars(folder / EVAL_AP_PLOT, rows, f"{about['name']}: per-class AP")
    reports.plot_pr_curves(folder / EVAL_PR_PLOT, targets, scores, classes, rows)
    save_npy(folder / EVAL_SCORES, scores.astype(np.float32))
    write_json(folder / EVAL_CLIPS, {"ids": scored.ids, "classes": classes})

    result = {
        **about,
        "task": objective.task,
        "threshold": threshold,
        "clips": len(scored.ids),
        "skipped": len(scored.skipped),
        **left_out.counts(),
        "left_out_note": left_out.note(),
        "classes": len(classes),
        "classes_with_positives": int((targets.sum(axis=0) > 0).sum()),
        **{key: _finite(value) for key, value in metrics.items()},
        "micro_precision": at_threshold["precision"],
        "micro_recall": at_threshold["recall"],
        "false_positives": at_threshold["false_positives"],
        "false_negatives": at_threshold["false_negatives"],
        "sweep_class": classes[sweep_class] if sweep_class is not None else None,
        "skipped_clips": scored.skipped,
        "files": files,
    }
    write_json(folder / EVAL_METRICS, result)
    return result


def log_headline(name: str, metrics: dict[str, Any], out_dir: Path, objective: Objective) -> None:
    def number(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.4f}"

    skipped = f", {metrics['skipped']} skipped" if metrics["skipped"] else ""
    if metrics.get("left_out_note"):
        log.warning("%s: %s", name, metrics["left_out_note"])
    if metrics.get("left_out_clips"):
        skipped += f", {metrics['left_out_clips']} left out (counted as errors)"
    if objective.uses_threshold:
        excluded = metrics.get("classes_excluded", 0)
        note = f" ({excluded} classes without positives excluded)" if excluded else ""
        log.info("%s: %d clips%s — mAP %s%s, micro F1 %s, macro F1 %s at threshold %g", name, metrics["clips"],
                 skipped, number("mAP"), note, number("micro_f1"), number("macro_f1"), metrics["threshold"])
    else:
        log.info("%s: %d clips%s — accuracy %s, macro F1 %s", name, metrics["clips"], skipped,
                 number("accuracy"), number("macro_f1"))
    log.info("reports in %s/: %s", out_dir, ", ".join(Path(p).name for p in metrics["files"].values()))
