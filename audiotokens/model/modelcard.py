"""The bundle's README.md: a Hugging Face-style model card written from provenance, never by hand.

Everything on the card is read from what the run recorded: the bundle's own metadata and model spec, the
split record (data source, strategy, clip counts), the vocabulary, the train stage's settings and the training
log (output/metrics.jsonl: the best epoch's validation figures and the test line). Evaluation reports
(output/eval/<split>/metrics.json) are listed too when they are newer than the log (a card written again
with write_model_card after `audiotokens evaluate`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..pipeline.files import atomic_path, read_json, read_json_or_none, read_jsonl
from ..pipeline.layout import (
    BUNDLE_CARD,
    BUNDLE_METADATA,
    BUNDLE_SPEC,
    BUNDLE_VOCABULARY,
    EVAL_METRICS,
    VOCABULARY_METADATA,
    Layout,
)
from ..pipeline.provenance import read_record
from .objectives import objective_for

HIDDEN_PARAMS = ("#content", "#identity")  # digests in the split record: not settings a reader sets
COUNTS = ("classes_excluded", "left_out_clips", "left_out_positives")  # in metrics files, not figures


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def read_training_log(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the best epoch's line, the test line) of a metrics.jsonl; None where absent."""
    best = test = None
    for entry in read_jsonl(path):  # a line cut by a killed run is left out
        if entry.get("split") == "test":
            test = entry
        elif entry.get("best"):
            best = entry
    return best, test


def _metric_rows(split: str, source: str, metrics: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(split, name, f"{value:.4f}" if math.isfinite(value) else "n/a", source) for name, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in COUNTS]


def metrics_rows(layout: Layout, training_log: Path | None = None) -> list[tuple[Any, ...]]:
    """(split, metric, value, where from) for the best epoch, the test split and newer evaluation reports;
    `training_log`: the run's metrics.jsonl when it is not yet output/'s."""
    training_log = training_log or layout.metrics
    best, test = read_training_log(training_log)
    rows: list[tuple[Any, ...]] = []
    if best is not None:
        rows += _metric_rows("validation", f"training log, best epoch {best['epoch']}", best.get("validation", {}))
    if test is not None:
        rows += _metric_rows("test", f"training log, epoch {test.get('epoch')}", test.get("test", {}))
    log_time = training_log.stat().st_mtime if training_log.is_file() else 0.0
    for folder in layout.eval_reports():
        report = folder / EVAL_METRICS
        if report.stat().st_mtime < log_time:
            continue  # from an earlier model
        values = read_json_or_none(report)
        if not isinstance(values, dict):
            continue
        flat = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        rows += _metric_rows(folder.name, f"`audiotokens evaluate` ({folder.name})", flat)
    return rows


def _settings_rows(prefix: str, values: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(f"{prefix}{key}", json.dumps(value) if isinstance(value, (dict, list)) else value)
            for key, value in values.items()]


def _data_section(layout: Layout) -> list[str]:
    record = read_record(layout, "split") or {}
    params, counts = record.get("params", {}), record.get("counts", {})
    source = params.get("data.source", "unknown")
    where = next((params[key] for key in ("data.manifest", "data.folder", "data.segments", "data.parquet")
                  if params.get(key)), "")
    lines = ["## Training data", "",
             f"- source: `{source}`" + (f" ({Path(str(where)).name})" if where else ""),
             f"- split strategy: `{params.get('split.strategy', 'unknown')}`"
             + (f", seed {params['split.seed']}" if "split.seed" in params else ""), ""]
    split_counts = [(name, counts[name]) for name in ("train", "validation", "test") if name in counts]
    if split_counts:
        lines += _table(("split", "clips"), split_counts)
    extra = {k: v for k, v in counts.items() if k not in ("train", "validation", "test")}
    if extra:
        lines += [", ".join(f"{k}: {v}" for k, v in extra.items()), ""]
    lines += _table(("setting", "value"), [(k, v) for k, v in params.items()
                                           if not any(mark in k for mark in HIDDEN_PARAMS) and v not in ("", None)])
    return lines


