"""Fine-tuning a pretrained speech model end to end (spectrogram.features = waveform, model.input = waveform,
model.encoder = ssl) with tiny randomly initialised wav2vec2 / HuBERT models saved inside the test.

These models are random and tiny: they prove the plumbing (rows, masks, freezing, bundle, scores), not that
fine-tuning a real speech model works well.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from projects import torchrun_train
from safetensors.torch import load_file

import audiotokens
from audiotokens.cli import main
from audiotokens.config import load_config
from audiotokens.data.audio import load_mono
from audiotokens.errors import UserError
from audiotokens.features.spectrogram import SpectrogramProcessor
from audiotokens.model.bundle import load_bundle
from audiotokens.model.inputs import pack_frames
from audiotokens.model.parts import AudioClassifier, ModelSpec
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.run import execute
from audiotokens.pipeline.stores import open_split
from audiotokens.training.loaders import estimate_run_peak
from audiotokens.training.memory import estimate_peak_bytes

RATE = 16000
STRIDES, KERNELS = (5, 4, 4), (10, 8, 4)
STRIDE = 80  # samples per row: the product of the strides
RECEPTIVE_FIELD = 10 + 7 * 5 + 3 * 20  # samples under one output frame
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (16, 16, 16), "conv_stride": STRIDES, "conv_kernel": KERNELS, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4}
TONES = {"low": 300.0, "mid": 1200.0, "high": 4000.0}


def save_tiny(kind: str, folder, norm: str = "group"):
    """A random tiny speech model in a local folder, as save_pretrained writes it."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    config_class, model_class = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
                                 "hubert": (HubertConfig, HubertModel)}[kind]
    torch.manual_seed(0)
    model = model_class(config_class(**TINY, feat_extract_norm=norm)).eval()
    model.save_pretrained(folder)
    return model


def speech_spec(folder, classes=("a", "b")) -> ModelSpec:
    config = json.loads((folder / "config.json").read_text())
    return ModelSpec(classes=list(classes), input="waveform", input_dim=STRIDE, encoder="ssl", pooling="mean",
                     hidden_size=16, hidden_layer=16,
                     encoder_params={"speech_config": config, "normalize": True,
                                     "pretrained": {"path": str(folder), "digest": "-"}})


