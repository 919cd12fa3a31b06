"""Robustness tables: metrics per condition against scikit-learn, change against clean, per-class AP."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from projects import copy_project, project_config, trained_project
from sklearn.metrics import accuracy_score, average_precision_score

from audiotokens.cli import main
from audiotokens.evaluation import robustness
from audiotokens.evaluation.baseline import mfcc_count
from audiotokens.evaluation.evaluate import Scored
from audiotokens.evaluation.robustness import evaluate_robustness, write_robustness
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.run import execute
from audiotokens.pipeline.stores import LeftOut


def _scored(targets: np.ndarray, noise: float, seed: int) -> Scored:
    rng = np.random.default_rng(seed)
    scores = np.clip(targets * 0.6 + 0.2 + noise * rng.standard_normal(targets.shape), 0, 1)
    return Scored([f"c{i}" for i in range(len(targets))], targets, scores.astype(np.float32))


def test_multilabel_table_matches_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 3)) < 0.4).astype(np.float32)
    targets[:, 2] = 0  # a class without positives: excluded from mAP, no AP in the per-class table
    conditions = {"clean": _scored(targets, 0.1, 1), "noise_white_snr5": _scored(targets, 0.5, 2)}
    rows = write_robustness(tmp_path / "rob", conditions=conditions, classes=["a", "b", "c"], task="multilabel",
                            threshold=0.5)
    for row, scored in zip(rows, conditions.values()):
        expected = np.mean([average_precision_score(targets[:, c], scored.scores[:, c]) for c in (0, 1)])
        assert row["mAP"] == pytest.approx(expected)
    assert rows[1]["mAP change"] == pytest.approx(rows[1]["mAP"] - rows[0]["mAP"]) and rows[0]["mAP change"] == 0
    with open(tmp_path / "rob" / "per_class.csv") as handle:
        per_class = list(csv.DictReader(handle))
    assert float(per_class[0]["ap noise_white_snr5"]) == pytest.approx(
        average_precision_score(targets[:, 0], conditions["noise_white_snr5"].scores[:, 0]), abs=1e-6)
    assert per_class[2]["ap clean"] == ""  # undefined, not NaN
    assert "NaN" not in (tmp_path / "rob" / "robustness.json").read_text()
    assert json.loads((tmp_path / "rob" / "robustness.json").read_text())["conditions"][0]["condition"] == "clean"
    assert (tmp_path / "rob" / "robustness.png").is_file() and (tmp_path / "rob" / "robustness.md").is_file()


def test_singlelabel_accuracy_and_clean_is_required(tmp_path):
    ids = np.random.default_rng(3).integers(0, 3, 30)
    targets = np.eye(3, dtype=np.float32)[ids]
    conditions = {"reverb_rt60_0.6": _scored(targets, 0.4, 5), "clean": _scored(targets, 0.05, 4)}
    rows = write_robustness(tmp_path / "rob", conditions=conditions, classes=["x", "y", "z"], task="singlelabel",
                            threshold=0.5)
    assert [row["condition"] for row in rows] == ["clean", "reverb_rt60_0.6"]
    assert rows[1]["accuracy"] == pytest.approx(accuracy_score(ids, conditions["reverb_rt60_0.6"].scores.argmax(1)))
    with pytest.raises(ValueError, match="clean"):
        write_robustness(tmp_path / "other", conditions={"x": conditions["clean"]}, classes=["x", "y", "z"],
                         task="singlelabel", threshold=0.5)


def test_clips_of_classes_without_training_clips_count_as_errors_and_are_stated(tmp_path):
    """A split that lost 10 single-label clips of class 'w' (no training clip): every condition's accuracy
    counts them as errors, as evaluate's metrics.json does, and robustness.json says so."""
    ids = np.random.default_rng(6).integers(0, 3, 30)
    targets = np.eye(3, dtype=np.float32)[ids]
    conditions = {"clean": _scored(targets, 0.05, 4), "noise_white_snr5": _scored(targets, 0.6, 5)}
    left_out = LeftOut(clips=tuple(f"w{i}" for i in range(10)), classes=("w",), positives=10)
    rows = write_robustness(tmp_path / "rob", conditions=conditions, classes=["x", "y", "z"], task="singlelabel",
                            threshold=0.5, left_out=left_out)
    for row, scored in zip(rows, conditions.values()):
        assert row["accuracy"] == pytest.approx(accuracy_score(ids, scored.scores.argmax(1)) * 30 / 40)
    stated = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert (stated["left_out_clips"], stated["left_out_classes"]) == (10, ["w"])
    assert "10 clips of 1 class without a training clip (w)" in (tmp_path / "rob" / "robustness.md").read_text()


