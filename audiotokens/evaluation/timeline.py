"""`audiotokens predict --timeline` and `Model.timeline`: when each class occurs in recordings of any length.

A recording is scored as a row of windows, each one a clip of its own: its samples (at the model's rate)
become frames, tokens and scores through the bundle's AudioTokenizer and `Bundle.scores`, exactly as a
file holding just that span would (its frames are normalised over the window, as a training clip's are
over the clip). Windows are `model.windows.window_spans` in samples: every hop, the last one aligned to
the end. By default they are the bundle's evaluation window and hop (train.eval_window / eval_hop), or,
for a model trained on whole clips, the longest clip it reads with half of it as the hop.

The file is decoded, mixed down and resampled block by block (AudioStream.mono_blocks) into a buffer of
at most one window plus one decoder block, and windows are scored WINDOWS_PER_CALL at a time; per-window
scores go straight to the CSV, events are merged as windows arrive and the picture keeps at most
2 * MAX_COLUMNS max-pooled columns, so memory does not grow with the recording's length (only the list
of events does). `Model.timeline` also returns every window's scores, which do grow (windows x classes).

A window counts for a class when the model predicts it there (objective.decisions at the threshold: the
bundle's, or --threshold; for a single-label model the arg-max class, which must also reach --threshold
when one is given). Each window stands for the hop-wide stretch around its centre (the first one from 0,
the last one to the end), so an event (class, start, end, peak score) is the run of consecutive windows
counting for its class, from the start of the first one's stretch to the end of the last one's.
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from ..data.audio import BLOCK_FRAMES, AudioError, AudioStream
from ..errors import UserError
from ..model.audio_tokenizer import AudioTokenizer, single_threaded
from ..model.windows import window_spans
from ..pipeline.files import atomic_path, json_text
from ..pipeline.layout import TIMELINE_EVENTS, TIMELINE_EVENTS_JSON, TIMELINE_PICTURE, TIMELINE_SCORES
from .predict import RowPrinter, expand_paths, load_model
from .reports import pyplot

log = logging.getLogger("audiotokens")

WINDOWS_PER_CALL = 64  # windows tokenized before one batched model call; bounds memory and latency
MAX_COLUMNS = 2000  # the picture keeps at most twice this many columns, each the max of its windows
MAX_ROWS = 40  # classes drawn: those with events first (by peak score), then the highest-scoring others
TIME_DECIMALS = 3  # seconds in the CSV and JSON files: milliseconds


# ---------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowPlan:
    """Timeline windows: `window` samples every `hop`, at the model's rate."""

    rate: int
    window: int
    hop: int

    def seconds(self, samples: int) -> float:
        return samples / self.rate


