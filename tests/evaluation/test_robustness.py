"""Robustness tables: metrics per condition against scikit-learn, change against clean, per-class AP."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score

from audiotokens.evaluation.evaluate import Scored
from audiotokens.evaluation.robustness import write_robustness


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
