"""The model made of parts: padding invariance of every encoder x pooling, heads, decoded embeddings, the
bundle's ModelSpec, frames input, resume per encoder, the schedule on resume, the test split."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from stores import (
    FRAME_DIM,
    N_CLUSTERS,
    assert_resume_matches_straight,
    frame_spec,
    make_frames_workdir,
    make_workdir,
)

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.evaluation.evaluate import Evaluator
from audiotokens.model.bundle import load_bundle, save_bundle
from audiotokens.model.inputs import pack_frames, pack_sequences
from audiotokens.model.objectives import objective_for
from audiotokens.model.parts import (
    CLS,
    ENCODERS,
    MASK,
    PAD,
    POOLINGS,
    SEP,
    TOKEN_OFFSET,
    AudioClassifier,
    ModelSpec,
    decode_tables,
)
from audiotokens.pipeline.layout import Layout
from audiotokens.tokens.quantizers import Quantizer
from audiotokens.tokens.vocabulary import Vocabulary, load_vocabulary, save_vocabulary
from audiotokens.training.optimisation import Trainer, WarmupLinearSchedule, accumulation_dtype
from audiotokens.training.train import ModelBuilder

TINY = ["model.num_layers=1", "model.hidden_size=16", "model.num_heads=2", "model.intermediate_size=32",
        "train.learning_rate=3e-3", "train.num_workers=0", "train.batch_size=16", "train.device=cpu",
        "model.dropout=0.0", "train.warmup_ratio=0.0"]
# the speech-model encoder reads waveforms through a pretrained model: test_waveform_finetune.py covers it
GENERIC_ENCODERS = [encoder for encoder in ENCODERS if encoder != "ssl"]
COMBINATIONS = [(encoder, pooling) for encoder in GENERIC_ENCODERS for pooling in POOLINGS
                if not (encoder == "cnn" and pooling == "cls")]  # a CNN has no [CLS] position


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_spec(encoder="bert", pooling="cls", input_kind=None, **changes) -> ModelSpec:
    input_kind = input_kind or ("frames" if encoder == "cnn" else "tokens")
    return ModelSpec(**{
        "classes": ["a", "b", "c"], "input": input_kind,
        "codebook_sizes": [N_CLUSTERS] if input_kind == "tokens" else [], "input_dim": FRAME_DIM,
        "encoder": encoder, "encoder_params": {"num_layers": 1, "num_heads": 2, "intermediate_size": 32},
        "hidden_size": 16, "dropout": 0.0, "pooling": pooling, "max_positions": 64, **changes})


def clip(spec: ModelSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec.input == "frames":
        return rng.random((n, spec.input_dim)).astype(np.float32)
    return np.stack([rng.integers(0, size, size=n) for size in spec.codebook_sizes], axis=1)


def pack(spec: ModelSpec, clips):
    return (pack_frames if spec.input == "frames" else pack_sequences)(clips)


@pytest.mark.parametrize("encoder, pooling", COMBINATIONS)
def test_padding_and_junk_in_padding_never_change_the_output(encoder, pooling):
    torch.manual_seed(0)
    spec = tiny_spec(encoder, pooling)
    model = AudioClassifier(spec=spec).eval()
    rng = np.random.default_rng(3)
    short, long = clip(spec, 9, rng), clip(spec, 40, rng)
    with torch.no_grad():
        alone = model(*pack(spec, [short]))
        inputs, mask = pack(spec, [short, long])
        padded = model(inputs, mask)[:1]
        junk = inputs.clone()
        junk[0, 11:] = torch.as_tensor(clip(spec, junk.shape[1] - 11, rng) + (TOKEN_OFFSET if spec.input == "tokens"
                                                                               else 0))
        with_junk = model(junk, mask)[:1]
    assert not torch.equal(junk[0, 11:], inputs[0, 11:])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_junk, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks, short_length", [(2, 3), (4, 15), (4, 1)])
def test_a_cnn_tells_clips_shorter_than_its_pooling_apart(blocks, short_length):
    """Blocks halve time: a clip under 2 ** blocks frames used to pool to nothing (one constant output for
    every such clip, or an avg_pool2d error alone). It reads as if followed by zero frames: its output
    depends on it, and is the same alone as beside a long clip."""
    torch.manual_seed(0)
    spec = tiny_spec("cnn", "mean", encoder_params={"num_layers": blocks})
    model = AudioClassifier(spec=spec).eval()
    rng = np.random.default_rng(1)
    tone = np.zeros((short_length, spec.input_dim), np.float32)
    tone[:, 2] = 1.0
    noise = rng.random((short_length, spec.input_dim)).astype(np.float32)
    long = clip(spec, 40, rng)
    with torch.no_grad():  # the pooled embeddings: the head's initial weights make every logit tiny
        alone = [model.embed(*pack(spec, [c])) for c in (tone, noise)]
        beside = [model.embed(*pack(spec, [c, long]))[:1] for c in (tone, noise)]
    assert (alone[0] - alone[1]).abs().max() > 1e-2 * alone[0].abs().max() > 0
    for one, batched in zip(alone, beside):
        torch.testing.assert_close(batched, one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("override", ["model.max_length=1", "train.crop_frames=3", "train.eval_window=2"])
def test_cuts_shorter_than_the_cnn_reads_are_one_line_errors(tmp_path, override):
    make_frames_workdir(tmp_path, n_train=8, n_validation=4)
    config = load_config(overrides=[*TINY, "model.input=frames", "model.encoder=cnn", "model.pooling=mean",
                                    "model.num_layers=2", "train.epochs=1", override], workdir=tmp_path)
    with pytest.raises(UserError, match=rf"'{override.split('=')[0]}' \(\d+\) is shorter than the 4 frames"
                                        r".*use at least 4") as error:
        ModelBuilder(config).run()
    assert "\n" not in str(error.value)


def test_the_bundle_says_when_it_pads_short_clips_for_a_cnn(tmp_path, caplog):
    spec = tiny_spec("cnn", "mean", encoder_params={"num_layers": 3})
    torch.manual_seed(0)
    save_bundle(AudioClassifier(spec=spec), tmp_path / "model", classes=spec.classes, task="singlelabel",
                threshold=0.5, max_frames=spec.max_frames, vocabulary=None, spectrogram=frame_spec(FRAME_DIM),
                versions={})
    bundle = load_bundle(tmp_path / "model")
    rng = np.random.default_rng(0)
    with caplog.at_level("WARNING", logger="audiotokens"):
        scores = bundle.scores([clip(spec, 2, rng), clip(spec, 5, rng), clip(spec, 30, rng)])
    assert np.isfinite(scores).all() and not np.array_equal(scores[0], scores[1])  # was one constant
    assert [r.getMessage() for r in caplog.records if "padded" in r.getMessage()] == [
        "2 of 3 clips are shorter than the 8 frames model.encoder=cnn reads; they are padded with zero frames to 8"]


def test_am_softmax_logits_are_scaled_cosines_with_the_margin_on_the_target_in_training():
    spec = tiny_spec(pooling="mean", head="am_softmax", margin=0.2, scale=10.0, classes=["a", "b"])
    head = AudioClassifier(spec=spec).head
    pooled = torch.tensor([[3.0, 4.0] + [0.0] * 14])
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, 0], head.weight[1, 1] = 1.0, 2.0  # unit directions e0 and e1
    # cos = (0.6, 0.8); training subtracts the margin at the target class only, evaluation does not
    head.train()
    torch.testing.assert_close(head(pooled, torch.tensor([1])), torch.tensor([[10 * 0.6, 10 * (0.8 - 0.2)]]))
    torch.testing.assert_close(head(pooled, torch.tensor([0])), torch.tensor([[10 * (0.6 - 0.2), 10 * 0.8]]))
    head.eval()
    torch.testing.assert_close(head(pooled, torch.tensor([1])), torch.tensor([[6.0, 8.0]]))
    head.train()
    torch.testing.assert_close(head.remove_margin(head(pooled, torch.tensor([1])), torch.tensor([1])),
                               torch.tensor([[6.0, 8.0]]))


def test_training_scores_of_a_margin_head_are_the_scores_evaluation_gives():
    """The training accuracy of am_softmax is measured without the margin (with it, it stays near 0)."""
    spec = tiny_spec(pooling="mean", head="am_softmax", margin=0.35, scale=30.0)
    model = AudioClassifier(spec=spec)
    rng = np.random.default_rng(0)
    inputs, mask = pack(spec, [clip(spec, n, rng) for n in (9, 14, 6, 11)])
    targets = torch.tensor([0, 1, 2, 1])
    objective = objective_for("singlelabel")
    with torch.no_grad():
        expected = objective.scores(model.eval()(inputs, mask)).numpy()
    trainer = Trainer(model=model, objective=objective, device=torch.device("cpu"), learning_rate=1e-3,
                      weight_decay=0.0, warmup_ratio=0.0, total_steps=1)
    batch = {"inputs": inputs, "mask": mask, "targets": targets, "indices": torch.arange(4)}
    result = trainer.train_epoch([batch], 1)  # scores of the forward pass before the step (dropout is 0)
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_decoded_embeddings_are_the_projection_of_the_decoded_frames(combine):
    tables = [torch.arange(6.0).reshape(3, 2), 10 + torch.arange(6.0).reshape(3, 2)]
    dims = [2, 2]
    spec = tiny_spec(token_embedding="decoded", codebook_sizes=[3, 3], decode_dims=dims, decode_combine=combine,
                     input_dim=4 if combine == "concat" else 2)
    embedder = AudioClassifier(spec=spec, decode_tables=tables).embedder
    ids = torch.tensor([[[CLS, CLS], [4 + 2, 4 + 0], [4 + 0, 4 + 1], [SEP, SEP], [PAD, PAD], [MASK, MASK]]])
    W, b = embedder.frames.projection.weight.detach(), embedder.frames.projection.bias.detach()
    special = embedder.frames.special.weight.detach()
    parts = [(tables[0][2], tables[1][0]), (tables[0][0], tables[1][1])]
    frames = [torch.cat(p) if combine == "concat" else p[0] + p[1] for p in parts]
    expected = torch.stack([special[CLS], W @ frames[0] + b, W @ frames[1] + b, special[SEP], special[PAD],
                            special[MASK]])
    torch.testing.assert_close(embedder(ids, torch.ones(1, 6, dtype=torch.long))[0], expected)


def test_only_a_tokens_model_with_decoded_embeddings_gets_decode_tables():
    books = [np.arange(6, dtype=np.float64).reshape(3, 2), np.ones((4, 2))]
    for book in books:
        book.flags.writeable = False  # as a loaded quantizer's codebooks are
    vocab = SimpleNamespace(quantizer=SimpleNamespace(codebooks=books))
    for embedding in ("decoded", "decoded+learned"):
        tables = decode_tables("tokens", embedding, vocab)
        assert [t.dtype for t in tables] == [np.float32, np.float32] and all(t.flags.writeable for t in tables)
        assert all(np.array_equal(t, book) for t, book in zip(tables, books))
        assert tiny_spec(token_embedding=embedding).decodes
    assert decode_tables("tokens", "learned", vocab) == [] and not tiny_spec(token_embedding="learned").decodes
    assert decode_tables("frames", "decoded", None) == []  # a frames model reads frames: no vocabulary needed
    assert not ModelSpec(classes=["a"], input="frames", token_embedding="decoded", input_dim=4).decodes


def test_decoded_plus_learned_starts_at_the_decoded_embedding_and_learns_per_id():
    tables = [torch.randn(N_CLUSTERS, FRAME_DIM)]
    decoded = AudioClassifier(spec=tiny_spec(token_embedding="decoded", decode_dims=[FRAME_DIM]), decode_tables=tables)
    both = AudioClassifier(spec=tiny_spec(token_embedding="decoded+learned", decode_dims=[FRAME_DIM]),
                           decode_tables=tables)
    missing, _ = both.load_state_dict(decoded.state_dict(), strict=False)
    assert missing == ["embedder.tables.0.weight"]
    assert both.embedder.tables[0].weight.abs().sum() == 0
    ids, mask = pack_sequences([np.arange(10)])
    torch.testing.assert_close(both.embedder(ids, mask), decoded.embedder(ids, mask))
    both(ids, mask).sum().backward()
    assert both.embedder.tables[0].weight.grad[TOKEN_OFFSET:TOKEN_OFFSET + 10].abs().sum() > 0


@pytest.mark.parametrize("encoder, pooling", [(e, p) for e, p in COMBINATIONS if e != "cnn"])
def test_lossless_decoded_tokens_and_frames_give_the_same_outputs(encoder, pooling):
    """One codebook with one cluster per distinct frame: ids decode to exactly the frames."""
    rng = np.random.default_rng(0)
    centroids = rng.random((N_CLUSTERS, FRAME_DIM)).astype(np.float32)
    ids = [rng.integers(0, N_CLUSTERS, size=n) for n in (7, 19, 12)]
    torch.manual_seed(0)
    frames_model = AudioClassifier(spec=tiny_spec(encoder, pooling, input_kind="frames")).eval()
    decoded_model = AudioClassifier(spec=tiny_spec(encoder, pooling, token_embedding="decoded",
                                                   decode_dims=[FRAME_DIM]),
                                    decode_tables=[torch.from_numpy(centroids)]).eval()
    missing, unexpected = decoded_model.load_state_dict(frames_model.state_dict(), strict=False)
    assert missing == ["embedder.decode_0"] and unexpected == []
    with torch.no_grad():
        from_frames = frames_model(*pack_frames([centroids[i] for i in ids]))
        from_tokens = decoded_model(*pack_sequences(ids))
    torch.testing.assert_close(from_tokens, from_frames, atol=1e-5, rtol=0)


def test_codebooks_have_tables_of_their_own_sizes_and_attention_fusion_weighs_them():
    spec = tiny_spec(codebook_sizes=[5, 9], codebook_fusion="attention")
    model = AudioClassifier(spec=spec)
    assert [t.num_embeddings for t in model.embedder.tables] == [5 + TOKEN_OFFSET, 9 + TOKEN_OFFSET]
    ids = torch.tensor([[[CLS, CLS], [4 + 4, 4 + 8], [SEP, SEP]]])
    tables = model.embedder.tables
    with torch.no_grad():
        e = torch.stack([tables[0](ids[..., 0]), tables[1](ids[..., 1])], dim=-2)
        weights = torch.softmax(model.embedder.codebook_score(e).squeeze(-1), dim=-1)
        expected = (weights[..., None] * e).sum(dim=-2)
        torch.testing.assert_close(model.embedder(ids, torch.ones(1, 3, dtype=torch.long)), expected)


def vocabulary_for(spec: ModelSpec, folder) -> Vocabulary:
    """A saved vocabulary whose codebooks have the spec's sizes (FRAME_DIM-wide entries)."""
    rng = np.random.default_rng(0)
    books = [rng.normal(size=(size, FRAME_DIM)).astype(np.float32) for size in spec.codebook_sizes]
    quantizer = Quantizer(kind="frame" if len(books) == 1 else "subband", codebooks=books, combine="concat")
    save_vocabulary(folder, quantizer, frame_spec(FRAME_DIM * len(books)))
    return load_vocabulary(folder)