def window_plan(bundle, tokenizer: AudioTokenizer, window: float | None = None,
                hop: float | None = None) -> WindowPlan:
    """The bundle's evaluation window and hop in samples, or `window` / `hop` seconds; checked."""
    for name, value in (("--window", window), ("--hop", hop)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{name} must be a number of seconds, got {value}")
    params = tokenizer.params
    rate, frame_hop = params.sample_rate, params.hop_length
    quantizer = tokenizer.vocabulary.quantizer if tokenizer.vocabulary is not None else None
    stack, stride = (quantizer.stack, quantizer.stride) if quantizer is not None else (1, 1)
    positions = bundle.window or bundle.max_frames
    # the most samples whose model input has at most `positions` positions: a frame every frame_hop
    # samples (at most 1 + n // hop of them), a token every `stride` frames over `stack` of them
    frames = (positions - 1) * stride + stack
    longest = max((frames - 1) * frame_hop, params.n_fft)
    hop_positions = int(bundle.metadata.get("eval_hop") or 0) or max(1, positions // 2)
    plan = WindowPlan(rate, longest if window is None else round(window * rate),
                      hop_positions * stride * frame_hop if hop is None else round(hop * rate))
    _check_plan(plan, bundle, params, longest)
    return plan


def _check_plan(plan: WindowPlan, bundle, params, longest: int) -> None:
    seconds = plan.seconds
    if plan.window < params.n_fft:
        raise UserError(f"--window must be at least {seconds(params.n_fft):.3f} s (the model's frames need "
                        f"{params.n_fft} samples at {plan.rate} Hz), got {seconds(plan.window):.3f} s")
    if not bundle.window and plan.window > longest:
        raise UserError(f"--window {seconds(plan.window):.3f} s is longer than the {seconds(longest):.3f} s the "
                        "model reads at once (it was trained on whole clips); give at most that")
    if params.max_duration > 0 and plan.window > params.max_duration * plan.rate:
        raise UserError(f"--window {seconds(plan.window):.3f} s is longer than the {params.max_duration} s of "
                        "audio the model's frames keep (spectrogram.max_duration); give at most that")
    if not 0 < plan.hop <= plan.window:
        raise UserError(f"--hop must be more than 0 and at most the window ({seconds(plan.window):.3f} s), "
                        f"got {seconds(plan.hop):.3f} s")


class WindowStream:
    """The windows of one recording, mono at plan.rate, decoded and resampled block by block. Close it.

    Iterating gives (start, stop, samples) in order with at most one window plus one decoder block held;
    the samples equal `load_mono` of the whole file over the same span (soxr's stream gives its one-shot
    output). A recording of fewer than `min_length` samples at plan.rate raises AudioError.
    """

    def __init__(self, location: str, plan: WindowPlan, min_length: int = 1, block_frames: int = BLOCK_FRAMES):
        self.plan, self.block_frames = plan, block_frames
        self._stream = AudioStream(location)
        self.length = self._stream.length_at(plan.rate)
        if 0 < self.length < min_length:
            self.close()
            raise AudioError("too short", f"{self.length} samples at {plan.rate} Hz < {min_length}")

    def close(self) -> None:
        self._stream.close()

    @property
    def count(self) -> int:
        """How many windows iterating gives."""
        window, hop = self.plan.window, self.plan.hop
        if self.length <= window:
            return 1
        steps = (self.length - window) // hop + 1
        return steps + ((steps - 1) * hop + window < self.length)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        spans = window_spans(self.length, self.plan.window, self.plan.hop)
        span = next(spans)
        first, buffer = 0, np.zeros(0, dtype=np.float32)  # buffer holds the samples from position `first`
        for block in self._blocks():
            buffer = np.concatenate([buffer, block])
            while span is not None and span[1] <= first + len(buffer):
                yield span[0], span[1], buffer[span[0] - first:span[1] - first].copy()
                span = next(spans, None)
            if span is None:
                return
            buffer, first = buffer[span[0] - first:], span[0]

    def _blocks(self) -> Iterator[np.ndarray]:
        """mono_blocks cut or padded with zeros to `length`, as `resample` fixes a whole clip's length."""
        received = 0
        for block in self._stream.mono_blocks(self.plan.rate, self.block_frames):
            block = block[:self.length - received]
            received += len(block)
            yield block
        if received < self.length:
            yield np.zeros(self.length - received, dtype=np.float32)

    def stretch(self, start: int, stop: int) -> tuple[float, float]:
        """Seconds a window stands for: the hop-wide stretch around its centre, the first from 0, the last
        to the end."""
        centre, half = (start + stop) / 2, self.plan.hop / 2
        begin = 0 if start == 0 else centre - half
        end = self.length if stop >= self.length else min(centre + half, self.length)
        return self.plan.seconds(begin), self.plan.seconds(end)


def scored_windows(windows: WindowStream, bundle, tokenizer: AudioTokenizer
                   ) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, scores) of every window: WINDOWS_PER_CALL windows tokenized, then one model call."""
    pieces, rate = iter(windows), windows.plan.rate
    while True:
        with single_threaded():  # one window's frames and tokens are too small for thread pools
            batch = [(start, stop, tokenizer.model_input(tokenizer.frames(samples, rate)))
                     for start, stop, samples in itertools.islice(pieces, WINDOWS_PER_CALL)]
        if not batch:
            return
        for (start, stop, _), scores in zip(batch, bundle.scores([item for _, _, item in batch])):
            yield start, stop, scores


# ---------------------------------------------------------------- events and the picture


class EventMerger:
    """Runs of consecutive windows counting for a class, merged into events as the windows arrive."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.events: list[tuple[float, int, float, float]] = []  # (start, class, end, peak)
        self._open: dict[int, list[float]] = {}  # class -> [start, end, peak] of its running event

    def add(self, begin: float, end: float, active: np.ndarray, scores: np.ndarray) -> None:
        """One window: the stretch it stands for, the classes counting in it, its scores."""
        for index in [i for i in self._open if not active[i]]:
            self._close(index)
        for index in np.flatnonzero(active).tolist():
            run = self._open.setdefault(index, [begin, end, 0.0])
            run[1], run[2] = end, max(run[2], float(scores[index]))

    def finish(self) -> list[dict[str, Any]]:
        """Every event, by start time (then class order), as rows: class, start, end, peak_score."""
        for index in list(self._open):
            self._close(index)
        return [{"class": self.classes[index], "start": round(start, TIME_DECIMALS),
                 "end": round(end, TIME_DECIMALS), "peak_score": round(peak, 6)}
                for start, index, end, peak in sorted(self.events)]

    def _close(self, index: int) -> None:
        start, end, peak = self._open.pop(index)
        self.events.append((start, index, end, peak))


class ScorePicture:
    """Every window's scores, max-pooled into at most 2 * MAX_COLUMNS columns, for the timeline PNG.

    When the columns are full, neighbouring pairs are merged (their maximum) and each column takes twice
    as many windows from then on, so memory is bounded and a short high score is never averaged away.
    """

    def __init__(self, n_classes: int, max_columns: int = MAX_COLUMNS):
        self.columns = np.zeros((2 * max_columns, n_classes), dtype=np.float32)
        self.filled = 0  # columns in use
        self.per_column = 1  # windows each column takes
        self._in_last = 0  # windows the last column holds so far

    def add(self, scores: np.ndarray) -> None:
        if self._in_last == 0 or self._in_last == self.per_column:
            if self.filled == len(self.columns):
                self._merge_pairs()
            self.columns[self.filled] = scores
            self.filled += 1
            self._in_last = 1
        else:
            np.maximum(self.columns[self.filled - 1], scores, out=self.columns[self.filled - 1])
            self._in_last += 1

    def _merge_pairs(self) -> None:
        half = self.filled // 2
        self.columns[:half] = np.maximum(self.columns[0:self.filled:2], self.columns[1:self.filled:2])
        self.columns[half:] = 0
        self.filled, self.per_column = half, self.per_column * 2

    def draw(self, path: Path, classes: Sequence[str], events: list[dict[str, Any]], duration: float,
             title: str) -> None:
        """Classes x time: scores as colour, events as bars over them."""
        plt = pyplot()
        rows = _drawn_classes(classes, events, self.columns[:self.filled])
        fig, axis = plt.subplots(figsize=(12, 1.4 + 0.28 * len(rows)))
        image = axis.imshow(self.columns[:self.filled, rows].T, aspect="auto", origin="upper", cmap="viridis",
                            vmin=0.0, vmax=1.0, interpolation="nearest",
                            extent=(0.0, duration, len(rows) - 0.5, -0.5))
        position = {index: row for row, index in enumerate(rows)}
        lookup = {name: i for i, name in enumerate(classes)}
        for event in events:
            row = position.get(lookup[event["class"]])
            if row is not None:
                axis.plot([event["start"], event["end"]], [row, row], color="tab:red", linewidth=2.5,
                          solid_capstyle="butt")
        axis.set_yticks(range(len(rows)), [classes[i] for i in rows], fontsize=8)
        axis.set_xlim(0.0, duration)
        axis.set_xlabel("time (s)")
        axis.set_title(title, fontsize=10)
        fig.colorbar(image, ax=axis, pad=0.01, label="score")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)


