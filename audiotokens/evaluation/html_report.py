"""`audiotokens report`: one self-contained HTML page of a run (output/report.html).

The page opens with the answer: the workdir's model (and those of the sibling workdirs given with
`--compare`: a frames control, a CNN, a sweep) beside the MFCC baselines, on validation and test, under
each corruption `evaluate --corrupt` measured, the gap to the best baseline, the best and worst classes and
the training curves. Its figures come through compare.py's readers, so the page and `audiotokens compare`
state the same numbers. The other sections follow (SECTIONS, in page order), the settings of every stage
last, folded away.

The page is assembled from files the stages already wrote (provenance records, token statistics, the
training log, evaluation, robustness and baseline reports); nothing is recomputed. Images are embedded as
base64 data URIs and there is no script, stylesheet or font from the network, so the file can be mailed
or archived as it is. A section, like each piece of the answer, appears only when its files exist; a
missing piece of the answer gets one line saying which command makes it.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..model.modelcard import read_training_log
from ..model.objectives import OBJECTIVES
from ..pipeline.files import atomic_path, read_json_or_none, read_jsonl
from ..pipeline.layout import (
    EVAL_CONFUSION,
    EVAL_METRICS,
    EVAL_PER_CLASS,
    EVAL_SWEEP,
    ROBUSTNESS_BASELINE,
    ROBUSTNESS_JSON,
    ROBUSTNESS_MODEL,
    ROBUSTNESS_PLOT,
    ROBUSTNESS_TABLE,
    Layout,
)
from ..pipeline.provenance import read_record
from ..pipeline.stages import NAMES
from ..tokens.histograms import token_histograms
from .compare import compare_workdirs, run_settings
from .robustness import CLEAN

MAX_TABLE_ROWS = 200  # a sweep or per-class table of a 527-class model stays readable
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #ddd;margin:.5em 0}h2{border-bottom:2px solid #444;padding-top:1em}nav a{margin-right:1em}
p.missing{color:#666;margin:.2em 0}summary{cursor:pointer;margin:.3em 0}"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def table(header: list[str], rows: list[list[Any]]) -> str:
    shown = rows[:MAX_TABLE_ROWS]
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in shown)
    more = f"<p>{len(rows) - len(shown)} more rows in the CSV file.</p>" if len(rows) > len(shown) else ""
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + f"</tr></thead><tbody>{body}</tbody></table>{more}")


def csv_table(path: Path) -> str:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return table(rows[0], rows[1:]) if rows else ""


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# ---------------------------------------------------------------- sections: (layout) -> HTML or None


def settings_section(layout: Layout) -> str | None:
    """Each stage's settings folded away (<details>): several screens that only a reproduction needs."""
    parts = []
    for stage in NAMES:
        record = read_record(layout, stage)
        if record is None:
            continue
        values = {**record.get("params", {}), **record.get("runtime", {})}
        rows = [[key, value] for key, value in values.items() if value not in ("", None)]  # unset paths
        finished = record.get("finished_at", "")
        parts.append(f"<details><summary><b>{stage}</b>: {len(rows)} settings, finished {html.escape(finished)}, "
                     f"{record.get('wall_time_s', 0):.1f} s</summary>" + table(["setting", "value"], rows)
                     + "</details>")
    return "".join(parts) or None


def splits_section(layout: Layout) -> str | None:
    record = read_record(layout, "split")
    if record is None:
        return None
    counts = record.get("counts", {})
    return table(["count", "value"], [[key, value] for key, value in counts.items()])


def tokens_section(layout: Layout) -> str | None:
    stats = read_json_or_none(layout.token_stats)
    if not isinstance(stats, dict) or "splits" not in stats:
        return None
    rows = []
    for split, values in stats["splits"].items():
        for c, book in enumerate(values.get("codebooks", [])):
            rows.append([split, c, values.get("clips"), book.get("frames"), book.get("vocab_size"),
                         book.get("entropy_bits"), book.get("perplexity"), book.get("unused_tokens"),
                         book.get("top10_share")])
    pictures = "".join(image(path, f"token histogram {split}") for split, path in token_histograms(layout).items())
    return table(["split", "codebook", "clips", "tokens", "vocabulary", "entropy (bits)", "perplexity", "unused",
                  "top-10 share"], rows) + pictures


