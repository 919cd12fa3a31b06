"""What a tokenizer keeps decides what a model can learn: several codebooks carry what one cannot."""
from __future__ import annotations

import json

import numpy as np
import pytest
from stores import write_frames, write_plan

from audiotokens.config import load_config
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stages import stage

TINY = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
        "train.epochs=25", "train.batch_size=16", "train.learning_rate=3e-3", "train.device=cpu",
        "train.num_workers=0", "model.pooling=mean", "cluster.n_clusters=2", "cluster.niter=10"]


def xor_of_two_bands(workdir, n_clips: int = 240, length: int = 4, seed: int = 0) -> None:
    """Frames of 8 values: bands 0-3 and 4-7 each hold one of two patterns; the label is whether they agree.

    The first band varies more than the second, so one k-means of 2 codes over whole frames splits on the
    first band and loses the second: the label cannot be told from its ids. Two codebooks of 2 codes, one
    per band, keep both, and the label is a function of the pair.
    """
    rng = np.random.default_rng(seed)
    splits = {"train": [], "validation": [], "test": []}
    labels, clips = {}, []
    for i in range(n_clips):
        first, second = rng.integers(2, size=2)
        frames = np.concatenate([np.full((length, 4), 3.0 * first), np.full((length, 4), 1.0 * second)], axis=1)
        frames = (frames + 0.05 * rng.standard_normal(frames.shape)).astype(np.float32)
        name = ("train", "train", "train", "validation")[i % 4] if i < n_clips - 24 else "test"
        clip_id = f"{name}-{i:03d}"
        splits[name].append(clip_id)
        labels[clip_id] = [int(first == second)]
        clips.append((clip_id, frames))
    write_plan(workdir, splits, labels, ["differ", "agree"])
    write_frames(workdir, clips)


def best_validation_accuracy(workdir, *overrides: str) -> float:
    config = load_config(None, [*TINY, *overrides], workdir)
    for name in ("cluster", "tokenize", "train"):  # the stages themselves: the fixture writes no records
        stage(name).runner_class()(config).run()
    rows = [json.loads(line) for line in Layout(workdir).metrics.read_text().splitlines()]
    return max(row["validation"]["accuracy"] for row in rows if "validation" in row)


@pytest.mark.slow  # two trainings of 25 epochs: about a minute on 2 idle cores
@pytest.mark.parametrize("embedding", ["learned", "decoded"])
def test_two_codebooks_learn_what_one_codebook_of_the_same_size_cannot(tmp_path, embedding):
    xor_of_two_bands(tmp_path / "one")
    xor_of_two_bands(tmp_path / "two")
    one = best_validation_accuracy(tmp_path / "one", "cluster.quantizer=frame", f"model.token_embedding={embedding}")
    two = best_validation_accuracy(tmp_path / "two", "cluster.quantizer=subband", "cluster.bands=2",
                                   f"model.token_embedding={embedding}")
    assert two >= 0.95, two
    assert one <= 0.75, one
