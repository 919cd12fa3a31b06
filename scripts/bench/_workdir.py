"""Workdirs for the benchmarks, made by the package's own stages and writers, never by hand-written artifacts,
so that a change of an artifact's format cannot silently break a benchmark (tests/test_bench_scripts.py
runs every script here on tiny inputs)."""
from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

from audiotokens.config import load_config
from audiotokens.pipeline.run import execute

# the labels do not matter to the stages the benchmarks time; with these any split of >= 2 clips is valid
CLASSES = ("a", "b")


def split_settings(workdir: Path) -> list[str]:
    """The settings the split stage ran with (pass them to every later stage, so its record stays fresh)."""
    return ["data.source=manifest", f"data.manifest={Path(workdir).resolve() / 'bench_manifest.csv'}",
            "data.keep_unused_classes=true", "split.strategy=random", "split.test_ratio=0"]


def split_workdir(workdir: Path, files: list[Path], *overrides: str) -> list[str]:
    """Run the split stage on a manifest of `files` (labels alternate between two classes; every file is in
    the catalogue, so later stages process all of them); returns split_settings(workdir)."""
    if len(files) < 2:
        raise SystemExit("the benchmark needs at least 2 audio files (the split stage needs a validation clip)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "bench_manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([str(Path(path).resolve()), CLASSES[i % len(CLASSES)]] for i, path in enumerate(files))
    settings = split_settings(workdir)
    with contextlib.redirect_stdout(io.StringIO()):  # the stage's summary table is not a benchmark figure
        execute("split", load_config(None, [*settings, *overrides], workdir))
    return settings


def clip_id(path: Path) -> str:
    """The id the split stage gives a file of split_workdir (the manifest's path, as written)."""
    return str(Path(path).resolve())


def tokens_workdir(workdir: Path, files: list[Path], *overrides: str) -> list[str]:
    """split_workdir, then the spectrogram, cluster and tokenize stages with `overrides`: a workdir that
    `audiotokens train` reads, every record fresh. Returns the settings (pass them to train as well)."""
    settings = [*split_workdir(workdir, files, *overrides), *overrides]
    with contextlib.redirect_stdout(io.StringIO()):
        for stage in ("spectrogram", "cluster", "tokenize"):
            execute(stage, load_config(None, settings, workdir))
    return settings
