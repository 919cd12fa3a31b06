"""Robustness tables: metrics per condition against scikit-learn, change against clean, per-class AP; how far
the model's input (tokens, frames) moves under each corruption."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from projects import copy_project, project_config, trained_project
from sklearn.metrics import accuracy_score, average_precision_score

from audiotokens.cli import main
from audiotokens.config import SpectrogramConfig
from audiotokens.data.corrupt import Corruption
from audiotokens.evaluation import robustness
from audiotokens.evaluation.baseline import mfcc_count
from audiotokens.evaluation.evaluate import Scored
from audiotokens.evaluation.robustness import (
    FRAME_CHANGE,
    PER_CODEBOOK,
    TOKEN_CHANGE,
    evaluate_robustness,
    frame_change,
    model_conditions,
    token_change,
    write_robustness,
)
from audiotokens.features.spectrogram import params_to_dict
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.run import execute
from audiotokens.pipeline.stores import LeftOut
from audiotokens.tokens.quantizers import Quantizer
from audiotokens.tokens.vocabulary import Vocabulary
from audiotokens.training.train import ModelBuilder


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
    assert bars == ["robustness, 2 conditions"]  # one progress bar over the clips, every condition per clip


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


# ---------------------------------------------------------------- how far the model's input moves


def test_token_change_is_per_codebook_share_of_changed_positions():
    clean = np.array([[1, 5], [2, 5], [3, 5], [4, 5]])
    assert token_change(clean, clean).tolist() == [0.0, 0.0]
    assert token_change(clean, clean + 1).tolist() == [1.0, 1.0]
    assert token_change(clean, np.array([[1, 5], [2, 6], [0, 5], [4, 5]])).tolist() == [0.25, 0.25]
    assert frame_change(np.ones((3, 2)), np.ones((3, 2))) == 0.0
    assert frame_change(np.ones((3, 2)), np.full((3, 2), 1.5)) == pytest.approx(0.5)
    assert frame_change(np.zeros((3, 2)), np.zeros((3, 2))) == 0.0
    assert frame_change(np.zeros(2), np.ones(2)) is None  # no scale to measure against


QUIET = 1e-6  # a sine this quiet is below spectrogram.floor_db (-80 dB) in every mel band: fixed frames of 0


def _quiet_clip(tmp_path) -> dict:
    t = np.arange(22050) / 22050
    path = tmp_path / "quiet.wav"
    sf.write(path, (QUIET * np.sin(2 * np.pi * 440 * t + 0.3)).astype(np.float32), 22050, subtype="FLOAT")
    return {"id": "quiet", "audio": str(path), "labels": [0]}


def _bundle_of(vocabulary: Vocabulary) -> SimpleNamespace:
    """What robustness reads of a bundle: its frame spec, vocabulary and scores (constant here)."""
    return SimpleNamespace(spectrogram=vocabulary.frame_spec, vocabulary=vocabulary,
                           spec=SimpleNamespace(input_dim=None),
                           scores=lambda clips: np.full((len(clips), 2), 0.5, np.float32))


def test_stability_is_0_for_identical_audio_and_1_when_every_token_changes(tmp_path):
    """A hand-built vocabulary: every mel band to 0 or 0.5 (scalar, 16 codebooks) over fixed-range frames.
    The quiet clip's frames are 0 (id 0 everywhere); noise at -80 dB SNR lifts every band to about 0.4
    (id 1 everywhere); at 300 dB SNR the float32 samples, and so frames and tokens, are the clean ones."""
    params = dataclasses.replace(SpectrogramConfig(), n_mels=16, normalize="fixed")
    levels = np.array([[0.0], [0.5]], np.float32)
    quantizer = Quantizer(kind="scalar", codebooks=[levels] * 16, combine="concat")
    bundle = _bundle_of(Vocabulary(quantizer, params_to_dict(params), tmp_path))
    # beyond the range --corrupt accepts, built directly: far below float32's resolution, and far above the clip
    corruptions = [Corruption(spec="noise:snr=300", kind="noise", snr=300.0),
                   Corruption(spec="noise:snr=-80", kind="noise", snr=-80.0)]
    conditions, stability = model_conditions(bundle, [_quiet_clip(tmp_path)], corruptions, ["a", "b"], seed=0)
    assert list(conditions) == ["clean", "noise_white_snr300", "noise_white_snr-80"]
    identical, every = stability["noise_white_snr300"].row(), stability["noise_white_snr-80"].row()
    assert identical[TOKEN_CHANGE] == 0.0 and identical[PER_CODEBOOK] == [0.0] * 16
    assert identical[FRAME_CHANGE] == 0.0
    assert every[TOKEN_CHANGE] == 1.0 and every[PER_CODEBOOK] == [1.0] * 16
    assert every[FRAME_CHANGE] is None  # clean frames all zero: no scale to compare the change against

    rows = write_robustness(tmp_path / "rob", conditions=conditions, classes=["a", "b"], task="multilabel",
                            threshold=0.5, stability=stability)
    assert [row[TOKEN_CHANGE] for row in rows] == [0.0, 0.0, 1.0]
    with open(tmp_path / "rob" / "token_change.csv") as handle:
        per_codebook = list(csv.DictReader(handle))
    assert len(per_codebook) == 3 and float(per_codebook[2]["codebook 15"]) == 1.0
    with open(tmp_path / "rob" / "robustness.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [row["token change"] for row in table] == ["0.0", "0.0", "1.0"] and table[2]["frame change"] == ""
    saved = json.loads((tmp_path / "rob" / "robustness.json").read_text())["conditions"]
    assert saved[2][PER_CODEBOOK] == [1.0] * 16
    assert "NaN" not in (tmp_path / "rob" / "robustness.json").read_text()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "multilabel")


def test_a_token_model_and_a_frames_model_report_their_input_change(project, tmp_path):
    """Through real bundles: tokens change under noise and not at all for (bit-)identical audio; a frames
    model reports its frames' relative change and no token change."""
    config = project_config(project)
    evaluate_robustness(config, "validation", ["noise:snr=0", "gain:db=0"])
    rows = json.loads((Layout(project / "work").robustness_dir("validation") / "model/robustness.json")
                      .read_text())["conditions"]
    clean, noisy, identical = rows
    assert clean[TOKEN_CHANGE] == 0.0 and clean[FRAME_CHANGE] == 0.0
    assert 0.0 < noisy[TOKEN_CHANGE] <= 1.0 and noisy[FRAME_CHANGE] > 0.01
    assert identical[TOKEN_CHANGE] == 0.0 and identical[FRAME_CHANGE] == 0.0

    own = copy_project(project, tmp_path / "own")
    config = project_config(own, "model.input=frames", "model.pooling=mean")
    ModelBuilder(config).run()
    evaluate_robustness(config, "validation", ["noise:snr=0"])
    rows = json.loads((Layout(own / "work").robustness_dir("validation") / "model/robustness.json")
                      .read_text())["conditions"]
    assert [row[TOKEN_CHANGE] for row in rows] == [None, None] and rows[1][FRAME_CHANGE] > 0.01
    assert not (Layout(own / "work").robustness_dir("validation") / "model/token_change.csv").exists()


def test_evaluate_corrupt_scores_the_baselines_alone_where_no_model_was_trained(project, tmp_path):
    """A tokenizer sweep's base workdir: frames and baselines, no model bundle."""
    own = copy_project(project, tmp_path / "own")
    config = project_config(own, "baseline.models=logreg", "baseline.workers=1")
    execute("baseline", config)
    for folder in ("model", "eval"):
        shutil.rmtree(own / "work/output" / folder)
    arguments = ["evaluate", "--config", str(own / "run.toml"), "--workdir", str(own / "work"), "--split",
                 "validation", "--corrupt", "noise:snr=5"]
    result = CliRunner().invoke(main, [*arguments, "--set", "baseline.models=logreg"])
    assert result.exit_code == 0, result.output
    out = Layout(own / "work").robustness_dir("validation")
    assert [path.name for path in out.iterdir()] == ["baseline_logreg"]
    rows = json.loads((out / "baseline_logreg/robustness.json").read_text())["conditions"]
    assert [row["condition"] for row in rows] == ["clean", "noise_white_snr5"]
    shutil.rmtree(own / "work/output/baselines")
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code != 0 and "not a complete model bundle" in result.output
