"""MFCC + SVM / logistic regression baselines: features against librosa, C chosen on training rows only,
separable toy tasks learnt, constant classes, the reports written as evaluate writes them."""
from __future__ import annotations

import io
import json

import librosa
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from projects import left_out_project
from sklearn.metrics import accuracy_score, average_precision_score
from sklearn.preprocessing import StandardScaler

from audiotokens.config import SpectrogramConfig
from audiotokens.evaluation.baseline import (
    C_GRID,
    BaselineRunner,
    SplitFeatures,
    clip_features,
    fit_baseline,
    mfcc_count,
    mfcc_features,
    score_baseline,
    split_features,
)


def _fixture_signal(rate: int, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    chirp = np.sin(2 * np.pi * (200 + 900 * t) * t) * np.linspace(0.2, 0.8, len(t))
    return (chirp + 0.05 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def _librosa_mfcc_stats(y: np.ndarray, sr: int, **kwargs) -> np.ndarray:
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=40, **kwargs)
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])


@pytest.mark.parametrize("sr, n_fft, hop, n_mels, fmin, fmax", [
    (22050, 1024, 512, 64, 0.0, 0.0),
    (16000, 512, 160, 48, 50.0, 7000.0),
])
def test_features_equal_librosa_mfcc(sr, n_fft, hop, n_mels, fmin, fmax):
    y = _fixture_signal(sr)
    ours = mfcc_features(y, sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax)
    expected = _librosa_mfcc_stats(y, sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax or sr / 2)
    assert ours.shape == (80,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_clip_features_decode_as_the_spectrogram_stage_and_report_failures(tmp_path):
    params = SpectrogramConfig(sample_rate=22050, max_duration=1.0)
    stereo = np.stack([_fixture_signal(44100, 2.0, 1), _fixture_signal(44100, 2.0, 2)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 44100)
    sf.write(tmp_path / "short.wav", np.zeros(100, dtype=np.float32), 22050)
    buffer = io.BytesIO()
    sf.write(buffer, _fixture_signal(22050, 1.2, 3), 22050, format="FLAC")
    pq.write_table(pa.table({"video_id": ["v0"], "audio": [{"bytes": buffer.getvalue(), "path": "v0.flac"}]}),
                   tmp_path / "shard.parquet")
    locations = [str(tmp_path / "stereo.wav"), str(tmp_path / "missing.wav"), str(tmp_path / "short.wav"),
                 f"{tmp_path / 'shard.parquet'}::0"]
    features, failed = clip_features(locations, params, workers=1)
    assert [index for index, _ in failed] == [1, 2]
    assert failed[0][1].startswith("missing") and failed[1][1].startswith("too short")
    assert features.shape == (2, 80)
    for row, location in zip(features, (locations[0], locations[3])):
        path, _, parquet_row = location.partition("::")
        if parquet_row:
            raw, rate = sf.read(io.BytesIO(pq.read_table(path).column("audio").to_pylist()[0]["bytes"]),
                                dtype="float32")
            y = librosa.resample(raw, orig_sr=rate, target_sr=22050)[:22050]
        else:
            y, _ = librosa.load(path, sr=22050, duration=1.0)  # mixed down and resampled as librosa does
        expected = _librosa_mfcc_stats(y, 22050, n_fft=1024, hop_length=512, n_mels=64)
        np.testing.assert_allclose(row, expected, rtol=1e-3, atol=5e-3)
    in_pool, _ = clip_features(locations, params, workers=2)
    np.testing.assert_array_equal(in_pool, features)


def _blobs(n_per_class: int, n_classes: int, seed: int, dims: int = 6):
    rng = np.random.default_rng(seed)
    centres = 4.0 * np.eye(n_classes, dims)
    ids = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[ids] + 0.5 * rng.standard_normal((len(ids), dims))
    return X, np.eye(n_classes)[ids]


def _multilabel(n: int, n_classes: int, seed: int, dims: int = 6):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, n_classes)) < 0.4).astype(float)
    X = np.concatenate([4.0 * Y + 0.5 * rng.standard_normal((n, n_classes)),
                        rng.standard_normal((n, dims - n_classes))], axis=1)
    return X, Y


@pytest.mark.parametrize("model", ["svm", "logreg"])
def test_singlelabel_separable_task_is_learnt(model):
    X, Y = _blobs(30, 3, seed=0)
    X_test, Y_test = _blobs(20, 3, seed=1)
    fitted = fit_baseline(model, X, Y, "singlelabel", None, seed=0)
    scores = score_baseline(fitted, X_test)
    assert scores.shape == (60, 3) and scores.min() >= 0 and scores.max() <= 1
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert accuracy_score(Y_test.argmax(axis=1), scores.argmax(axis=1)) > 0.95
    assert fitted.C in C_GRID and set(fitted.cv_scores) == {f"{c:g}" for c in C_GRID}
    best = max(C_GRID, key=lambda c: (fitted.cv_scores[f"{c:g}"], -c))
    assert fitted.C == best