def _drawn_classes(classes: Sequence[str], events: list[dict[str, Any]], columns: np.ndarray) -> list[int]:
    """At most MAX_ROWS classes: those with events, highest peak first, then the highest-scoring others."""
    lookup = {name: i for i, name in enumerate(classes)}
    peaks: dict[int, float] = {}
    for event in events:
        index = lookup[event["class"]]
        peaks[index] = max(peaks.get(index, 0.0), event["peak_score"])
    with_events = sorted(peaks, key=lambda i: (-peaks[i], i))
    best = columns.max(axis=0) if len(columns) else np.zeros(len(classes))
    others = [int(i) for i in np.argsort(-best, kind="stable") if int(i) not in peaks]
    return sorted((with_events + others)[:MAX_ROWS])


# ---------------------------------------------------------------- one recording


@dataclass
class Timeline:
    """One recording's timeline: its events and, from `Model.timeline`, every window's scores."""

    path: str
    classes: list[str]
    duration: float  # seconds
    window: float  # seconds
    hop: float
    threshold: float | None  # None: the arg-max class of a single-label model
    events: list[dict[str, Any]]
    starts: np.ndarray | None = None  # (windows,) seconds; only when the scores were kept
    ends: np.ndarray | None = None
    scores: np.ndarray | None = None  # (windows, classes) float32
    files: dict[str, str] = field(default_factory=dict)  # written: scores, events, events_json, picture

    def summary(self) -> dict[str, Any]:
        """What the events JSON holds."""
        return {"path": self.path, "duration": round(self.duration, TIME_DECIMALS), "window": self.window,
                "hop": self.hop, "threshold": self.threshold, "classes": self.classes, "events": self.events}