@pytest.mark.parametrize("spec", [
    tiny_spec(), tiny_spec(input_kind="frames", pooling="attention"), tiny_spec(codebook_sizes=[N_CLUSTERS, 7]),
    tiny_spec(token_embedding="decoded+learned", decode_dims=[FRAME_DIM]), tiny_spec("conformer", "mean"),
    tiny_spec("cnn", "attention"), tiny_spec(pooling="mean", head="am_softmax")],
    ids=["tokens", "frames", "two-codebooks", "decoded", "conformer", "cnn", "am_softmax"])
def test_spec_and_bundle_round_trip(spec, tmp_path):
    assert ModelSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    vocabulary = vocabulary_for(spec, tmp_path / "vocabulary") if spec.input == "tokens" else None
    tables = [torch.tensor(vocabulary.quantizer.codebooks[c]) for c in range(len(spec.decode_dims))]
    torch.manual_seed(0)
    model = AudioClassifier(spec=spec, decode_tables=tables).eval()
    spectrogram = vocabulary.frame_spec if vocabulary else frame_spec(FRAME_DIM)
    save_bundle(model, tmp_path / "model", classes=spec.classes, task="singlelabel", threshold=0.4,
                max_frames=spec.max_frames, vocabulary=vocabulary, spectrogram=spectrogram, versions={})
    bundle = load_bundle(tmp_path / "model")
    assert bundle.spec == spec and bundle.threshold == 0.4 and bundle.spectrogram == spectrogram
    if vocabulary is None:
        assert bundle.vocabulary is None and not (tmp_path / "model/vocabulary").exists()
    else:
        assert bundle.vocabulary.digest == vocabulary.digest
    for name, value in model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[name], value), name
    rng = np.random.default_rng(1)
    clips = [clip(spec, n, rng) for n in (5, 30, 17)]
    with torch.no_grad():
        expected = np.concatenate([objective_for("singlelabel").scores(model(*pack(spec, [c]))).numpy()
                                   for c in clips])
    np.testing.assert_allclose(bundle.scores(clips, batch_size=2), expected, atol=1e-5)