def model_card(bundle_dir: Path, layout: Layout, train_settings: dict[str, Any],
               training_log: Path | None = None) -> str:
    """The card's text for the bundle at bundle_dir, trained in the workdir of `layout`."""
    meta = read_json(bundle_dir / BUNDLE_METADATA)
    spec = read_json(bundle_dir / BUNDLE_SPEC)
    classes, task = meta["classes"], meta["task"]
    kind = (f"multi-label (sigmoid scores, threshold {_number(meta['threshold'])})"
            if objective_for(task).uses_threshold
            else "single-label (softmax scores, the arg-max class is the decision)")
    front = ["---", "library_name: audiotokens", "pipeline_tag: audio-classification",
             "tags:", "- audio-classification", "- audiotokens", f"- {meta['input']}-input", "---", ""]
    frame_spec = meta.get("spectrogram") or {}
    seconds = meta["max_frames"] * frame_spec.get("hop_length", 0) / max(frame_spec.get("sample_rate", 1), 1)
    what = {"tokens": "token sequences", "frames": "frames", "waveform": "waveforms"}.get(meta["input"], "frames")
    limits = [
        (f"- Tags clips with the {len(classes)} classes above; any other sound gets scores for these classes "
         "all the same."),
        ("- Trained on the clips described above only: expect lower scores on recordings from other devices, "
         "rooms, languages or genres; check on your own labelled clips first."),
        f"- Clips longer than {meta['max_frames']} frames ({seconds:.1f} s) are cut to their start.",
        "- Audio is resampled to the frame spec's rate and mixed to mono; the model never hears more.",
        ("- Not for decisions about people (identification, surveillance) without consent and an audit of the "
         "errors per group."),
    ]
    summary = (f"A {spec['encoder']} classifier of audio as {what}, {len(classes)} classes, {kind}. This card was "
               "written by `audiotokens train` from the run's provenance records.") + _origin(spec)
    built = (_settings_rows("model.", {k: v for k, v in spec.items() if k not in ("classes", "encoder_params")})
             + _settings_rows("model.encoder_params.", _encoder_params(spec)))
    shown = {name for name, _ in built}  # a [model] key the spec holds shows once, as built (head: class_means)
    settings = (_settings_rows("spectrogram.", frame_spec) + _tokenizer_rows(bundle_dir, meta) + built
                + _settings_rows("", {k: v for k, v in train_settings.items() if k not in shown}))
    lines = front + [
        "# audiotokens audio classifier", "", summary, "",
        "## Classes", "", ", ".join(f"`{name}`" for name in classes), "",
        "## Usage", "", "```python", "import audiotokens", "",
        'model = audiotokens.load("path/to/this/folder")',
        'print(model.predict(["clip.wav"], top_k=3))', "```", "",
        "or `audiotokens predict --model path/to/this/folder clip.wav`.", "",
        *_data_section(layout),
        "## Settings that shaped the model", "", *_table(("setting", "value"), settings),
        "## Evaluation", "", *_evaluation(layout, training_log),
        "## Intended use and limits", "", *limits, "",
        "## Versions", "", *_table(("package", "version"), list(meta.get("versions", {}).items())),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _origin(spec: dict[str, Any]) -> str:
    """Where a fine-tuned speech model's weights came from (empty for the others)."""
    pretrained = spec.get("encoder_params", {}).get("pretrained")
    if not pretrained:
        return ""
    model_type = spec["encoder_params"].get("speech_config", {}).get("model_type", "speech")
    return (f"\n\nIt is a pretrained {model_type} model fine-tuned end to end, starting from the weights in "
            f"`{pretrained.get('path')}` (digest of its config and weights `{pretrained.get('digest')}`); the "
            "fine-tuned weights and the model's config are in this folder, which needs nothing else.")


def _encoder_params(spec: dict[str, Any]) -> dict[str, Any]:
    """The encoder's settings; a speech model's whole config shows as its type and sizes."""
    params = dict(spec.get("encoder_params", {}))
    config = params.pop("speech_config", None)
    if config:
        params["speech_model"] = {key: config.get(key) for key in (
            "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "feat_extract_norm")}
    return params


def _tokenizer_rows(bundle_dir: Path, meta: dict[str, Any]) -> list[tuple[Any, ...]]:
    path = bundle_dir / BUNDLE_VOCABULARY / VOCABULARY_METADATA
    if not path.is_file():
        reads = "the waveform" if meta.get("input") == "waveform" else "frames"
        return [("tokenizer", f"none (the model reads {reads})")]
    quantizer = read_json(path)["quantizer"]
    return _settings_rows("tokenizer.", {k: v for k, v in quantizer.items() if k != "format"}) + \
        [("tokenizer.digest", meta.get("vocabulary_digest"))]


def _evaluation(layout: Layout, training_log: Path | None) -> list[str]:
    rows = metrics_rows(layout, training_log)
    if not rows:
        return ["No metrics were recorded.", ""]
    return _table(("split", "metric", "value", "from"), rows)


def write_model_card(bundle_dir: str | Path, layout: Layout, train_settings: dict[str, Any],
                     training_log: Path | None = None) -> Path:
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / BUNDLE_CARD
    with atomic_path(path) as tmp:
        tmp.write_text(model_card(bundle_dir, layout, train_settings, training_log), encoding="utf-8")
    return path