def make_timeline(location: str, bundle, tokenizer: AudioTokenizer, plan: WindowPlan,
                  threshold: float | None = None, out_dir: Path | None = None, stem: str | None = None,
                  keep_scores: bool = False) -> Timeline:
    """Score `location` window by window; with `out_dir`, write the scores CSV, the events (CSV, JSON) and
    the PNG there, named after `stem` (default: the file's). Raises AudioError for an unusable recording,
    leaving earlier files of the same name as they were."""
    names = _file_names(out_dir, stem or Path(location).stem) if out_dir is not None else {}
    with closing(WindowStream(location, plan, min_length=tokenizer.params.n_fft)) as windows:
        merger = EventMerger(bundle.classes)
        picture = ScorePicture(len(bundle.classes)) if names else None
        kept: list[tuple[int, int, np.ndarray]] = []
        with _scores_csv(names.get("scores"), bundle.classes) as table:
            bar = tqdm(total=windows.count, unit="window", desc=Path(location).name, disable=None, leave=False)
            for start, stop, scores in scored_windows(windows, bundle, tokenizer):
                begin, end = windows.stretch(start, stop)
                merger.add(begin, end, _active(bundle, scores, threshold), scores)
                if table is not None:
                    table.writerow([_time(plan.seconds(start)), _time(plan.seconds(stop)),
                                    *(f"{score:.6f}" for score in scores)])
                    picture.add(scores)
                if keep_scores:
                    kept.append((start, stop, scores))
                bar.update()
            bar.close()
        duration = plan.seconds(windows.length)
    timeline = Timeline(location, list(bundle.classes), duration, plan.seconds(plan.window),
                        plan.seconds(plan.hop), _threshold_used(bundle, threshold), merger.finish(),
                        files={key: str(path) for key, path in names.items()})
    if keep_scores:
        timeline.starts = np.array([plan.seconds(start) for start, _, _ in kept])
        timeline.ends = np.array([plan.seconds(stop) for _, stop, _ in kept])
        timeline.scores = np.array([scores for _, _, scores in kept], dtype=np.float32).reshape(len(kept), -1)
    if names:
        _write_events(timeline, names)
        picture.draw(names["picture"], timeline.classes, timeline.events, duration, Path(location).name)
    return timeline


def _file_names(out_dir: Path, stem: str) -> dict[str, Path]:
    names = {"scores": TIMELINE_SCORES, "events": TIMELINE_EVENTS, "events_json": TIMELINE_EVENTS_JSON,
             "picture": TIMELINE_PICTURE}
    return {key: out_dir / name.format(stem=stem) for key, name in names.items()}


@contextmanager
def _scores_csv(path: Path | None, classes: Sequence[str]) -> Iterator[Any]:
    """A CSV writer of per-window scores into a temporary file, renamed into place when complete; None
    without a path."""
    if path is None:
        yield None
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle)
        table.writerow(["start", "end", *classes])
        yield table