def speech_classifier(folder) -> AudioClassifier:
    model = AudioClassifier(spec=speech_spec(folder))
    model.encoder.speech.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def rows_of(seconds: float, seed: int) -> np.ndarray:
    samples = np.random.default_rng(seed).normal(scale=0.1, size=int(seconds * RATE)).astype(np.float32)
    return samples[:len(samples) // STRIDE * STRIDE].reshape(-1, STRIDE)


def normalised(samples: np.ndarray) -> torch.Tensor:
    wave = torch.from_numpy(samples.reshape(-1))
    return (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)


# ---------------------------------------------------------------- rows and the forward pass


def test_waveform_rows_have_the_models_rate_and_stride(tmp_path):
    from stores import write_plan

    save_tiny("wav2vec2", tmp_path / "model")
    ids = ["c0", "c1", "short"]
    write_plan(tmp_path, {"train": ids}, {i: [0] for i in ids}, ["x"])
    layout = Layout(tmp_path)
    plan = json.loads(layout.split_json.read_text())
    lengths = {"c0": 11025, "c1": 7000, "short": 100}  # samples at 22050 Hz; "short" is below one frame
    for clip in plan["clips"]:
        path = tmp_path / f"{clip['id']}.wav"
        sf.write(path, np.random.default_rng(1).normal(scale=0.1, size=lengths[clip["id"]]).astype(np.float32),
                 22050)
        clip["audio"] = str(path)
    layout.split_json.write_text(json.dumps(plan))
    config = load_config(overrides=["spectrogram.features=waveform", f"spectrogram.ssl_model={tmp_path / 'model'}",
                                    "spectrogram.workers=1"], workdir=tmp_path)
    SpectrogramProcessor(config).run()

    rows = np.load(layout.frames)
    index = json.loads(layout.frames_index.read_text())
    spec = json.loads(layout.frame_spec.read_text())
    assert index["ids"] == ["c0", "c1"]  # "short" gives the model no frame: skipped, listed with the reason
    report = json.loads(layout.frames_report.read_text())
    assert [s["id"] for s in report["skipped"]] == ["short"] and report["skipped"][0]["reason"] == "too short"
    resampled = load_mono(str(tmp_path / "c0.wav"), RATE)  # 11025 samples at 22050 Hz -> 8000 at 16 kHz
    assert len(resampled) == 8000 and index["lengths"] == [8000 // STRIDE, load_mono(str(tmp_path / "c1.wav"),
                                                                                        RATE).size // STRIDE]
    assert rows.shape == (sum(index["lengths"]), STRIDE)
    np.testing.assert_array_equal(rows[:100].reshape(-1), resampled[:100 * STRIDE])
    assert spec["features"] == "waveform" and spec["sample_rate"] == RATE and spec["hop_length"] == STRIDE
    assert spec["receptive_field"] == RECEPTIVE_FIELD and spec["ssl_model"] == str((tmp_path / "model").absolute())
    assert len(spec["ssl_digest"]) == 16


@pytest.mark.parametrize(("kind", "norm"), [("wav2vec2", "group"), ("hubert", "layer")])
def test_encoder_states_are_the_models_own(tmp_path, kind, norm):
    """An unpadded clip gives transformers' last hidden state of the normalised wave, frame for frame."""
    reference = save_tiny(kind, tmp_path / "model", norm)
    model = speech_classifier(tmp_path / "model")
    clip = rows_of(0.3, 0)
    with torch.no_grad():
        states, mask = model.encode(*pack_frames([clip]))
        expected = reference(normalised(clip)[None]).last_hidden_state[0]
    frames = int(reference._get_feat_extract_output_lengths(torch.tensor(clip.size)))
    assert int(mask.sum()) == frames == len(expected)
    np.testing.assert_allclose(states[0, :frames].numpy(), expected.numpy(), atol=2e-5)


@pytest.mark.parametrize(("kind", "norm"), [("wav2vec2", "group"), ("hubert", "layer")])
def test_padding_does_not_change_a_clips_scores(tmp_path, kind, norm):
    save_tiny(kind, tmp_path / "model", norm)
    model = speech_classifier(tmp_path / "model")
    clips = [rows_of(0.25, 1), rows_of(0.6, 2), rows_of(0.4, 3)]
    with torch.no_grad():
        alone = torch.cat([model(*pack_frames([clip])) for clip in clips])
        together = model(*pack_frames(clips))
    np.testing.assert_allclose(together.numpy(), alone.numpy(), atol=1e-5)
    assert not torch.allclose(alone[0], alone[1])  # the clips do score differently


def test_a_group_norm_feature_encoder_on_the_padded_batch_would_change_scores(tmp_path):
    """Why group-normalised feature encoders run clip by clip: over the padded batch they would not be
    padding-invariant (their normalisation spans the whole time axis)."""
    save_tiny("wav2vec2", tmp_path / "model", "group")
    model = speech_classifier(tmp_path / "model")
    clips = [rows_of(0.25, 1), rows_of(0.6, 2)]
    with torch.no_grad():
        alone = model(*pack_frames(clips[:1]))
        model.encoder.clipwise_features = False
        batched = model(*pack_frames(clips))
    assert not torch.allclose(alone[0], batched[0], atol=1e-4)


# ---------------------------------------------------------------- training end to end


def write_project(root, kind: str = "wav2vec2", norm: str = "group", clips: int = 12, seconds: float = 0.5):
    """Tones of three classes at 16 kHz, a manifest, a tiny speech model and run.toml; returns the config."""
    save_tiny(kind, root / "model", norm)
    rows = ["path,label"]
    for i in range(clips):
        label = list(TONES)[i % 3]
        t = np.arange(int(RATE * seconds)) / RATE
        noise = np.random.default_rng(i).normal(scale=0.02, size=len(t))
        wave = 0.3 * np.sin(2 * np.pi * TONES[label] * (1 + 0.01 * i) * t) + noise
        path = root / "audio" / f"clip{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), RATE)
        rows.append(f"audio/clip{i:02d}.wav,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "run.toml").write_text(f"""
[data]
manifest = "{root / 'manifest.csv'}"
[split]
strategy = "stratified"
validation_ratio = 0.25
test_ratio = 0.0
[spectrogram]
features = "waveform"
ssl_model = "{root / 'model'}"
workers = 1
[model]
input = "waveform"
encoder = "ssl"
pooling = "mean"
hidden_size = 16
num_heads = 2
[train]
epochs = 2
batch_size = 4
learning_rate = 1e-3
device = "cpu"
num_workers = 0
""")
    return load_config(root / "run.toml", [], root / "work")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`audiotokens run` up to evaluate: split, spectrogram, train, evaluate (no vocabulary over waveforms)."""
    root = tmp_path_factory.mktemp("waveform_project")
    config = write_project(root)
    result = CliRunner().invoke(main, ["run", "--config", str(root / "run.toml"), "--workdir", str(config.workdir),
                                       "--to", "evaluate"])
    assert result.exit_code == 0, result.output
    return root, config


def test_run_skips_the_vocabulary_stages(trained):
    _, config = trained
    layout = Layout(config.workdir)
    assert layout.model_dir.is_dir() and layout.eval_dir("validation").is_dir()
    assert not layout.vocabulary.exists() and not layout.tokens.exists()
    from audiotokens.tokens.cluster import ClusterCreator

    with pytest.raises(UserError, match="holds waveform rows .* not frames to quantise"):
        ClusterCreator(config).run()
    root, _ = trained
    status = CliRunner().invoke(main, ["status", "--config", str(root / "run.toml"), "--workdir",
                                       str(config.workdir)]).output
    for skipped in ("cluster", "tokenize", "pretrain"):
        assert f"{skipped}: not used by this config (`run` skips it)" in status
    for ran in ("split", "spectrogram", "train", "evaluate"):
        assert f"{ran}: fresh" in status


def test_training_writes_a_bundle_that_records_its_origin(trained):
    root, config = trained
    bundle_dir = Layout(config.workdir).model_dir
    spec = json.loads((bundle_dir / "model_spec.json").read_text())
    meta = json.loads((bundle_dir / "audiotokens.json").read_text())
    origin = {"path": str((root / "model").absolute()), "digest": meta["spectrogram"]["ssl_digest"]}
    assert spec["input"] == "waveform" and spec["encoder"] == "ssl" and spec["hidden_layer"] == 16
    assert spec["encoder_params"]["pretrained"] == origin
    assert spec["encoder_params"]["speech_config"]["model_type"] == "wav2vec2"
    assert meta["spectrogram"]["features"] == "waveform" and meta["input"] == "waveform"
    card = (bundle_dir / "README.md").read_text()
    assert origin["path"] in card and origin["digest"] in card
    log = [json.loads(line) for line in Layout(config.workdir).metrics.read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]


def test_the_feature_encoder_stays_frozen_while_the_transformer_learns(trained):
    root, config = trained
    original = load_file(str(root / "model" / "model.safetensors"))
    tuned = load_file(str(Layout(config.workdir).model_dir / "model.safetensors"))
    prefix = "encoder.speech."
    conv = [name for name in original if name.startswith("feature_extractor.")]
    layers = [name for name in original if name.startswith("encoder.layers.")]
    assert conv and layers
    for name in conv:
        assert torch.equal(tuned[prefix + name], original[name]), name
    assert any(not torch.equal(tuned[prefix + name], original[name]) for name in layers)


def test_evaluate_scores_are_the_training_runs_validation_scores(trained):
    """evaluate's scores give exactly the validation loss the training log recorded for the best epoch."""
    _, config = trained
    layout = Layout(config.workdir)
    log = [json.loads(line) for line in layout.metrics.read_text().splitlines()]
    best = next(row for row in reversed(log) if row.get("best"))
    scores = np.load(layout.eval_dir("validation") / "scores.npy")
    _, index = open_split(layout, "frames", "validation")
    targets = np.array([labels[0] for labels in index.labels])
    cross_entropy = -np.log(scores[np.arange(len(targets)), targets]).mean()
    assert len(scores) == 3
    assert cross_entropy == pytest.approx(best["validation"]["loss"], abs=1e-5)


def test_predict_and_the_api_score_audio_like_evaluate_without_the_model_folder(trained, tmp_path):
    root, config = trained
    layout = Layout(config.workdir)
    bundle_dir = shutil.copytree(layout.model_dir, tmp_path / "bundle")
    hidden = root / "model.moved"
    (root / "model").rename(hidden)  # the bundle needs nothing but itself
    try:
        clips = json.loads((layout.eval_dir("validation") / "clips.json").read_text())
        audio = {c["id"]: c["audio"] for c in json.loads(layout.split_json.read_text())["clips"]}
        paths = [audio[clip_id] for clip_id in clips["ids"]]
        evaluated = np.load(layout.eval_dir("validation") / "scores.npy")
        result = CliRunner().invoke(main, ["predict", "--model", str(bundle_dir), "--format", "json",
                                           "--top-k", "3", *paths])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        classes = load_bundle(bundle_dir).classes
        predicted = np.array([[next(t["score"] for t in row["top"] if t["class"] == name) for name in classes]
                              for row in rows])
        np.testing.assert_allclose(predicted, evaluated, atol=1e-5)
        model = audiotokens.load(bundle_dir)
        in_memory = [sf.read(path, dtype="float32") for path in paths]
        np.testing.assert_allclose(model.scores([(wave, rate) for wave, rate in in_memory]), evaluated, atol=1e-5)
    finally:
        hidden.rename(root / "model")


def test_robustness_frames_audio_as_the_speech_model_bundle_does(trained, tmp_path, monkeypatch):
    """`evaluate --corrupt` on a waveform bundle: its clean scores are evaluate's, from the bundle's own rows."""
    from audiotokens.evaluation import robustness

    root, config = trained
    work = shutil.copytree(config.workdir, tmp_path / "work")
    captured = {}
    original = robustness.write_robustness

    def capture(out_dir, *, conditions, **options):
        captured.update(conditions)
        return original(out_dir, conditions=conditions, **options)

    monkeypatch.setattr(robustness, "write_robustness", capture)
    rows = robustness.evaluate_robustness(load_config(root / "run.toml", [], work), "validation",
                                          ["noise:snr=20"])["model"]
    evaluated = Layout(work).eval_dir("validation")
    assert [row["clips"] for row in rows] == [3, 3] and not captured["clean"].skipped
    assert captured["clean"].ids == json.loads((evaluated / "clips.json").read_text())["ids"]
    np.testing.assert_allclose(captured["clean"].scores, np.load(evaluated / "scores.npy"), atol=1e-5)
    assert not np.allclose(captured["noise_white_snr20"].scores, captured["clean"].scores, atol=1e-5)


def test_robustness_frames_audio_as_a_speech_model_frames_bundle_does(tmp_path, monkeypatch):
    """`evaluate --corrupt` on a model of speech-model frames (spectrogram.features = ssl, model.input = frames):
    its clean row is evaluate's, from the speech model's hidden states (mel frames have another width)."""
    from audiotokens.evaluation import robustness

    write_project(tmp_path, clips=9)
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(run_toml.read_text().replace('features = "waveform"', 'features = "ssl"')
                        .replace('input = "waveform"\nencoder = "ssl"', 'input = "frames"\nencoder = "bert"\nnum_layers = 1')
                        .replace("epochs = 2", "epochs = 1"))
    result = CliRunner().invoke(main, ["run", "--config", str(run_toml), "--workdir", str(tmp_path / "work"),
                                       "--to", "evaluate"])
    assert result.exit_code == 0, result.output
    config = load_config(run_toml, [], tmp_path / "work")
    captured = {}
    original = robustness.write_robustness

    def capture(out_dir, *, conditions, **options):
        captured.update(conditions)
        return original(out_dir, conditions=conditions, **options)

    monkeypatch.setattr(robustness, "write_robustness", capture)
    rows = robustness.evaluate_robustness(config, "validation", ["noise:snr=20"])["model"]
    evaluated = Layout(config.workdir).eval_dir("validation")
    ids = json.loads((evaluated / "clips.json").read_text())["ids"]
    assert [row["clips"] for row in rows] == [len(ids)] * 2 and not captured["clean"].skipped
    assert captured["clean"].ids == ids
    np.testing.assert_allclose(captured["clean"].scores, np.load(evaluated / "scores.npy"), atol=1e-5)


def test_a_hubert_model_with_a_layer_norm_feature_encoder_fine_tunes_too(tmp_path):
    write_project(tmp_path, kind="hubert", norm="layer")
    config = load_config(tmp_path / "run.toml", ["train.epochs=1"], tmp_path / "work")
    for stage in ("split", "spectrogram", "train", "evaluate"):
        execute(stage, config)
    bundle = load_bundle(Layout(config.workdir).model_dir)
    assert bundle.spec.encoder_params["speech_config"]["model_type"] == "hubert"
    assert not bundle.model.encoder.clipwise_features
    assert json.loads(Layout(config.workdir).eval_dir("validation").joinpath("metrics.json").read_text())["clips"] == 3


def test_resume_is_exact(tmp_path, monkeypatch):
    """SpecAugment masking, layer drop and dropout draw from the checkpointed random states."""
    from stores import assert_resume_matches_straight


    write_project(tmp_path)
    runs = {name: load_config(tmp_path / "run.toml", [], tmp_path / name) for name in ("straight", "resumed")}
    for config in runs.values():
        execute("split", config)
        execute("spectrogram", config)
    assert_resume_matches_straight(runs["straight"], runs["resumed"], monkeypatch)


def test_a_speech_model_fine_tunes_on_corrupted_copies_of_its_training_clips(tmp_path, monkeypatch):
    from audiotokens.training.datasets import ClipDataset

    write_project(tmp_path, clips=6)
    config = load_config(tmp_path / "run.toml", ["augment.copies=1", "train.epochs=1"], tmp_path / "work")
    execute("split", config)
    assert execute("spectrogram", config)["copies"] == len(open_split(Layout(config.workdir), "frames", "train")[1])
    read = []
    original = ClipDataset.locate
    monkeypatch.setattr(ClipDataset, "locate", lambda self, item: read.append((len(self.offsets), item))
                        or original(self, item))
    assert execute("train", config)["epochs_completed"] == 1
    assert any(item >= n for n, item in read)  # the waveform rows of a copy were read
    meta = json.loads((Layout(config.workdir).model_dir / "audiotokens.json").read_text())
    assert meta["spectrogram"]["augment"]["copies"] == 1


# ---------------------------------------------------------------- refusals


def test_a_missing_model_folder_is_one_line_from_the_cli(tmp_path):
    write_project(tmp_path, clips=6)
    runner, config = CliRunner(), ["--config", str(tmp_path / "run.toml"), "--workdir", str(tmp_path / "work")]
    assert runner.invoke(main, ["split", *config]).exit_code == 0
    result = runner.invoke(main, ["spectrogram", *config, "--set", f"spectrogram.ssl_model={tmp_path / 'absent'}"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert "spectrogram.ssl_model" in message and str(tmp_path / "absent") in message
    assert "\n" not in message and "Traceback" not in result.output


def test_waveform_input_and_the_speech_encoder_go_together(tmp_path):
    from audiotokens.training.train import ModelBuilder

    for overrides in (["model.input=waveform"], ["model.encoder=ssl", "model.input=frames"]):
        config = load_config(overrides=overrides, workdir=tmp_path)
        with pytest.raises(UserError, match="model.input=waveform and model.encoder=ssl go together") as caught:
            ModelBuilder(config).run()
        assert "\n" not in str(caught.value)


def test_frames_of_another_kind_are_refused(tmp_path):
    from stores import frame_spec, write_store

    from audiotokens.training.train import ModelBuilder

    rng = np.random.default_rng(0)
    write_store(tmp_path, {"train": (rng.random((40, 8), dtype=np.float32), [20, 20]),
                           "validation": (rng.random((20, 8), dtype=np.float32), [10, 10])}, spec=frame_spec(8))
    config = load_config(overrides=["model.input=waveform", "model.encoder=ssl", "model.pooling=mean",
                                    "train.device=cpu"], workdir=tmp_path)
    with pytest.raises(UserError, match="reads waveform rows but .* holds mel frames.*spectrogram.features=waveform"):
        ModelBuilder(config).run()


def test_a_model_folder_gone_before_training_is_one_line(trained, tmp_path):
    """The frame spec names the folder the rows were cut for; training starts from its weights."""
    from audiotokens.training.train import ModelBuilder

    root, config = trained
    work = shutil.copytree(config.workdir, tmp_path / "work", ignore=shutil.ignore_patterns("checkpoints", "eval"))
    moved = root / "model.moved"
    (root / "model").rename(moved)
    try:
        with pytest.raises(UserError, match="'spectrogram.ssl_model'.*not a local Hugging Face model folder") as caught:
            ModelBuilder(load_config(root / "run.toml", [], work)).run()
        assert "\n" not in str(caught.value)
    finally:
        moved.rename(root / "model")


def test_waveform_rows_feed_only_a_speech_model_and_crops_must_cover_a_frame(trained, tmp_path):
    from audiotokens.training.train import ModelBuilder

    root, config = trained
    work = shutil.copytree(config.workdir, tmp_path / "work", ignore=shutil.ignore_patterns("checkpoints", "eval"))
    as_frames = load_config(root / "run.toml", ["model.input=frames", "model.encoder=bert"], work)
    with pytest.raises(UserError, match="holds waveform rows .* only model.input=waveform"):
        ModelBuilder(as_frames).run()
    fewest = -(-RECEPTIVE_FIELD // STRIDE)
    cropped = load_config(root / "run.toml", [f"train.crop_frames={fewest - 1}"], work)
    with pytest.raises(UserError, match=f"'train.crop_frames' .* receptive field .* at least {fewest} rows"):
        ModelBuilder(cropped).run()


def test_two_torchrun_processes_fine_tune_a_speech_model(tmp_path):
    """LayerDrop and the masking vector leave parameters without a gradient in some steps: data-parallel
    training looks for them instead of stopping."""
    config = write_project(tmp_path)
    for stage in ("split", "spectrogram"):
        execute(stage, config)
    torchrun_train(tmp_path)
    assert (tmp_path / "work" / "output" / "model" / "model.safetensors").is_file()


def test_the_memory_check_sizes_a_speech_model_by_its_own_config(tmp_path):
    """model.hidden_size sizes the layer after pooling, not the speech model the estimate must describe."""
    save_tiny("wav2vec2", tmp_path / "model")
    model = speech_classifier(tmp_path / "model")
    own = {"hidden": TINY["hidden_size"], "layers": TINY["num_hidden_layers"],
           "heads": TINY["num_attention_heads"], "intermediate": TINY["intermediate_size"]}
    assert own["hidden"] != model.spec.hidden_size == 16
    estimate = estimate_run_peak(model=model, settings=load_config().train, positions=np.array([50, 80]),
                                 device=torch.device("cpu"), amp_dtype=None, n_classes=2, input_features=STRIDE)
    expected = estimate_peak_bytes(
        n_parameters=sum(p.numel() for p in model.parameters()),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        batch_clips=2, positions=80, **own, n_classes=2, attention="sdpa", device_type="cpu",
        attention_dropout=model.spec.dropout > 0, input_features=STRIDE)
    assert estimate == expected
