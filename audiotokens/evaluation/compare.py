"""Runs side by side, from what they left on disk: `audiotokens compare WORKDIR...` and k-fold summaries.

Reads only provenance records (every `*.meta.json` under a workdir: `params`, `wall_time_s`) and
metrics files: output/metrics.jsonl (the best epoch's train and validation figures),
output/eval/<name>/metrics.json, output/baselines/<model>/<split>/metrics.json and a k-fold
summary (kfold_summary.json, written by scripts/kfold.sh) where present. It runs nothing. Reports of a
split that processed/split.json no longer has (test, after split.test_ratio = 0) are left out.

The table's setting columns are the parameters whose values are not the same in every run that recorded
their section: a parameter a run lacks counts as a different value, unless the run has no parameter of
that section at all (a run that never trained, e.g. the baselines' base of a sweep, leaves the train
settings out of the comparison instead of making every one of them differ). A [cluster] key the run's
tokenizer kind does not read (cluster.stack of a sub-band run) is not among its settings. Metric columns
are each metrics file's headline figures (each objective's headline), named "<source> <metric>", e.g.
"eval/validation mAP", "svm/test accuracy", "train log validation mAP" (the kept epoch). A k-fold directory is one run whose
metrics are the means over its folds, with "<metric> std" beside them. "<split> left out" states the
clips (single-label) or positives (multi-label) of classes without a training clip that a split's
figures do not cover (split.json; per fold in a k-fold summary). The CSV has one row per run;
the Markdown one column per run (family, settings, then metrics, then times), which stays readable.

Each run's family (run_family) says what its model reads: a mel-frame quantizer's tokens, speech-model units
(tokens of speech-model frames), codec tokens, the frames themselves (the frames control), a fine-tuned
speech model, or nothing (a workdir of baselines only: "baseline"). "bits per second" is bits per frame ×
frames per second (the frame spec's sample_rate / hop_length), so families with other frame rates compare.

Robustness (runs where `evaluate --corrupt` wrote output/eval/<split>/robustness/, the model's and each
baseline's): one more table, compare_robustness.csv (one row per model, split and condition: the primary
metric, its change against clean, the token change and frame change) and compare_robustness.md (one row
per model and split: the metric clean and under each corruption, with the token and frame change beside
it), and compare_snr.png, the metric against the noise SNR per model (clean at the right). A model is the
run's label; a baseline is named by itself (svm, logreg), with its run in brackets when several runs have it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import current_value
from ..data.corrupt import noise_of
from ..data.sources.records import MULTILABEL
from ..errors import UserError
from ..model.objectives import OBJECTIVES, objective_for
from ..pipeline.files import atomic_path, read_json, read_jsonl, write_json
from ..pipeline.layout import (
    COMPARE_BITS_PLOT,
    COMPARE_FILES,
    COMPARE_ROBUSTNESS,
    EVAL_METRICS,
    KFOLD_SUMMARY,
    ROBUSTNESS_BASELINE,
    ROBUSTNESS_JSON,
    ROBUSTNESS_MODEL,
    SPLITS,
    VOCABULARY_METADATA,
    Layout,
)
from ..pipeline.provenance import read_record
from ..pipeline.stages import NAMES
from ..pipeline.stores import SplitPlan
from ..tokens.quantizer_kinds import KINDS, setting_keys
from . import reports

TRAIN_TIME = "train time (s)"
KMEANS_KEYS = ("n_clusters", "niter", "seed", "gpu")  # [cluster] keys that apply only where k-means fits codebooks
TOTAL_TIME = "total time (s)"


@dataclass(kw_only=True)
class Comparison:
    """One row per run: its label, the settings that differ, metrics and times."""

    runs: list[str]
    settings: list[str]  # setting keys whose values differ between the runs
    metrics: list[str]  # metric columns
    rows: list[dict[str, Any]] = field(default_factory=list)
    with_std: list[str] = field(default_factory=list)  # metrics that some run (k-fold) has "<metric> std" of
    reports: dict[str, str] = field(default_factory=dict)  # run -> its `audiotokens report` page, where written
    robustness: list[dict[str, Any]] = field(default_factory=list)  # ROBUSTNESS_COLUMNS rows, where measured

    def columns(self) -> list[str]:
        """CSV columns: run, family, settings, metrics (each followed by its std where a k-fold run has one),
        times."""
        metric_columns = [c for m in self.metrics for c in ((m, f"{m} std") if m in self.with_std else (m,))]
        return ["run", FAMILY, *self.settings, *metric_columns, TRAIN_TIME, TOTAL_TIME]


# ---------------------------------------------------------------- reading one workdir


def run_settings(workdir: Path) -> dict[str, Any]:
    """`section.key -> value` over every provenance record of the workdir (a k-fold summary's common ones)."""
    settings: dict[str, set[str]] = {}
    values: dict[str, Any] = {}
    for record in _records(workdir):
        for key, value in record.get("params", {}).items():
            value = current_value(key, value)  # a record from before a key became a choice: its meaning
            settings.setdefault(key, set()).add(json.dumps(value, sort_keys=True, default=str))
            values[key] = value
    if not settings and (workdir / KFOLD_SUMMARY).is_file():
        return dict(read_json(workdir / KFOLD_SUMMARY).get("settings", {}))
    unread = unread_cluster_keys(values.get("cluster.quantizer"))
    # two records of one run disagreeing on a key (a stage re-run with other settings): show both
    return {key: values[key] if len(seen) == 1 else " / ".join(sorted(seen)) for key, seen in settings.items()
            if key not in unread}


def unread_cluster_keys(quantizer: Any) -> set[str]:
    """[cluster] keys the run's quantizer kind does not read (another kind's, and the k-means settings for a
    kind made without k-means): the section holds every kind's keys, but a run's value of `cluster.stack`
    says nothing when it clustered sub-bands, so it must not make two runs look different."""
    kind = KINDS.get(quantizer) if isinstance(quantizer, str) else None
    if kind is None:
        return set()
    unread = set(setting_keys()) - set(kind.settings())
    if not kind.uses_kmeans:
        unread |= set(KMEANS_KEYS)
    return {f"cluster.{key}" for key in unread}


TOKEN_FIGURES = ("bits_per_frame", "validation_reconstruction_mse")
BITS_PER_SECOND = "bits per second"
FAMILY = "family"
MEL_QUANTIZER, SPEECH_UNITS, CODEC = "mel-frame quantizer", "speech-model units", "codec"
FRAMES_CONTROL, FINE_TUNED, BASELINE = "frames control", "fine-tuned speech model", "baseline"
CODEC_QUANTIZERS = ("codec",)  # quantizer kinds whose codes come from a neural codec, not k-means


def token_family(features: str | None, quantizer: str | None, model_input: str | None,
                 baselines: bool) -> str | None:
    """The family of what a run's model reads, from its frame kind (the frame spec's "features"), the
    quantizer kind its vocabulary records and model.input; a run without a model (no model.input) is the
    baselines' row where it has baseline reports."""
    if model_input is None:
        return BASELINE if baselines else None
    if model_input == "frames":
        return FRAMES_CONTROL
    if model_input == "waveform":
        return FINE_TUNED
    if quantizer in CODEC_QUANTIZERS:
        return CODEC
    return SPEECH_UNITS if features == "ssl" else MEL_QUANTIZER


def run_family(workdir: Path, settings: dict[str, Any]) -> str | None:
    """token_family of a workdir: its frame spec and vocabulary, else its recorded settings (a k-fold run)."""
    layout = Layout(workdir)
    spec = _readable_json(layout.frame_spec)
    quantizer = _readable_json(layout.vocabulary / VOCABULARY_METADATA).get("quantizer", {}).get("kind")
    trained = any(key.split(".")[0] in ("model", "train") for key in settings)
    return token_family(spec.get("features", settings.get("spectrogram.features")),
                        quantizer or settings.get("cluster.quantizer"),
                        settings.get("model.input", "tokens") if trained else None,
                        bool(layout.baseline_reports()))


def bits_per_second(bits_per_frame: Any, spec: dict[str, Any]) -> float | None:
    """Bits per frame × frames per second (the frame spec's sample_rate / hop_length); None without either."""
    rate, hop = spec.get("sample_rate"), spec.get("hop_length")
    if not all(isinstance(x, (int, float)) and x > 0 for x in (bits_per_frame, rate, hop)):
        return None
    return float(bits_per_frame) * rate / hop


def _readable_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when it is absent or unreadable (compare reads what a run left)."""
    try:
        found = read_json(path) if path.is_file() else {}
    except UserError:
        return {}
    return found if isinstance(found, dict) else {}


def run_metrics(workdir: Path) -> dict[str, float | int | None]:
    """Headline figures of every metrics file of the workdir, as "<source> <metric>" columns."""
    layout = Layout(workdir)
    found: dict[str, float | int | None] = {}
    best = _best_epoch(layout.metrics)
    if best is not None:  # train and validation side by side: how far the kept model overfits
        metric = next((kind.primary_metric for kind in OBJECTIVES.values()
                       if kind.primary_metric in best.get("validation", {})), "mAP")
        for side in ("train", "validation"):
            found[f"train log {side} {metric}"] = best.get(side, {}).get(metric)
        found["train log best epoch"] = best.get("epoch")
    tokens = (read_json(layout.record("cluster")) if layout.record("cluster").is_file() else {}).get("counts", {})
    for key in TOKEN_FIGURES:  # what the tokens keep: bits per frame and reconstruction error
        if tokens.get(key) is not None:
            found[key.replace("_", " ")] = tokens[key]
    if (rate := bits_per_second(tokens.get("bits_per_frame"), _readable_json(layout.frame_spec))) is not None:
        found[BITS_PER_SECOND] = rate  # what a second of audio costs, whatever the family's frame rate
    gone = _splits_gone(layout)
    for folder in layout.eval_reports():
        if folder.name not in gone:
            found.update(_headline(f"eval/{folder.name}", read_json(folder / EVAL_METRICS)))
    for folder in layout.baseline_reports():
        if folder.name not in gone:
            found.update(_headline(f"{folder.parent.name}/{folder.name}", read_json(folder / EVAL_METRICS)))
    found.update({f"{split} {LEFT_OUT}": text for split, text in left_out_of_run(layout).items()})
    return found


LEFT_OUT = "left out"


def left_out_of_run(layout: Layout) -> dict[str, str]:
    """Per split, the clips or positives its figures leave out (classes without a training clip), as split.json
    records them; nothing for a workdir without a readable split."""
    if not layout.split_json.is_file():
        return {}
    try:
        plan = SplitPlan.load(layout)
    except UserError:
        return {}
    return {split: plan.left_out(split).summary() for split in plan.names() if plan.left_out(split)}


def _splits_gone(layout: Layout) -> set[str]:
    """Splits the workdir's split.json has no clips in: a report of one is another split's (test, before
    split.test_ratio = 0), never this run's figures; none when split.json cannot be read (a copied workdir)."""
    try:
        return set(SPLITS) - set(SplitPlan.load(layout).names())
    except (UserError, TypeError):
        return set()


def run_times(workdir: Path) -> dict[str, float | None]:
    """Wall time of the train stage and of every recorded stage together (a k-fold summary's sums)."""
    records = _records(workdir)
    if not records and (workdir / KFOLD_SUMMARY).is_file():
        return dict(read_json(workdir / KFOLD_SUMMARY).get("times", {}))
    times = [r.get("wall_time_s") for r in records if isinstance(r.get("wall_time_s"), (int, float))]
    train = [r["wall_time_s"] for r in records if r.get("stage") == "train" and r.get("wall_time_s") is not None]
    return {TRAIN_TIME: train[-1] if train else None, TOTAL_TIME: round(sum(times), 3) if times else None}


def _records(workdir: Path) -> list[dict[str, Any]]:
    """The provenance record of every stage of this workdir, in pipeline order (where the stage table puts
    them, so records reached through a linked processed/ count and nested fold workdirs do not)."""
    layout = Layout(workdir)
    return [record for stage in NAMES if (record := read_record(layout, stage)) is not None]


def _best_epoch(path: Path) -> dict[str, Any] | None:
    """The last epoch marked best in metrics.jsonl (the checkpoint that was kept), else the last epoch."""
    rows = read_jsonl(path, fix="re-run `audiotokens train`")
    best = [row for row in rows if row.get("best")]
    return (best or rows or [None])[-1]


def _headline(source: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{source} {key}": metrics.get(key) for key in objective_for(metrics.get("task", MULTILABEL)).headline}


# ---------------------------------------------------------------- the comparison


def compare_workdirs(workdirs: list[Path]) -> Comparison:
    """Every run's differing settings, metrics, k-fold means ± std and times, in the order given."""
    workdirs = [Path(w) for w in workdirs]
    for workdir in workdirs:
        if not workdir.is_dir():
            raise UserError(f"{workdir} is not a folder; give the workdirs of the runs to compare")
    labels = _labels(workdirs)
    settings = {label: run_settings(w) for label, w in zip(labels, workdirs)}
    metrics = {label: run_metrics(w) for label, w in zip(labels, workdirs)}
    kfolds = {label: _kfold_metrics(w) for label, w in zip(labels, workdirs)}
    kfold_left_out = {label: _kfold_left_out(w) for label, w in zip(labels, workdirs)}
    empty = [str(w) for label, w in zip(labels, workdirs) if not settings[label] and not metrics[label]
             and not kfolds[label]]
    if empty:
        raise UserError(f"{empty[0]} holds no provenance records or metrics; is it a workdir of a run?")
    differing = differing_settings(list(settings.values()))
    comparison = Comparison(runs=labels, settings=differing,
                            metrics=_union([*metrics[label], *kfolds[label], *kfold_left_out[label]]
                                           for label in labels),
                            with_std=_union(list(k) for k in kfolds.values()),
                            reports={label: str(Layout(w).html_report) for label, w in zip(labels, workdirs)
                                     if Layout(w).html_report.is_file()})
    comparison.robustness = robustness_rows(labels, workdirs)
    for label, workdir in zip(labels, workdirs):
        row: dict[str, Any] = {"run": label, FAMILY: run_family(workdir, settings[label]),
                               **{key: settings[label].get(key) for key in differing},
                               **metrics[label], **kfold_left_out[label], **run_times(workdir)}
        for name, summary in kfolds[label].items():
            row[name], row[f"{name} std"] = summary["mean"], summary["std"]
        comparison.rows.append(row)
    return comparison


def differing_settings(runs: list[dict[str, Any]]) -> list[str]:
    """Keys whose value is not the same in every run that has the key's section (absent counts as a value
    there), in first-seen order."""
    keys = _union(list(run) for run in runs)
    sections = [{key.split(".")[0] for key in run} for run in runs]
    missing = object()

    def values(key: str) -> set[str]:
        section = key.split(".")[0]
        return {json.dumps(run.get(key, missing), sort_keys=True, default=repr)
                for run, has in zip(runs, sections) if section in has}

    return [key for key in keys if len(values(key)) > 1]


def _union(lists: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(item for items in lists for item in items))


def _labels(workdirs: list[Path]) -> list[str]:
    """Folder names when they tell the runs apart, else the paths as given."""
    names = [w.resolve().name or str(w) for w in workdirs]
    return names if len(set(names)) == len(names) else [str(w) for w in workdirs]


def _kfold_metrics(workdir: Path) -> dict[str, dict[str, Any]]:
    path = workdir / KFOLD_SUMMARY
    if not path.is_file():
        return {}
    return dict(read_json(path).get("metrics", {}))


def _kfold_left_out(workdir: Path) -> dict[str, str]:
    """Per split, what each fold's figures leave out: "fold_2: 2 clips of c; fold_4: ..."."""
    path = workdir / KFOLD_SUMMARY
    by_fold = read_json(path).get("left_out", {}) if path.is_file() else {}
    cells: dict[str, list[str]] = {}
    for fold, splits in by_fold.items():
        for split, text in splits.items():
            cells.setdefault(f"{split} {LEFT_OUT}", []).append(f"{Path(fold).name}: {text}")
    return {column: "; ".join(texts) for column, texts in cells.items()}


# ---------------------------------------------------------------- output files


def write_comparison(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """compare.md, compare.csv and compare.png (the primary metrics of every run) into out_dir."""
    out_dir = Path(out_dir)
    paths = {kind: out_dir / name for kind, name in COMPARE_FILES.items()}
    with atomic_path(paths["csv"]) as tmp:
        reports.write_csv(tmp, comparison.rows, comparison.columns())
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(comparison_markdown(comparison))
    with atomic_path(paths["plot"]) as tmp:
        plot_comparison(comparison, tmp)
    if any(_number(row.get(BITS)) for row in comparison.rows):
        paths["bits"] = out_dir / COMPARE_BITS_PLOT
        with atomic_path(paths["bits"]) as tmp:
            plot_against_bits(comparison, tmp)
    if comparison.robustness:
        paths.update(write_robustness_comparison(comparison.robustness, out_dir))
    return paths


BITS = "bits per frame"


def bit_axis(comparison: Comparison) -> tuple[str, str]:
    """The column the bit-budget plot puts on x, and its label: bits per second when every run with tokens
    has it (families at other frame rates then compare), else bits per frame."""
    token_rows = [row for row in comparison.rows if _number(row.get(BITS))]
    if token_rows and all(_number(row.get(BITS_PER_SECOND)) for row in token_rows):
        return BITS_PER_SECOND, "bits per second of audio (log scale)"
    return BITS, "bits per frame (log scale)"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_against_bits(comparison: Comparison, path: str | Path) -> None:
    """Each token run's primary metrics against its bit budget (bit_axis): what each budget keeps."""
    plt = reports.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    axis, axis_label = bit_axis(comparison)
    for column in primary_columns(comparison):
        points = [(row[axis], row[column], row["run"]) for row in comparison.rows
                  if _number(row.get(axis)) and _number(row.get(column))]
        if not points:
            continue
        bits, values, _ = zip(*sorted(points))
        ax.plot(bits, values, "o", label=column)
        for x, y, name in points:
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(axis_label)
    ax.set_ylabel("score")
    ax.set_title("metric against the tokens' bit budget", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def comparison_markdown(comparison: Comparison) -> str:
    """One column per run; rows: the differing settings, the metrics (k-fold: mean ± std), the times."""
    same = "" if comparison.settings else " (every recorded setting is the same in all runs)"
    lines = []
    for name in [FAMILY, *comparison.settings, *comparison.metrics, TRAIN_TIME, TOTAL_TIME]:
        line: dict[str, Any] = {"": name}
        for run, row in zip(comparison.runs, comparison.rows):
            line[run] = _mean_std(row.get(name), row.get(f"{name} std"))
        lines.append(line)
    return (f"# Comparison of {len(comparison.runs)} runs\n\nSettings: those that differ between the runs{same}. "
            "A value with ± is the mean ± standard deviation over the folds of a k-fold run.\n\n"
            + reports.markdown_table(lines, ["", *comparison.runs]) + _report_links(comparison))


def _report_links(comparison: Comparison) -> str:
    """Links to each run's one-page HTML report (`audiotokens report`), for the runs that have one."""
    if not comparison.reports:
        return ""
    return "\nReports: " + ", ".join(f"[{run}]({path})" for run, path in comparison.reports.items()) + "\n"


def _mean_std(value: Any, std: float | None) -> Any:
    if isinstance(value, float) and std is not None:
        return f"{value:.4f} ± {std:.4f}"
    return value


def primary_columns(comparison: Comparison) -> list[str]:
    """Metric columns of the primary metrics (mAP, accuracy), training-log ones left out."""
    return [m for m in comparison.metrics if m.rsplit(" ", 1)[-1] in ("mAP", "accuracy")
            and not m.startswith("train log train")]


def plot_comparison(comparison: Comparison, path: str | Path) -> None:
    """Grouped bars: one group per primary-metric column, one bar per run; k-fold bars carry ± std."""
    plt = reports.pyplot()
    columns = primary_columns(comparison)
    width = 0.8 / max(len(comparison.rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(columns) * max(len(comparison.rows), 1) ** 0.5 + 2), 4.5))
    for i, row in enumerate(comparison.rows):
        values, errors = [], []
        for column in columns:
            value = row.get(column)
            values.append(value if isinstance(value, (int, float)) and math.isfinite(value) else 0.0)
            errors.append(row.get(f"{column} std") or 0.0)
        ax.bar(np.arange(len(columns)) + (i - (len(comparison.rows) - 1) / 2) * width, values, width,
               yerr=errors if any(errors) else None, capsize=3, label=row["run"])
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("primary metric per run (missing = 0 height)", fontsize=10)
    if comparison.rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


# ---------------------------------------------------------------- robustness

TOKEN_CHANGE, FRAME_CHANGE = "token change", "frame change"  # as evaluation/robustness.py writes them
ROBUSTNESS_COLUMNS = ["model", "run", "split", "condition", "metric", "value", "change", TOKEN_CHANGE,
                      FRAME_CHANGE]


def robustness_rows(labels: list[str], workdirs: list[Path]) -> list[dict[str, Any]]:
    """Every robustness table of the runs, one row per model, split and condition (ROBUSTNESS_COLUMNS)."""
    found = [(label, *scored) for label, workdir in zip(labels, workdirs)
             for scored in _robustness_tables(workdir)]
    baseline_runs: dict[str, set[str]] = {}
    for label, scorer, _, _ in found:
        if scorer != ROBUSTNESS_MODEL:
            baseline_runs.setdefault(scorer, set()).add(label)
    rows = []
    for label, scorer, split, table in found:
        name = label if scorer == ROBUSTNESS_MODEL else _baseline_name(scorer)
        if scorer != ROBUSTNESS_MODEL and len(baseline_runs[scorer]) > 1:
            name = f"{name} ({label})"
        metric = objective_for(table.get("task", MULTILABEL)).primary_metric
        rows += [{"model": name, "run": label, "split": split, "condition": row["condition"],
                  "metric": metric, "value": row.get(metric), "change": row.get(f"{metric} change"),
                  TOKEN_CHANGE: row.get(TOKEN_CHANGE), FRAME_CHANGE: row.get(FRAME_CHANGE)}
                 for row in table.get("conditions", [])]
    return rows


def _robustness_tables(workdir: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(scorer folder, split, robustness.json) of each robustness report of a workdir."""
    return [(folder.name, folder.parent.parent.name, read_json(folder / ROBUSTNESS_JSON))
            for folder in Layout(workdir).robustness_reports() if (folder / ROBUSTNESS_JSON).is_file()]


def _baseline_name(scorer: str) -> str:
    return scorer.removeprefix(ROBUSTNESS_BASELINE.format(name=""))


def write_robustness_comparison(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """compare_robustness.csv and .md, and compare_snr.png when any condition is a noise at some SNR."""
    paths = {kind: out_dir / name for kind, name in COMPARE_ROBUSTNESS.items()}
    with atomic_path(paths["robustness_csv"]) as tmp:
        reports.write_csv(tmp, rows, ROBUSTNESS_COLUMNS)
    with atomic_path(paths["robustness_markdown"]) as tmp:
        tmp.write_text(robustness_markdown(rows))
    if any(noise_of(row["condition"]) for row in rows):
        with atomic_path(paths["snr_plot"]) as tmp:
            plot_against_snr(rows, tmp)
    else:
        del paths["snr_plot"]
    return paths


def robustness_markdown(rows: list[dict[str, Any]]) -> str:
    """One row per model and split: the metric clean and under each corruption, each corruption's token and
    frame change beside it (— where the model has none: no tokens, or a baseline)."""
    conditions = _union([[row["condition"] for row in rows]])
    metrics = {row["metric"] for row in rows}
    metric = metrics.pop() if len(metrics) == 1 else "score"
    columns = ["model", "split"]
    for condition in conditions:
        columns.append(f"{condition} {metric}")
        if condition != "clean":
            columns += [f"{condition} {TOKEN_CHANGE}", f"{condition} {FRAME_CHANGE}"]
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        line = table.setdefault((row["model"], row["split"]), {"model": row["model"], "split": row["split"]})
        line[f"{row['condition']} {metric}"] = row["value"]
        line[f"{row['condition']} {TOKEN_CHANGE}"] = row[TOKEN_CHANGE]
        line[f"{row['condition']} {FRAME_CHANGE}"] = row[FRAME_CHANGE]
    return (f"# Robustness of {len(table)} models\n\n{metric} clean and under each corruption; token "
            "change: the share of token positions whose id changes (all codebooks); frame change: "
            "||corrupted - clean|| / ||clean|| of the frames, mean over clips.\n\n"
            + reports.markdown_table(list(table.values()), columns))


def plot_against_snr(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The metric against the noise SNR: one line per model and split, one panel per noise, clean at right."""
    plt = reports.pyplot()
    sources = _union([[noise[0] for row in rows if (noise := noise_of(row["condition"]))]])
    snrs = [noise[1] for row in rows if (noise := noise_of(row["condition"]))]
    clean_at = max(snrs) + max(5.0, (max(snrs) - min(snrs)) / 4)
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.5), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for (model, split), points in _snr_lines(rows, source, clean_at).items():
            x, y = zip(*sorted(points))
            ax.plot(x, y, "o-", label=model if len({r["split"] for r in rows}) == 1 else f"{model} ({split})")
        ticks = sorted({snr for snr in snrs})
        ax.set_xticks([*ticks, clean_at], [f"{snr:g}" for snr in ticks] + ["clean"])
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel(rows[0]["metric"] if len({r["metric"] for r in rows}) == 1 else "score")
        ax.set_ylim(0, 1)
        ax.set_title(f"{source} noise", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _snr_lines(rows: list[dict[str, Any]], source: str, clean_at: float) -> dict[tuple[str, str], list]:
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        noise = noise_of(row["condition"])
        x = clean_at if row["condition"] == "clean" else noise[1] if noise and noise[0] == source else None
        if x is not None and isinstance(row["value"], (int, float)):
            lines.setdefault((row["model"], row["split"]), []).append((x, row["value"]))
    return {key: points for key, points in lines.items() if len(points) > 1}


# ---------------------------------------------------------------- k-fold


def kfold_summary(workdirs: list[Path]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1) and count of each metric over the fold workdirs.

    Also the settings shared by every fold (split.fold, which differs, drops out) and summed times.
    """
    workdirs = [Path(w) for w in workdirs]
    if not workdirs:
        raise UserError("no fold workdirs to summarise")
    per_fold = [run_metrics(w) for w in workdirs]
    metrics = {}
    left_out = {str(w): lost for w in workdirs if (lost := left_out_of_run(Layout(w)))}
    for name in _union(list(m) for m in per_fold):
        values = [m[name] for m in per_fold if isinstance(m.get(name), (int, float)) and math.isfinite(m[name])]
        if values:
            metrics[name] = {"mean": float(np.mean(values)),
                             "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                             "n": len(values)}
    settings = [run_settings(w) for w in workdirs]
    differing = set(differing_settings(settings))
    times = [run_times(w) for w in workdirs]
    return {
        "folds": [str(w) for w in workdirs],
        "metrics": metrics,
        "left_out": left_out,  # fold -> split -> what its figures leave out (classes without a training clip)
        "settings": {k: v for k, v in settings[0].items() if k not in differing},
        "times": {key: round(sum(t[key] for t in times if t.get(key) is not None), 3)
                  if any(t.get(key) is not None for t in times) else None for key in (TRAIN_TIME, TOTAL_TIME)},
    }


def format_kfold(summary: dict[str, Any]) -> str:
    """One line per metric: name, mean ± std, and over how many folds."""
    lines = [f"{len(summary['folds'])} folds: mean ± standard deviation"]
    width = max((len(name) for name in summary["metrics"]), default=0)
    for name, figures in summary["metrics"].items():
        std = "" if figures["std"] is None else f" ± {figures['std']:.4f}"
        lines.append(f"  {name:<{width}}  {figures['mean']:.4f}{std}  (n={figures['n']})")
    for fold, splits in summary.get("left_out", {}).items():
        lines.append(f"  left out (classes without a training clip), {fold}: "
                     + "; ".join(f"{split} {text}" for split, text in splits.items()))
    return "\n".join(lines)


def write_kfold_summary(directory: str | Path, workdirs: list[Path]) -> dict[str, Any]:
    """kfold_summary(workdirs) written to directory/kfold_summary.json, where compare finds it."""
    summary = kfold_summary(workdirs)
    write_json(Path(directory) / KFOLD_SUMMARY, summary)
    return summary
