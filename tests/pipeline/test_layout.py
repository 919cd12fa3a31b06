"""The file names the layout module gives are the ones the README and the docstrings promise."""
from __future__ import annotations

from pathlib import Path

from audiotokens.pipeline import layout as names
from audiotokens.pipeline.layout import Layout


def test_workdir_paths_are_the_documented_ones():
    layout = Layout("w")
    expected = [
        (layout.split_json, "processed/split.json"),
        (layout.frames, "processed/frames/frames.npy"),
        (layout.frames_index, "processed/frames/index.json"),
        (layout.tokens, "tokenized/tokens.npy"),
        (layout.token_stats, "tokenized/stats.json"),
        (layout.model_dir, "output/model"),
        (layout.last_checkpoint, "output/checkpoints/last.pt"),
        (layout.best_checkpoint, "output/checkpoints/best.pt"),
        (layout.pretrain_checkpoint, "output/checkpoints/pretrain.pt"),
        (layout.metrics, "output/metrics.jsonl"),
        (layout.curves, "output/curves.png"),
        (layout.staged_run_files.last_checkpoint, "output/train.partial/checkpoints/last.pt"),
        (layout.staged_run_files.metrics, "output/train.partial/metrics.jsonl"),
        (layout.eval_dir("validation"), "output/eval/validation"),
        (layout.robustness_dir("test"), "output/eval/test/robustness"),
        (layout.html_report, "output/report.html"),
        (layout.stage_log("train"), "logs/train.log"),
        (layout.shard_log("spectrogram", "4-1"), "logs/spectrogram.shard-4-1.log"),
        (layout.lock, ".audiotokens.lock"),
        (layout.shard_lock("tokenize", "4-1"), ".audiotokens.shards/tokenize-4-1.lock"),
        (layout.record("evaluate"), "output/eval/validation.meta.json"),
    ]
    assert [path for path, _ in expected] == [Path("w", relative) for _, relative in expected]
    assert layout.stage_artifacts("evaluate") == (Path("w/output/eval/validation"), Path("w/output/eval/test"))


def test_a_report_folder_is_recorded_as_its_files_but_robustness_reports_and_temporary_files(tmp_path):
    layout = Layout(tmp_path)
    kept = [layout.eval_dir("validation") / "metrics.json", layout.eval_dir("test") / "scores.npy",
            layout.baselines / "svm" / "model.joblib", layout.baselines / "svm" / "test" / "metrics.json"]
    left = [layout.robustness_dir("test") / "model" / "robustness.csv", layout.baselines / "svm" / ".fit.json.1.tmp"]
    for path in kept + left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert layout.stage_files("evaluate") == kept[:2] and layout.stage_files("baseline") == kept[2:]


def test_names_inside_folders_are_the_documented_ones():
    assert (names.BUNDLE_CARD, names.BASELINE_FIT, names.BASELINE_ESTIMATOR) == ("README.md", "fit.json", "model.joblib")
    assert names.BUNDLE_MANIFEST == "manifest.json"
    assert [names.EVAL_METRICS, names.EVAL_PER_CLASS, names.EVAL_SWEEP, names.EVAL_SCORES, names.EVAL_CLIPS] == \
        ["metrics.json", "per_class.csv", "sweep.csv", "scores.npy", "clips.json"]
    assert names.EVAL_CLASS_SWEEP.format(name="Dog") == "sweep_Dog.csv"
    assert names.ROBUSTNESS_BASELINE.format(name="svm") == "baseline_svm"
    assert names.PART_FRAMES == "frames.partial" and names.PART_META.format(number=7) == "part-00007.json"
    assert names.ONNX_METADATA.format(name="model.onnx") == "model.onnx.json"
    assert names.ONNX_VOCABULARY.format(stem="model") == "model.vocabulary"
    assert names.TOKEN_PICTURE.format(stem="dog") == "dog.tokens.png"


def test_report_folders_are_found_by_their_metrics_file(tmp_path):
    layout = Layout(tmp_path)
    for folder in ("output/eval/validation", "output/eval/test", "output/baselines/svm/test"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "metrics.json").write_text("{}")
    (tmp_path / "output/eval/unfinished").mkdir()  # no metrics.json: not a report
    (tmp_path / "output/eval/test/robustness/model").mkdir(parents=True)
    (tmp_path / "output/eval/test/robustness/model/robustness.csv").write_text("")
    assert layout.eval_reports() == [tmp_path / "output/eval/test", tmp_path / "output/eval/validation"]
    assert layout.baseline_reports() == [tmp_path / "output/baselines/svm/test"]
    assert layout.robustness_reports() == [tmp_path / "output/eval/test/robustness/model"]
