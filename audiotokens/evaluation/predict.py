"""`audiotokens predict` and `audiotokens show`: a model bundle applied to audio files.

Audio becomes model input through the bundle's own AudioTokenizer (model/audio_tokenizer.py), never
through the current config. Each listed class says whether the model predicts it: score >= the bundle's
threshold (train.threshold, or --threshold) for multi-label models, the arg-max class for single-label ones.
"""
from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..data.audio import AudioError
from ..data.sources.audio_files import describe_passed, scan_audio
from ..errors import UserError
from ..model.audio_tokenizer import AudioTokenizer, Tokenized
from ..model.bundle import load_bundle
from ..pipeline.layout import TOKEN_PICTURE, Layout
from ..training.optimisation import pick_device
from .reports import pyplot

log = logging.getLogger("audiotokens")

LIST_SUFFIXES = (".txt", ".lst")
STRIP_CODEBOOKS = 8  # token strips drawn by `show`; more would be unreadable
FILES_PER_BATCH = 64  # files decoded before one batched model call; bounds memory and output latency


# ---------------------------------------------------------------- audio -> tokens -> scores


def load_model(model_dir: str | Path | None, workdir: str | Path = ".", device: str = "auto"):
    """The bundle at model_dir (default <workdir>/output/model) on `device` (auto: CUDA, MPS, else CPU)."""
    return load_bundle(Path(model_dir) if model_dir else Layout(workdir).model_dir, pick_device(device))


def score_files(locations: Sequence[str], bundle, tokenizer: AudioTokenizer
                ) -> list[tuple[Tokenized, np.ndarray | None]]:
    """Tokenize each file, then score all that worked in batched model calls."""
    tokenized = [tokenizer(location) for location in locations]
    good = [t for t in tokenized if t.tokens is not None]
    scores = iter(bundle.scores([t.tokens for t in good]) if good else [])
    return [(t, next(scores) if t.tokens is not None else None) for t in tokenized]


# ---------------------------------------------------------------- which files


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Audio files, directories (recursive, audio extensions only) and list files, in the order given.

    A list file (.txt/.lst) names one path per line, relative to the list's folder; blank lines and
    lines starting with # are skipped. A path that does not exist is kept, so it gets an error row.
    """
    files: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += _audio_under(path)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            files += _list_entries(path)
        else:
            files.append(str(raw))
    if not files:
        raise UserError(f"no audio files found in {', '.join(map(str, paths))}; give audio files, folders "
                        "holding audio files, or .txt/.lst lists of paths")
    return list(dict.fromkeys(files))


def _audio_under(folder: Path) -> list[str]:
    files, passed = scan_audio(folder)
    if passed:
        log.warning(describe_passed(folder, passed))
    return [str(p) for p in files]


def _list_entries(list_file: Path) -> list[str]:
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read list file {list_file} ({exc}); it should hold one path per line") from None
    entries: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text) if Path(text).is_absolute() else list_file.parent / text
        entries += _audio_under(path) if path.is_dir() else [str(path)]
    return entries


# ---------------------------------------------------------------- output


def chosen_classes(scores: np.ndarray, classes: Sequence[str], top_k: int, threshold: float | None,
                   predicted: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Every class scoring >= threshold when one is given, else the top_k; best first.

    `predicted` (one boolean per class, the model's decisions) marks each listed class.
    """
    order = np.argsort(-scores, kind="stable")
    if threshold is not None:
        order = [i for i in order if scores[i] >= threshold]
    else:
        order = order[:top_k]
    return [{"class": classes[i], "score": float(scores[i]),
             **({"predicted": bool(predicted[i])} if predicted is not None else {})} for i in order]


