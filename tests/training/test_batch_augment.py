"""Augmentation in the train stage: which settings turn what on, (seed, epoch) draws, exact resume."""
from __future__ import annotations

import pytest
import torch
from stores import assert_resume_matches_straight, make_frames_workdir, make_workdir

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.inputs import pack_sequences
from audiotokens.model.parts import CLS, MASK, SEP
from audiotokens.training.augment import BatchAugmenter
from audiotokens.training.train import ModelBuilder

SMALL = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.learning_rate=2e-3", "train.num_workers=0", "train.batch_size=8", "train.device=cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def token_batches():
    gen = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 8, (int(n),), generator=gen) for n in (30, 9, 21, 40)]
    inputs, mask = pack_sequences(sequences)
    return [{"inputs": inputs, "mask": mask, "targets": torch.zeros(4, 3), "indices": torch.arange(4)}]


def test_time_masking_hits_only_content_and_depends_on_seed_and_epoch():
    augmenter = BatchAugmenter(input_kind="tokens", mask_time=0.25, mask_span=2, seed=5)
    (original,) = token_batches()
    first, again, other = (next(augmenter.epoch(token_batches(), epoch)) for epoch in (0, 0, 1))
    assert torch.equal(first["inputs"], again["inputs"]) and not torch.equal(first["inputs"], other["inputs"])
    masked = (first["inputs"] == MASK).all(dim=2)
    lengths = original["mask"].sum(dim=1)
    for row, length in enumerate(lengths.tolist()):
        content = length - 2
        assert int(masked[row].sum()) == int(0.25 * content) // 2 * 2  # whole spans, at most the fraction
        assert not masked[row, 0] and not masked[row, length - 1:].any()
    unmasked = ~masked
    assert torch.equal(first["inputs"][unmasked], original["inputs"][unmasked])
    assert (first["inputs"][:, 0] == CLS).all()
    assert all(first["inputs"][r, n - 1, 0] == SEP for r, n in enumerate(lengths.tolist()))


def test_settings_that_do_not_fit_the_input_or_task_are_refused(tmp_path):
    make_workdir(tmp_path, n_train=16, n_validation=8)
    for extra in ("train.mask_freq=2", "train.mixup_alpha=0.4"):
        with pytest.raises(UserError, match=extra.split("=")[0]):
            ModelBuilder(load_config(overrides=[*SMALL, extra, "train.epochs=1"], workdir=tmp_path)).run()
    with pytest.raises(UserError, match="train.batch_frames=0"):
        ModelBuilder(load_config(overrides=[*SMALL, "train.sampler=balanced", "train.batch_frames=200"],
                                 workdir=tmp_path)).run()


def test_resume_with_every_augmentation_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    overrides = [*SMALL, "model.input=frames", "train.epochs=2", "model.dropout=0.1", "train.mask_time=0.2",
                 "train.mask_span=2", "train.mask_freq=2", "train.mask_freq_width=3", "train.mixup_alpha=0.4",
                 "train.sampler=balanced", "train.crop_frames=14"]
    runs = {}
    for name in "ab":
        make_frames_workdir(tmp_path / name, task="multilabel", n_train=32, n_validation=8)
        runs[name] = load_config(overrides=overrides, workdir=tmp_path / name)
    assert_resume_matches_straight(runs["a"], runs["b"], monkeypatch)


def test_balanced_sampler_draws_rare_classes_as_often_as_common_ones(tmp_path):
    from audiotokens.model.objectives import objective_for
    from audiotokens.training.loaders import LengthPlan
    from audiotokens.training.train import make_split_loader, read_split_frames

    layout = make_frames_workdir(tmp_path, n_train=60, n_validation=8)
    split = read_split_frames(layout, "train")
    labels = [clip[0] for clip in split.index.labels]
    plan = LengthPlan(batch_size=8, sampler="balanced")
    loader = make_split_loader(split, "frames", objective_for("singlelabel"), max_frames=100, batch_size=8,
                               shuffle_seed=0, num_workers=0, pin_memory=False, plan=plan)
    assert max(map(labels.count, range(3))) - min(map(labels.count, range(3))) > 1  # the split is uneven
    drawn = [labels[i] for batch in loader.batch_sampler for i in batch]
    assert len(drawn) == len(labels)
    counts = [drawn.count(c) for c in range(3)]
    assert max(counts) - min(counts) <= 1  # whatever the split's class frequencies
