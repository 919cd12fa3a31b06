"""Where a train run keeps its log, curves and checkpoints (layout.RunFiles).

A run writes them aside, in output/train.partial/, and they replace output/'s (metrics.jsonl, curves.png,
checkpoints/{last,best}.pt) only once its bundle has replaced output/model/: a run that fails
or is interrupted leaves the files of the run whose bundle is output/model/ as they were. `--resume`
continues the run under way (a failed or interrupted one) when its settings match, else the finished run (to
train it for more epochs, or to write its bundle again), whose files are first copied aside.
"""
from __future__ import annotations

import os
import shutil

from ..pipeline.layout import Layout, RunFiles
from .checkpoint import copy_checkpoint


def start_afresh(staged: RunFiles) -> None:
    """A new run: nothing of an earlier run under way is kept."""
    shutil.rmtree(staged.folder, ignore_errors=True)


def resumable_runs(layout: Layout) -> list[RunFiles]:
    """The runs `--resume` can continue, the run under way first."""
    return [files for files in (layout.staged_run_files, layout.run_files) if files.last_checkpoint.is_file()]


def adopt(finished: RunFiles, staged: RunFiles) -> None:
    """Continue the finished run aside: its checkpoints (hard links where the filesystem allows), curves and
    events become the run under way's; the log is written again from the checkpoint's history. last.pt comes
    last: it is what makes a folder a run to resume."""
    start_afresh(staged)
    for source, target in ((finished.best_checkpoint, staged.best_checkpoint),
                           (finished.last_checkpoint, staged.last_checkpoint)):
        if source.is_file():
            copy_checkpoint(source, target)
    if finished.curves.is_file():
        shutil.copy2(finished.curves, staged.curves)


def publish(staged: RunFiles, final: RunFiles) -> None:
    """Right after the run's bundle was written: its files replace the finished run's. last.pt moves last, so
    a run killed on the way still has its last.pt and best.pt aside, and `--resume` finishes the swap."""
    for source, target in ((staged.metrics, final.metrics), (staged.curves, final.curves)):
        if source.is_file():
            os.replace(source, target)
    if staged.best_checkpoint.is_file():
        copy_checkpoint(staged.best_checkpoint, final.best_checkpoint)
    if staged.last_checkpoint.is_file():
        final.checkpoints.mkdir(parents=True, exist_ok=True)
        os.replace(staged.last_checkpoint, final.last_checkpoint)
    shutil.rmtree(staged.folder, ignore_errors=True)