def test_a_bundle_whose_vocabulary_does_not_fit_its_embeddings_is_refused(tmp_path):
    spec = tiny_spec(codebook_sizes=[N_CLUSTERS, 7])
    other = vocabulary_for(tiny_spec(codebook_sizes=[N_CLUSTERS, 9]), tmp_path / "vocabulary")
    save_bundle(AudioClassifier(spec=spec), tmp_path / "model", classes=spec.classes, task="singlelabel",
                threshold=0.5, max_frames=spec.max_frames, vocabulary=other, spectrogram=other.frame_spec,
                versions={})
    with pytest.raises(UserError, match=r"codebooks of sizes \[24, 9\].*\[24, 7\]") as error:
        load_bundle(tmp_path / "model")
    assert "\n" not in str(error.value)


def test_impossible_combinations_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="model.input=frames"):
        AudioClassifier(spec=tiny_spec("cnn", "mean", input_kind="tokens"))
    with pytest.raises(UserError, match="no \\[CLS\\] position"):
        AudioClassifier(spec=tiny_spec("cnn", "cls"))
    with pytest.raises(UserError, match="use 1 to 6, got 12"):
        AudioClassifier(spec=tiny_spec("cnn", "mean", encoder_params={"num_layers": 12}))
    with pytest.raises(UserError, match="even model.hidden_size / model.num_heads, got 9"):
        AudioClassifier(spec=tiny_spec("conformer", "mean", hidden_size=18))
    make_workdir(tmp_path, n_train=8, n_validation=4)
    with pytest.raises(UserError, match="model.head=am_softmax needs single-label"):
        ModelBuilder(load_config(overrides=[*TINY, "model.head=am_softmax"], workdir=tmp_path)).run()