def decisions(bundle, scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """The model's predicted classes for one clip: at `threshold` if given, else at the bundle's."""
    return bundle.objective.decisions(scores[None, :], bundle.threshold if threshold is None else threshold)[0]


class RowPrinter:
    """Rows printed as they come (table, csv: a header of COLUMNS first) or as one JSON list at the end."""

    COLUMNS: tuple[str, ...] = ()

    def __init__(self, fmt: str, out: TextIO):
        self.fmt, self.out = fmt, out
        self.rows: list[dict[str, Any]] = []  # json: what close() writes
        if fmt == "csv":
            self.csv = csv.writer(out)
            self.csv.writerow(self.COLUMNS)

    def close(self) -> None:
        if self.fmt == "json":
            json.dump(self.rows, self.out, indent=1)
            self.out.write("\n")
        self.out.flush()


class Writer(RowPrinter):
    """Prediction rows of each clip: its top classes, or its error."""

    COLUMNS = ("path", "rank", "class", "score", "predicted", "error")

    def write(self, path: str, top: list[dict[str, Any]], error: str) -> None:
        if self.fmt == "json":
            self.rows.append({"path": path, "top": top, "error": error or None})
        elif self.fmt == "csv":
            if error:
                self.csv.writerow([path, "", "", "", "", error])
            for rank, item in enumerate(top, 1):
                self.csv.writerow([path, rank, item["class"], f"{item['score']:.6f}",
                                   str(item.get("predicted", "")).lower(), ""])
        else:
            self.out.write(f"{path}\n")
            if error:
                self.out.write(f"  ERROR   {error}\n")
            elif not top:
                self.out.write("  (no class reaches the threshold)\n")
            for item in top:
                mark = "*" if item.get("predicted") else " "
                self.out.write(f"  {item['score']:.4f} {mark} {item['class']}\n")
        self.out.flush()


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_cli(paths: Sequence[str], model_dir: str | None, workdir: str, top_k: int, threshold: float | None,
                fmt: str, out: TextIO | None = None) -> int:
    """Print predictions for every file; 0 if all were scored, 1 if any failed (UserError = usage)."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
    files = expand_paths(paths)
    bundle = load_model(model_dir, workdir)
    tokenizer = AudioTokenizer.of_bundle(bundle)
    writer = Writer(fmt, out or sys.stdout)
    failed = 0
    for batch in _batches(files, FILES_PER_BATCH):
        for item, scores in score_files(batch, bundle, tokenizer):
            top = (chosen_classes(scores, bundle.classes, top_k, threshold, decisions(bundle, scores, threshold))
                   if scores is not None else [])
            writer.write(item.path, top, item.error)
            failed += bool(item.error)
    writer.close()
    if failed:
        log.warning("%d of %d files could not be scored (error rows above)", failed, len(files))
    return 1 if failed else 0


# ---------------------------------------------------------------- show


def show_cli(audio: str, model_dir: str | None, workdir: str, out_path: str | None, top_k: int = 5) -> Path:
    """One PNG: mel spectrogram, the token strip on the same time axis, and the top predictions."""
    bundle = load_model(model_dir, workdir)
    if bundle.input == "waveform":
        raise UserError(f"`show` draws mel frames and tokens; {model_dir or 'the model'} reads the waveform "
                        "(a fine-tuned speech model): use `audiotokens predict`")
    tokenizer = AudioTokenizer.of_bundle(bundle)
    try:
        frames = tokenizer.file_frames(audio)
    except AudioError as exc:
        raise UserError(f"cannot read {audio}: {exc}") from None
    tokens = tokenizer.frames_to_tokens(frames) if tokenizer.vocabulary is not None else None
    scores = bundle.scores([tokenizer.model_input(frames)])[0]
    top = chosen_classes(scores, bundle.classes, top_k, None)
    path = Path(out_path) if out_path else Path.cwd() / TOKEN_PICTURE.format(stem=Path(audio).stem)
    draw_tokens_picture(path, frames.astype(np.float32), tokens, top, tokenizer.params, title=Path(audio).name,
                        n_clusters=max(bundle.vocabulary.codebook_sizes) if bundle.vocabulary is not None else 0)
    print(f"wrote {path}")
    return path


def _draw_token_strip(strip, tokens: np.ndarray, seconds: float, n_clusters: int) -> None:
    # one column per token, one row per codebook (up to STRIP_CODEBOOKS), coloured by id; the same extent
    # keeps token t under the frames it stands for
    rows = np.asarray(tokens).reshape(len(tokens), -1)[:, :STRIP_CODEBOOKS].T[::-1]
    strip.imshow(rows, aspect="auto", extent=(0.0, seconds, 0, len(rows)),
                 cmap="tab20" if n_clusters <= 20 else "nipy_spectral", vmin=0, vmax=max(n_clusters - 1, 1),
                 interpolation="nearest")
    strip.set_yticks([])
    strip.set_ylabel("tokens" if len(rows) > 1 else "token", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    if len(tokens) <= 60 and len(rows) == 1:
        step = seconds / len(tokens)
        for t, token in enumerate(rows[0]):
            strip.text((t + 0.5) * step, 0.5, str(int(token)), ha="center", va="center", fontsize=6)


def draw_tokens_picture(path: Path, frames: np.ndarray, tokens: np.ndarray | None, top: list[dict[str, Any]], params,
                        title: str, n_clusters: int) -> None:

    plt = pyplot()
    seconds = len(frames) * params.hop_length / params.sample_rate
    extent = (0.0, seconds, 0, params.n_mels)
    fig = plt.figure(figsize=(11, 5.5))
    # the colour bar gets its own column so the spectrogram and the strip keep the same width
    # (an empty column before the bars leaves room for their class names)
    grid = fig.add_gridspec(2, 4, height_ratios=(4, 0.6), width_ratios=(4, 0.08, 0.9, 1.3), hspace=0.08,
                            wspace=0.1)
    mel = fig.add_subplot(grid[0, 0])
    image = mel.imshow(frames.T, origin="lower", aspect="auto", extent=extent, cmap="magma",
                       interpolation="nearest")
    mel.set_ylabel("mel band")
    mel.set_title(title, fontsize=10)
    mel.tick_params(labelbottom=False)
    fig.colorbar(image, cax=fig.add_subplot(grid[0, 1]))
    strip = fig.add_subplot(grid[1, 0], sharex=mel)
    if tokens is not None:
        _draw_token_strip(strip, tokens, seconds, n_clusters)
    else:  # a frames-input model reads the mel itself
        strip.axis("off")
        mel.tick_params(labelbottom=True)
        mel.set_xlabel("time (s)")
    bars = fig.add_subplot(grid[:, 3])
    names = [item["class"] for item in top][::-1]
    bars.barh(range(len(top)), [item["score"] for item in top][::-1], color="tab:green")
    bars.set_yticks(range(len(top)), names, fontsize=8)
    bars.set_xlim(0, 1)
    bars.set_xlabel("score")
    bars.set_title("top predictions", fontsize=10)
    for i, item in enumerate(top[::-1]):
        bars.text(min(item["score"], 0.98), i, f" {item['score']:.3f}", va="center", fontsize=7,
                  ha="right" if item["score"] > 0.7 else "left")
    vocabulary = (f"{len(tokens)} tokens x {np.asarray(tokens).reshape(len(tokens), -1).shape[1]} codebooks of "
                  f"{n_clusters}" if tokens is not None else "frames input")
    fig.text(0.01, 0.01, f"{len(frames)} frames, {vocabulary}, sr {params.sample_rate}, hop "
             f"{params.hop_length}, {params.n_mels} mels", fontsize=7, color="gray")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
