"""`audiotokens report`: one self-contained HTML page of a run (output/report.html).

The page is assembled from files the stages already wrote (provenance records, token statistics, the
training log, evaluation, robustness and baseline reports); nothing is recomputed. Images are embedded as
base64 data URIs and there is no script, stylesheet or font from the network, so the file can be mailed
or archived as it is. A section appears only when its files exist; SECTIONS names them in page order.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..model.modelcard import read_training_log
from ..pipeline.files import atomic_path, read_json_or_none, read_jsonl
from ..pipeline.layout import (
    EVAL_CONFUSION,
    EVAL_METRICS,
    EVAL_PER_CLASS,
    EVAL_SWEEP,
    ROBUSTNESS_PLOT,
    ROBUSTNESS_TABLE,
    Layout,
)
from ..pipeline.provenance import read_record
from ..pipeline.stages import NAMES

MAX_TABLE_ROWS = 200  # a sweep or per-class table of a 527-class model stays readable
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #ddd;margin:.5em 0}h2{border-bottom:2px solid #444;padding-top:1em}nav a{margin-right:1em}"""


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
    parts = []
    for stage in NAMES:
        record = read_record(layout, stage)
        if record is None:
            continue
        values = {**record.get("params", {}), **record.get("runtime", {})}
        rows = [[key, value] for key, value in values.items() if value not in ("", None)]  # unset paths
        finished = record.get("finished_at", "")
        parts.append(f"<h3>{stage}</h3><p>finished {html.escape(finished)}, {record.get('wall_time_s', 0):.1f} s"
                     f"</p>" + table(["setting", "value"], rows))
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
    pictures = "".join(image(layout.token_histogram(split), f"token histogram {split}")
                       for split in stats["splits"] if layout.token_histogram(split).is_file())
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
    curves = image(layout.curves, "training curves") if layout.curves.is_file() else ""
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


SECTIONS: tuple[tuple[str, str, Callable[[Layout], str | None]], ...] = (
    ("settings", "Settings", settings_section),
    ("splits", "Split sizes", splits_section),
    ("tokens", "Token statistics", tokens_section),
    ("training", "Training", training_section),
    ("evaluation", "Evaluation", evaluation_section),
    ("robustness", "Robustness", robustness_section),
    ("baselines", "Baselines", baselines_section),
)


def render(layout: Layout) -> str:
    found = [(key, title, body) for key, title, build in SECTIONS if (body := build(layout))]
    if not found:
        raise UserError(f"{layout.workdir} holds no run to report on (no provenance record or output); run "
                        "`audiotokens run` there first, or pass --workdir")
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title, _ in found)
    sections = "".join(f'<section id="{key}"><h2>{title}</h2>{body}</section>' for key, title, body in found)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>audiotokens report: '
            f"{html.escape(str(layout.workdir))}</title><style>{STYLE}</style></head><body>"
            f"<h1>audiotokens run</h1><p>{html.escape(str(layout.workdir.resolve()))}</p><nav>{nav}</nav>"
            f"{sections}</body></html>\n")


def write_report(workdir: str | Path = ".", out_path: str | Path | None = None) -> Path:
    layout = Layout(workdir)
    path = Path(out_path) if out_path else layout.html_report
    text = render(layout)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
