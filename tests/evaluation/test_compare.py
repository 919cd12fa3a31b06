"""compare: the settings that differ (exactly those), metrics, k-fold summaries, the written files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from audiotokens.errors import UserError
from audiotokens.evaluation.compare import (
    TRAIN_TIME,
    bit_axis,
    compare_workdirs,
    differing_settings,
    format_kfold,
    kfold_summary,
    token_family,
    write_comparison,
    write_kfold_summary,
)
from audiotokens.evaluation.evaluate import Scored
from audiotokens.evaluation.robustness import Stability, write_robustness
from audiotokens.pipeline.files import write_json
from audiotokens.pipeline.layout import Layout

BASE_PARAMS = {
    "split": {"data.source": "manifest", "data.manifest": "/data/m.csv", "split.strategy": "group",
              "split.seed": 0},
    "spectrogram": {"spectrogram.sample_rate": 22050, "spectrogram.n_mels": 64, "spectrogram.normalize": True},
    "cluster": {"cluster.n_clusters": 50, "cluster.niter": 20, "cluster.spherical": False},
    "tokenize": {},
    "train": {"model.num_layers": 12, "train.epochs": 20, "train.learning_rate": 5e-5},
}
SECTION_STAGE = {"data": "split", "split": "split", "spectrogram": "spectrogram", "cluster": "cluster",
                 "tokenize": "tokenize", "model": "train", "train": "train"}


def _fake_run(workdir: Path, changes: dict[str, object] | None = None, runtime_device: str = "cpu",
              train_time: float = 60.0, mAP: float = 0.7) -> Path:
    """Provenance records shaped as provenance.write_record writes them, and metrics files."""
    layout = Layout(workdir)
    for stage, params in BASE_PARAMS.items():
        params = {**params, **{k: v for k, v in (changes or {}).items() if SECTION_STAGE[k.split(".")[0]] == stage}}
        write_json(layout.record(stage), {
            "stage": stage, "fingerprint": "0" * 16, "params": params, "inputs": {},
            "runtime": {"train.device": runtime_device} if stage == "train" else {},
            "counts": {}, "wall_time_s": train_time if stage == "train" else 1.5, "finished_at": "",
            "versions": {"python": "3.11"},
        })
    epochs = [{"epoch": e, "best": e in (1, 2), "train": {"mAP": 0.5 + 0.2 * e, "micro_f1": 0.4, "macro_f1": 0.3},
               "validation": {"mAP": mAP - 0.1 + 0.05 * e, "micro_f1": 0.35, "macro_f1": 0.25}}
              for e in (1, 2, 3)]
    layout.metrics.write_text("".join(json.dumps(row) + "\n" for row in epochs))
    write_json(layout.eval_dir("validation") / "metrics.json",
               {"task": "multilabel", "mAP": mAP, "micro_f1": 0.5, "macro_f1": 0.4, "clips": 10})
    write_json(layout.output / "baselines" / "svm" / "validation" / "metrics.json",
               {"task": "multilabel", "mAP": 0.8, "micro_f1": 0.6, "macro_f1": 0.5, "clips": 10})
    return workdir


def test_compare_names_exactly_the_differing_settings(tmp_path):
    first = _fake_run(tmp_path / "k50", runtime_device="cpu")
    second = _fake_run(tmp_path / "k500", {"cluster.n_clusters": 500, "model.num_layers": 2},
                       runtime_device="cuda", train_time=30.0, mAP=0.8)
    comparison = compare_workdirs([first, second])
    assert comparison.settings == ["cluster.n_clusters", "model.num_layers"]  # not train.device (runtime)
    assert comparison.runs == ["k50", "k500"]
    a, b = comparison.rows
    assert (a["cluster.n_clusters"], b["cluster.n_clusters"]) == (50, 500)
    assert (a["eval/validation mAP"], b["eval/validation mAP"]) == (0.7, 0.8)
    assert a["svm/validation mAP"] == 0.8
    # the best epoch is the last one marked best (epoch 2), not the last epoch
    assert a["train log best epoch"] == 2 and a["train log validation mAP"] == pytest.approx(0.7)
    assert a["train log train mAP"] == pytest.approx(0.9)
    assert (a[TRAIN_TIME], b[TRAIN_TIME]) == (60.0, 30.0)


def test_identical_runs_show_no_setting_and_a_missing_key_counts_as_different(tmp_path):
    first, second = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b")
    assert compare_workdirs([first, second]).settings == []
    record = Layout(second).record("cluster")
    data = json.loads(record.read_text())
    data["params"]["cluster.gpu_batch"] = 8
    record.write_text(json.dumps(data))
    assert compare_workdirs([first, second]).settings == ["cluster.gpu_batch"]


def test_reports_of_a_split_the_split_no_longer_has_are_not_this_runs_figures(tmp_path):
    """After split.test_ratio = 0 the test reports of the previous split may still be on disk (a stage that
    did not run yet): compare must not show them as this run's."""
    layout = Layout(_fake_run(tmp_path / "run"))
    for folder in (layout.eval_dir("test"), layout.output / "baselines" / "svm" / "test"):
        write_json(folder / "metrics.json", {"task": "multilabel", "mAP": 0.9, "micro_f1": 0.6, "macro_f1": 0.5})
    with_test = {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    write_json(layout.split_json, {"classes": ["x"], "task": "multilabel", "clips": [], "splits": with_test})
    assert {"eval/test mAP", "svm/test mAP"} <= set(compare_workdirs([layout.workdir]).rows[0])
    write_json(layout.split_json, {"classes": ["x"], "task": "multilabel", "clips": [],
                                   "splits": {**with_test, "test": []}})
    row = compare_workdirs([layout.workdir]).rows[0]
    assert not [key for key in row if "test" in key] and row["eval/validation mAP"] == 0.7


def test_a_run_without_a_section_does_not_make_its_settings_differ():
    trained = {"split.seed": 0, "train.epochs": 10, "model.num_layers": 2}
    baselines_only = {"split.seed": 0, "baseline.n_mfcc": 40}
    assert differing_settings([baselines_only, trained, {**trained, "model.num_layers": 4}]) == ["model.num_layers"]
    assert differing_settings([baselines_only, trained]) == []
    assert differing_settings([trained, {"split.seed": 0, "train.epochs": 10, "model.dropout": 0.1}]) == [
        "model.num_layers", "model.dropout"]  # absent from a run that has the section: a difference


def test_a_record_from_before_normalize_was_a_choice_compares_by_its_meaning(tmp_path):
    old = _fake_run(tmp_path / "old")  # its spectrogram record says normalize = true
    new = _fake_run(tmp_path / "new", {"spectrogram.normalize": "clip"})
    other = _fake_run(tmp_path / "pcen", {"spectrogram.normalize": "pcen"})
    assert compare_workdirs([old, new]).settings == []
    assert [row["spectrogram.normalize"] for row in compare_workdirs([old, other]).rows] == ["clip", "pcen"]


def test_written_files(tmp_path):
    comparison = compare_workdirs([_fake_run(tmp_path / "a"), _fake_run(tmp_path / "b", {"split.seed": 1})])
    paths = write_comparison(comparison, tmp_path / "out")
    with open(paths["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["a", "b"] and [row["split.seed"] for row in rows] == ["0", "1"]
    assert "spectrogram.n_mels" not in rows[0]
    markdown = paths["markdown"].read_text()
    assert "|  | a | b |" in markdown and "| split.seed | 0 | 1 |" in markdown and "n_mels" not in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kfold_summary_mean_std_and_compare_shows_it(tmp_path):
    kfold = tmp_path / "kfold"
    folds = [_fake_run(kfold / f"fold_{k}", {"split.fold": k}, mAP=value) for k, value in enumerate((0.5, 0.6, 0.7))]
    summary = kfold_summary(folds)
    assert summary["metrics"]["eval/validation mAP"]["mean"] == pytest.approx(0.6)
    assert summary["metrics"]["eval/validation mAP"]["std"] == pytest.approx(0.1)  # sample std, ddof 1
    assert summary["metrics"]["eval/validation mAP"]["n"] == 3
    assert "split.fold" not in summary["settings"] and summary["settings"]["cluster.n_clusters"] == 50
    assert "eval/validation mAP" in format_kfold(summary) and "0.6000 ± 0.1000" in format_kfold(summary)
    write_kfold_summary(kfold, folds)
    single = _fake_run(tmp_path / "single", {"cluster.n_clusters": 100})
    comparison = compare_workdirs([single, kfold])
    assert comparison.settings == ["cluster.n_clusters"]  # the folds' records are not the kfold dir's own
    row = comparison.rows[1]
    assert row["eval/validation mAP"] == pytest.approx(0.6) and row["eval/validation mAP std"] == pytest.approx(0.1)
    assert "eval/validation mAP std" not in comparison.rows[0]
    assert row[TRAIN_TIME] == pytest.approx(180.0)
    assert "0.6000 ± 0.1000" in write_comparison(comparison, tmp_path / "out")["markdown"].read_text()


def test_not_a_workdir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        compare_workdirs([tmp_path / "absent"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no provenance records"):
        compare_workdirs([tmp_path / "empty"])


def test_compare_and_the_kfold_summary_state_clips_left_out(tmp_path_factory, tmp_path):
    """Class 'c' is only in the test split of the project: compare and a k-fold summary over it say so."""
    from projects import left_out_project

    work = left_out_project(tmp_path_factory) / "work"
    comparison = compare_workdirs([work])
    assert comparison.rows[0]["test left out"] == "2 clips of c" and "validation left out" not in comparison.rows[0]
    assert "| test left out | 2 clips of c |" in write_comparison(comparison, tmp_path / "out")["markdown"].read_text()
    summary = write_kfold_summary(tmp_path / "kfold", [work])
    assert summary["left_out"] == {str(work): {"test": "2 clips of c"}}
    assert f"left out (classes without a training clip), {work}: test 2 clips of c" in format_kfold(summary)
    assert compare_workdirs([tmp_path / "kfold"]).rows[0]["test left out"] == "work: 2 clips of c"


def _robustness_tables(workdir: Path, scorer: str, noise: float, stability: bool) -> list[dict]:
    """Robustness tables as `evaluate --corrupt` writes them: clean and white noise at 20 and 5 dB SNR."""
    rng = np.random.default_rng(len(scorer))
    targets = (rng.random((30, 3)) < 0.5).astype(np.float32)
    levels = {"clean": 0.05, "noise_white_snr20": noise, "noise_white_snr5": 2 * noise}
    conditions = {name: Scored([f"c{i}" for i in range(30)], targets,
                               np.clip(targets * 0.6 + 0.2 + level * rng.standard_normal(targets.shape), 0, 1))
                  for name, level in levels.items()}
    moved = {"noise_white_snr20": Stability(np.array([10.0, 20.0]), 100, [0.1, 0.3]),
             "noise_white_snr5": Stability(np.array([40.0, 60.0]), 100, [0.5, 0.7])}
    return write_robustness(Layout(workdir).robustness_dir("test") / scorer, conditions=conditions,
                            classes=["x", "y", "z"], task="multilabel", threshold=0.5,
                            stability=moved if stability else None)


def test_robustness_of_every_run_and_baseline_in_one_table_and_a_plot_against_snr(tmp_path):
    base, tokens = _fake_run(tmp_path / "base"), _fake_run(tmp_path / "subband", {"cluster.n_clusters": 256})
    baseline = _robustness_tables(base, "baseline_svm", 0.1, stability=False)
    model = _robustness_tables(tokens, "model", 0.3, stability=True)
    comparison = compare_workdirs([base, tokens])
    rows = {(row["model"], row["condition"]): row for row in comparison.robustness}
    assert set(rows) == {(name, condition) for name in ("svm", "subband")
                         for condition in ("clean", "noise_white_snr20", "noise_white_snr5")}
    assert rows["svm", "noise_white_snr5"]["value"] == baseline[2]["mAP"]
    assert rows["svm", "clean"]["run"] == "base"
    assert rows["subband", "noise_white_snr20"]["value"] == model[1]["mAP"]
    assert rows["subband", "noise_white_snr20"]["token change"] == pytest.approx(0.15)  # (10 + 20) / 200
    assert rows["subband", "noise_white_snr5"]["frame change"] == pytest.approx(0.6)
    assert rows["subband", "clean"]["token change"] == 0.0
    assert rows["svm", "noise_white_snr5"]["token change"] is None  # a baseline has no tokens

    paths = write_comparison(comparison, tmp_path / "out")
    with open(paths["robustness_csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and table[0]["metric"] == "mAP" and table[0]["split"] == "test"
    markdown = paths["robustness_markdown"].read_text()
    assert "| model | split | clean mAP | noise_white_snr20 mAP | noise_white_snr20 token change |" \
        in markdown
    assert "| subband | test |" in markdown
    assert "| 0.1500 | 0.2000 |" in markdown  # token and frame change at 20 dB
    assert paths["snr_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_robustness_tables_writes_no_robustness_files(tmp_path):
    paths = write_comparison(compare_workdirs([_fake_run(tmp_path / "a")]), tmp_path / "out")
    assert not {"robustness_csv", "robustness_markdown", "snr_plot"} & set(paths)
    assert not (tmp_path / "out" / "compare_robustness.md").exists()


@pytest.mark.parametrize("features, quantizer, model_input, baselines, family", [
    ("mel", "frame", "tokens", False, "mel-frame quantizer"),
    ("mel", "residual", "tokens", True, "mel-frame quantizer"),
    ("ssl", "frame", "tokens", False, "speech-model units"),
    ("waveform", "codec", "tokens", False, "codec"),  # the quantizer decides: codec frames are waveform rows
    ("mel", None, "frames", False, "frames control"),
    ("ssl", None, "frames", False, "frames control"),
    ("waveform", None, "waveform", False, "fine-tuned speech model"),
    ("mel", None, None, True, "baseline"),  # no model, baseline reports: a sweep's base
    ("mel", None, None, False, None),
])
def test_the_family_of_each_kind_of_run(features, quantizer, model_input, baselines, family):
    assert token_family(features, quantizer, model_input, baselines) == family


def _token_run(workdir: Path, spec: dict, bits: float | None, changes: dict | None = None,
               vocabulary: dict | None = None) -> Path:
    """A fake run whose frame spec, cluster record (bits per frame) and vocabulary meta are as given."""
    _fake_run(workdir, changes)
    layout = Layout(workdir)
    write_json(layout.frame_spec, spec)
    record = json.loads(layout.record("cluster").read_text())
    record["counts"] = {"bits_per_frame": bits} if bits is not None else {}
    write_json(layout.record("cluster"), record)
    if vocabulary is not None:
        write_json(layout.vocabulary / "vocabulary.json", vocabulary)
    return workdir


def test_compare_shows_each_runs_family_and_bits_per_second(tmp_path):
    mel = {"features": "mel", "sample_rate": 22050, "hop_length": 512}
    ssl = {"features": "ssl", "sample_rate": 16000, "hop_length": 320}
    mel_run = _token_run(tmp_path / "frame", mel, 6.0, {"model.input": "tokens"},
                         {"quantizer": {"kind": "frame"}})
    units = _token_run(tmp_path / "units", ssl, 9.0, {"spectrogram.features": "ssl", "model.input": "tokens"},
                       {"quantizer": {"kind": "frame"}})
    codec = _token_run(tmp_path / "codec", {"features": "waveform", "sample_rate": 24000, "hop_length": 320}, 20.0,
                       {"model.input": "tokens"}, {"quantizer": {"kind": "codec"}})
    control = _token_run(tmp_path / "frames", mel, None, {"model.input": "frames"})
    base = tmp_path / "base"
    for stage in ("split", "spectrogram"):
        write_json(Layout(base).record(stage), {"stage": stage, "params": BASE_PARAMS[stage], "wall_time_s": 1.0})
    write_json(Layout(base).frame_spec, mel)
    write_json(Layout(base).output / "baselines/svm/validation/metrics.json",
               {"task": "multilabel", "mAP": 0.8, "micro_f1": 0.6, "macro_f1": 0.5})

    comparison = compare_workdirs([base, mel_run, units, codec, control])
    rows = {row["run"]: row for row in comparison.rows}
    assert {run: row["family"] for run, row in rows.items()} == {
        "base": "baseline", "frame": "mel-frame quantizer", "units": "speech-model units", "codec": "codec",
        "frames": "frames control"}
    assert rows["frame"]["bits per second"] == pytest.approx(6.0 * 22050 / 512)
    assert rows["units"]["bits per second"] == pytest.approx(9.0 * 50)  # 50 frames a second
    assert rows["codec"]["bits per second"] == pytest.approx(20.0 * 75)
    assert rows["frames"].get("bits per second") is None and rows["base"].get("bits per second") is None

    paths = write_comparison(comparison, tmp_path / "out")
    with open(paths["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[:2] == ["run", "family"] and table[2]["family"] == "speech-model units"
    assert float(table[2]["bits per second"]) == pytest.approx(450.0)
    markdown = paths["markdown"].read_text()
    assert "| family | baseline | mel-frame quantizer | speech-model units | codec | frames control |" in markdown
    # the bit-budget plot puts the families on one axis: a second of audio, not a frame of each one's rate
    assert bit_axis(comparison)[0] == "bits per second" and paths["bits"].read_bytes()[:4] == b"\x89PNG"
    Layout(units).frame_spec.unlink()  # a run whose frame rate is unknown: all fall back to bits per frame
    assert bit_axis(compare_workdirs([mel_run, units]))[0] == "bits per frame"


def test_cluster_keys_the_runs_quantizer_does_not_read_do_not_make_runs_differ(tmp_path):
    every_kind = {"cluster.stack": 4, "cluster.bands": 8, "cluster.levels": 16}
    frame = _fake_run(tmp_path / "frame", {**every_kind, "cluster.quantizer": "frame"})
    frame_other = _fake_run(tmp_path / "frame_other",
                            {**every_kind, "cluster.quantizer": "frame", "cluster.bands": 16, "cluster.stack": 2})
    assert compare_workdirs([frame, frame_other]).settings == []  # neither reads bands nor stack

    subband = _fake_run(tmp_path / "subband", {**every_kind, "cluster.quantizer": "subband"})
    scalar = _fake_run(tmp_path / "scalar", {**every_kind, "cluster.quantizer": "scalar", "cluster.n_clusters": 7})
    comparison = compare_workdirs([frame, subband, scalar])
    assert set(comparison.settings) == {"cluster.quantizer", "cluster.n_clusters", "cluster.niter", "cluster.bands",
                                        "cluster.levels"}
    rows = {row["run"]: row for row in comparison.rows}
    assert [rows[run]["cluster.bands"] for run in ("frame", "subband", "scalar")] == [None, 8, None]
    assert [rows[run]["cluster.levels"] for run in ("frame", "subband", "scalar")] == [None, None, 16]
    # scalar levels are made without k-means: its n_clusters is not a setting of that run
    assert [rows[run]["cluster.n_clusters"] for run in ("frame", "subband", "scalar")] == [50, 50, None]