@pytest.mark.parametrize("override, message", [
    ("model.num_heads=0", "model.num_heads' must be positive"), ("model.hidden_size=0", "model.hidden_size"),
    ("model.intermediate_size=0", "model.intermediate_size"), ("model.encoder=lstm", "model.encoder' must be one of"),
    ("model.pooling=max", "model.pooling"), ("model.scale=0", "model.scale' must be positive"),
    ("model.margin=-1", "model.margin"), ("model.input=waveform", "model.input")])
def test_bad_model_settings_are_one_line_errors(tmp_path, override, message):
    make_workdir(tmp_path, n_train=8, n_validation=4)
    with pytest.raises(UserError, match=message) as error:
        ModelBuilder(load_config(overrides=[*TINY, override], workdir=tmp_path)).run()
    assert "\n" not in str(error.value)


def test_frames_model_learns_and_its_bundle_needs_no_vocabulary(tmp_path):
    layout = make_frames_workdir(tmp_path)
    config = load_config(overrides=[*TINY, "model.input=frames", "model.pooling=mean", "train.epochs=8"],
                         workdir=tmp_path)
    counts = ModelBuilder(config).run()
    assert counts["best_validation_accuracy"] > 0.9
    assert not (layout.model_dir / "vocabulary").exists()
    bundle = load_bundle(layout.model_dir)
    assert bundle.vocabulary is None and bundle.input == "frames" and bundle.spec.input_dim == FRAME_DIM
    assert bundle.spectrogram == json.loads(layout.frame_spec.read_text())
    result = Evaluator(config).run()
    assert result["accuracy"] == pytest.approx(counts["best_validation_accuracy"])


