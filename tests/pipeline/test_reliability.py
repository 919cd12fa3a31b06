"""Messy workdirs and data: a second run on one workdir, damaged or changed artifacts and audio, killed runs,
permissions of what the stages write, and files that are not what a manifest or folder says."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from projects import copy_project, project_config, trained_project, write_tone

from audiotokens.cli import main
from audiotokens.config import load_config
from audiotokens.data.sources import load_folder, load_manifest
from audiotokens.errors import UserError
from audiotokens.evaluation.compare import run_metrics
from audiotokens.pipeline.files import atomic_dir
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.lock import workdir_lock
from audiotokens.pipeline.provenance import stage_states, write_failure
from audiotokens.pipeline.run import execute, plan, run
from audiotokens.pipeline.stores import SplitPlan


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "singlelabel")


def tone_manifest(root: Path, n: int = 8) -> Path:
    rows = ["path,label"]
    for i in range(n):
        label = ("low", "high")[i % 2]
        write_tone(root / "audio" / f"c{i}.wav", [label], i)
        rows.append(f"audio/c{i}.wav,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


SMALL = ["split.strategy=random", "split.validation_ratio=0.25", "split.test_ratio=0", "spectrogram.workers=1"]


def small_config(root: Path, workdir: Path | None = None):
    """Tones written under root (once); the workdir defaults to root/work."""
    manifest = root / "manifest.csv" if (root / "manifest.csv").exists() else tone_manifest(root)
    return load_config(None, [f"data.manifest={manifest}", *SMALL], workdir or root / "work")


# ---------------------------------------------------------------- one writer per workdir


def _hold(workdir: str, ready, release) -> None:
    with workdir_lock(workdir, "train"):
        ready.set()
        release.wait(30)


def start_holder(workdir) -> tuple[multiprocessing.Process, object]:
    """A process holding the workdir lock (as `train` would) until the returned event is set."""
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(workdir), ready, release))
    holder.start()
    assert ready.wait(30)
    return holder, release


def test_a_second_run_on_a_held_workdir_says_who_holds_it_in_one_line(tmp_path):
    config = small_config(tmp_path)
    holder, release = start_holder(config.workdir)
    try:
        with pytest.raises(UserError, match=rf"is in use by audiotokens train \(pid {holder.pid}, since "):
            execute("split", config)
    finally:
        release.set()
        holder.join(30)
    execute("split", config)  # the lock went with its holder


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    config = small_config(tmp_path)
    holder, _ = start_holder(config.workdir)
    os.kill(holder.pid, 9)
    holder.join(30)
    execute("split", config)


def test_concurrent_runs_one_proceeds_the_others_report_the_lock(tmp_path):
    small_config(tmp_path)  # writes the tones
    overrides = [part for key in (f"data.manifest={tmp_path / 'manifest.csv'}", *SMALL) for part in ("--set", key)]
    command = [sys.executable, "-m", "audiotokens.cli", "run", "--to", "spectrogram", "--workdir",
               str(tmp_path / "work"), *overrides]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(run.wait(120), run.stderr.read()) for run in runs]
    assert {code for code, _ in results} <= {0, 2} and any(code == 0 for code, _ in results)
    assert all("is in use by audiotokens" in err and "Traceback" not in err for code, err in results if code == 2)
    reference = small_config(tmp_path, tmp_path / "reference")
    execute("split", reference)
    execute("spectrogram", reference)
    assert Layout(tmp_path / "work").frames.read_bytes() == Layout(reference.workdir).frames.read_bytes()


# ---------------------------------------------------------------- damaged and changed inputs


def test_a_damaged_bundle_is_stale_and_refused_in_one_line(project, tmp_path):
    own = copy_project(project, tmp_path / "project")
    weights = own / "work" / "output" / "model" / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(3000)
    config = load_config(own / "run.toml", [], own / "work")
    state = stage_states(Layout(own / "work"), config)["train"]
    assert state.state == "stale" and "output/model/model.safetensors changed since the stage wrote it" in state.line()
    result = CliRunner().invoke(main, ["predict", "--workdir", str(own / "work"), str(own / "audio" / "clip00.wav")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "the bundle's files do not match its manifest: model.safetensors changed" in result.stderr


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_a_diverging_train_stops_in_one_line_and_keeps_the_bundle(project, tmp_path):
    own = copy_project(project, tmp_path / "project")
    layout = Layout(own / "work")
    bundle = files_of(layout.model_dir)
    run_files = {path: path.read_bytes() for path in (layout.metrics, layout.curves, layout.last_checkpoint,
                                                      layout.best_checkpoint)}
    # AdamW multiplies the weights by 1 - lr·weight_decay: they overflow within the first epoch
    result = CliRunner().invoke(main, ["train", "--config", str(own / "run.toml"), "--workdir",
                                       str(own / "work"), "--set", "train.weight_decay=1e30"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    error = result.stderr.strip().splitlines()[-1]
    assert re.match(r"error: training diverged in epoch 1, step \d+: the (loss|weights|validation scores) "
                    r"became NaN or infinite; train\.weight_decay \(1e\+30\) times train\.learning_rate",
                    error), error
    assert files_of(layout.model_dir) == bundle
    assert {path: path.read_bytes() for path in run_files} == run_files  # the good run's log and checkpoints
    config = load_config(own / "run.toml", ["train.weight_decay=1e30"], own / "work")
    state = stage_states(layout, config)["train"]
    assert state.state == "failed" and "diverged in epoch 1" in state.line()


def test_changed_or_deleted_audio_makes_the_split_stale_and_the_frames_recomputed(tmp_path):
    config = small_config(tmp_path)
    execute("split", config)
    execute("spectrogram", config)
    layout = Layout(config.workdir)
    assert stage_states(layout, config)["spectrogram"].state == "fresh"
    before = layout.frames.read_bytes()
    time.sleep(0.01)
    write_tone(tmp_path / "audio" / "c3.wav", ["high"], 99)  # same name, other sound
    states = stage_states(layout, config)
    assert states["split"].state == "stale"
    assert "1 clips' audio changed or is gone since the split" in states["split"].line()
    assert states["spectrogram"].state == "stale"
    from audiotokens.pipeline.run import run

    assert run(config, stop="spectrogram") == ["split", "spectrogram"]
    assert layout.frames.read_bytes() != before
    (tmp_path / "audio" / "c5.wav").unlink()
    assert "1 clips' audio changed or is gone" in stage_states(layout, config)["split"].line()


def test_a_truncated_split_is_named_damaged_not_changed_audio(tmp_path):
    config = small_config(tmp_path)
    execute("split", config)
    layout = Layout(config.workdir)
    text = layout.split_json.read_text()
    layout.split_json.write_text(text[:len(text) // 2])
    line = stage_states(layout, config)["split"].line()
    assert line.startswith("split: stale — processed/split.json is damaged")
    assert "run `audiotokens split` again" in line and "audio changed" not in line
    layout.split_json.unlink()
    assert stage_states(layout, config)["split"].line() == "split: stale — processed/split.json is missing"


@pytest.fixture(scope="module")
def evaluated(project, tmp_path_factory) -> Path:
    """The trained project with its baselines fitted too: every stage has validation and test reports."""
    own = copy_project(project, tmp_path_factory.mktemp("evaluated") / "project")
    execute("baseline", project_config(own, "baseline.workers=1"))
    return own


@pytest.mark.parametrize("damage, stage, said", [
    ("output/baselines", "baseline", "output/baselines/logreg/fit.json is missing"),
    ("output/baselines/svm/model.joblib", "baseline", "output/baselines/svm/model.joblib is missing"),
    ("output/baselines/svm/test", "baseline", "output/baselines/svm/test/clips.json is missing"),
    ("output/eval/test", "evaluate", "output/eval/test/clips.json is missing"),
    ("output/eval/validation/per_class.csv", "evaluate", "output/eval/validation/per_class.csv is missing"),
    ("tokenized/stats.json", "tokenize", "tokenized/stats.json is missing"),
])
def test_a_removed_report_makes_its_stage_stale_and_run_plans_it(evaluated, tmp_path, damage, stage, said):
    own = copy_project(evaluated, tmp_path / "project")
    config = project_config(own, "baseline.workers=1")
    assert {state.state for state in stage_states(Layout(config.workdir), config).values()} == {"fresh", "missing"}
    target = config.workdir / damage
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    state = stage_states(Layout(config.workdir), config)[stage]
    assert state.state == "stale" and said in state.line(), state.line()
    assert stage in plan(config)


def test_run_redoes_exactly_the_stages_whose_reports_were_removed(evaluated, tmp_path):
    own = copy_project(evaluated, tmp_path / "project")
    config = project_config(own, "baseline.workers=1")
    layout = Layout(config.workdir)
    (layout.baselines / "svm" / "model.joblib").unlink()
    shutil.rmtree(layout.eval_dir("test"))
    assert run(config) == ["evaluate", "baseline"]
    assert (layout.baselines / "svm" / "model.joblib").is_file() and (layout.eval_dir("test") / "metrics.json").is_file()
    assert {state.state for state in stage_states(layout, config).values()} == {"fresh", "missing"}
    assert run(config) == []


def test_reports_of_a_split_that_no_longer_exists_are_removed_when_the_stages_run(evaluated, tmp_path):
    own = copy_project(evaluated, tmp_path / "project")
    layout = Layout(own / "work")
    assert (layout.eval_dir("test") / "metrics.json").is_file() and (layout.baselines / "svm/test").is_dir()
    assert "eval/test accuracy" in run_metrics(layout.workdir) and "svm/test accuracy" in run_metrics(layout.workdir)
    config = project_config(own, "split.test_ratio=0", "baseline.models=svm", "baseline.workers=1")
    run(config)
    assert "test" not in SplitPlan.load(layout).names()
    assert not layout.eval_dir("test").exists() and not list(layout.baselines.glob("*/test"))
    assert not (layout.baselines / "logreg").exists()  # a baseline no longer asked for goes too
    assert not [key for key in run_metrics(layout.workdir) if "test" in key or key.startswith("logreg")]
    assert {state.state for state in stage_states(layout, config).values()} == {"fresh", "missing"}


def test_a_killed_run_is_reported_with_its_last_log_line(tmp_path):
    config = small_config(tmp_path)
    layout = Layout(config.workdir)
    layout.stage_log("train").parent.mkdir(parents=True, exist_ok=True)
    layout.stage_log("train").write_text("10:00:00 epoch 3/20  loss 0.41\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    write_failure(layout, "train", "unfinished", running=True)
    marker = json.loads(layout.failure("train").read_text())
    layout.failure("train").write_text(json.dumps({**marker, "pid": int(dead.stdout)}))
    line = stage_states(layout, config)["train"].line()
    assert line.startswith("train: killed") and "last log line: 10:00:00 epoch 3/20  loss 0.41" in line
    layout.failure("train").write_text(json.dumps({**marker, "pid": os.getpid()}))
    assert stage_states(layout, config)["train"].state == "running"


# ---------------------------------------------------------------- permissions


def test_staged_directories_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "bundle") as folder:
            (folder / "weights").write_bytes(b"x")
            os.chmod(folder / "weights", 0o600)  # as safetensors leaves its file
        mode = stat.S_IMODE((tmp_path / "bundle").stat().st_mode)
        assert mode == 0o755
        assert stat.S_IMODE((tmp_path / "bundle" / "weights").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_a_trained_bundle_is_readable_by_others(project):
    model = Layout(project / "work").model_dir
    assert stat.S_IMODE(model.stat().st_mode) & 0o055 == 0o055
    for path in model.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


# ---------------------------------------------------------------- files that are not what they seem


def test_a_directory_and_a_dangling_link_are_named_as_such(tmp_path):
    tone_manifest(tmp_path, 4)
    (tmp_path / "audio" / "folder.wav").mkdir()
    (tmp_path / "audio" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    with open(tmp_path / "manifest.csv", "a") as handle:
        handle.write("audio/folder.wav,low\naudio/gone.wav,high\n")
    reasons = {m.id: m.reason for m in load_manifest(tmp_path / "manifest.csv").missing}
    assert reasons["audio/folder.wav"].startswith("is a directory, not an audio file")
    assert reasons["audio/gone.wav"].startswith("dangling symbolic link") and "nowhere.wav" in reasons["audio/gone.wav"]


def test_folder_mode_counts_what_it_passes_over(tmp_path, caplog):
    for name in ("low", "high"):
        write_tone(tmp_path / name / "a.wav", [name], 0)
    (tmp_path / "low" / "notes.txt").write_text("not audio")
    (tmp_path / "low" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        dataset = load_folder(tmp_path)
    assert len(dataset.clips) == 2
    assert "skipped 1 dangling symbolic links, 1 files with no audio extension" in caplog.text


def test_a_single_class_is_refused_at_split(tmp_path):
    rows = ["path,label"]
    for i in range(4):
        write_tone(tmp_path / "audio" / f"c{i}.wav", ["low"], i)
        rows.append(f"audio/c{i}.wav,low")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = load_config(None, [f"data.manifest={tmp_path / 'manifest.csv'}"], tmp_path / "work")
    with pytest.raises(UserError, match="has only one class \\('low'\\); a classifier needs at least two"):
        execute("split", config)


@pytest.mark.parametrize("override, key", [
    ("cluster.n_clusters=1", "cluster.n_clusters"), ("spectrogram.hop_length=2048", "spectrogram.hop_length"),
    ("spectrogram.fmax=20000", "spectrogram.fmin"), ("model.num_heads=0", "model.num_heads"),
    ("model.hidden_size=0", "model.hidden_size"), ("model.intermediate_size=0", "model.intermediate_size"),
])
def test_impossible_settings_fail_when_the_config_loads(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_too_many_mel_bands_are_said_once_in_the_tools_words(caplog):
    import warnings

    import librosa

    from audiotokens.features.spectrogram import mel_filterbank

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = int((librosa.filters.mel(sr=22050, n_fft=1024, n_mels=500).max(axis=1) == 0).sum())
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        mel_filterbank(22050, 1024, 500, 0.0, 0.0)
    assert empty > 0 and f"gives {empty} empty mel bands" in caplog.text and "librosa" not in caplog.text
