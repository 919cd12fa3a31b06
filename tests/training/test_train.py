import json
import logging
import re

import numpy as np
import pytest
import torch
from stores import N_CLUSTERS, interrupt_in_second_epoch, make_workdir, write_tokens

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.bundle import load_bundle, save_bundle
from audiotokens.model.inputs import pack_sequences
from audiotokens.model.metrics import multilabel_metrics
from audiotokens.model.objectives import objective_for
from audiotokens.model.parts import CLS, PAD, SEP, TOKEN_OFFSET, AudioClassifier, ModelSpec
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import open_split
from audiotokens.tokens.vocabulary import load_vocabulary
from audiotokens.training.checkpoint import load_checkpoint
from audiotokens.training.datasets import EpochShuffleSampler
from audiotokens.training.optimisation import Trainer
from audiotokens.training.train import (
    ModelBuilder,
    make_split_loader,
    read_split_tokens,
    read_vocabulary,
    still_improving,
)

SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128",
         "train.learning_rate=2e-3", "train.num_workers=0", "train.batch_size=16", "train.device=cpu"]


def small_model(n_classes=4, max_frames=40, n_codebooks=1, dropout=0.0):
    torch.manual_seed(0)
    return AudioClassifier(spec=ModelSpec(
        classes=[f"c{i}" for i in range(n_classes)], codebook_sizes=[N_CLUSTERS] * n_codebooks, hidden_size=64,
        dropout=dropout, encoder_params={"num_layers": 2, "num_heads": 2, "intermediate_size": 128},
        max_positions=max_frames + 2))


MULTILABEL = objective_for("multilabel")


def loader(split, **kwargs):
    return make_split_loader(split, "tokens", MULTILABEL, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine spinning threads cost 5-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread, tmp_path_factory):
    """One multi-label training run shared by the tests that inspect its outputs."""
    root = tmp_path_factory.mktemp("trained")
    layout = make_workdir(root)
    config = load_config(overrides=[*SMALL, "train.epochs=8", "model.dropout=0.0"], workdir=root)
    counts = ModelBuilder(config).run()
    return layout, counts


def test_learns_separable_multilabel_task(trained):
    layout, counts = trained
    assert counts["best_validation_mAP"] > 0.9
    assert counts["epochs_run"] == 8 and counts["train_clips"] == 160 and counts["validation_clips"] == 64
    assert counts["truncated_clips"] == 0 and counts["device"] == "cpu" and counts["samples_per_s"] > 0
    rows = [json.loads(line) for line in layout.metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, 9))
    assert {"loss", "mAP", "micro_f1", "macro_f1", "hamming"} <= set(rows[0]["train"]) & set(rows[0]["validation"])
    best = max(rows, key=lambda row: (row["validation"]["mAP"], -row["epoch"]))
    assert counts["best_epoch"] == best["epoch"]
    assert layout.curves.stat().st_size > 0
    assert load_checkpoint(layout.checkpoints / "best.pt")["epoch"] == best["epoch"]


def test_bundle_is_the_best_checkpoint_and_scores_like_it(trained):
    layout, counts = trained
    bundle = load_bundle(layout.model_dir)
    assert not bundle.model.training
    assert bundle.classes == [f"class {c}" for c in range(4)] and bundle.task == "multilabel"
    vocabulary = load_vocabulary(layout.vocabulary)
    # the frame spec the vocabulary was fitted on (8 mel bands), not the config's (64)
    assert bundle.spectrogram == vocabulary.frame_spec and bundle.spectrogram["n_mels"] == 8
    assert bundle.vocabulary.digest == vocabulary.digest
    best = load_checkpoint(layout.checkpoints / "best.pt")["model"]
    for name, value in bundle.model.state_dict().items():
        assert torch.equal(value, best[name]), name
    split = read_split_tokens(layout, "validation", read_vocabulary(layout))
    tokens = np.load(split.path)
    sequences = [tokens[o:o + n] for o, n in zip(split.index.offsets, split.index.lengths)]
    scores = bundle.scores(sequences, batch_size=7)
    result = multilabel_metrics(split.index.label_matrix(), scores, 0.5)
    assert result["mAP"] == pytest.approx(counts["best_validation_mAP"], abs=1e-5)