@pytest.mark.parametrize("encoder", ["conformer", "cnn"])
def test_conformer_and_cnn_learn_a_separable_task(tmp_path, encoder):
    overrides = [*TINY, f"model.encoder={encoder}", "model.pooling=mean", "train.epochs=8"]
    if encoder == "cnn":
        make_frames_workdir(tmp_path)
        overrides += ["model.input=frames", "model.num_layers=2", "train.learning_rate=1e-2"]
    else:
        make_workdir(tmp_path, task="singlelabel", n_train=96, n_validation=32)
    counts = ModelBuilder(load_config(overrides=overrides, workdir=tmp_path)).run()
    assert counts["best_validation_accuracy"] > 0.9


@pytest.mark.parametrize("encoder", GENERIC_ENCODERS)
def test_resume_is_exact_for_every_encoder(tmp_path, monkeypatch, encoder):
    overrides = [*TINY, f"model.encoder={encoder}", "model.pooling=mean", "train.epochs=2", "model.dropout=0.1",
                 "train.warmup_ratio=0.3", "train.batch_size=8"]
    runs = {}
    for name in ("straight", "resumed"):
        if encoder == "cnn":
            make_frames_workdir(tmp_path / name, n_train=16, n_validation=4)
        else:
            make_workdir(tmp_path / name, n_train=16, n_validation=4)
        runs[name] = load_config(overrides=[*overrides, *(["model.input=frames"] if encoder == "cnn" else [])],
                                 workdir=tmp_path / name)
    assert_resume_matches_straight(runs["straight"], runs["resumed"], monkeypatch)


