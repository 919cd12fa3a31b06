"""train.objective = contrastive: SupCon training, nearest-class-mean scores in validation and the bundle."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from stores import assert_resume_matches_straight, make_frames_workdir, write_frames, write_plan

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.bundle import load_bundle
from audiotokens.model.contrastive import nearest_class_mean, supervised_contrastive_loss
from audiotokens.model.inputs import pack_frames
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import open_split
from audiotokens.training.contrastive import ContrastiveTrainer, chance_level
from audiotokens.training.train import ModelBuilder

SMALL = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.learning_rate=2e-3", "train.num_workers=0", "train.batch_size=16", "train.device=cpu",
         "model.input=frames", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("contrastive")
    make_frames_workdir(root)
    counts = ModelBuilder(load_config(overrides=[*SMALL, "train.objective=contrastive", "train.epochs=6"],
                                      workdir=root)).run()
    yield root, counts
    torch.set_num_threads(threads)


def clips_of(layout: Layout, split: str) -> tuple[list[np.ndarray], list[list[int]]]:
    frames, index = open_split(layout, "frames", split)
    clips = [np.array(frames[o:o + n]) for o, n in zip(index.offsets, index.lengths)]
    return clips, index.labels


def test_contrastive_model_learns_a_separable_task(contrastive_run):
    _, counts = contrastive_run
    assert counts["best_validation_accuracy"] >= 0.8  # 3 classes: chance is 1/3


def test_bundle_classifies_by_the_nearest_mean_of_training_embeddings(contrastive_run):
    root, _ = contrastive_run
    layout = Layout(root)
    bundle = load_bundle(layout.model_dir)
    assert bundle.spec.head == "class_means"
    train, labels = clips_of(layout, "train")
    validation, _ = clips_of(layout, "validation")
    with torch.no_grad():
        embed = [bundle.model.embed(*pack_frames([clip])) for clip in train]
        probe = torch.cat([bundle.model.embed(*pack_frames([clip])) for clip in validation])
    expected = nearest_class_mean(torch.cat(embed), torch.tensor([l[0] for l in labels]), probe, n_classes=3)
    np.testing.assert_allclose(bundle.scores(validation), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_contrastive_refuses_another_head(tmp_path):
    make_frames_workdir(tmp_path, n_train=12, n_validation=6)
    with pytest.raises(UserError, match="model.head=linear"):
        ModelBuilder(load_config(overrides=[*SMALL, "train.objective=contrastive", "model.head=am_softmax"],
                                 workdir=tmp_path)).run()


def test_contrastive_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    from audiotokens.training.contrastive import ContrastiveTrainer

    overrides = [*SMALL, "train.objective=contrastive", "train.epochs=2", "model.dropout=0.1"]
    runs = {}
    for name in "ab":
        make_frames_workdir(tmp_path / name, n_train=32, n_validation=8)
        runs[name] = load_config(overrides=overrides, workdir=tmp_path / name)
    straight, _ = assert_resume_matches_straight(runs["a"], runs["b"], monkeypatch, trainer=ContrastiveTrainer)
    assert straight["model"]["head.means"].abs().sum() > 0


def test_chance_level_is_the_loss_of_embeddings_that_are_all_alike():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    alike = supervised_contrastive_loss(torch.ones(len(labels), 4), labels)
    assert float(alike) == pytest.approx(chance_level(len(labels)))


@pytest.mark.parametrize(("learning_rate", "warned"), [("1e-9", True), ("2e-3", False)])
def test_a_contrastive_run_that_does_not_learn_is_warned_about(tmp_path, caplog, learning_rate, warned):
    make_frames_workdir(tmp_path, n_validation=8)
    # cls pooling: the untrained [CLS] embeddings are alike, so a run that does not learn stays at chance
    config = load_config(overrides=[*SMALL, "train.objective=contrastive", "train.epochs=4", "model.pooling=cls",
                                    f"train.learning_rate={learning_rate}"], workdir=tmp_path)
    with caplog.at_level("WARNING", logger="audiotokens"):
        ModelBuilder(config).run()
    assert ("is still at its chance level" in caplog.text) == warned


def test_batches_that_cannot_hold_a_pair_of_a_class_are_refused(tmp_path):
    make_frames_workdir(tmp_path, n_train=12, n_validation=6, lengths=(20, 24))
    contrastive = [*SMALL, "train.objective=contrastive", "train.epochs=1"]
    with pytest.raises(UserError, match=r"train.batch_size=1 makes batches of one clip, which hold none"):
        ModelBuilder(load_config(overrides=[*contrastive, "train.batch_size=1"], workdir=tmp_path)).run()
    # a budget of 30 positions holds one clip of 22-26 positions: every loss would be exactly 0
    with pytest.raises(UserError, match="no batch of the epoch held two clips of a class, so every loss"):
        ModelBuilder(load_config(overrides=[*contrastive, "train.batch_frames=30"], workdir=tmp_path)).run()

    one_each = tmp_path / "one_each"
    ids = {"train": ["a", "b", "c"], "validation": ["d", "e"]}
    write_plan(one_each, ids, {"a": [0], "b": [1], "c": [2], "d": [0], "e": [1]}, ["x", "y", "z"])
    write_frames(one_each, [(i, np.ones((8, 4), dtype=np.float32)) for i in "abcde"])
    with pytest.raises(UserError, match="no class has two training clips; add clips or use train.objective"):
        ModelBuilder(load_config(overrides=contrastive, workdir=one_each)).run()


def test_many_batches_without_a_pair_are_said_once(caplog):
    trainer = object.__new__(ContrastiveTrainer)
    with caplog.at_level("WARNING", logger="audiotokens"):
        trainer.check_pairs(1, 20)  # a last batch of one clip: not worth a word
        trainer.check_pairs(3, 10)
        trainer.check_pairs(4, 10)
    assert caplog.text.count("batches of an epoch held no two clips of a class") == 1
    assert "3 of 10 batches" in caplog.text