@pytest.mark.parametrize("model", ["svm", "logreg"])
def test_multilabel_separable_task_is_learnt_with_constant_classes(model):
    X, Y = _multilabel(120, 3, seed=0)
    X_test, Y_test = _multilabel(80, 3, seed=1)
    # class 3 never present in training, class 4 always: neither can be modelled, neither may crash
    Y = np.concatenate([Y, np.zeros((len(Y), 1)), np.ones((len(Y), 1))], axis=1)
    fitted = fit_baseline(model, X, Y, "multilabel", None, seed=0)
    scores = score_baseline(fitted, X_test)
    assert scores.shape == (80, 5) and scores.min() >= 0 and scores.max() <= 1
    assert (scores[:, 3] == 0).all() and (scores[:, 4] == 1).all()
    aps = [average_precision_score(Y_test[:, c], scores[:, c]) for c in range(3)]
    assert min(aps) > 0.95
    # the 0.5 threshold is each model's own decision: nearly every clip right on a separable task
    assert ((scores[:, :3] >= 0.5) == (Y_test > 0)).mean() > 0.95


def test_single_varying_multilabel_column_and_single_training_class():
    X, Y = _multilabel(60, 1, seed=2)
    fitted = fit_baseline("logreg", X, np.concatenate([Y, np.zeros_like(Y)], axis=1), "multilabel", None, seed=0)
    assert score_baseline(fitted, X).shape == (60, 2)
    only_one = fit_baseline("svm", X, np.tile([0.0, 1.0, 0.0], (60, 1)), "singlelabel", None, seed=0)
    assert (score_baseline(only_one, X[:3]) == [0.0, 1.0, 0.0]).all()


def _row_id_spy(monkeypatch) -> list[np.ndarray]:
    """Record the first feature (a row id) of every matrix any scaler in a baseline is fitted on."""
    seen: list[np.ndarray] = []
    original = StandardScaler.fit

    def spy(self, X, y=None, **kwargs):
        seen.append(np.asarray(X)[:, 0].copy())
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(StandardScaler, "fit", spy)
    return seen


