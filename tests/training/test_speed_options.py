"""What the train stage does for speed on a CPU: intra-op threads (train.threads and the policy of
pipeline/cpus.py)."""
from __future__ import annotations

import logging
import os

import pytest
import torch
from stores import make_workdir

from audiotokens.config import load_config
from audiotokens.model.objectives import objective_for
from audiotokens.pipeline import cpus
from audiotokens.training.datasets import ClipDataset
from audiotokens.training.optimisation import Trainer
from audiotokens.training.train import ModelBuilder, make_split_loader, read_split_tokens, read_vocabulary

SMALL = ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.learning_rate=2e-3", "train.num_workers=0", "train.batch_size=16", "train.device=cpu",
         "model.dropout=0.0"]


@pytest.fixture
def policy(monkeypatch):
    """The thread policy as a user meets it (no OMP_NUM_THREADS), on a quiet machine with 3 usable cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "usable_cores", lambda: 3)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def threads_while_training(monkeypatch) -> list[int]:
    seen = []
    original = Trainer.train_epoch

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", recording)
    return seen


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize(("override", "expected"), [([], 3), (["train.threads=2"], 2)])
def test_train_runs_on_the_chosen_threads_and_puts_them_back(tmp_path, monkeypatch, caplog, policy, override,
                                                            expected):
    make_workdir(tmp_path, n_train=16, n_validation=8)
    seen = threads_while_training(monkeypatch)
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        counts = ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1", *override], workdir=tmp_path)).run()
    assert seen == [expected] and counts["threads"] == expected
    assert f"{expected} intra-op threads" in caplog.text
    assert torch.get_num_threads() == 1  # the caller's setting is back


def test_train_leaves_torchruns_threads_alone(tmp_path, monkeypatch, policy):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it: one thread per process
    make_workdir(tmp_path, n_train=16, n_validation=8)
    seen = threads_while_training(monkeypatch)
    ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1"], workdir=tmp_path)).run()
    assert seen == [1]


def test_each_loader_worker_runs_one_intra_op_thread(tmp_path, monkeypatch):
    layout = make_workdir(tmp_path, n_train=8, n_validation=4)
    split = read_split_tokens(layout, "train", read_vocabulary(layout))
    original = ClipDataset.collate
    monkeypatch.setattr(ClipDataset, "collate", lambda self, items: {**original(self, items),
                                                                      "threads": torch.get_num_threads()})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batches = list(make_split_loader(split, "tokens", objective_for("multilabel"), 30, 4, 0, num_workers=2,
                                         pin_memory=False))
    finally:
        torch.set_num_threads(before)
    assert [batch["threads"] for batch in batches] == [1, 1]
