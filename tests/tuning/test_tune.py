"""`audiotokens tune` on a tiny tone corpus: trials, reuse of frames and tokens, pruning, resuming, test never
read during the study, best.toml reproducing the best trial, two processes on one study, bad space files."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from projects import RUN_SETTINGS, clip_labels, write_tone

from audiotokens.cli import main
from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.evaluation import evaluate
from audiotokens.evaluation.html_report import write_report
from audiotokens.pipeline.layout import TRIAL_CONFIG, Layout, StudyLayout
from audiotokens.pipeline.provenance import read_record, stage_states
from audiotokens.pipeline.run import run
from audiotokens.pipeline.stores import SplitPlan
from audiotokens.training import datasets
from audiotokens.tuning import tune as tuning
from audiotokens.tuning.space import load_space
from audiotokens.tuning.tune import default_prune_after, default_pruner, tune

SPACE = """[space]
"cluster.n_clusters" = [4, 8]
"train.learning_rate" = {low = 1e-4, high = 3e-3, log = true}
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Audio, manifest, run.toml and space.toml of a 24-clip tone corpus; no stage run yet."""
    root = tmp_path_factory.mktemp("tune_project")
    rows = ["path,label"]
    for i in range(24):
        labels = clip_labels(i, "multilabel")
        write_tone(root / "audio" / f"clip{i:02d}.wav", labels, i)
        rows.append(f"{root}/audio/clip{i:02d}.wav,{';'.join(labels)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "run.toml").write_text(f'[data]\nmanifest = "{root / "manifest.csv"}"\n' + RUN_SETTINGS)
    (root / "space.toml").write_text(SPACE)
    return root


def base_config(project: Path, workdir: Path):
    return load_config(project / "run.toml", workdir=workdir)


def storage(workdir: Path, name: str = "default") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{Layout(workdir).tune_database}")


def files(workdir: Path, name: str = "default") -> StudyLayout:
    """The files of study `name` in the workdir: tune/<name>/."""
    return Layout(workdir).study(name)


class Spy:
    """What the data and evaluate paths read, in order: rows only ever reach a model through a ClipDataset,
    and the evaluate stage opens a split's store with open_split."""

    def __init__(self):
        self.events: list[tuple[str, str, set[str]]] = []  # (what, workdir or split, clip ids)

    def install(self, patch: pytest.MonkeyPatch) -> None:
        create, open_split, conclude = datasets.ClipDataset.__init__, evaluate.open_split, tuning.Tuner.conclude

        def dataset(this, *, index, **kwargs):
            self.events.append(("dataset", str(kwargs["store_path"]), set(index.ids)))
            create(this, index=index, **kwargs)

        def evaluated(layout, kind, split):
            rows, index = open_split(layout, kind, split)
            self.events.append(("evaluate", str(layout.workdir), set(index.ids)))
            return rows, index

        def concluded(tuner, study):
            self.events.append(("study ended", "", set()))
            return conclude(tuner, study)

        patch.setattr(datasets.ClipDataset, "__init__", dataset)
        patch.setattr(evaluate, "open_split", evaluated)
        patch.setattr(tuning.Tuner, "conclude", concluded)