# ---------------------------------------------------------------- defects: MPS sum, schedule, patience


def test_loss_sums_never_need_float64_on_mps(monkeypatch):
    assert accumulation_dtype(torch.device("mps")) == torch.float32
    assert accumulation_dtype(torch.device("cpu")) == torch.float64
    # the MPS code path on the CPU: float32 sums, and nothing may call .double() (MPS has no float64)
    monkeypatch.setattr("audiotokens.training.optimisation.accumulation_dtype", lambda device: torch.float32)
    monkeypatch.setattr(torch.Tensor, "double", lambda self: (_ for _ in ()).throw(RuntimeError("no float64")))
    from audiotokens.training.optimisation import ScoreCollector

    collector = ScoreCollector(objective_for("singlelabel"), torch.device("cpu"))
    for loss in (0.5, 1.5):
        collector.add(torch.tensor(loss), torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert collector.loss_sum.dtype == torch.float32 and collector.loss_sum.item() == pytest.approx(4.0)


def test_moving_the_schedule_horizon_keeps_the_lr_continuous():
    schedule = WarmupLinearSchedule(warmup=2, total=10)
    before = [schedule(step) for step in range(11)]
    assert before[:3] == [0.0, 0.5, 1.0] and before[10] == 0.0 and before[6] == pytest.approx(0.5)
    schedule.extend(6, 20)
    after = [schedule(step) for step in range(21)]
    assert after[:7] == before[:7]  # the past is unchanged, the lr at the bend too
    assert after[6:] == pytest.approx([0.5 * (20 - s) / 14 for s in range(6, 21)])  # then linear to 0


def lr_of_epochs(layout: Layout) -> list[float]:
    return [json.loads(line)["lr"] for line in layout.metrics.read_text().splitlines() if "lr" in line]


def test_resume_with_more_epochs_continues_the_lr_smoothly(tmp_path, monkeypatch):
    layout = make_workdir(tmp_path, n_train=32, n_validation=8)
    original, calls = Trainer.train_epoch, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ModelBuilder(load_config(overrides=[*TINY, "train.epochs=4"], workdir=tmp_path)).run()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    ModelBuilder(load_config(overrides=[*TINY, "train.epochs=6"], workdir=tmp_path), resume=True).run()
    lrs = lr_of_epochs(layout)
    steps = 2  # 32 clips / batch 16
    base = 3e-3
    # epochs 1-2 on the 4-epoch schedule (8 steps), then from step 4 linearly to 0 at step 12
    expected = [base * (8 - 2) / 8, base * (8 - 4) / 8] + [base * 0.5 * (12 - s) / 8 for s in (6, 8, 10, 12)]
    assert steps * 6 == 12 and lrs == pytest.approx(expected)
    # a run whose schedule has ended cannot be given more epochs on --resume: they would change nothing
    with pytest.raises(UserError, match="finished its learning-rate schedule"):
        ModelBuilder(load_config(overrides=[*TINY, "train.epochs=8"], workdir=tmp_path), resume=True).run()


def test_an_early_stop_holds_only_under_the_same_patience(tmp_path):
    make_workdir(tmp_path, n_train=32, n_validation=8)
    stopped = [*TINY, "train.epochs=6", "train.patience=2", "train.learning_rate=0"]
    counts = ModelBuilder(load_config(overrides=stopped, workdir=tmp_path)).run()
    assert counts["epochs_completed"] == 3
    again = ModelBuilder(load_config(overrides=stopped, workdir=tmp_path), resume=True).run()
    assert again["epochs_run"] == 0
    raised = [*TINY, "train.epochs=6", "train.patience=4", "train.learning_rate=0"]
    more = ModelBuilder(load_config(overrides=raised, workdir=tmp_path), resume=True).run()
    assert (more["epochs_run"], more["epochs_completed"]) == (2, 5)  # stops again 4 epochs after the best


# ---------------------------------------------------------------- threshold and the test split


def test_the_bundle_threshold_makes_evaluate_agree_with_the_training_log(tmp_path):
    layout = make_workdir(tmp_path, n_train=64, n_validation=32)
    config = load_config(overrides=[*TINY, "train.epochs=3", "train.threshold=0.3"], workdir=tmp_path)
    counts = ModelBuilder(config).run()
    rows = [json.loads(line) for line in layout.metrics.read_text().splitlines()]
    best = next(row for row in rows if row.get("epoch") == counts["best_epoch"] and "validation" in row)
    result = Evaluator(config).run()
    assert result["threshold"] == 0.3 and load_bundle(layout.model_dir).threshold == 0.3
    assert result["micro_f1"] == pytest.approx(best["validation"]["micro_f1"], abs=1e-6)
    assert result["macro_f1"] == pytest.approx(best["validation"]["macro_f1"], abs=1e-6)
    explicit = Evaluator(load_config(overrides=[*TINY, "evaluate.threshold=0.9"], workdir=tmp_path)).run()
    assert explicit["threshold"] == 0.9


def test_a_test_split_is_scored_once_with_the_best_checkpoint(tmp_path):
    layout = make_workdir(tmp_path, splits=(("train", 64), ("validation", 24), ("test", 20)))
    config = load_config(overrides=[*TINY, "train.epochs=3"], workdir=tmp_path)
    counts = ModelBuilder(config).run()
    assert counts["test_clips"] == 20 and counts["validation_clips"] == 24
    lines = [json.loads(line) for line in layout.metrics.read_text().splitlines()]
    assert [row.get("epoch") for row in lines if "validation" in row] == [1, 2, 3]
    final = lines[-1]
    assert final["split"] == "test" and final["epoch"] == counts["best_epoch"]
    assert final["test"]["mAP"] == pytest.approx(counts["test_mAP"])
    evaluated = Evaluator(config, split="test").run()
    assert evaluated["mAP"] == pytest.approx(counts["test_mAP"], abs=1e-6)