# ---------------------------------------------------------------- scoring a trained project's audio


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "multilabel")


def capture_conditions(monkeypatch) -> dict[str, dict[str, Scored]]:
    """The scores each robustness table is written from, by the table's folder name (model, baseline_<name>)."""
    captured: dict[str, dict[str, Scored]] = {}
    original = robustness.write_robustness

    def capture(out_dir, *, conditions, **options):
        captured[Path(out_dir).name] = conditions
        return original(out_dir, conditions=conditions, **options)

    monkeypatch.setattr(robustness, "write_robustness", capture)
    return captured


def test_corrupting_a_manifest_scores_the_manifests_clips(multilabel, tmp_path, monkeypatch):
    root = copy_project(multilabel, tmp_path / "copy")
    labels = dict(line.split(",", 1) for line in (root / "manifest.csv").read_text().splitlines()[1:])
    listed = [f"audio/clip{i:02d}.wav" for i in range(0, 18, 2)]  # 9 clips: not the validation split
    manifest = tmp_path / "heldout.csv"
    manifest.write_text("path,label\n" + "".join(f"{root / clip},{labels[clip]}\n" for clip in listed))
    bars = []
    monkeypatch.setattr(robustness, "tqdm", lambda items, **options: bars.append(options["desc"]) or items)
    captured = capture_conditions(monkeypatch)
    result = CliRunner().invoke(main, ["evaluate", "--config", str(root / "run.toml"), "--workdir", str(root / "work"),
                                       "--manifest", str(manifest), "--corrupt", "noise:snr=5"])
    assert result.exit_code == 0, result.output
    out = Layout(root / "work").eval_dir("heldout")
    table = json.loads((out / "robustness/model/robustness.json").read_text())["conditions"]
    assert [row["condition"] for row in table] == ["clean", "noise_white_snr5"]
    assert [row["clips"] for row in table] == [len(listed)] * 2
    clean = captured["model"]["clean"]
    assert clean.ids == json.loads((out / "clips.json").read_text())["ids"]
    np.testing.assert_allclose(clean.scores, np.load(out / "scores.npy"), atol=1e-5)
    assert table[0]["mAP"] == pytest.approx(json.loads((out / "metrics.json").read_text())["mAP"], abs=1e-6)
    assert not Layout(root / "work").robustness_dir("validation").exists()
    assert bars == ["robustness clean", "robustness noise_white_snr5"]  # a progress bar per condition


def test_baselines_are_scored_with_the_settings_they_were_fitted_with(multilabel, tmp_path, monkeypatch):
    root = copy_project(multilabel, tmp_path / "copy")
    fitted_with = project_config(root, "baseline.models=logreg", "baseline.workers=1")
    execute("baseline", fitted_with)
    saved = Layout(root / "work").baselines / "logreg"
    recorded = json.loads((saved / "fit.json").read_text())["feature_settings"]
    assert recorded["spectrogram"]["hop_length"] == fitted_with.spectrogram.hop_length
    assert recorded["n_mfcc"] == mfcc_count(fitted_with.baseline.n_mfcc, fitted_with.spectrogram.n_mels)
    captured = capture_conditions(monkeypatch)
    later = project_config(root, "baseline.models=logreg", "baseline.workers=1",
                           f"spectrogram.hop_length={fitted_with.spectrogram.hop_length // 2}")
    evaluate_robustness(later, "validation", ["noise:snr=5"])
    clean = captured["baseline_logreg"]["clean"]
    assert clean.ids == json.loads((saved / "validation/clips.json").read_text())["ids"]
    np.testing.assert_allclose(clean.scores, np.load(saved / "validation/scores.npy"), atol=1e-6)
