"""Masked pre-training: masking statistics, targets, the pretrain stage, and fine-tuning from it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stores import frame_spec as make_frame_spec
from stores import interrupt_in_second_epoch, make_workdir, write_frames, write_plan, write_tokens

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.inputs import pack_sequences
from audiotokens.model.parts import CLS, MASK, PAD, SEP, TOKEN_OFFSET, AudioClassifier, ModelSpec
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stages import input_names
from audiotokens.pipeline.stores import SplitPlan
from audiotokens.training.finetune import FineTuning
from audiotokens.training.pretrain import (
    IGNORE,
    Pretrainer,
    hold_out,
    masked_loss,
    mlm_corrupt,
    pretraining_ids,
)
from audiotokens.training.train import ModelBuilder

SMALL = ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.num_workers=0", "train.batch_size=16", "train.device=cpu", "model.dropout=0.0",
         "pretrain.batch_size=16", "pretrain.learning_rate=3e-3"]


def _batch(n_clips=64, length=200, sizes=(50,), seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length, size=n_clips)
    clips = [np.stack([rng.integers(0, s, size=n) for s in sizes], axis=1) for n in lengths]
    return pack_sequences(clips)


def test_masking_fraction_spans_and_80_10_10():
    ids, mask = _batch()
    masked = mlm_corrupt(ids, mask, codebook_sizes=[50], mask_prob=0.15, span=3,
                         generator=torch.Generator().manual_seed(1))
    where = masked.where
    lengths = mask.sum(dim=1)
    for row in range(len(ids)):
        content = int(lengths[row]) - 2
        assert int(where[row].sum()) == (int(0.15 * content) // 3) * 3
        # never [CLS], [SEP] or padding
        assert not where[row, 0] and not where[row, int(lengths[row]) - 1:].any()
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, where[row].int().numpy(), 0])))[::2]
        assert all(run % 3 == 0 for run in runs)  # whole spans (touching spans merge into longer runs)
    chosen_in, chosen_out = masked.inputs[where][:, 0], ids[where][:, 0]
    n = len(chosen_in)
    as_mask = float((chosen_in == MASK).float().mean())
    unchanged = float((chosen_in == chosen_out).float().mean())
    replaced = 1 - as_mask - unchanged
    spread = 3 * np.sqrt(0.1 * 0.9 / n)
    assert abs(as_mask - 0.8) < 3 * np.sqrt(0.16 / n)
    # a random id equals the original with chance 1/50, so "unchanged" is 0.1 + 0.1/50
    assert abs(unchanged - (0.1 + 0.1 / 50)) < spread and abs(replaced - 0.1 * 49 / 50) < spread
    assert ((chosen_in == MASK) | ((chosen_in >= TOKEN_OFFSET) & (chosen_in < TOKEN_OFFSET + 50))).all()
    assert torch.equal(masked.inputs[~where], ids[~where])


def test_targets_are_the_original_clusters_and_never_special_tokens():
    ids, mask = _batch(n_clips=16, sizes=(5, 7))
    masked = mlm_corrupt(ids, mask, codebook_sizes=[5, 7], mask_prob=0.3, span=2,
                         generator=torch.Generator().manual_seed(3))
    labels = masked.labels
    assert torch.equal(labels[masked.where], ids[masked.where] - TOKEN_OFFSET)
    assert (labels[~masked.where] == IGNORE).all()
    special = (ids[..., 0] == PAD) | (ids[..., 0] == CLS) | (ids[..., 0] == SEP)
    assert (labels[special] == IGNORE).all()
    for codebook, size in enumerate((5, 7)):  # random replacements stay inside each codebook
        replaced = masked.inputs[..., codebook][masked.where]
        assert ((replaced == MASK) | ((replaced >= TOKEN_OFFSET) & (replaced < TOKEN_OFFSET + size))).all()


def test_masked_loss_is_cross_entropy_at_chosen_positions():
    logits = [torch.randn(2, 5, 4)]
    labels = torch.full((2, 5, 1), IGNORE)
    labels[0, 1, 0], labels[1, 3, 0] = 2, 0
    loss, correct, count = masked_loss(logits, labels)
    rows = torch.stack([logits[0][0, 1], logits[0][1, 3]])
    expected = -torch.log_softmax(rows, dim=-1)[[0, 1], [2, 0]].mean()
    assert count == 2 and torch.allclose(loss, expected)
    assert correct == int(rows[0].argmax() == 2) + int(rows[1].argmax() == 0)


def test_pretraining_set_excludes_validation_and_test(tmp_path):
    write_plan(tmp_path, {"train": ["a", "b"], "validation": ["v"], "test": ["t"]},
               {i: [0] for i in "abvt"}, ["x"])
    plan = SplitPlan.load(Layout(tmp_path))
    plan.clips.append({"id": "u1", "audio": "", "labels": []})
    plan.clips.append({"id": "u2", "audio": "", "labels": []})
    train, unlabelled = pretraining_ids(plan)
    assert train == ["a", "b"] and unlabelled == ["u1", "u2"]
    fit, held = hold_out(train, unlabelled, 0.5, seed=0)
    assert len(held) == 1 and held[0] in unlabelled and set(fit) == {"a", "b", "u1", "u2"} - set(held)


def _repetitive_workdir(root):
    """Tokens that repeat a 4-cluster cycle: a masked token is predictable from its neighbours."""
    layout = make_workdir(root, n_train=96, n_validation=8, lengths=(20, 30))
    rng = np.random.default_rng(0)
    index = json.loads(layout.tokens_index.read_text())
    from audiotokens.tokens.vocabulary import load_vocabulary
    quantizer = load_vocabulary(layout.vocabulary).quantizer
    clips = []
    for clip_id, n in zip(index["ids"], index["lengths"]):
        start = int(rng.integers(4))
        clips.append((clip_id, ((np.arange(n) + start) % 4 * 5)[:, None]))
    write_tokens(root, clips, quantizer)
    return layout


def test_mlm_loss_falls_on_a_repetitive_corpus_and_init_and_freeze(tmp_path):
    layout = _repetitive_workdir(tmp_path)
    config = load_config(overrides=[*SMALL, "pretrain.epochs=45", "pretrain.mask_prob=0.2", "pretrain.span=1", "pretrain.batch_size=8",
                                    "pretrain.heldout=0.2"], workdir=tmp_path)
    counts = Pretrainer(config).run()
    out = tmp_path / "output" / "pretrain"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["heldout"], rows[-1]["heldout"]
    assert last["loss"] < 0.5 * first["loss"]
    assert last["masked_accuracy"] > 0.6  # chance is 1/4 among the cycle's clusters
    assert counts["fit_clips"] + counts["heldout_clips"] == 96  # the training split only, no validation
    for name in ("model.safetensors", "model_spec.json", "audiotokens.json", "curves.png"):
        assert (out / name).is_file()

    # init restores the embedder and encoder exactly
    pretrained = load_file(str(out / "model.safetensors"))
    spec = ModelSpec.from_json(json.loads((out / "model_spec.json").read_text()))
    model = AudioClassifier(spec=spec)
    from audiotokens.tokens.vocabulary import load_vocabulary
    vocab = load_vocabulary(layout.vocabulary)
    FineTuning(init=str(out)).initialise(model, frame_spec=vocab.frame_spec, vocabulary_digest=vocab.digest)
    state = model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in pretrained.items())

    # another vocabulary is refused in one line
    meta = json.loads((out / "audiotokens.json").read_text())
    with pytest.raises(UserError, match="another vocabulary"):
        FineTuning(init=str(out)).initialise(model, frame_spec=vocab.frame_spec, vocabulary_digest="0" * 16)
    with pytest.raises(UserError, match="other frames"):
        FineTuning(init=str(out)).initialise(model, frame_spec=make_frame_spec(3), vocabulary_digest=vocab.digest)
    assert meta["vocabulary_digest"] == vocab.digest

    # fine-tuning with the embeddings and the lowest layer frozen leaves them bit-identical
    tuned = load_config(overrides=[*SMALL, "train.epochs=1", "train.learning_rate=1e-2", f"train.init={out}",
                                   "train.freeze=1"], workdir=tmp_path)
    assert "pretrain" in input_names("train", tuned)
    ModelBuilder(tuned).run()
    bundle = load_file(str(tmp_path / "output" / "model" / "model.safetensors"))
    frozen = [n for n in pretrained if n.startswith(("embedder.", "encoder.bert.embeddings.",
                                                    "encoder.bert.encoder.layer.0."))]
    moving = [n for n in pretrained if n.startswith("encoder.bert.encoder.layer.1.") and n.endswith("weight")]
    assert frozen and moving
    assert all(torch.equal(bundle[n], pretrained[n]) for n in frozen)
    assert any(not torch.equal(bundle[n], pretrained[n]) for n in moving)


def test_an_interrupted_pretraining_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """Dropout on (random states restored), no held-out pass (so each epoch is one _pass call)."""
    settings = [*SMALL, "model.dropout=0.1", "pretrain.epochs=3", "pretrain.heldout=0"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for root in (straight, interrupted):
        _repetitive_workdir(root)
    Pretrainer(load_config(overrides=settings, workdir=straight)).run()
    config = load_config(overrides=settings, workdir=interrupted)
    interrupt_in_second_epoch(Pretrainer(config).run, monkeypatch, Pretrainer, method="_pass")
    assert not (interrupted / "output" / "pretrain").exists()
    Pretrainer(config, resume=True).run()
    expected = load_file(str(straight / "output" / "pretrain" / "model.safetensors"))
    resumed = load_file(str(interrupted / "output" / "pretrain" / "model.safetensors"))
    assert all(torch.equal(resumed[name], value) for name, value in expected.items())
    rows = [json.loads(line) for line in (interrupted / "output" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]

    # another setting is refused in one line; more epochs continue the schedule from where it was
    with pytest.raises(UserError, match="pretrain.mask_prob"):
        Pretrainer(load_config(overrides=[*settings, "pretrain.mask_prob=0.3"], workdir=interrupted),
                   resume=True).run()
    with pytest.raises(UserError, match="finished its learning-rate schedule"):
        Pretrainer(load_config(overrides=[*SMALL, "model.dropout=0.1", "pretrain.epochs=4", "pretrain.heldout=0"],
                               workdir=interrupted), resume=True).run()


def test_masked_frames_predicts_token_ids_from_frames(tmp_path):
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(6, 4)).astype(np.float32)
    ids = {"train": [f"t{i}" for i in range(20)], "validation": ["v0", "v1"]}
    write_plan(tmp_path, ids, {i: [0] for split in ids.values() for i in split}, ["x"])
    from stores import write_vocabulary
    quantizer = write_vocabulary(tmp_path, centroids)
    clips, tokens = [], []
    for clip_id in ids["train"] + ids["validation"]:
        clusters = (np.arange(int(rng.integers(12, 20))) + int(rng.integers(6))) % 6
        clips.append((clip_id, centroids[clusters] + 0.01 * rng.normal(size=(len(clusters), 4)).astype(np.float32)))
        tokens.append((clip_id, clusters[:, None]))
    write_frames(tmp_path, clips)
    write_tokens(tmp_path, tokens, quantizer)
    config = load_config(overrides=[*SMALL, "pretrain.objective=masked_frames", "pretrain.epochs=2", "pretrain.mask_prob=0.4"],
                         workdir=tmp_path)
    counts = Pretrainer(config).run()
    meta = json.loads((tmp_path / "output" / "pretrain" / "audiotokens.json").read_text())
    assert meta["input"] == "frames" and counts["heldout_masked_accuracy"] is not None
    assert np.isfinite(counts["heldout_loss"])
    assert set(input_names("pretrain", config)) == {"split", "tokenize", "spectrogram"}


def test_a_diverging_pretraining_stops_in_one_line_and_writes_nothing(tmp_path):
    make_workdir(tmp_path, n_train=16, n_validation=4)
    # AdamW scales the weights by 1 - lr·weight_decay: after the warm-up step they are ~1e25 and the scores
    # overflow
    config = load_config(overrides=[*SMALL, "pretrain.epochs=2", "train.weight_decay=1e30"], workdir=tmp_path)
    with pytest.raises(UserError, match=r"training diverged in epoch 2, step 2: the held-out loss became NaN "
                                        r"or infinite; train.weight_decay \(1e\+30\) times "
                                        r"pretrain.learning_rate"):
        Pretrainer(config).run()
    assert not (tmp_path / "output" / "pretrain").exists()


@pytest.mark.parametrize("encoder", ["cnn", "ssl"])
def test_an_encoder_without_one_output_per_position_is_named_as_the_reason(tmp_path, encoder):
    make_workdir(tmp_path, n_train=8, n_validation=4)
    config = load_config(overrides=[*SMALL, f"model.encoder={encoder}"], workdir=tmp_path)
    with pytest.raises(UserError, match=f"^pre-training needs an encoder with one output per position "
                                        f"\\(bert or conformer\\), got model.encoder={encoder}$"):
        Pretrainer(config).run()


def test_init_from_a_pretraining_with_other_heads_is_refused_in_one_line(tmp_path):
    """Q/K/V matrices have the same shapes whatever model.num_heads: the model specs are compared."""
    make_workdir(tmp_path, n_train=16, n_validation=4)
    Pretrainer(load_config(overrides=[*SMALL, "pretrain.epochs=1"], workdir=tmp_path)).run()
    out = tmp_path / "output" / "pretrain"
    config = load_config(overrides=[*SMALL, "model.num_heads=4", "train.epochs=1", f"train.init={out}"],
                         workdir=tmp_path)
    with pytest.raises(UserError, match=r"^'train.init' \(.*pretrain\) has another network than model.\* "
                                        r"describes \(model.num_heads 2 there, 4 here\); use the model.\* "
                                        r"settings"):
        ModelBuilder(config).run()


def test_unlabelled_audio_joins_the_catalogue_in_no_split(tmp_path):
    import soundfile as sf

    from audiotokens.data.split import DatasetSplitter

    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(8):
        sf.write(tmp_path / f"l{i}.wav", rng.normal(size=4000).astype(np.float32) * 0.1, 8000)
        rows.append(f"l{i}.wav,{'ab'[i % 2]}")
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "more").mkdir()
    for i in range(3):
        sf.write(tmp_path / "more" / f"u{i}.wav", rng.normal(size=4000).astype(np.float32) * 0.1, 8000)
    (tmp_path / "unlabelled.csv").write_text("path\nmore/u0.wav\nmore/u1.wav\nmissing.wav\n")
    config = load_config(overrides=[f"data.manifest={tmp_path / 'labelled.csv'}", "split.strategy=random",
                                    "split.validation_ratio=0.25", "split.test_ratio=0.25",
                                    f"pretrain.manifest={tmp_path / 'unlabelled.csv'}",
                                    f"pretrain.folder={tmp_path / 'more'}"], workdir=tmp_path / "work")
    DatasetSplitter(config).run()
    plan = SplitPlan.load(Layout(tmp_path / "work"))
    unlabelled = [c for c in plan.clips if c.get("unlabelled")]
    assert sorted(c["id"] for c in unlabelled) == ["unlabelled/more/u0.wav", "unlabelled/more/u1.wav",
                                                   "unlabelled/u0.wav", "unlabelled/u1.wav", "unlabelled/u2.wav"]
    in_splits = {i for ids in plan.splits.values() for i in ids}
    assert not in_splits & {c["id"] for c in unlabelled} and all(c["labels"] == [] for c in unlabelled)
    train, extra = pretraining_ids(plan)
    assert set(train) == set(plan.splits["train"]) and set(extra) == {c["id"] for c in unlabelled}


def test_decoded_embeddings_pretrain_and_unfreeze_after_trains_frozen_parts_again(tmp_path):
    make_workdir(tmp_path, n_train=32, n_validation=8, lengths=(12, 20))
    small = [*SMALL, "model.token_embedding=decoded"]
    Pretrainer(load_config(overrides=[*small, "pretrain.epochs=1", "pretrain.mask_prob=0.3"],
                           workdir=tmp_path)).run()
    out = tmp_path / "output" / "pretrain"
    pretrained = load_file(str(out / "model.safetensors"))
    assert any(name.startswith("embedder.frames.special") for name in pretrained)  # the learned [MASK] vector
    tuned = load_config(overrides=[*small, "train.epochs=2", "train.learning_rate=1e-2", f"train.init={out}",
                                   "train.freeze=2", "train.unfreeze_after=1"], workdir=tmp_path)
    ModelBuilder(tuned).run()
    from audiotokens.training.checkpoint import load_checkpoint
    last = load_checkpoint(tmp_path / "output" / "checkpoints" / "last.pt")["model"]  # after epoch 2
    layer = [n for n in pretrained if n.startswith("encoder.bert.encoder.layer.0.") and n.endswith("weight")]
    assert any(not torch.equal(last[n].cpu(), pretrained[n]) for n in layer)