def test_bundle_round_trip_gives_the_in_memory_scores(tmp_path):
    model = small_model(n_classes=3, max_frames=30).eval()
    vocabulary = read_vocabulary(make_workdir(tmp_path / "work", n_train=4, n_validation=2))
    save_bundle(model, tmp_path / "model", classes=["c0", "c1", "c2"], task="multilabel", threshold=0.3,
                max_frames=30, vocabulary=vocabulary, spectrogram=vocabulary.frame_spec, versions={})
    bundle = load_bundle(tmp_path / "model")
    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, N_CLUSTERS, size=n) for n in (5, 30, 17, 1, 22)]
    with torch.no_grad():
        expected = np.concatenate([MULTILABEL.scores(model(*pack_sequences([s]))).numpy() for s in sequences])
    np.testing.assert_allclose(bundle.scores(sequences, batch_size=2), expected, atol=1e-6)
    assert bundle.threshold == 0.3 and bundle.max_frames == 30 and bundle.spectrogram == vocabulary.frame_spec
    assert bundle.vocabulary.digest == vocabulary.digest and bundle.vocabulary.path == tmp_path / "model/vocabulary"
    assert bundle.metadata["special_tokens"] == {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3}


def test_load_bundle_rejects_missing_or_incomplete(tmp_path):
    with pytest.raises(UserError, match="not a complete model bundle"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "audiotokens.json").write_text("{}")
    with pytest.raises(UserError, match="missing"):
        load_bundle(tmp_path / "partial")


def test_cluster_zero_embedding_receives_gradient():
    model = small_model()
    input_ids, attention_mask = pack_sequences([np.array([0, 5, 0, 7]), np.array([0, 1])])
    model(input_ids, attention_mask).sum().backward()
    gradient = model.embedder.tables[0].weight.grad
    assert input_ids[0, 1, 0] == TOKEN_OFFSET  # cluster 0 is id 4, not the padding id
    assert gradient[TOKEN_OFFSET].abs().sum() > 0
    assert gradient[PAD].abs().sum() == 0


