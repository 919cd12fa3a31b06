"""What the train stage does for speed on a CPU: intra-op threads (train.threads and the policy of
pipeline/cpus.py), bf16 autocast where the CPU multiplies bf16 natively (train.amp), torch.compile
(train.compile)."""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from stores import N_CLUSTERS, make_workdir

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.inputs import pack_frames, pack_sequences
from audiotokens.model.objectives import objective_for
from audiotokens.model.parts import AudioClassifier, ModelSpec
from audiotokens.pipeline import cpus
from audiotokens.pipeline.layout import Layout
from audiotokens.training import optimisation
from audiotokens.training.datasets import ClipDataset
from audiotokens.training.optimisation import Trainer, autocast_dtype, compile_model, describe_precision
from audiotokens.training.train import ModelBuilder, make_split_loader, read_split_tokens, read_vocabulary

SMALL = ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.learning_rate=2e-3", "train.num_workers=0", "train.batch_size=16", "train.device=cpu",
         "model.dropout=0.0"]
CPU = torch.device("cpu")


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


# ---------------------------------------------------------------- bf16 on a CPU


@pytest.mark.parametrize(("feature", "amp", "expected"), [("AVX512-BF16", True, torch.bfloat16),
                                                           ("AMX", True, torch.bfloat16),
                                                           ("", True, None), ("AMX", False, None)])
def test_cpu_autocast_only_where_the_cpu_has_bf16(monkeypatch, feature, amp, expected):
    monkeypatch.setattr(optimisation, "cpu_bf16", lambda: feature)
    assert autocast_dtype(CPU, amp) is expected
    described = describe_precision(CPU, amp, expected)
    assert described.startswith("bf16 autocast" if expected else "fp32")
    assert (f"the CPU has {feature})" in described) == (amp and bool(feature))
    assert ("no native bf16" in described) == (amp and not feature)


def test_the_cpu_probe_names_a_feature_or_nothing():
    assert optimisation.__dict__["cpu_bf16"]() in ("", "AVX512-BF16", "AMX")  # the real probe, not the tests'


def classifier(encoder: str) -> AudioClassifier:
    frames = encoder == "cnn"
    params = {"num_layers": 2} if frames else {"num_layers": 2, "num_heads": 2, "intermediate_size": 64}
    torch.manual_seed(0)
    return AudioClassifier(spec=ModelSpec(
        classes=["a", "b", "c"], input="frames" if frames else "tokens", codebook_sizes=[] if frames else [N_CLUSTERS],
        input_dim=8, encoder=encoder, encoder_params=params, hidden_size=32, dropout=0.0,
        pooling="mean" if frames else "cls", max_positions=32))


def batch_for(encoder: str) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    lengths = (20, 13, 7, 30)
    if encoder == "cnn":
        inputs, mask = pack_frames([rng.random((n, 8), dtype=np.float32) for n in lengths])
    else:
        inputs, mask = pack_sequences([rng.integers(0, N_CLUSTERS, (n, 1)) for n in lengths])
    return {"inputs": inputs, "mask": mask, "targets": torch.tensor([[1., 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]),
            "indices": torch.arange(4)}


@pytest.mark.parametrize("encoder", ["bert", "conformer", "cnn"])
def test_bf16_steps_on_a_cpu_keep_shapes_and_stay_finite(monkeypatch, encoder):
    monkeypatch.setattr(optimisation, "cpu_bf16", lambda: "AMX")
    batch = batch_for(encoder)
    results = {}
    for amp in (False, True):
        model = classifier(encoder)
        inner = []  # the dtype a matrix product of the encoder gives
        products = [m for m in model.encoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        products[0].register_forward_hook(lambda module, args, out, seen=inner: seen.append(out.dtype))
        trainer = Trainer(model=model, objective=objective_for("multilabel"), device=CPU, learning_rate=1e-3,
                          weight_decay=0.0, warmup_ratio=0.0, total_steps=2, amp=amp)
        assert trainer.precision == ("bf16" if amp else "fp32")
        loss, logits, _ = trainer.forward(batch)
        trainer.train_epoch([batch, batch], 2)
        results[amp] = (loss, logits, inner[0])
        assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    (_, logits32, inner32), (loss16, logits16, inner16) = results[False], results[True]
    assert (inner32, inner16) == (torch.float32, torch.bfloat16)  # the encoder's products really ran in bf16
    assert logits16.shape == logits32.shape and logits16.dtype == torch.float32
    assert torch.isfinite(logits16).all() and math.isfinite(loss16.item())
    assert torch.allclose(logits16, logits32, atol=0.1)  # the same model, rounded


def test_train_logs_bf16_and_records_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(optimisation, "cpu_bf16", lambda: "AVX512-BF16")
    make_workdir(tmp_path, n_train=16, n_validation=8)
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        counts = ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1"], workdir=tmp_path)).run()
    assert counts["precision"] == "bf16"
    assert "bf16 autocast (train.amp; the CPU has AVX512-BF16)" in caplog.text
    row = json.loads(Layout(tmp_path).metrics.read_text().splitlines()[-1])
    assert all(math.isfinite(row[side][name]) for side in ("train", "validation") for name in ("loss", "mAP"))


@pytest.mark.slow
def test_bf16_training_validates_like_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(optimisation, "cpu_bf16", lambda: "AMX")
    figures = {}
    for amp in ("false", "true"):
        make_workdir(tmp_path / amp, n_train=96, n_validation=64)
        config = load_config(overrides=[*SMALL, "model.num_layers=1", "train.learning_rate=5e-3", "train.epochs=10",
                                        f"train.amp={amp}"], workdir=tmp_path / amp)
        counts = ModelBuilder(config).run()
        assert counts["precision"] == ("bf16" if amp == "true" else "fp32")
        figures[amp] = counts["best_validation_mAP"]
    assert min(figures.values()) > 0.8 and abs(figures["true"] - figures["false"]) <= 0.03, figures


# ---------------------------------------------------------------- torch.compile


def test_compile_without_a_compiler_is_one_line(monkeypatch):
    monkeypatch.setattr(optimisation, "cpp_compiler", lambda: "")
    with pytest.raises(UserError, match="train.compile on a CPU needs a C\\+\\+ compiler"):
        compile_model(classifier("bert"), CPU)


@pytest.mark.slow
def test_compiled_training_validates_like_eager(tmp_path):
    if not optimisation.cpp_compiler():
        pytest.skip("torch.compile on a CPU needs a C++ compiler (g++ or clang++); none found")
    rows = {}
    for compiled in ("false", "true"):
        make_workdir(tmp_path / compiled, n_train=32, n_validation=16, lengths=(12, 13))
        config = load_config(overrides=[*SMALL, "train.epochs=2", f"train.compile={compiled}"],
                             workdir=tmp_path / compiled)
        ModelBuilder(config).run()
        rows[compiled] = [json.loads(line) for line in Layout(tmp_path / compiled).metrics.read_text().splitlines()]
    assert len(rows["true"]) == len(rows["false"]) == 2
    for eager, compiled in zip(rows["false"], rows["true"]):
        for name in ("loss", "mAP"):
            assert compiled["validation"][name] == pytest.approx(eager["validation"][name], abs=1e-4), name
