"""The train stage with frame-budget batches, the memory check before the first step and measured peaks."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stores import assert_resume_matches_straight, make_workdir

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.batching import FrameBudgetSampler
from audiotokens.model.bundle import load_bundle
from audiotokens.model.inputs import pack_sequences
from audiotokens.model.objectives import objective_for
from audiotokens.model.parts import ModelSpec
from audiotokens.model.windows import eval_windows
from audiotokens.pipeline.layout import Layout
from audiotokens.training.checkpoint import load_checkpoint
from audiotokens.training.loaders import LengthPlan, encoder_shape, evaluate_split
from audiotokens.training.optimisation import Trainer
from audiotokens.training.train import ModelBuilder, make_split_loader, read_split_tokens, read_vocabulary

SMALL = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.learning_rate=2e-3", "train.num_workers=0", "train.batch_size=8", "train.device=cpu"]
BUDGET = 160  # positions: a few long clips or many short ones
LENGTHS = (4, 60)


pytestmark = pytest.mark.usefixtures("one_thread")


def budget_run(root, *extra: str):
    make_workdir(root, n_train=40, n_validation=12, lengths=LENGTHS)
    return load_config(overrides=[*SMALL, f"train.batch_frames={BUDGET}", *extra], workdir=root)


def test_budget_batches_cover_each_clip_once_within_budget(tmp_path):
    layout = make_workdir(tmp_path, n_train=40, n_validation=12, lengths=LENGTHS)
    split = read_split_tokens(layout, "train", read_vocabulary(layout))
    for shuffle_seed in (3, None):
        loader = make_split_loader(split, "tokens", objective_for("multilabel"), max_frames=80, batch_size=8,
                                   shuffle_seed=shuffle_seed, num_workers=0, pin_memory=False,
                                   plan=LengthPlan(batch_size=8, batch_frames=BUDGET))
        seen = []
        for batch in loader:
            assert batch["mask"].numel() <= BUDGET and len(batch["indices"]) <= 8
            seen += batch["indices"].tolist()
        assert sorted(seen) == list(range(len(split.index)))


def test_schedule_ends_exactly_at_the_last_step_of_budget_epochs(tmp_path):
    config = budget_run(tmp_path, "train.epochs=2")
    ModelBuilder(config).run()
    state = load_checkpoint(Layout(tmp_path).checkpoints / "last.pt")
    # the model is sized to the longest clip (max_length = 0): every clip is fed whole, plus [CLS] and [SEP]
    layout = Layout(tmp_path)
    lengths = read_split_tokens(layout, "train", read_vocabulary(layout)).index.lengths + 2
    sampler = FrameBudgetSampler(lengths=lengths, batch_frames=BUDGET, max_clips=8, seed=0)
    expected = 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected += len(sampler)
    assert state["trainer"]["step"] == expected
    assert state["history"][-1]["lr"] == 0.0  # the linear decay reached 0 on the last step, not before
    assert all(row["lr"] > 0 for row in state["history"][:-1])


@pytest.mark.parametrize("extra", [[], ["train.crop_frames=12"]], ids=["budget", "budget+crop"])
def test_resume_with_budget_batches_matches_an_uninterrupted_run(tmp_path, monkeypatch, extra):
    runs = {name: budget_run(tmp_path / name, "train.epochs=2", "model.dropout=0.1", *extra) for name in "ab"}
    straight, resumed = assert_resume_matches_straight(runs["a"], runs["b"], monkeypatch)
    assert straight["trainer"]["step"] == resumed["trainer"]["step"]


def test_memory_estimate_is_logged_and_peaks_recorded(tmp_path, caplog):
    config = budget_run(tmp_path, "train.epochs=2")
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        ModelBuilder(config).run()
    assert any(r.getMessage().startswith("estimated peak ") for r in caplog.records)
    rows = [json.loads(line) for line in Layout(tmp_path).metrics.read_text().splitlines()]
    peaks = [row["peak_memory_gib"] for row in rows if "peak_memory_gib" in row]
    assert len(peaks) == 2 and all(peak > 0.01 for peak in peaks)  # a torch process holds far more than this


def test_over_the_memory_limit_stops_before_any_step(tmp_path, monkeypatch):
    config = budget_run(tmp_path, "train.epochs=1")
    # room for the weights (about 47 kB, checked before they exist) but not for a training step
    monkeypatch.setattr("audiotokens.training.loaders.available_bytes", lambda device: 100_000)

    def no_step(*args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(Trainer, "train_epoch", no_step)
    with pytest.raises(UserError) as caught:
        ModelBuilder(config).run()
    message = str(caught.value)
    index = read_split_tokens(Layout(tmp_path), "train", read_vocabulary(Layout(tmp_path))).index
    longest = index.ids[int(np.argmax(index.lengths))]
    assert "\n" not in message and longest in message and "train.batch_frames" in message
    assert "spectrogram.max_duration" in message and "model.max_length" in message
    assert "0.0 GiB is available" in message


@pytest.mark.parametrize("size", ["model.hidden_size=1048576", "model.max_length=1000000000000"])
def test_a_model_whose_weights_cannot_fit_is_refused_before_any_allocation(tmp_path, size):
    """Terabytes of weights: refused from the parameter count of a shapes-only model, never allocated."""
    config = budget_run(tmp_path, "train.epochs=1", size)
    with pytest.raises(UserError) as caught:
        ModelBuilder(config).run()
    message = str(caught.value)
    assert "\n" not in message and "GiB of weights alone" in message and "GiB is available" in message
    assert "model.hidden_size" in message and "model.max_length" in message
    assert size.removeprefix("model.") in message


def test_the_memory_estimate_sizes_the_encoder_by_its_model_spec():
    spec = ModelSpec(classes=["a", "b"], input="frames", input_dim=8, encoder="bert", hidden_size=48,
                     encoder_params={"num_layers": 3, "num_heads": 4, "intermediate_size": 96})
    assert encoder_shape(spec) == {"hidden": 48, "layers": 3, "heads": 4, "intermediate": 96}


def test_bundle_scores_by_budget_equal_scores_by_clip_count(tmp_path):
    config = budget_run(tmp_path, "train.epochs=1")
    ModelBuilder(config).run()
    bundle = load_bundle(Layout(tmp_path).model_dir)
    assert bundle.batch_frames == BUDGET
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 8, size=int(n)) for n in rng.integers(1, 70, size=25)]
    batches = bundle._batches([c[:, None] for c in clips], 8, BUDGET)
    assert sorted(i for b in batches for i in b) == list(range(len(clips)))
    assert all(max(min(len(clips[i]), bundle.max_frames) + 2 for i in b) * len(b) <= BUDGET
               for b in batches if len(b) > 1)
    by_budget = bundle.scores(clips, batch_size=8)
    by_count = bundle.scores(clips, batch_size=8, batch_frames=0)
    np.testing.assert_allclose(by_budget, by_count, atol=1e-5)


CROP = 16


@pytest.fixture(scope="module")
def cropped(tmp_path_factory):
    root = tmp_path_factory.mktemp("cropped")
    make_workdir(root, n_train=40, n_validation=12, lengths=LENGTHS)
    ModelBuilder(load_config(overrides=[*SMALL, f"train.crop_frames={CROP}", "train.epochs=1"],
                             workdir=root)).run()
    return root


def test_training_crops_stay_in_bounds_and_change_with_the_epoch(cropped):
    layout = Layout(cropped)
    split = read_split_tokens(layout, "train", read_vocabulary(layout))
    plan = LengthPlan(batch_size=8, crop_frames=CROP)
    loader = make_split_loader(split, "tokens", objective_for("multilabel"), max_frames=10**6, batch_size=8,
                               shuffle_seed=0, num_workers=0, pin_memory=False, plan=plan)
    starts = []
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        items = [item for batch in loader.batch_sampler for item in batch]
        assert sorted(i for i, _, _ in items) == list(range(len(split.index)))
        for i, start, stop in items:
            length = int(split.index.lengths[i])
            assert 0 <= start < stop <= length and stop - start == min(CROP, length)
        starts.append({i: start for i, start, _ in items})
        for batch in loader:
            assert batch["mask"].sum(dim=1).max() <= CROP + 2
    assert starts[0] != starts[1]


def test_cropped_model_holds_the_crop_and_scores_long_clips_by_windows(cropped):
    bundle = load_bundle(Layout(cropped).model_dir)
    assert bundle.max_frames == CROP and bundle.window == CROP and bundle.hop == CROP // 2
    clip = np.random.default_rng(2).integers(0, 8, size=70)
    # windows of 16 every 8 frames, the last one ending at the clip's end: 0..48, then 54
    windows = [clip[start:start + CROP] for start in [*range(0, 70 - CROP + 1, CROP // 2), 70 - CROP]]
    separately = np.mean([bundle.scores([window])[0] for window in windows], axis=0)
    np.testing.assert_allclose(bundle.scores([clip, clip[:10]])[0], separately, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bundle.scores([clip[:10]])[0], bundle.scores([clip, clip[:10]])[1], atol=1e-6)


def test_the_log_names_the_positions_a_cropped_model_holds(tmp_path, caplog):
    make_workdir(tmp_path, n_train=8, n_validation=4, lengths=LENGTHS)
    config = load_config(overrides=[*SMALL, f"train.crop_frames={CROP}", "train.epochs=1"], workdir=tmp_path)
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        ModelBuilder(config).run()
    assert f"{CROP + 2} positions ([CLS] + {CROP} frames + [SEP])" in caplog.text  # not the longest clip's 60


def test_validation_by_windows_scores_like_the_bundle(cropped):
    layout = Layout(cropped)
    bundle = load_bundle(layout.model_dir)
    split = read_split_tokens(layout, "validation", read_vocabulary(layout))
    plan = LengthPlan(batch_size=4, crop_frames=CROP, eval_window=CROP, eval_hop=CROP // 2)
    loader = make_split_loader(split, "tokens", objective_for("multilabel"), max_frames=10**6, batch_size=4,
                               shuffle_seed=None, num_workers=0, pin_memory=False, plan=plan)
    trainer = Trainer(model=bundle.model, objective=objective_for("multilabel"), device=torch.device("cpu"),
                      learning_rate=0.0, weight_decay=0.0, warmup_ratio=0.0, total_steps=1, amp=False)
    result = evaluate_split(trainer, loader)
    tokens = np.load(layout.tokens, mmap_mode="r")
    clips = [np.array(tokens[o:o + n]) for o, n in zip(split.index.offsets, split.index.lengths)]
    assert result.scores.shape == (len(clips), 4)
    np.testing.assert_allclose(result.scores, bundle.scores(clips), rtol=1e-5, atol=1e-6)


def test_the_windowed_validation_loss_is_a_mean_over_clips(cropped):
    """Each clip's loss is the mean of its windows' losses; a long clip (many windows) counts once."""
    layout = Layout(cropped)
    bundle = load_bundle(layout.model_dir)
    split = read_split_tokens(layout, "validation", read_vocabulary(layout))
    plan = LengthPlan(batch_size=4, crop_frames=CROP, eval_window=CROP, eval_hop=CROP // 2)
    loader = make_split_loader(split, "tokens", objective_for("multilabel"), max_frames=10**6, batch_size=4,
                               shuffle_seed=None, num_workers=0, pin_memory=False, plan=plan)
    trainer = Trainer(model=bundle.model, objective=objective_for("multilabel"), device=torch.device("cpu"),
                      learning_rate=0.0, weight_decay=0.0, warmup_ratio=0.0, total_steps=1, amp=False)
    result = evaluate_split(trainer, loader)
    tokens = np.load(layout.tokens, mmap_mode="r")
    targets = torch.from_numpy(split.index.label_matrix()).float()
    expected = []
    with torch.no_grad():
        for row, (offset, length) in enumerate(zip(split.index.offsets, split.index.lengths)):
            clip = np.array(tokens[offset:offset + length])
            windows = [clip[start:stop] for start, stop in eval_windows(int(length), CROP, CROP // 2)]
            logits = bundle.model(*pack_sequences(windows))
            window_losses = F.binary_cross_entropy_with_logits(logits, targets[row].expand_as(logits),
                                                               reduction="none").mean(dim=1)
            expected.append(float(window_losses.mean()))
    assert len(set(loader.window_counts.tolist())) > 1  # clips with different numbers of windows
    assert result.loss == pytest.approx(np.mean(expected), rel=1e-5)
    np.testing.assert_allclose(result.clip_losses, expected, rtol=1e-5)


def test_with_max_length_validation_windows_cover_whole_clips_as_the_bundle_does(tmp_path):
    layout = make_workdir(tmp_path, n_train=16, n_validation=8, lengths=(30, 60))
    config = load_config(overrides=[*SMALL, "model.max_length=20", f"train.crop_frames={CROP}",
                                    "train.epochs=1"], workdir=tmp_path)
    counts = ModelBuilder(config).run()
    train = read_split_tokens(layout, "train", read_vocabulary(layout))
    assert counts["truncated_clips"] == len(train.index)  # training reads the first 20 frames; scoring all
    bundle = load_bundle(layout.model_dir)
    run = ModelBuilder(config)._prepare()
    run.model.load_state_dict(bundle.model.state_dict())
    loader = run.loaders["validation"]
    split = run.splits["validation"]
    ends = {}
    for batch in loader.batch_sampler:
        for i, _, stop in batch:
            ends[i] = max(ends.get(i, 0), stop)
    assert ends == {i: int(n) for i, n in enumerate(split.index.lengths)}
    tokens = np.load(layout.tokens, mmap_mode="r")
    clips = [np.array(tokens[o:o + n]) for o, n in zip(split.index.offsets, split.index.lengths)]
    np.testing.assert_allclose(evaluate_split(run.trainer, loader).scores, bundle.scores(clips), rtol=1e-5,
                               atol=1e-6)


def test_the_model_holds_what_training_feeds():
    assert LengthPlan(batch_size=1, eval_window=20).model_frames(300) == 300  # whole clips in training
    assert LengthPlan(batch_size=1, crop_frames=50).model_frames(300) == 50
    assert LengthPlan(batch_size=1, crop_frames=50, eval_window=80).model_frames(300) == 80
    assert LengthPlan(batch_size=1, crop_frames=50).model_frames(30) == 30