def _active(bundle, scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """The classes one window counts for: the model's decisions, at least `threshold` when it is given."""
    decided_at = bundle.threshold if threshold is None else threshold
    active = bundle.objective.decisions(scores[None, :], decided_at)[0]
    return active & (scores >= threshold) if threshold is not None else active


def _time(seconds: float) -> str:
    return f"{seconds:.{TIME_DECIMALS}f}"


def _threshold_used(bundle, threshold: float | None) -> float | None:
    if threshold is not None:
        return threshold
    return bundle.threshold if bundle.objective.uses_threshold else None


def _write_events(timeline: Timeline, names: dict[str, Path]) -> None:
    with atomic_path(names["events"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle)
        table.writerow(["class", "start", "end", "peak_score"])
        for event in timeline.events:
            table.writerow([event["class"], _time(event["start"]), _time(event["end"]),
                            f"{event['peak_score']:.6f}"])
    with atomic_path(names["events_json"]) as tmp:
        tmp.write_text(json_text(timeline.summary()), encoding="utf-8")


# ---------------------------------------------------------------- the command


def timeline_cli(paths: Sequence[str], model_dir: str | None, workdir: str, threshold: float | None, fmt: str,
                 window: float | None = None, hop: float | None = None, out_dir: str | None = None,
                 out: TextIO | None = None) -> int:
    """`predict --timeline`: a timeline of every file; 0 if all were scored, 1 if any failed."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
    files = expand_paths(paths)
    bundle = load_model(model_dir, workdir)
    tokenizer = AudioTokenizer.of_bundle(bundle)
    plan = window_plan(bundle, tokenizer, window, hop)
    folder = Path(out_dir) if out_dir else Path.cwd()
    log.info("timeline windows of %.3f s every %.3f s at %d Hz", plan.seconds(plan.window),
             plan.seconds(plan.hop), plan.rate)
    writer = EventWriter(fmt, out or sys.stdout)
    failed = 0
    for location, stem in zip(files, unique_stems(files)):
        try:
            writer.write(make_timeline(location, bundle, tokenizer, plan, threshold, folder, stem))
        except AudioError as exc:
            writer.error(location, str(exc))
            failed += 1
    writer.close()
    if failed:
        log.warning("%d of %d files could not be scored (error rows above)", failed, len(files))
    return 1 if failed else 0


def unique_stems(files: Sequence[str]) -> list[str]:
    """Each file's name without suffix; a repeated one gets -2, -3, ... so no output overwrites another."""
    used: set[str] = set()
    stems = []
    for location in files:
        stem = base = Path(location).stem
        count = 1
        while stem in used:
            count += 1
            stem = f"{base}-{count}"
        used.add(stem)
        stems.append(stem)
    return stems


class EventWriter(RowPrinter):
    """Each recording's events as it is done, or its error."""

    COLUMNS = ("path", "class", "start", "end", "peak_score", "error")

    def write(self, timeline: Timeline) -> None:
        if self.fmt == "json":
            self.rows.append({**timeline.summary(), "files": timeline.files, "error": None})
        elif self.fmt == "csv":
            for event in timeline.events:
                self.csv.writerow([timeline.path, event["class"], _time(event["start"]), _time(event["end"]),
                                   f"{event['peak_score']:.6f}", ""])
        else:
            self.out.write(f"{timeline.path}  ({timeline.duration:.1f} s, {len(timeline.events)} events)\n")
            for event in timeline.events:
                self.out.write(f"  {event['start']:10.3f} - {event['end']:10.3f} s  {event['peak_score']:.4f}  "
                               f"{event['class']}\n")
            self.out.write(f"  wrote {', '.join(timeline.files.values())}\n")
        self.out.flush()

    def error(self, path: str, message: str) -> None:
        if self.fmt == "json":
            self.rows.append({"path": path, "events": [], "files": {}, "error": message})
        elif self.fmt == "csv":
            self.csv.writerow([path, "", "", "", "", message])
        else:
            self.out.write(f"{path}\n  ERROR   {message}\n")
        self.out.flush()
