"""Stale detection and `run` planning, with stand-in stages so only the provenance logic is exercised."""
import dataclasses

import pytest
from click.testing import CliRunner

from audiotokens.cli import main
from audiotokens.config import Config, load_config
from audiotokens.errors import UserError
from audiotokens.pipeline import run as pipeline
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.provenance import stage_states
from audiotokens.pipeline.stages import NAMES, Stage, stage

STAGES = [name for name in NAMES if name != "pretrain"]  # pretrain runs only for a train.init naming it


@pytest.fixture
def ran(monkeypatch):
    """Replace every stage class by one that records that it ran."""
    calls = []

    def fake_class(stage):
        class Fake:
            def __init__(self, config, **options):
                self.config = config

            def run(self):
                calls.append(stage)
                if stage == "cluster" and self.config.cluster.niter == 13:
                    raise RuntimeError("k-means exploded")
                return {"stage": stage}

        return Fake

    monkeypatch.setattr(Stage, "runner_class", lambda stage: fake_class(stage.name))
    return calls


def config(tmp_path, *overrides):
    return load_config(None, list(overrides), tmp_path)


def states(tmp_path, *overrides):
    return {s: st.state for s, st in stage_states(Layout(tmp_path), config(tmp_path, *overrides)).items()
            if s in STAGES}


def test_everything_missing_then_fresh(tmp_path, ran):
    assert set(states(tmp_path).values()) == {"missing"}
    assert pipeline.run(config(tmp_path)) == list(STAGES)
    assert ran == list(STAGES)
    assert set(states(tmp_path).values()) == {"fresh"}
    assert pipeline.run(config(tmp_path)) == []


MODEL = ["train", "evaluate"]


@pytest.mark.parametrize("override, expected_stale", [
    # the assignment to splits: the frames stay (spectrogram reads only the [data] side of split)
    ("split.seed=3", ["split", "cluster", "tokenize", *MODEL, "baseline"]),
    ("split.test_ratio=0.2", ["split", "cluster", "tokenize", *MODEL, "baseline"]),
    # the clip catalogue: everything
    ("data.label_delimiter=|", ["split", "spectrogram", "cluster", "tokenize", *MODEL, "baseline"]),
    ("pretrain.folder=elsewhere", ["split", "spectrogram", "cluster", "tokenize", *MODEL, "baseline"]),
    ("spectrogram.n_mels=32", ["spectrogram", "cluster", "tokenize", *MODEL, "baseline"]),
    ("spectrogram.dtype=float16", ["spectrogram", "cluster", "tokenize", *MODEL, "baseline"]),  # storage
    ("cluster.n_clusters=100", ["cluster", "tokenize", *MODEL]),
    ("tokenize.batch_frames=5", []),  # runtime keys: nothing goes stale
    ("spectrogram.workers=3", []),
    ("cluster.gpu=true", []),
    ("train.learning_rate=0.002", MODEL),
    ("model.num_layers=3", MODEL),  # the network: its own section, read by the train stage
    ("model.pooling=cls", MODEL),
    ("evaluate.threshold=0.3", ["evaluate"]),
])
def test_one_parameter_makes_its_stage_and_what_reads_it_stale(tmp_path, ran, override, expected_stale):
    pipeline.run(config(tmp_path))
    ran.clear()
    now = states(tmp_path, override)
    assert [s for s, st in now.items() if st == "stale"] == expected_stale
    assert all(now[s] == "fresh" for s in STAGES if s not in expected_stale)
    assert pipeline.run(config(tmp_path, override)) == expected_stale
    assert ran == expected_stale


