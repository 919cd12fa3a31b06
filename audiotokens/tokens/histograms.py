"""Token histograms, tokenized/histogram_<split>.png: codebook 0's usage per split, drawn from
tokenized/stats.json when first shown (`audiotokens report`, a run tracked with MLflow), not by the tokenize
stage, whose run on small data they would dominate (matplotlib's import alone takes about a second, each
figure a quarter of one). The tokenize stage removes them when it replaces the statistics, so a histogram on
disk always shows the current ones.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..pipeline.files import atomic_path, read_json_or_none
from ..pipeline.layout import Layout

log = logging.getLogger("audiotokens")


def plot_histogram(stats: dict[str, Any], title: str, path: Path) -> None:
    """Frames per token id, and the share of frames covered by the r most used tokens (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(stats["counts"])
    total = max(int(counts.sum()), 1)
    # fixed margins and linear axes: tight_layout and log ticks cost seconds per figure
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    # one filled step outline, at most 1000 steps (ids summed per bin): fast for any vocabulary size
    width = max(1, math.ceil(len(counts) / 1000))
    binned = np.add.reduceat(counts, np.arange(0, len(counts), width))
    edges = np.arange(len(binned) + 1) * width - 0.5
    left.fill_between(edges, np.append(binned, binned[-1:]), step="post", color="tab:blue", linewidth=0)
    left.set(xlabel="token id" if width == 1 else f"token id (bins of {width})", ylabel="frames", title=title,
             xlim=(-0.5, len(counts) - 0.5), ylim=(0, None))
    covered = np.concatenate([[0.0], np.cumsum(np.sort(counts)[::-1]) / total])
    right.plot(np.arange(len(covered)), covered, color="tab:orange")
    right.set(xlabel="most used tokens", ylabel="share of frames", ylim=(0, 1.01), xlim=(0, len(counts)),
              title=f"perplexity {stats['perplexity']:.1f} of {len(counts)}, unused {stats['unused_tokens']}")
    right.grid(alpha=0.3)
    figure.savefig(path, format="png")  # the name may be a temporary one


def token_histograms(layout: Layout) -> dict[str, Path]:
    """Split -> its histogram, for each split of tokenized/stats.json, drawn where missing; {} without statistics.

    One that cannot be drawn (damaged statistics, a read-only workdir) is left out with a warning: the
    histograms only illustrate the statistics."""
    stats = read_json_or_none(layout.token_stats)
    splits = stats.get("splits") if isinstance(stats, dict) else None
    if not isinstance(splits, dict):
        return {}
    paths = {}
    for name, split in splits.items():
        path = layout.token_histogram(name)
        if not path.is_file():
            try:
                with atomic_path(path) as tmp:
                    plot_histogram(split["codebooks"][0], f"{name}: codebook 0 usage", tmp)
            except (UserError, KeyError, IndexError, TypeError, ValueError) as exc:
                log.warning("%s not drawn (%s); re-run `audiotokens tokenize` to rewrite %s", path,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, layout.token_stats)
                continue
        paths[name] = path
    return paths


def remove_histograms(layout: Layout) -> None:
    """Delete the histograms on disk (the statistics they show are being replaced)."""
    for path in layout.tokenized.glob(layout.token_histogram("*").name):
        path.unlink(missing_ok=True)
