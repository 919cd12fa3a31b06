"""Bad configuration and data through the CLI: one line naming the key or file and what to do, exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from projects import copy_project, trained_project

from audiotokens.cli import main
from audiotokens.config import SPLIT_STRATEGIES
from audiotokens.pipeline.layout import Layout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "singlelabel")


@pytest.fixture
def own_project(project, tmp_path) -> Path:
    """A private copy for scenarios that run stages (the shared project stays untouched)."""
    return copy_project(project, tmp_path / "project")


def common(root: Path) -> list[str]:
    return ["--config", str(root / "run.toml"), "--workdir", str(root / "work")]


def run_ok(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)


def user_error(*args: str) -> str:
    """The CLI's one error line for a command that must fail with a user error (exit code 2)."""
    result = CliRunner().invoke(main, list(args))
    if os.environ.get("AUDIOTOKENS_SHOW_ERRORS"):
        print(f"\n{args[0]}: {result.stderr.strip().splitlines()[-1]}")
    assert result.exit_code == 2, (args, result.output, repr(result.exception))
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])  # the message is the last thing printed, on one line
    return errors[0]


def write_manifest(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# ---------------------------------------------------------------- configuration


def test_unknown_key_names_it_and_lists_the_valid_ones(project, tmp_path):
    message = user_error("cluster", *common(project), "--set", "cluster.n_cluster=4")
    assert "unknown config key 'cluster.n_cluster'" in message and "n_clusters" in message
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    message = user_error("train", "--config", str(bad), "--workdir", str(tmp_path))
    assert "unknown config key 'train.epoch'" in message and "epochs" in message
    bad.write_text("[trian]\nepochs = 3\n")
    assert "unknown config section 'trian'" in user_error("train", "--config", str(bad))


def test_a_moved_key_names_its_new_place(project, tmp_path):
    message = user_error("train", *common(project), "--set", "train.num_layers=2")
    assert message == "error: 'train.num_layers' is now 'model.num_layers': the network's settings moved to [model]"
    old = tmp_path / "old.toml"
    old.write_text("[train]\nencoder = \"conformer\"\n")
    message = user_error("run", "--config", str(old), "--workdir", str(tmp_path))
    assert message == "error: 'train.encoder' is now 'model.encoder': the network's settings moved to [model]"


def test_wrong_type_names_the_key_and_the_expected_type(project, tmp_path):
    message = user_error("train", *common(project), "--set", "train.epochs=three")
    assert "'train.epochs' must be int, got 'three'" in message
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nn_clusters = 8.5\n")
    assert "'cluster.n_clusters' must be int, got 8.5" in user_error("cluster", "--config", str(bad))
    bad.write_text("spectrogram = 3\n")
    message = user_error("spectrogram", "--config", str(bad))
    assert str(bad) in message and "'spectrogram' must be a [section]" in message
    message = user_error("spectrogram", *common(project), "--set", "spectrogram.normalize=maybe")
    assert "'spectrogram.normalize' must be one of clip, fixed, pcen, none, got 'maybe'" in message
    assert "'cluster.n_clusters' must be >= 2, got 0" in user_error("cluster", "--set", "cluster.n_clusters=0")
    message = user_error("spectrogram", *common(project), "--set", "spectrogram.hop_length=4096")
    assert "'spectrogram.hop_length' (4096) is larger than 'spectrogram.n_fft' (1024)" in message


BAD_VALUES = [  # (command, arguments, the exact error): values that once ended in a traceback or were taken
    ("evaluate", ["--set", "evaluate.threshold=nan"], "'evaluate.threshold' must be a finite number, got nan"),
    ("train", ["--set", "train.learning_rate=inf"], "'train.learning_rate' must be a finite number, got inf"),
    ("cluster", ["--set", "cluster.memory_budget_gb=inf"],
     "'cluster.memory_budget_gb' must be a finite number, got inf"),
    ("train", ["--set", "train.mixup_alpha=inf"], "'train.mixup_alpha' must be a finite number, got inf"),
    ("train", ["--set", "model.head=am_softmax", "--set", "model.margin=inf"],
     "'model.margin' must be a finite number, got inf"),
    ("train", ["--set", "model.head=am_softmax", "--set", "model.scale=inf"],
     "'model.scale' must be a finite number, got inf"),
    ("split", ["--set", "split.seed=-1"], "'split.seed' must be in [0, 2**31 - 1], got -1"),
    ("train", ["--set", "train.seed=-1"], "'train.seed' must be in [0, 2**31 - 1], got -1"),
    ("cluster", ["--set", "cluster.seed=4294967296"], "'cluster.seed' must be in [0, 2**31 - 1], got 4294967296"),
    ("train", ["--set", "model.hidden_size=1048576"], "hidden_size=1048576"),  # terabytes of weights
    ("train", ["--set", "model.max_length=1000000000"], "max_length=1000000000"),
    ("evaluate", ["--corrupt", "noise:snr=-1000"], "--corrupt noise:snr=-1000: snr must be in [-60, 120] dB, got -1000"),
    ("evaluate", ["--corrupt", "reverb:rt60=1e7"],
     "--corrupt reverb:rt60=1e7: rt60 must be in (0, 30] seconds, got 1e+07"),
]


@pytest.mark.parametrize("command, arguments, expected", BAD_VALUES, ids=[" ".join(a) for _, a, _ in BAD_VALUES])
def test_bad_values_are_one_line_naming_the_key_and_the_trained_model_stays(own_project, command, arguments,
                                                                             expected):
    bundle = own_project / "work/output/model"
    before = {path.name: path.read_bytes() for path in bundle.iterdir() if path.is_file()}
    message = user_error(command, *common(own_project), *arguments)  # exit code 2, one line, no traceback
    assert expected in message
    if "--set" in arguments:
        assert arguments[-1].split("=")[0] in message
    assert {path.name: path.read_bytes() for path in bundle.iterdir() if path.is_file()} == before


def test_more_clusters_than_training_frames(own_project):
    message = user_error("cluster", *common(own_project), "--set", "cluster.n_clusters=100000")
    assert "cluster.n_clusters = 100000" in message and "lower cluster.n_clusters" in message
    assert str(Layout(own_project / "work").frames) in message and "train split" in message


def test_vocabulary_fitted_on_frames_of_other_settings(own_project):
    run_ok("spectrogram", *common(own_project), "--set", "spectrogram.n_mels=32")
    message = user_error("tokenize", *common(own_project), "--set", "spectrogram.n_mels=32")
    layout = Layout(own_project / "work")
    assert str(layout.vocabulary) in message and str(layout.frames) in message
    assert "another frame spec" in message and "re-run `audiotokens cluster`" in message


def test_model_bundle_made_with_other_spectrogram_parameters(own_project):
    changed = ["--set", "spectrogram.hop_length=256"]
    for stage in ("spectrogram", "cluster", "tokenize"):
        run_ok(stage, *common(own_project), *changed)
    message = user_error("evaluate", *common(own_project), *changed)
    assert str(own_project / "work/output/model") in message and str(Layout(own_project / "work").tokens) in message
    assert "another vocabulary than the model bundle" in message and "re-run `audiotokens train`" in message


# ---------------------------------------------------------------- data


def test_manifest_with_missing_columns(project, tmp_path):
    manifest = write_manifest(tmp_path / "files.csv", "file,class", ["audio/clip00.wav,low"])
    message = user_error("split", "--workdir", str(tmp_path / "work"), "--set", f"data.manifest={manifest}")
    assert str(manifest) in message and "lacks column(s) path, label" in message


def test_empty_split(project, tmp_path):
    manifest = write_manifest(tmp_path / "none.csv", "path,label", [])
    message = user_error("split", "--workdir", str(tmp_path / "work"), "--set", f"data.manifest={manifest}")
    assert str(manifest) in message and "lists no clips; add one row per audio file" in message
    message = user_error("split", *common(project)[:2], "--workdir", str(tmp_path / "work"),
                         "--set", "split.strategy=prefix", "--set", "split.validation_prefixes=Z")
    assert "split.validation_prefixes" in message and "validation side is empty" in message
    assert not Layout(tmp_path / "work").split_json.exists()


def test_empty_validation_split_at_training(own_project):
    layout = Layout(own_project / "work")
    split = json.loads(layout.split_json.read_text())
    split["splits"]["validation"] = []
    layout.split_json.write_text(json.dumps(split))
    message = user_error("train", *common(own_project))
    assert "split 'validation' has no clips" in message and "split.json" in message


def test_validation_clips_all_skipped_at_training(own_project):
    """Every validation clip is absent from the stores (as when the spectrogram stage skipped them all)."""
    layout = Layout(own_project / "work")
    split = json.loads(layout.split_json.read_text())
    split["splits"]["validation"] = ["not-a-clip-of-the-store"]
    layout.split_json.write_text(json.dumps(split))
    message = user_error("train", *common(own_project))
    assert "no clip of split 'validation'" in message and str(layout.tokens) in message


@pytest.mark.parametrize(("command", "settings", "expected"), [
    ("train", ["train.objective=contrastive", "train.batch_size=1"],
     "train.batch_size=1 makes batches of one clip, which hold none; use train.batch_size >= 2"),
    ("pretrain", ["model.encoder=cnn"], "pre-training needs an encoder with one output per position"),
])
def test_settings_that_cannot_train_name_the_reason(own_project, command, settings, expected):
    message = user_error(command, *common(own_project), *(part for s in settings for part in ("--set", s)))
    assert expected in message


def test_label_not_in_the_class_list(project, tmp_path):
    manifest = write_manifest(tmp_path / "eval.csv", "path,label",
                              [f"{project / 'audio/clip00.wav'},low", f"{project / 'audio/clip01.wav'},violin"])
    message = user_error("evaluate", *common(project), "--manifest", str(manifest))
    assert str(manifest) in message and "'violin'" in message and "not classes of the model" in message


def test_audioset_label_missing_from_the_class_list(tmp_path):
    (tmp_path / "audio").mkdir()
    segments = tmp_path / "segments.csv"
    segments.write_text("# header\n# header\n# YTID, start_seconds, end_seconds, positive_labels\n"
                        'AAAAAAAAAAA, 0.000, 10.000, "/m/09x0r"\nBBBBBBBBBBB, 0.000, 10.000, "/m/zzzzz"\n')
    classes = tmp_path / "class_labels_indices.csv"
    classes.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    message = user_error("split", "--workdir", str(tmp_path / "work"), "--set", "data.source=audioset",
                         "--set", f"data.segments={segments}", "--set", f"data.class_labels={classes}",
                         "--set", f"data.audio_root={tmp_path / 'audio'}")
    assert "/m/zzzzz" in message and str(classes) in message


def test_duplicate_clip_ids(project, own_project, tmp_path):
    rows = ["audio/clip00.wav,low", "audio/clip01.wav,mid", "audio/clip00.wav,high"]
    manifest = write_manifest(tmp_path / "dup.csv", "path,label", rows)
    message = user_error("split", "--workdir", str(tmp_path / "work"), "--set", f"data.manifest={manifest}")
    assert "line 4" in message and "audio/clip00.wav is listed again (first on line 2)" in message

    layout = Layout(own_project / "work")
    split = json.loads(layout.split_json.read_text())
    split["clips"].append(dict(split["clips"][0]))
    layout.split_json.write_text(json.dumps(split))
    message = user_error("spectrogram", *common(own_project))
    assert str(layout.split_json) in message and "more than once" in message and "audiotokens split" in message


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The same path as CliRunner, in a real interpreter: stderr is exactly the error line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "audiotokens.cli", "split", "--workdir", str(tmp_path),
                           "--set", "split.strategy=alphabetical"], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: 'split.strategy' must be one of {', '.join(SPLIT_STRATEGIES)}, got 'alphabetical'"]