def test_status_says_the_frames_are_fresh_when_only_the_split_changes(tmp_path, ran):
    pipeline.run(config(tmp_path))
    result = CliRunner().invoke(main, ["status", "--workdir", str(tmp_path), "--set", "split.seed=3"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.output.splitlines())
    assert lines["split"] == "stale — split.seed 0 → 3"
    assert lines["spectrogram"] == "fresh"
    assert lines["cluster"].startswith("stale") and "split is stale" in lines["cluster"]


def test_n_clusters_reason_names_old_and_new(tmp_path, ran):
    pipeline.run(config(tmp_path))
    reported = stage_states(Layout(tmp_path), config(tmp_path, "cluster.n_clusters=100"))
    assert f"cluster.n_clusters {Config().cluster.n_clusters} → 100" in reported["cluster"].line()
    assert "cluster is stale" in reported["tokenize"].line()


def test_rerunning_an_upstream_stage_alone_makes_downstream_stale(tmp_path, ran):
    pipeline.run(config(tmp_path))
    pipeline.execute("cluster", config(tmp_path, "cluster.n_clusters=7"))
    now = states(tmp_path, "cluster.n_clusters=7")
    assert now["cluster"] == "fresh"
    assert now["tokenize"] == "stale" and now["train"] == "stale"
    assert now["spectrogram"] == "fresh"


def test_metadata_file_content_is_part_of_the_split(tmp_path, ran):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,x\n")
    pipeline.run(config(tmp_path, f"data.manifest={manifest}"))
    manifest.write_text("path,label\na.wav,y\n")
    assert states(tmp_path, f"data.manifest={manifest}")["split"] == "stale"


def test_failure_is_recorded_and_cleared(tmp_path, ran):
    with pytest.raises(RuntimeError):
        pipeline.run(config(tmp_path, "cluster.niter=13"))
    reported = stage_states(Layout(tmp_path), config(tmp_path, "cluster.niter=13"))
    assert reported["cluster"].state == "failed" and "k-means exploded" in reported["cluster"].line()
    # cluster and the stages after it in the table, which never ran
    assert pipeline.run(config(tmp_path)) == STAGES[STAGES.index("cluster"):]
    assert states(tmp_path)["cluster"] == "fresh"


def test_stale_input_warns_or_refuses(tmp_path, ran):
    pipeline.run(config(tmp_path))
    stale = config(tmp_path, "spectrogram.n_mels=32")
    with pytest.raises(UserError, match="spectrogram"):
        pipeline.execute("cluster", stale, strict=True)
    pipeline.execute("cluster", stale)  # without --strict it warns and runs


def test_missing_input_is_refused(tmp_path, ran):
    with pytest.raises(UserError, match="audiotokens split"):
        pipeline.execute("spectrogram", config(tmp_path))


def test_range_and_force(tmp_path, ran):
    pipeline.run(config(tmp_path))
    assert pipeline.plan(config(tmp_path), "cluster", "train", force=True) == ["cluster", "tokenize", "train"]
    assert pipeline.plan(config(tmp_path, "spectrogram.n_mels=8"), None, "cluster") == ["spectrogram", "cluster"]
    with pytest.raises(UserError):
        pipeline.plan(config(tmp_path), "train", "split")


def test_pretrain_runs_only_when_train_init_names_it_and_sees_only_the_model_keys(tmp_path, ran):
    init = f"train.init={tmp_path / 'output' / 'pretrain'}"
    assert "pretrain" not in pipeline.run(config(tmp_path))
    assert pipeline.run(config(tmp_path, init)) == ["pretrain", "train", "evaluate"]
    assert pipeline.run(config(tmp_path, init, "train.learning_rate=0.002")) == MODEL
    assert pipeline.run(config(tmp_path, init, "train.learning_rate=0.002", "model.hidden_size=96",
                               "model.num_heads=12")) == ["pretrain", *MODEL]
    assert pipeline.run(config(tmp_path, init, "train.learning_rate=0.002", "model.hidden_size=96",
                               "model.num_heads=12", "pretrain.span=5")) == ["pretrain", *MODEL]
    # the classifier's own parts leave the pre-training fresh; the encoder's depth does not
    changed = [init, "train.learning_rate=0.002", "model.hidden_size=96", "model.num_heads=12", "pretrain.span=5"]
    assert pipeline.run(config(tmp_path, *changed, "model.pooling=cls", "model.head=am_softmax")) == MODEL
    assert pipeline.run(config(tmp_path, *changed, "model.pooling=cls", "model.head=am_softmax",
                               "model.num_layers=3")) == ["pretrain", *MODEL]


def test_a_frames_model_fits_no_vocabulary_unless_it_pre_trains_on_tokens(tmp_path, ran):
    frames = "model.input=frames"
    assert pipeline.run(config(tmp_path, frames)) == [s for s in STAGES if s not in ("cluster", "tokenize")]
    assert "cluster" not in ran and "tokenize" not in ran
    init = f"train.init={tmp_path / 'output' / 'pretrain'}"  # pre-training predicts token ids: it needs them
    assert pipeline.run(config(tmp_path, frames, init))[:3] == ["cluster", "tokenize", "pretrain"]


def test_the_keys_a_stage_reads_from_other_sections_are_declared_on_the_settings():
    assert stage("split").keys == ("pretrain.manifest", "pretrain.folder")
    assert set(stage("pretrain").keys) == {
        "model.token_embedding", "model.codebook_fusion", "model.encoder", "model.num_layers", "model.hidden_size",
        "model.num_heads", "model.intermediate_size", "model.dropout", "model.max_length", "train.weight_decay",
        "train.warmup_ratio"}
    assert stage("train").sections == ("model", "train")
    sections = [f.default_factory for f in dataclasses.fields(Config) if f.name != "workdir"]
    declared = {key.metadata.get("also_defines") for section in sections for key in dataclasses.fields(section)}
    assert declared - {"", None} <= set(NAMES)


def test_a_late_stage_setting_is_refused_before_the_first_stage_runs(tmp_path, ran, monkeypatch):
    """`run` asks every stage in its range to check the config first; a refusal leaves nothing run or written."""
    fakes = {}

    def with_checks(stage):
        if stage.name not in fakes:
            class Checked:
                def __init__(self, config, **options):
                    self.config = config

                @staticmethod
                def check_settings(config):
                    if stage.name == "baseline" and config.baseline.models == "xgb":
                        raise UserError("'baseline.models' names unknown model 'xgb'")

                def run(self):
                    ran.append(stage.name)
                    return {}

            fakes[stage.name] = Checked
        return fakes[stage.name]

    monkeypatch.setattr(Stage, "runner_class", with_checks)
    with pytest.raises(UserError, match="xgb"):
        pipeline.run(config(tmp_path, "baseline.models=xgb"))
    assert ran == [] and not any(tmp_path.iterdir())
    with pytest.raises(UserError, match="xgb"):  # a single stage checks its own settings before it starts
        pipeline.execute("baseline", config(tmp_path, "baseline.models=xgb"))
    assert ran == [] and not any(tmp_path.iterdir())
    assert pipeline.run(config(tmp_path, "baseline.models=xgb"), stop="evaluate") == STAGES[:-1]  # out of range


@pytest.mark.parametrize("overrides, message", [
    (["baseline.models=svm,xgb"], "'baseline.models' names unknown model 'xgb'"),
    (["model.input=tokens", "model.encoder=cnn"], "model.input"),
    (["model.input=frames", "model.encoder=cnn", "model.pooling=cls"], "model.encoder=cnn has no [CLS] position"),
    (["model.pooling=max"], "'model.pooling' must be one of"),
    (["cluster.quantizer=stacked", "cluster.stack=4", "cluster.stack_stride=5"], "cluster.stack_stride = 5"),
])
def test_the_stages_own_checks_of_the_config_run_before_anything(tmp_path, overrides, message):
    """With the real stage classes: run refuses before split (which, with no data source, would fail itself)."""
    with pytest.raises(UserError) as caught:
        pipeline.run(config(tmp_path, *overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not any(tmp_path.iterdir())


def test_the_baseline_mfccs_must_fit_the_mel_bands_and_the_default_does(tmp_path):
    with pytest.raises(UserError, match=r"'baseline\.n_mfcc' \(40\) is more than 'spectrogram\.n_mels' \(32\)"):
        config(tmp_path, "baseline.n_mfcc=40", "spectrogram.n_mels=32")
    assert config(tmp_path, "spectrogram.n_mels=32").baseline.n_mfcc == 0  # min(40, n_mels) when it runs