def test_outputs_do_not_change_with_more_padding():
    model = small_model(max_frames=60).eval()
    rng = np.random.default_rng(2)
    clip = rng.integers(0, N_CLUSTERS, size=9)
    with torch.no_grad():
        alone = model(*pack_sequences([clip]))
        padded = model(*pack_sequences([clip, rng.integers(0, N_CLUSTERS, size=58)]))[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_batches_start_with_cls_and_mask_only_padding(tmp_path):
    layout = make_workdir(tmp_path, n_train=40, n_validation=10)
    split = read_split_tokens(layout, "train", read_vocabulary(layout))
    tokens = np.load(split.path)
    seen = []
    for batch in loader(split, max_frames=30, batch_size=8, shuffle_seed=0, num_workers=0, pin_memory=False):
        ids, mask = batch["inputs"], batch["mask"]
        lengths = torch.as_tensor(split.index.lengths[batch["indices"].numpy()])
        assert (ids[:, 0] == CLS).all()
        expected_mask = torch.arange(ids.shape[1])[None, :] < (lengths[:, None] + 2)
        assert torch.equal(mask.bool(), expected_mask)
        assert (ids[~expected_mask] == PAD).all()
        assert ids.shape[1] == int(lengths.max()) + 2  # padded to the batch's longest clip only
        for row, i in enumerate(batch["indices"].tolist()):
            n, offset = split.index.lengths[i], split.index.offsets[i]
            assert torch.equal(ids[row, 1:n + 1], torch.as_tensor(tokens[offset:offset + n] + TOKEN_OFFSET).long())
            assert ids[row, n + 1, 0] == SEP
        seen += batch["indices"].tolist()
    assert sorted(seen) == list(range(40))


def test_worker_processes_read_the_same_batches(tmp_path):
    layout = make_workdir(tmp_path, n_train=30, n_validation=10)
    split = read_split_tokens(layout, "train", read_vocabulary(layout))
    batches = [list(loader(split, max_frames=30, batch_size=8, shuffle_seed=0, num_workers=workers,
                           pin_memory=False)) for workers in (0, 2)]
    for single, multi in zip(*batches):
        for key in single:
            assert torch.equal(single[key], multi[key])


def test_shuffle_depends_only_on_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(1)
    other = list(sampler)
    again = EpochShuffleSampler(50, seed=3)
    again.set_epoch(2)
    assert list(again) == first and first != other and sorted(first) == list(range(50))


def test_singlelabel_task_learns(tmp_path):
    make_workdir(tmp_path, task="singlelabel")
    config = load_config(overrides=[*SMALL, "train.epochs=6"], workdir=tmp_path)
    counts = ModelBuilder(config).run()
    assert counts["best_validation_accuracy"] > 0.9
    assert load_bundle(Layout(tmp_path).model_dir).scores([np.array([1, 2, 3])]).sum() == pytest.approx(1.0)


def test_resume_after_epoch_one_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    # dropout on and accumulation over batches, so the RNG, optimizer and scheduler states all matter
    overrides = [*SMALL, "train.epochs=3", "model.dropout=0.1", "train.grad_accum=2", "train.grad_clip=1.0"]
    runs = {}
    for name in ("straight", "resumed"):
        make_workdir(tmp_path / name, n_train=48, n_validation=16)
        runs[name] = load_config(overrides=overrides, workdir=tmp_path / name)
    ModelBuilder(runs["straight"]).run()

    original = Trainer.train_epoch
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during epoch 2
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ModelBuilder(runs["resumed"]).run()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    torch.manual_seed(1234)  # whatever the process did since, the checkpoint restores the RNG
    counts = ModelBuilder(runs["resumed"], resume=True).run()
    assert counts["epochs_run"] == 2 and counts["epochs_completed"] == 3

    straight = load_checkpoint(Layout(tmp_path / "straight").checkpoints / "last.pt")
    resumed = load_checkpoint(Layout(tmp_path / "resumed").checkpoints / "last.pt")
    assert straight["model"].keys() == resumed["model"].keys()
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert straight["history"] == [
        {**row, "train_samples_per_s": s["train_samples_per_s"], "epoch_time_s": s["epoch_time_s"],
         "peak_memory_gib": s["peak_memory_gib"]}
        for row, s in zip(resumed["history"], straight["history"])]
    lines = Layout(tmp_path / "resumed").metrics.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def run_files_of(layout: Layout) -> dict[str, bytes]:
    """The bytes of the finished run's files: bundle, log, curves, checkpoints."""
    paths = [layout.metrics, layout.curves, *layout.checkpoints.glob("*.pt"), *layout.model_dir.rglob("*")]
    return {str(path): path.read_bytes() for path in paths if path.is_file()}


def test_a_failed_run_leaves_the_finished_runs_files_and_resumes_aside(tmp_path, monkeypatch):
    layout = make_workdir(tmp_path, n_train=32, n_validation=8)
    ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=2"], workdir=tmp_path)).run()
    finished = run_files_of(layout)
    assert len(finished) > 6 and layout.best_checkpoint.is_file()

    other = load_config(overrides=[*SMALL, "train.epochs=3", "train.learning_rate=1e-3"], workdir=tmp_path)
    interrupt_in_second_epoch(ModelBuilder(other).run, monkeypatch, Trainer)
    assert run_files_of(layout) == finished
    staged = layout.staged_run_files
    assert load_checkpoint(staged.last_checkpoint)["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in staged.metrics.read_text().splitlines()] == [1]

    with pytest.raises(UserError, match="train.partial/checkpoints/last.pt was written by a different run"):
        ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=4", "train.learning_rate=1e-4"],
                                 workdir=tmp_path), resume=True).run()
    counts = ModelBuilder(other, resume=True).run()
    assert counts["epochs_run"] == 2 and not staged.folder.exists()
    assert load_checkpoint(layout.last_checkpoint)["epoch"] == 3
    rows = [json.loads(line) for line in layout.metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    best = max(rows, key=lambda row: (row["validation"]["mAP"], -row["epoch"]))
    assert load_checkpoint(layout.best_checkpoint)["epoch"] == best["epoch"]
    model_card = (layout.model_dir / "README.md").read_text()
    assert f"best epoch {counts['best_epoch']}" in model_card


def test_resume_refuses_a_different_run(tmp_path):
    make_workdir(tmp_path, n_train=32, n_validation=8)
    ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1"], workdir=tmp_path)).run()
    changed = load_config(overrides=[*SMALL, "train.epochs=2", "train.learning_rate=1e-4"], workdir=tmp_path)
    with pytest.raises(UserError, match="learning_rate"):
        ModelBuilder(changed, resume=True).run()
    make_workdir(tmp_path / "fresh", n_train=8, n_validation=4)
    with pytest.raises(UserError, match="no checkpoint"):
        ModelBuilder(load_config(overrides=SMALL, workdir=tmp_path / "fresh"), resume=True).run()


def test_truncation_is_reported(tmp_path, caplog):
    layout = make_workdir(tmp_path, n_train=32, n_validation=16)
    lengths = np.concatenate([open_split(layout, "tokens", s)[1].lengths for s in ("train", "validation")])
    config = load_config(overrides=[*SMALL, "train.epochs=1", "model.max_length=15"], workdir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        counts = ModelBuilder(config).run()
    assert counts["truncated_clips"] == int((lengths > 15).sum()) > 0
    assert counts["truncated_frames"] == int(np.maximum(lengths - 15, 0).sum())
    assert "model.max_length=15 cuts" in caplog.text
    assert load_bundle(layout.model_dir).spec.max_positions == 17


def test_several_codebooks_are_summed_embeddings(tmp_path):
    make_workdir(tmp_path, n_train=32, n_validation=8, n_codebooks=2)
    counts = ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1"], workdir=tmp_path)).run()
    bundle = load_bundle(Layout(tmp_path).model_dir)
    assert counts["epochs_run"] == 1 and bundle.spec.codebook_sizes == [N_CLUSTERS, N_CLUSTERS]
    assert len(bundle.model.embedder.tables) == 2
    assert bundle.scores([np.ones((5, 2), dtype=np.int16)]).shape == (1, 4)


def test_gradient_accumulation_matches_one_large_batch():
    batches = [{"inputs": ids, "mask": mask, "targets": torch.rand(4, 4).round(),
                "indices": torch.arange(4) + 4 * b}
               for b, (ids, mask) in enumerate(pack_sequences([np.arange(10) % N_CLUSTERS] * 4) for _ in range(2))]
    merged = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
    weights = []
    for accumulate, data in ((1, [merged]), (2, batches)):
        model = small_model()
        trainer = Trainer(model=model, objective=MULTILABEL, device=torch.device("cpu"), learning_rate=1e-3,
                          weight_decay=0.01, warmup_ratio=0.0, total_steps=1, grad_accum=accumulate)
        trainer.train_epoch(data, len(data))
        weights.append(model.head.linear.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_bad_tokens_name_the_file(tmp_path):
    layout = make_workdir(tmp_path, n_train=8, n_validation=4)
    vocabulary = read_vocabulary(layout)
    _, index = open_split(layout, "tokens", "validation")
    clips = [(clip_id, np.full((n, 1), N_CLUSTERS - 1)) for clip_id, n in zip(index.ids, index.lengths)]
    clips[-1][1][-1] = N_CLUSTERS  # one id past the codebook, in a store recorded with the right vocabulary
    write_tokens(tmp_path, clips + [(f"train-{i}", np.zeros((3, 1))) for i in range(8)], vocabulary.quantizer)
    with pytest.raises(UserError, match=f"tokens.npy holds ids outside the codebook sizes \\[{N_CLUSTERS}\\]"):
        ModelBuilder(load_config(overrides=SMALL, workdir=tmp_path)).run()
    (layout.vocabulary / "vocabulary.json").unlink()
    with pytest.raises(UserError, match="audiotokens cluster"):
        ModelBuilder(load_config(overrides=SMALL, workdir=tmp_path)).run()


def test_early_stopping_and_resuming_a_finished_run(tmp_path):
    make_workdir(tmp_path, n_train=32, n_validation=8)
    # without learning the validation score never improves after epoch 1
    config = load_config(overrides=[*SMALL, "train.epochs=5", "train.patience=2", "train.learning_rate=0"],
                         workdir=tmp_path)
    counts = ModelBuilder(config).run()
    assert (counts["epochs_run"], counts["best_epoch"]) == (3, 1)
    assert load_checkpoint(Layout(tmp_path).checkpoints / "last.pt")["finished"]
    again = ModelBuilder(config, resume=True).run()
    assert again["epochs_run"] == 0 and again["epochs_completed"] == 3


@pytest.mark.parametrize(("best_epoch", "epochs", "rising"), [(20, 20, True), (19, 20, True), (18, 20, False),
                                                            (1, 1, True), (5, 5, True), (4, 5, False)])
def test_still_improving_is_a_best_epoch_among_the_last_tenth(best_epoch, epochs, rising):
    assert still_improving(best_epoch, epochs) is rising


def test_a_run_that_ends_on_its_best_epoch_says_more_epochs_may_help(tmp_path, caplog):
    make_workdir(tmp_path, n_train=32, n_validation=8)
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1"], workdir=tmp_path)).run()
    assert "was still improving when training ended (best" in caplog.text and "train.epochs=2" in caplog.text
    caplog.clear()
    # without learning the best epoch is the first of two: no warning
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        counts = ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=2", "train.learning_rate=0"],
                                          workdir=tmp_path)).run()
    assert counts["best_epoch"] == 1 and "still improving" not in caplog.text


@pytest.mark.parametrize("held_out", [{"strategy": "kfold"}, {"strategy": "column", "validation_fold": "2"}],
                         ids=["kfold", "column of folds"])
def test_a_kfold_split_keeps_the_last_epoch_never_one_chosen_on_the_held_out_fold(tmp_path, caplog, held_out):
    """Under split.strategy = kfold validation is the held-out fold that the k-fold figures report: the run
    that early-stops at epoch 3 with epoch 1 kept (previous test) trains every epoch and keeps the last."""
    layout = make_workdir(tmp_path, n_train=32, n_validation=8)
    plan = json.loads(layout.split_json.read_text())
    layout.split_json.write_text(json.dumps({**plan, **held_out}))
    config = load_config(overrides=[*SMALL, "train.epochs=5", "train.patience=2", "train.learning_rate=0"],
                         workdir=tmp_path)
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        counts = ModelBuilder(config).run()
    assert (counts["epochs_run"], counts["best_epoch"]) == (5, 5)
    assert load_checkpoint(layout.checkpoints / "best.pt")["epoch"] == 5
    rows = [json.loads(line) for line in layout.metrics.read_text().splitlines()]
    assert [row["best"] for row in rows] == [True] * 5  # each epoch replaces the kept one
    assert "k-fold: validation is the held-out fold, so it chooses nothing" in caplog.text
    assert "train.patience is not used" in caplog.text
    assert "still improving" not in caplog.text  # the last epoch is kept by rule, not because it scored best


@pytest.mark.parametrize("override", ["model.dropout=1.0", "train.warmup_ratio=2", "train.num_workers=-1"])
def test_out_of_range_settings_name_the_key(tmp_path, override):
    with pytest.raises(UserError, match=re.escape(f"'{override.split('=')[0]}'")):
        ModelBuilder(load_config(overrides=[*SMALL, override], workdir=tmp_path)).run()


def test_a_clip_too_long_for_full_attention_asks_for_a_limit(tmp_path, monkeypatch):
    make_workdir(tmp_path, n_train=8, n_validation=4)
    monkeypatch.setattr("audiotokens.training.train.MAX_AUTO_POSITIONS", 20)
    with pytest.raises(UserError, match="model.max_length"):
        ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1"], workdir=tmp_path)).run()
    counts = ModelBuilder(load_config(overrides=[*SMALL, "train.epochs=1", "model.max_length=20"],
                                      workdir=tmp_path)).run()
    assert counts["truncated_clips"] > 0


def test_the_log_states_clips_of_classes_without_training_clips(tmp_path_factory, tmp_path, caplog):
    """Class 'c' is only in the test split: the setup and test lines say so, and metrics.jsonl's test line
    counts its 2 clips as errors, as evaluate does."""
    from projects import copy_project, left_out_project, project_config

    root = copy_project(left_out_project(tmp_path_factory), tmp_path / "copy")
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        counts = ModelBuilder(project_config(root)).run()
    assert "test: 2 clips of 1 class without a training clip (c) left the split" in caplog.text
    assert re.search(r"test \(4 clips \+ 2 left out, counted as errors, best epoch \d by validation\)", caplog.text)
    rows = [json.loads(line) for line in Layout(root / "work").metrics.read_text().splitlines()]
    test = rows[-1]["test"]
    assert (test["left_out_clips"], test["left_out_classes"]) == (2, ["c"])
    assert test["accuracy"] == pytest.approx(test["accuracy_kept_classes"] * 4 / 6) == counts["test_accuracy"]
    assert "left_out_clips" not in rows[0]["validation"]  # validation lost nothing