@pytest.fixture(scope="module")
def study(project, tmp_path_factory):
    """One study of 3 trials, with the spy on and the progress lines kept."""
    workdir = tmp_path_factory.mktemp("study") / "work"
    spy, stderr = Spy(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        spy.install(patch)
        summary = tune(base_config(project, workdir), project / "space.toml", 3,
                       sampler=optuna.samplers.RandomSampler(seed=0))
    return workdir, summary, spy, stderr.getvalue()


def test_trials_run_and_write_the_table_plots_and_best_config(study):
    workdir, summary, _, stderr = study
    layout, trials = files(workdir), storage(workdir).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    best = max(trials, key=lambda t: t.value)
    assert summary["best"]["trial"] == best.number and summary["best"]["validation"] == best.value
    assert summary["metric"] == "mAP" and set(summary["evaluation"]) == {"validation", "test"}
    assert summary["evaluation"]["validation"]["mAP"] == pytest.approx(best.value, abs=1e-6)

    with open(layout.trials("csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["trial"]) for row in rows] == [0, 1, 2]
    assert [float(row["validation mAP"]) for row in rows] == pytest.approx([t.value for t in trials])
    assert [int(row["cluster.n_clusters"]) for row in rows] == [t.params["cluster.n_clusters"] for t in trials]
    assert {row["epochs"] for row in rows} == {"2"} and all(float(row["seconds"]) > 0 for row in rows)
    assert sum("best" in row["note"] for row in rows) == 1
    assert layout.trials("md").read_text().count("\n") == 2 + 3
    for plot in (layout.history_plot, layout.importance_plot):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    progress = [line for line in stderr.splitlines() if line.startswith("tune: trial ")]
    assert len(progress) == 3 and all("mAP" in line and "cluster.n_clusters=" in line for line in progress)
    assert progress[0].startswith("tune: trial 0 (the base configuration)")
    best_toml = load_config(layout.best)
    assert best_toml.cluster.n_clusters == best.params["cluster.n_clusters"]
    assert best_toml.train.learning_rate == best.params["train.learning_rate"]


def test_the_first_trial_is_the_base_configuration_and_the_search_is_measured_against_it(study, project):
    workdir, summary, _, stderr = study
    trials = storage(workdir).get_trials()
    base = load_config(project / "run.toml")
    assert trials[0].params == {"cluster.n_clusters": base.cluster.n_clusters,
                                "train.learning_rate": base.train.learning_rate}
    assert [bool(t.user_attrs.get("base")) for t in trials] == [True, False, False]
    assert summary["base"] == {"trial": 0, "state": "complete", "validation": trials[0].value, "epochs": 2}
    with open(files(workdir).trials("csv"), newline="") as handle:
        notes = [row["note"] for row in csv.DictReader(handle)]
    assert "base configuration" in notes[0] and not any("base" in note for note in notes[1:])
    best = max(trials, key=lambda t: t.value)
    head = "tune: the base configuration (trial 0)"
    expected = (f"{head} is the best trial" if best.number == 0
                else f"{head}: validation mAP {trials[0].value:.4f}; the best trial {best.number} is "
                     f"{best.value - trials[0].value:+.4f} from it")
    assert expected in stderr


def queued(project: Path, tmp_path: Path, space: str, **options) -> list[optuna.trial.FrozenTrial]:
    """The trials a new study holds once opened by tune (none run): the base trial, if one was queued."""
    (tmp_path / "space.toml").write_text(space)
    config = base_config(project, tmp_path / "work")
    tuner = tuning.Tuner(config, load_space(tmp_path / "space.toml", config), None, "default", None, None,
                         **options)
    study = optuna.create_study(direction="maximize")
    tuner.queue_base_trial(study)
    tuner.queue_base_trial(study)  # a second process opening the same new study
    return study.get_trials()


def test_the_base_trial_is_queued_once_with_the_base_values(project, tmp_path):
    space = '[space]\n"cluster.n_clusters" = {low = 2, high = 10, step = 2}\n"model.pooling" = ["mean", "cls"]\n'
    trials = queued(project, tmp_path, space)
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.WAITING
    base = load_config(project / "run.toml")
    assert trials[0].system_attrs["fixed_params"] == {"cluster.n_clusters": base.cluster.n_clusters,
                                                      "model.pooling": base.model.pooling}
    assert trials[0].user_attrs == {"base": True}


@pytest.mark.parametrize("space", [
    '[space]\n"cluster.n_clusters" = [4, 16]\n',                       # not among the choices
    '[space]\n"cluster.n_clusters" = {low = 3, high = 9, step = 2}\n',  # within the ends, off the grid
    '[space]\n"train.learning_rate" = {low = 1e-4, high = 5e-4}\n',     # beyond the high end
])
def test_no_base_trial_when_the_space_cannot_draw_the_base_values(project, tmp_path, caplog, space):
    with caplog.at_level("INFO", logger="audiotokens"):
        assert queued(project, tmp_path, space) == []
    assert "the base configuration is not a point of the search space" in caplog.text


def test_no_base_trial_when_asked_not_to(project, tmp_path):
    assert queued(project, tmp_path, SPACE, base_trial=False) == []


def test_a_seeded_study_draws_the_same_trials_again(project, tmp_path):
    def drawn(name: str, seed: int) -> list[dict]:
        workdir = tmp_path / name
        result = CliRunner().invoke(main, ["tune", "--config", str(project / "run.toml"), "--workdir", str(workdir),
                                           "--space", str(project / "space.toml"), "--trials", "2",
                                           "--no-base-trial", "--seed", str(seed)])
        assert result.exit_code == 0, result.output
        return [trial.params for trial in storage(workdir).get_trials()]

    first = drawn("first", 3)
    assert drawn("again", 3) == first and drawn("other", 4) != first


def test_the_html_report_shows_the_study(study, tmp_path):
    workdir, summary, _, _ = study
    page = write_report(workdir, tmp_path / "report.html").read_text()
    section = page[page.index('<section id="tune">'):]
    section = section[:section.index("</section>")]
    assert section.count('<img alt="') == 2  # history and importance
    for split in ("validation", "test"):
        assert f"<td>{split}</td><td>{summary['evaluation'][split]['mAP']:.4g}</td>" in section
    assert section.count("<tr>") == 1 + 2 + 1 + 3  # the figures' header and rows, the trials' header and rows
    assert f"best trial {summary['best']['trial']} of 3" in section
    assert f"the base configuration (trial 0): validation mAP {summary['base']['validation']:.4f}" in section


def test_trials_take_over_frames_and_same_vocabulary_tokens(study):
    workdir, _, _, _ = study
    base, trials = Layout(workdir), storage(workdir).get_trials()
    first_of: dict[int, Layout] = {}
    for trial in trials:
        layout = Layout(files(workdir).trial_workdir(trial.number))
        config = load_config(layout.workdir / TRIAL_CONFIG, workdir=layout.workdir)
        assert {name: state.state for name, state in stage_states(layout, config).items()
                if name in ("split", "spectrogram", "cluster", "tokenize", "train")} == dict.fromkeys(
            ("split", "spectrogram", "cluster", "tokenize", "train"), "fresh")
        assert os.path.samefile(layout.frames, base.frames)
        assert not layout.stage_log("spectrogram").exists()  # never computed in a trial
        k = trial.params["cluster.n_clusters"]
        if k in first_of:  # the tokens of the first trial with this vocabulary, not computed again
            assert os.path.samefile(layout.tokens, first_of[k].tokens)
            assert not layout.stage_log("cluster").exists() and not layout.stage_log("tokenize").exists()
        else:
            assert layout.stage_log("cluster").exists()
            assert all(not os.path.samefile(layout.tokens, other.tokens) for other in first_of.values())
            first_of[k] = layout
    assert len(first_of) < len(trials)  # two choices, three trials: one vocabulary was reused


def test_test_clips_are_never_read_during_the_study(study):
    workdir, summary, spy, _ = study
    test_ids = set(SplitPlan.load(Layout(workdir)).ids("test"))
    end = spy.events.index(("study ended", "", set()))
    during, after = spy.events[:end], spy.events[end + 1:]
    assert test_ids and sum(what == "dataset" for what, _, _ in during) >= 3 * 2  # train and validation
    assert all(not ids & test_ids for _, _, ids in during)
    assert all(what != "evaluate" for what, _, _ in during)
    read_test = [where for what, where, ids in after if ids & test_ids]
    assert read_test == [summary["best"]["workdir"]]  # once, in the best trial's workdir


def test_best_toml_reproduces_the_best_trials_validation_figure(study, tmp_path):
    workdir, summary, _, _ = study
    config = load_config(files(workdir).best, workdir=tmp_path / "again")
    run(config, stop="train")
    counts = read_record(Layout(tmp_path / "again"), "train")["counts"]
    assert counts["best_validation_mAP"] == pytest.approx(summary["best"]["validation"], abs=1e-6)


class PruneOddTrials(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


def test_a_pruner_stops_a_trial_after_the_epoch_it_judged(project, tmp_path):
    workdir = tmp_path / "work"
    tune(base_config(project, workdir), project / "space.toml", 2, pruner=PruneOddTrials())
    trials = storage(workdir).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert trials[0].user_attrs["epochs"] == 2 and trials[1].user_attrs["epochs"] == 1
    assert list(trials[1].intermediate_values) == [1]
    pruned = Layout(files(workdir).trial_workdir(1))
    # a stopped run writes no bundle, so its log stays aside, in output/train.partial/
    rows = [json.loads(line) for line in pruned.staged_run_files.metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]  # training stopped after the pruned epoch
    assert "pruned by the tuner after epoch 1" in json.loads(pruned.failure("train").read_text())["error"]
    stood = trials[1].intermediate_values[1]
    table = list(csv.DictReader(files(workdir).trials("csv").read_text().splitlines()))
    assert table[1]["state"] == "pruned" and float(table[1]["validation mAP"]) == stood  # Optuna keeps the last figure
    assert table[1]["note"] == f"pruned after epoch 1 (validation {stood:.4f} there)"


def test_a_pruned_trial_says_where_it_stood_and_its_best_epoch():
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                      intermediate_values={1: 0.40, 2: 0.71, 3: 0.71, 4: 0.65})
    assert tuning.pruned_text(trial) == "pruned after epoch 4 (validation 0.6500 there; its best 0.7100 at epoch 2)"
    rising = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.3, 2: 0.5})
    assert tuning.pruned_text(rising) == "pruned after epoch 2 (validation 0.5000 there)"


def test_an_interrupted_study_resumes_without_repeating_finished_trials(project, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    report = tuning.PrunerReport.__call__

    def interrupt_trial_1(this, epoch, score):
        if this.trial.number == 1:
            raise KeyboardInterrupt  # Ctrl-C during the second trial's training
        report(this, epoch, score)

    monkeypatch.setattr(tuning.PrunerReport, "__call__", interrupt_trial_1)
    with pytest.raises(KeyboardInterrupt):
        tune(base_config(project, workdir), project / "space.toml", 2)
    first = storage(workdir).get_trials()
    assert [t.state.name for t in first] == ["COMPLETE", "FAIL"]
    assert files(workdir).trials("csv").read_text().count("\n") == 1 + 2  # written on the way out

    monkeypatch.setattr(tuning.PrunerReport, "__call__", report)
    trained: list[int] = []
    execute = tuning.execute
    monkeypatch.setattr(tuning, "execute", lambda stage, config, **options: (
        trained.append(stage), execute(stage, config, **options))[1])
    tune(base_config(project, workdir), project / "space.toml", 2)
    trials = storage(workdir).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[0].value == first[0].value and trials[0].datetime_complete == first[0].datetime_complete
    assert trained.count("train") == 1  # trial 2 only; trial 0 was not run again


def test_a_study_goes_on_only_with_its_own_search_space(study, project, tmp_path):
    workdir, _, _, _ = study
    other = tmp_path / "other.toml"
    other.write_text('[space]\n"cluster.n_clusters" = [4, 16]\n')
    with pytest.raises(UserError, match="started with another search space.*--study"):
        tune(base_config(project, workdir), other, 3)


def test_a_study_of_another_name_keeps_its_own_trials_and_reuses_the_others_tokens(project, tmp_path):
    workdir, first, second = tmp_path / "work", tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('[space]\n"cluster.n_clusters" = [4]\n')
    second.write_text('[space]\n"cluster.n_clusters" = [4]\n"train.learning_rate" = [0.002]\n')
    tune(base_config(project, workdir), first, 1)
    trained = read_record(Layout(files(workdir).trial_workdir(0)), "train")
    with pytest.raises(UserError, match="started with another search space"):
        tune(base_config(project, workdir), second, 1)
    tune(base_config(project, workdir), second, 1, study_name="lr")
    assert read_record(Layout(files(workdir).trial_workdir(0)), "train") == trained  # untouched
    assert len(storage(workdir).get_trials()) == 1 and len(storage(workdir, "lr").get_trials()) == 1
    ours, theirs = Layout(files(workdir, "lr").trial_workdir(0)), Layout(files(workdir).trial_workdir(0))
    assert os.path.samefile(ours.tokens, theirs.tokens)
    assert load_config(files(workdir, "lr").best).train.learning_rate == 0.002
    with pytest.raises(UserError, match="--study 'a/b' names the study's folder"):
        tune(base_config(project, workdir), second, 1, study_name="a/b")


def test_with_kfold_a_trial_trains_every_fold_and_scores_their_mean(project, tmp_path):
    workdir = tmp_path / "work"
    config = load_config(project / "run.toml", ["split.strategy=kfold", "split.folds=2", "split.fold=1"], workdir)
    spy, stderr = Spy(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        spy.install(patch)
        summary = tune(config, project / "space.toml", 2, sampler=optuna.samplers.RandomSampler(seed=1))
    trials, base = storage(workdir).get_trials(), Layout(workdir)
    for trial in trials:
        folds = [Layout(files(workdir).trial_workdir(trial.number, fold)) for fold in (0, 1)]
        best = [read_record(fold, "train")["counts"]["best_validation_mAP"] for fold in folds]
        assert trial.user_attrs["folds"] == pytest.approx(best) and trial.value == pytest.approx(sum(best) / 2)
        assert [load_config(f.workdir / TRIAL_CONFIG).split.fold for f in folds] == [0, 1]
        assert SplitPlan.load(folds[0]).ids("validation") != SplitPlan.load(folds[1]).ids("validation")
        assert all(os.path.samefile(f.frames, base.frames) for f in folds)  # frames computed once
        assert trial.user_attrs["epochs"] == 4 and list(trial.intermediate_values) == [1, 2, 3, 4]
    progress = [line for line in stderr.getvalue().splitlines() if line.startswith("tune: trial ")]
    assert len(progress) == 2 and all("(mean of 2 folds)" in line for line in progress)

    best = max(trials, key=lambda t: t.value)
    evaluation = summary["evaluation"]
    assert summary["best"]["folds"] == best.user_attrs["folds"] and len(evaluation["folds"]) == 2
    assert evaluation["validation"]["mAP"] == pytest.approx(best.value, abs=1e-6)
    assert evaluation["test"]["mAP"] == pytest.approx(sum(f["test"]["mAP"] for f in evaluation["folds"]) / 2)
    test_ids = set(SplitPlan.load(base).ids("test"))
    end = spy.events.index(("study ended", "", set()))
    assert all(not ids & test_ids for _, _, ids in spy.events[:end])
    assert "mean over 2 folds; `run` trains fold 1 alone" in files(workdir).best.read_text()
    assert load_config(files(workdir).best).split.fold == 1


@pytest.mark.slow
def test_two_processes_finish_the_requested_trials_between_them(project, tmp_path):
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "audiotokens.cli", "tune", "--config", str(project / "run.toml"),
               "--workdir", str(workdir), "--space", str(project / "space.toml"), "--trials", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    trials = storage(workdir).get_trials()
    finished = [t for t in trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5 and all(t.state.name == "COMPLETE" for t in finished)
    progress = [out.count("tune: trial ") for _, out in outputs]
    assert sum(progress) == len(finished) and all(progress)  # both processes ran trials
    assert sum(bool(t.user_attrs.get("base")) for t in trials) == 1
    assert len({t.number for t in trials}) == len(trials)


@pytest.mark.parametrize("space, message", [
    ('[space]\n"cluster.n_clusterz" = [4, 8]\n', "unknown config key 'cluster.n_clusterz'"),
    ('[space]\n"train.learning_rate" = {low = 3e-3, high = 1e-4}\n', "'train.learning_rate': low (0.003) must be below high"),
    ('[space]\n"train.learning_rate" = {low = 0.0, high = 1e-3, log = true}\n', "a log range needs low > 0"),
    ('[space]\n"model.num_layers" = {low = 1.5, high = 4}\n', "'model.num_layers' is an int key: give low, high"),
    ('[space]\n"model.num_layers" = {low = 1, high = 4, step = 0.5}\n', "is an int key: give low, high"),
    ('[space]\n"train.learning_rate" = {low = 1e-4, hi = 1e-3}\n', "unknown field 'hi'"),
    ('[space]\n"cluster.n_clusters" = [1, 8]\n', "'cluster.n_clusters' must be >= 2, got 1"),
    ('[space]\n"cluster.n_clusters" = []\n', "has no choices"),
    ('[space]\n"split.seed" = [0, 1]\n', "'split.seed' cannot be tuned"),
    ('[space]\n"model.pooling" = {low = 1, high = 2}\n', "str key: list its choices"),
    ("[space]\n", "names no keys"),
    ('[cluster]\nn_clusters = [4]\n', "put the keys to tune under [space]"),
    ('[space]\n"cluster.n_clusters" = [4\n', "is not valid TOML"),
])
def test_a_bad_space_file_is_one_line_naming_the_file(project, tmp_path, space, message):
    path = tmp_path / "space.toml"
    path.write_text(space)
    result = CliRunner().invoke(main, ["tune", "--config", str(project / "run.toml"), "--workdir",
                                       str(tmp_path / "work"), "--space", str(path), "--trials", "2"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert message in lines[0]
    assert not (tmp_path / "work").exists()  # refused before any work


def test_without_optuna_tune_says_which_extra_to_install(project, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    result = CliRunner().invoke(main, ["tune", "--config", str(project / "run.toml"), "--workdir",
                                       str(tmp_path / "work"), "--space", str(project / "space.toml")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: audiotokens tune needs Optuna (optuna is missing); install it with `pip install 'audiotokens[tune]'`"]


def test_an_unusable_storage_url_is_one_line(project, tmp_path):
    result = CliRunner().invoke(main, ["tune", "--config", str(project / "run.toml"), "--workdir",
                                       str(tmp_path / "work"), "--space", str(project / "space.toml"),
                                       "--storage", "nosuchdb://user:secret@host/db"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: cannot open the study 'default' in nosuchdb://user:***@host/db")


def test_the_default_pruner_judges_no_trial_before_a_quarter_of_the_epochs():
    assert [default_prune_after(epochs) for epochs in (1, 6, 8, 20, 40)] == [2, 2, 2, 5, 10]
    study = optuna.create_study(direction="maximize", pruner=default_pruner(default_prune_after(20)))
    for _ in range(5):  # five finished trials at 0.9 from the first epoch on
        good = study.ask()
        for epoch in range(1, 21):
            good.report(0.9, epoch)
        study.tell(good, 0.9)
    late = study.ask()  # a trial at chance level for its first epochs
    judged = []
    for epoch in range(1, 7):
        late.report(0.1, epoch)
        judged.append(late.should_prune())
    assert judged == [False, False, False, False, True, True]  # epoch 5 is the first one judged
    with pytest.raises(UserError, match="--prune-after must be at least 1"):
        default_pruner(0)


def pruned_at(pruner: optuna.pruners.BasePruner, finished: list[float], trial: float) -> bool:
    """Whether `pruner` stops a trial at `trial` after epoch 10, once trials at `finished` have run 20 epochs."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in finished:
        done = study.ask()
        for epoch in range(1, 21):
            done.report(value, epoch)
        study.tell(done, value)
    judged = study.ask()
    for epoch in range(1, 11):
        judged.report(trial, epoch)
    return judged.should_prune()


def test_pruner_names_choose_how_hard_the_study_prunes():
    earlier = [0.5, 0.6, 0.7, 0.8, 0.9]
    median, quarter, none = (tuning.named_pruner(name, 5) for name in ("median", "percentile:25", "none"))
    assert pruned_at(median, earlier, 0.65) and not pruned_at(median, earlier, 0.75)
    assert not pruned_at(quarter, earlier, 0.65) and pruned_at(quarter, earlier, 0.55)  # only the clearly hopeless
    assert not pruned_at(none, earlier, 0.0)
    for bad in ("mean", "percentile:0", "percentile:100", "percentile:x", "none:1"):
        with pytest.raises(UserError, match=f"--pruner '{bad}' is not a pruner; give median, percentile:P"):
            tuning.named_pruner(bad, 5)


def test_the_shipped_search_space_is_valid_against_the_defaults_and_holds_them():
    defaults = load_config(None)
    space = load_space(Path(__file__).resolve().parents[2] / "configs" / "space.toml", defaults)
    assert space.keys == ["cluster.n_clusters", "cluster.bands", "model.num_layers", "model.hidden_size",
                          "model.pooling", "model.dropout", "train.learning_rate"]
    assert space.point_of(defaults)[1] == []  # a study of it starts from the recommended recipe