@pytest.mark.parametrize("task", ["singlelabel", "multilabel"])
def test_c_selection_and_fit_never_see_validation_or_test_rows(tmp_path, monkeypatch, task):
    seen = _row_id_spy(monkeypatch)

    def split(n: int, first_id: int, seed: int) -> SplitFeatures:
        X, Y = _blobs(n // 3, 3, seed) if task == "singlelabel" else _multilabel(n, 3, seed)
        X = np.concatenate([first_id + np.arange(len(X))[:, None], X], axis=1)  # column 0: row id
        groups = [f"speaker{i // 4}" for i in range(len(X))]
        return SplitFeatures(ids=[f"c{first_id + i}" for i in range(len(X))], features=X, targets=Y, groups=groups)

    train, validation, test = split(48, 0, 0), split(24, 1000, 1), split(24, 2000, 2)
    BaselineRunner(train=train, validation=validation, test=test, task=task, classes=["a", "b", "c"],
                   out_dir=tmp_path, models=("svm", "logreg")).run()
    assert seen
    train_ids = set(range(48))
    for rows in seen:
        assert set(rows.astype(int)) <= train_ids  # never a validation (1000+) or test (2000+) row
    fold_fits = [set(rows.astype(int)) for rows in seen if len(rows) < 48]
    assert len(fold_fits) == 2 * len(C_GRID) * 5  # every C on every fold, for both models
    speaker = {i: i // 4 for i in train_ids}
    for rows in fold_fits:  # GroupKFold: no speaker both fitted on and held out
        held_out = train_ids - rows
        assert held_out and not {speaker[i] for i in rows} & {speaker[i] for i in held_out}
    assert sum(len(rows) == 48 for rows in seen) == 2  # one final fit per model on every training row


def test_runner_writes_evaluate_reports_per_model_and_split(tmp_path):
    X, Y = _blobs(20, 3, seed=0)
    X_val, Y_val = _blobs(10, 3, seed=1)
    classes = ["cat", "dog", "owl"]

    def features(X, Y, prefix):
        return SplitFeatures(ids=[f"{prefix}{i}" for i in range(len(X))], features=X, targets=Y)

    summary = BaselineRunner(train=features(X, Y, "t"), validation=features(X_val, Y_val, "v"),
                             task="singlelabel", classes=classes, out_dir=tmp_path, models=("svm",)).run()
    folder = tmp_path / "svm" / "validation"
    for name in ("metrics.json", "per_class.csv", "per_class.md", "sweep.csv", "confusion.csv", "confusion.png",
                 "scores.npy", "clips.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    scores = np.load(folder / "scores.npy")
    assert metrics["accuracy"] == pytest.approx(accuracy_score(Y_val.argmax(axis=1), scores.argmax(axis=1)))
    assert summary["svm"]["validation"]["accuracy"] == metrics["accuracy"]
    assert (tmp_path / "svm" / "train" / "metrics.json").is_file()
    assert not (tmp_path / "svm" / "test").exists()
    fit = json.loads((tmp_path / "svm" / "fit.json").read_text())
    assert fit["C"] in C_GRID and fit["cv_metric"] == "accuracy" and "NaN" not in (tmp_path / "svm" / "fit.json").read_text()


def test_split_features_keeps_labels_aligned_with_decoded_clips(tmp_path):
    params = SpectrogramConfig(sample_rate=16000, n_fft=512, hop_length=256)
    for name, seed in (("a", 0), ("c", 1)):
        sf.write(tmp_path / f"{name}.wav", _fixture_signal(16000, 0.5, seed), 16000)
    clips = [{"id": "a", "audio": str(tmp_path / "a.wav"), "labels": [0], "group": "g1"},
             {"id": "b", "audio": str(tmp_path / "b.wav"), "labels": [1], "group": "g1"},
             {"id": "c", "audio": str(tmp_path / "c.wav"), "labels": [2], "group": None}]
    result = split_features(clips, 3, params, workers=1)
    assert result.ids == ["a", "c"]
    assert result.targets.tolist() == [[1, 0, 0], [0, 0, 1]]
    assert result.groups == ["g1", None]
    assert result.skipped[0]["id"] == "b" and result.skipped[0]["reason"].startswith("missing")


def test_the_default_mfcc_count_fits_fewer_mel_bands_than_forty(tmp_path):
    params = SpectrogramConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32)
    sf.write(tmp_path / "a.wav", _fixture_signal(16000, 0.5, 0), 16000)
    clips = [{"id": "a", "audio": str(tmp_path / "a.wav"), "labels": [0]}]
    result = split_features(clips, 1, params, workers=1, n_mfcc=mfcc_count(0, params.n_mels))
    assert result.features.shape == (1, 64) and not result.skipped
    assert (mfcc_count(0, 64), mfcc_count(0, 128), mfcc_count(13, 32)) == (40, 40, 13)


def test_corrupted_features_are_those_of_the_corrupted_clip(tmp_path):
    from audiotokens.data.audio import load_mono
    from audiotokens.data.corrupt import clip_seed, parse_corruption

    params = SpectrogramConfig(sample_rate=16000, n_fft=512, hop_length=256)
    sf.write(tmp_path / "a.wav", _fixture_signal(16000, 0.5, 0), 16000)
    clips = [{"id": "a", "audio": str(tmp_path / "a.wav"), "labels": [0]}]
    corruption = parse_corruption("noise:snr=0")
    noisy = split_features(clips, 1, params, workers=1, corruption=corruption, seed=7)
    clean = split_features(clips, 1, params, workers=1)
    expected = mfcc_features(corruption.apply(load_mono(str(tmp_path / "a.wav"), 16000), 16000, clip_seed(7, "a")),
                             16000, n_fft=512, hop_length=256, n_mels=64, fmin=0.0, fmax=0.0)
    np.testing.assert_array_equal(noisy.features[0], expected)
    assert not np.allclose(noisy.features, clean.features, atol=1.0)


def test_baseline_metrics_state_the_clips_of_classes_without_training_clips(tmp_path_factory):
    """Class 'c' is only in the test split: the baseline's test figures say so and count its clips as errors."""
    out = left_out_project(tmp_path_factory) / "work/output/baselines/logreg/test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["clips"], metrics["left_out_clips"], metrics["left_out_classes"]) == (4, 2, ["c"])
    clips = json.loads((out / "clips.json").read_text())
    split = json.loads((out.parents[3] / "processed/split.json").read_text())
    labels = {clip["id"]: clip["labels"][0] for clip in split["clips"] if clip["labels"]}
    kept = accuracy_score([labels[i] for i in clips["ids"]], np.load(out / "scores.npy").argmax(axis=1))
    assert metrics["accuracy"] == pytest.approx(kept * 4 / 6)