def training_section(layout: Layout) -> str | None:
    if not layout.metrics.is_file():
        return None
    best, _ = read_training_log(layout.metrics)
    names = _metric_names(best["validation"]) if best else []
    header = ["epoch", "split", *names, "best"]
    rows = []
    for entry in read_jsonl(layout.metrics):  # a line cut by a killed run is left out
        for split in ("train", "validation", "test"):
            # by name: validation and test lines may hold figures train lines lack (e.g. left_out_clips)
            if isinstance(entry.get(split), dict) and set(entry[split]) & set(names):
                rows.append([entry.get("epoch"), split, *(entry[split].get(k) for k in names), entry.get("best", "")])
    curves = '<p>The training curves are in <a href="#answer">the answer</a>.</p>' if layout.curves.is_file() else ""
    return curves + table(header, rows)


def _metric_names(values: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def _report_folder(folder: Path, title: str) -> str:
    """One evaluate-style report folder: metrics, per-class table, threshold sweep, confusion matrix, plots."""
    parts = [f"<h3>{html.escape(title)}</h3>"]
    metrics = read_json_or_none(folder / EVAL_METRICS)
    if isinstance(metrics, dict):
        parts.append(table(["metric", "value"], [[k, v] for k, v in metrics.items() if not isinstance(v, dict)]))
    for name, caption in ((EVAL_PER_CLASS, "per-class table"), (EVAL_SWEEP, "threshold sweep"),
                          (EVAL_CONFUSION, "confusion matrix")):
        if (folder / name).is_file():
            parts.append(f'<h4 class="{name.split(".")[0]}">{caption}</h4>' + csv_table(folder / name))
    parts += [image(png, png.stem) for png in sorted(folder.glob("*.png"))]
    return "".join(parts)


def evaluation_section(layout: Layout) -> str | None:
    return "".join(_report_folder(f, f"{f.name} split") for f in layout.eval_reports()) or None


def robustness_section(layout: Layout) -> str | None:
    parts = []
    for folder in layout.robustness_reports():
        plot = folder / ROBUSTNESS_PLOT
        parts.append(f"<h3>{html.escape(folder.parent.parent.name)}: {html.escape(folder.name)}</h3>"
                     + csv_table(folder / ROBUSTNESS_TABLE) + (image(plot, "robustness") if plot.is_file() else ""))
    return "".join(parts) or None


def baselines_section(layout: Layout) -> str | None:
    return "".join(_report_folder(f, f"{f.parent.name} on {f.name}") for f in layout.baseline_reports()) or None


# ---------------------------------------------------------------- the answer: every model beside the baselines

EVAL_SOURCE = "eval"  # compare.run_metrics names the model's figures "eval/<split> <metric>"
ANSWER_SPLITS = ("validation", "test")  # validation chooses; test is reported
BASELINE_NAMES = {"svm": "MFCC + SVM", "logreg": "MFCC + logistic regression"}
MODEL_KINDS = {  # what a run trained -> the settings that train it (in a workdir of its own)
    "token model": "--set model.input=tokens",
    "frames control": "--set model.input=frames",
    "CNN on frames": "--set model.input=frames --set model.encoder=cnn",
}
SHOWN_CLASSES = 5  # best and worst classes each; all of them when there are at most twice as many
VALIDATION_GAP = "validation: gap to best baseline"
TEST_GAP = "test: gap to best baseline (reported, not chosen)"
FIGURE = re.compile(r"^(?P<source>[^/ ]+)/(?P<split>[^ ]+) (?P<metric>.+)$")  # "svm/validation mAP"


@dataclass
class Scorer:
    """One row of the answer table: the model or a baseline of one run, with its figures by column."""

    name: str  # "token model", "frames control", "CNN on frames", "MFCC + SVM", ...
    run: str  # the run's label, as `audiotokens compare` gives it (its folder name)
    baseline: bool
    figures: dict[str, float] = field(default_factory=dict)  # column -> value (a k-fold run's: the mean)
    spread: dict[str, float] = field(default_factory=dict)  # column -> standard deviation over the folds

    def value(self, split: str, metric: str) -> float | None:
        return self.figures.get(f"{split} {metric}")

    def cell(self, column: str) -> Any:
        value, std = self.figures.get(column, ""), self.spread.get(column)
        return f"{value:.4g} ± {std:.2g}" if std is not None else value


def model_kind(settings: dict[str, Any]) -> str:
    """What the run trained, from its settings: the token model, the frames control (the same encoder on
    mel frames), the CNN on frames, or a model of another input."""
    reads = settings.get("model.input", "tokens")
    if reads == "tokens":
        return "token model"
    if reads == "frames":
        return "CNN on frames" if settings.get("model.encoder") == "cnn" else "frames control"
    return f"{reads} model"


def primary_metric(rows: list[dict[str, Any]]) -> str | None:
    """The task's primary metric (mAP multi-label, accuracy single-label): the one the figures hold."""
    names = {match["metric"] for row in rows for key in row if (match := FIGURE.match(key))}
    names |= {key.rsplit(" ", 1)[-1] for row in rows for key in row if key.startswith("train log validation ")}
    return next((kind.primary_metric for kind in OBJECTIVES.values() if kind.primary_metric in names), None)


def run_scorers(label: str, workdir: Path, row: dict[str, Any], metric: str) -> list[Scorer]:
    """The run's model, then its baselines by name, each with its validation and test figures (as
    compare.run_metrics read them) and its figure under each corruption measured."""
    sources = {match["source"] for key in row if (match := FIGURE.match(key)) and match["metric"] == metric}
    robust = robustness_figures(workdir, metric)
    scorers = []
    for source in [EVAL_SOURCE, *sorted(sources - {EVAL_SOURCE})]:
        columns = {f"{split} {metric}": f"{source}/{split} {metric}" for split in ANSWER_SPLITS}
        figures = {mine: row[theirs] for mine, theirs in columns.items() if row.get(theirs) is not None}
        if not figures:
            continue
        spread = {mine: row[f"{theirs} std"] for mine, theirs in columns.items()
                  if row.get(f"{theirs} std") is not None}  # a k-fold run's
        baseline = source != EVAL_SOURCE
        scorer = ROBUSTNESS_BASELINE.format(name=source) if baseline else ROBUSTNESS_MODEL
        name = BASELINE_NAMES.get(source, f"MFCC + {source}") if baseline else model_kind(run_settings(workdir))
        scorers.append(Scorer(name, label, baseline, {**figures, **robust.get(scorer, {})}, spread))
    return scorers


def robustness_figures(workdir: Path, metric: str) -> dict[str, dict[str, float]]:
    """scorer folder ("model", "baseline_svm") -> {"<split> <metric> under <condition>": value}, from each
    robustness table `evaluate --corrupt` wrote (clean is the split's own figure, already in the table)."""
    found: dict[str, dict[str, float]] = {}
    for folder in Layout(workdir).robustness_reports():
        written = read_json_or_none(folder / ROBUSTNESS_JSON)
        split = folder.parent.parent.name
        for condition in written.get("conditions", []) if isinstance(written, dict) else []:
            if condition.get("condition") != CLEAN and condition.get(metric) is not None:
                found.setdefault(folder.name, {})[f"{split} {metric} under {condition['condition']}"] = \
                    condition[metric]
    return found


def best_baseline(scorers: list[Scorer], metric: str) -> Scorer | None:
    """The baseline with the highest validation figure: chosen on validation, never on test."""
    candidates = [s for s in scorers if s.baseline and s.value("validation", metric) is not None]
    return max(candidates, key=lambda s: s.value("validation", metric), default=None)


def gaps(scorer: Scorer, best: Scorer | None, metric: str) -> dict[str, str]:
    """A model's figures minus the best baseline's, on validation and on test (signed)."""
    if scorer.baseline or best is None:
        return {}
    found = {}
    for split, column in (("validation", VALIDATION_GAP), ("test", TEST_GAP)):
        mine, theirs = scorer.value(split, metric), best.value(split, metric)
        if mine is not None and theirs is not None:
            found[column] = f"{mine - theirs:+.4g}"
    return found


def answer_table(scorers: list[Scorer], metric: str) -> str:
    """One row per model and baseline; columns: each split's figure, each corruption's, the gap to the best
    baseline. A column appears only when some row has a figure for it."""
    best = best_baseline(scorers, metric)
    rows = [gaps(s, best, metric) for s in scorers]
    figures = [f"{split} {metric}" for split in ANSWER_SPLITS]
    present = [*(c for s in scorers for c in s.figures), *(c for row in rows for c in row)]
    columns = [c for c in dict.fromkeys([*figures, *present]) if c in present]
    return table(["model", "run", *columns], [[s.name, s.run, *(row.get(c, s.cell(c)) for c in columns)]
                                              for s, row in zip(scorers, rows)])


def answer_sentence(model: Scorer | None, best: Scorer | None, metric: str) -> str:
    """The answer in words: the model against the best baseline, validation first, test as reported."""
    mine = model.value("validation", metric) if model else None
    if mine is None:
        return ""
    said = f"On validation the {model.name} scores {metric} {mine:.4g}"
    if best is not None:
        theirs = best.value("validation", metric)
        said += f", {_versus(mine, theirs)} the best baseline, {best.name} ({theirs:.4g})"
    test = model.value("test", metric)
    if test is not None:
        said += f"; on test (reported, not used to choose) {test:.4g}"
        theirs = best.value("test", metric) if best else None
        if theirs is not None:
            said += f", {_versus(test, theirs)} {best.name} ({theirs:.4g})"
    return f"<p><b>{html.escape(said)}.</b></p>"


def _versus(mine: float, theirs: float) -> str:
    gap = mine - theirs
    return "level with" if gap == 0 else f"{abs(gap):.4g} {'above' if gap > 0 else 'below'}"


def classes_table(layout: Layout, model: str) -> str:
    """The model's best and worst classes by validation AP (evaluate's per-class table)."""
    path = layout.eval_dir("validation") / EVAL_PER_CLASS
    if not path.is_file():
        return ""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ranked = sorted((row for row in rows if row.get("ap")), key=lambda row: -float(row["ap"]))
    numbered = list(enumerate(ranked, 1))
    if len(numbered) > 2 * SHOWN_CLASSES:
        numbered = numbered[:SHOWN_CLASSES] + numbered[-SHOWN_CLASSES:]
    unranked = len(rows) - len(ranked)
    note = (f"<p>{unranked} classes have no positive clip in the validation split (no AP) and are not ranked."
            "</p>" if unranked else "")
    return (f"<h3>Best and worst classes of the {html.escape(model)} on validation (by AP, {len(ranked)} classes)"
            "</h3>" + table(["rank", "class", "validation positives", "validation AP", "validation F1"],
                            [[rank, row["class"], int(row["positives"]), float(row["ap"]),
                              float(row["f1"]) if row.get("f1") else ""] for rank, row in numbered]) + note)


def curves_figure(layout: Layout, model: str, metric: str) -> str:
    if not layout.curves.is_file():
        return ""
    return (f"<h3>Training curves of the {html.escape(model)}</h3><p>Loss and {metric} per epoch on the train and "
            "validation splits (test is not used in training).</p>"
            + image(layout.curves, f"training curves: loss and {metric} per epoch, train and validation splits"))


def missing_pieces(layout: Layout, scorers: list[Scorer], main: str) -> list[str]:
    """One line per piece of the answer this workdir (and --compare) does not hold: the command that makes it."""
    lines = []
    evaluated = any(not s.baseline and s.run == main for s in scorers)
    if not evaluated:
        lines.append("No evaluated model here: run `audiotokens train` and `audiotokens evaluate` (or "
                     "`audiotokens run`) for the model's validation and test figures.")
    if not any(s.baseline for s in scorers):
        lines.append("No baselines: run `audiotokens baseline` for the MFCC baselines (svm, logreg).")
    absent = [kind for kind in MODEL_KINDS if not any(s.name == kind for s in scorers)]
    if evaluated and absent:
        how = "; ".join(f"the {kind}: `{MODEL_KINDS[kind]}`" for kind in absent)
        lines.append(f"No {' or '.join(absent)} beside it: train it in a workdir of its own ({how}) and add that "
                     "workdir with `audiotokens report --compare DIR`.")
    if scorers and not any(" under " in column for s in scorers for column in s.figures):
        lines.append("No robustness figures: run `audiotokens evaluate --corrupt noise:snr=10` (after "
                     "`audiotokens baseline`, to score the baselines too).")
    if not layout.curves.is_file():
        lines.append("No training curves: run `audiotokens train`.")
    return lines


def answer_section(layout: Layout, compare: Sequence[Path] = ()) -> str | None:
    """The models of this workdir and of `compare` beside the baselines, the gap, the classes, the curves."""
    workdirs = [layout.workdir, *map(Path, compare)]
    if compare:
        compare_workdirs(workdirs[1:])  # a --compare folder that holds no run is the user's error to hear
    try:
        comparison = compare_workdirs(workdirs)
    except UserError as error:  # this run's own files, e.g. a training log cut by a killed run: the
        return f'<p class="missing">{html.escape(str(error))}</p>'  # other sections still stand
    metric = primary_metric(comparison.rows)
    scorers = [scorer for label, workdir, row in zip(comparison.runs, workdirs, comparison.rows)
               for scorer in run_scorers(label, workdir, row, metric)] if metric else []
    scorers.sort(key=lambda scorer: scorer.baseline)  # the models, then the baselines, each in run order
    main = comparison.runs[0]
    model = next((s for s in scorers if not s.baseline and s.run == main), None)
    kind = model.name if model else model_kind(run_settings(layout.workdir))
    classes, curves = classes_table(layout, kind), curves_figure(layout, kind, metric or "the score")
    if not (scorers or classes or curves):
        return None
    models = ""
    if scorers:
        models = (answer_sentence(model, best_baseline(scorers, metric), metric) + "<p>Validation chooses (the "
                  "epoch, the threshold, the best baseline); test is reported, never used to choose.</p>"
                  + answer_table(scorers, metric))
    hints = "".join(f'<p class="missing">{html.escape(line)}</p>' for line in missing_pieces(layout, scorers, main))
    return models + hints + classes + curves


# ---------------------------------------------------------------- the page

ANSWER = ("answer", "Answer")


def base_trial_paragraph(base: dict | None, metric: str) -> str:
    """The study's trial of the base configuration (the search's starting point), when it had one."""
    if not base:
        return ""
    outcome = (f"validation {metric} {base['validation']:.4f}" if base.get("validation") is not None
               else f"{base['state']} after epoch {base.get('epochs')}")
    return f"<p>the base configuration (trial {base['trial']}): {html.escape(outcome)}</p>"


def tune_section(layout: Layout) -> str | None:
    """`audiotokens tune`'s outcome, per study the workdir holds: the best trial, its validation and test
    figures, Optuna's plots and the table of trials."""
    parts = []
    for study in layout.studies():
        summary = read_json_or_none(study.summary)
        if not summary:
            continue
        best, metric, figures = summary["best"], summary["metric"], summary.get("evaluation", {})
        parts.append(f"<h3>study {html.escape(study.name)}</h3><p>best trial {best['trial']} of "
                     f"{sum(summary['trials'].values())}; its configuration: <code>{html.escape(best['config'])}</code></p>")
        parts.append(table(["split", metric], [[split, figures[split].get(metric)] for split in ("validation", "test")
                                               if split in figures]))
        parts.append(base_trial_paragraph(summary.get("base"), metric))
        parts += [image(path, path.stem) for path in (study.history_plot, study.importance_plot) if path.is_file()]
        parts.append(csv_table(study.trials("csv")) if study.trials("csv").is_file() else "")
    return "".join(parts) or None


SECTIONS: tuple[tuple[str, str, Callable[[Layout], str | None]], ...] = (
    ("tune", "Tuning", tune_section),  # the study, right after the answer
    ("splits", "Split sizes", splits_section),
    ("tokens", "Token statistics", tokens_section),
    ("training", "Training", training_section),
    ("evaluation", "Evaluation", evaluation_section),
    ("robustness", "Robustness", robustness_section),
    ("baselines", "Baselines", baselines_section),
    ("settings", "Settings", settings_section),
)


def render(layout: Layout, compare: Sequence[Path] = ()) -> str:
    found = [(key, title, body) for key, title, build in SECTIONS if (body := build(layout))]
    if not found:
        raise UserError(f"{layout.workdir} holds no run to report on (no provenance record or output); run "
                        "`audiotokens run` there first, or pass --workdir")
    answer = answer_section(layout, compare)
    if answer:
        found.insert(0, (*ANSWER, answer))
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title, _ in found)
    sections = "".join(f'<section id="{key}"><h2>{title}</h2>{body}</section>' for key, title, body in found)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>audiotokens report: '
            f"{html.escape(str(layout.workdir))}</title><style>{STYLE}</style></head><body>"
            f"<h1>audiotokens run</h1><p>{html.escape(str(layout.workdir.resolve()))}</p><nav>{nav}</nav>"
            f"{sections}</body></html>\n")


def write_report(workdir: str | Path = ".", out_path: str | Path | None = None,
                 compare: Sequence[str | Path] = ()) -> Path:
    """The page of `workdir`; the models of the `compare` workdirs join its answer table."""
    layout = Layout(workdir)
    path = Path(out_path) if out_path else layout.html_report
    text = render(layout, [Path(c) for c in compare])
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
