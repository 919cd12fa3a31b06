"""Run tracking: TensorBoard event files and MLflow runs of train and pretrain, read back with each tool's
own reader and compared with metrics.jsonl, the bundle and scikit-learn."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from projects import project_config, trained_project
from sklearn.metrics import average_precision_score
from stores import interrupt_in_second_epoch, make_workdir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.bundle import load_bundle
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.provenance import stage_params
from audiotokens.pipeline.stores import open_split
from audiotokens.tokens.kmeans import token_statistics
from audiotokens.training.optimisation import Trainer
from audiotokens.training.pretrain import Pretrainer
from audiotokens.training.tracking import TensorBoardTracker, TokenUsage, Tracking
from audiotokens.training.train import ModelBuilder

SMALL = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.learning_rate=2e-3", "train.num_workers=0", "train.batch_size=16", "train.device=cpu",
         "model.dropout=0.0"]
MEASUREMENTS = ("lr", "peak_memory_gib", "epoch_time_s", "train_samples_per_s")


@pytest.fixture(autouse=True)
def quiet_mlflow(monkeypatch):
    """No usage reports from MLflow (this machine has no network), and no tracking URI from the caller."""
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def epochs(path: Path) -> list[dict]:
    return [row for row in rows(path) if "epoch" in row and "split" not in row]


def expected_scalars(history: list[dict]) -> dict[str, dict[int, float]]:
    """tag -> {epoch: value} of every figure in metrics.jsonl's epoch rows, as TensorBoard stores it."""
    expected: dict[str, dict[int, float]] = {}
    for row in history:
        for side, figures in row.items():
            if isinstance(figures, dict):
                for name, value in figures.items():
                    if value is not None:
                        expected.setdefault(f"{name}/{side}", {})[row["epoch"]] = value
        for key in MEASUREMENTS:
            if key in row:
                expected.setdefault(key, {})[row["epoch"]] = row[key]
    return expected


def read_run(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def tensorboard_runs(layout: Layout, stage: str) -> list[Path]:
    return sorted(layout.tensorboard.glob(f"{stage}-*"))


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def assert_epochs_match(events: EventAccumulator, history: list[dict]) -> None:
    expected = expected_scalars(history)
    for tag, by_epoch in expected.items():
        assert scalars(events, tag) == {epoch: np.float32(value) for epoch, value in by_epoch.items()}, tag
    epoch_tags = {tag for tag in events.Tags()["scalars"] if not tag.startswith(("final/", "class_ap/"))}
    assert epoch_tags == set(expected)


def hparams_of(events: EventAccumulator) -> tuple[dict, list[str]]:
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    declared = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
              for key, value in start.session_start_info.hparams.items()}
    return values, sorted(info.name.tag for info in declared.experiment.metric_infos)


def test_tensorboard_holds_metrics_jsonl_per_class_ap_token_histograms_and_hparams(tmp_path_factory):
    """The tiny project's train run (every real stage, a test split): its event files, read with
    TensorBoard's own reader, hold metrics.jsonl's every figure, the bundle's validation AP per class (as
    scikit-learn computes it), the token counts of each split, and the settings with the final figures."""
    root = trained_project(tmp_path_factory, "multilabel")
    layout = Layout(root / "work")
    [run_dir] = tensorboard_runs(layout, "train")
    events = read_run(run_dir)
    history = epochs(layout.metrics)
    assert_epochs_match(events, history)
    assert {"loss/train", "mAP/validation", "lr", "peak_memory_gib"} <= set(expected_scalars(history))

    record = json.loads(layout.record("train").read_text())
    test_row = next(row for row in rows(layout.metrics) if row.get("split") == "test")
    best = record["counts"]["best_epoch"]
    final = {"final/validation_mAP": record["counts"]["best_validation_mAP"],
             **{f"final/test_{name}": test_row["test"][name] for name in ("loss", "mAP", "micro_f1", "macro_f1")}}
    for tag, value in final.items():
        assert scalars(events, tag) == {best: np.float32(value)}, tag
    values, metric_tags = hparams_of(events)
    assert metric_tags == sorted(final)
    params = stage_params(project_config(root), "train")
    assert values["train.learning_rate"] == pytest.approx(params["train.learning_rate"])
    assert values["model.encoder"] == params["model.encoder"] and set(values) == set(params)

    bundle = load_bundle(layout.model_dir)
    tokens, view = open_split(layout, "tokens", "validation")
    scores = bundle.scores([tokens[o:o + n] for o, n in zip(view.offsets, view.lengths)], batch_size=4)
    targets = view.label_matrix()
    for column, name in enumerate(bundle.classes):
        tag = f"class_ap/{name}"
        if targets[:, column].any():
            expected = average_precision_score(targets[:, column], scores[:, column])
            assert scalars(events, tag) == {best: pytest.approx(expected, abs=1e-5)}, tag
        else:
            assert tag not in events.Tags()["scalars"]  # no positive: AP undefined, never written as NaN

    stats = json.loads(layout.token_stats.read_text())
    books = range(len(stats["codebook_sizes"]))
    assert set(events.Tags()["histograms"]) == {f"tokens/{split}/codebook{c}" for split in stats["splits"]
                                                for c in books}
    for split in stats["splits"]:
        tokens, view = open_split(layout, "tokens", split)
        for c in books:
            ids = np.concatenate([tokens[o:o + n, c] for o, n in zip(view.offsets, view.lengths)])
            counts = np.bincount(ids, minlength=stats["codebook_sizes"][c])
            [histogram] = events.Histograms(f"tokens/{split}/codebook{c}")
            value = histogram.histogram_value
            assert list(value.bucket) == counts.tolist() and value.num == counts.sum()
            assert list(value.bucket_limit) == [i + 0.5 for i in range(len(counts))]


def test_a_resumed_run_holds_every_epoch_and_the_best_epochs_class_ap(tmp_path, monkeypatch):
    """Interrupted in epoch 2 and resumed: the resumed run's folder replays epoch 1 from the checkpoint, so
    it holds what metrics.jsonl holds, and the per-class AP of a best epoch reached before the interruption."""
    layout = make_workdir(tmp_path, n_train=48, n_validation=24)
    config = load_config(overrides=[*SMALL, "train.epochs=3", "train.learning_rate=0"], workdir=tmp_path)
    interrupt_in_second_epoch(ModelBuilder(config).run, monkeypatch, Trainer)
    [interrupted] = tensorboard_runs(layout, "train")
    assert set(scalars(read_run(interrupted), "loss/train")) == {1}
    counts = ModelBuilder(config, resume=True).run()
    resumed = [run for run in tensorboard_runs(layout, "train") if run != interrupted]
    events = read_run(resumed[0])
    assert_epochs_match(events, epochs(layout.metrics))
    assert counts["best_epoch"] == 1  # learning rate 0: the weights never move, epoch 1 stays the best
    class_ap = {tag for tag in events.Tags()["scalars"] if tag.startswith("class_ap/")}
    assert class_ap and all(set(scalars(events, tag)) == {1} for tag in class_ap)


def test_mlflow_local_store_holds_params_metrics_and_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    layout = make_workdir(tmp_path / "work", n_train=48, n_validation=24)
    # token statistics as the tokenize stage writes them (make_workdir's store has none)
    layout.token_stats.write_text(json.dumps({"codebook_sizes": [5], "splits": {
        "train": {"clips": 1, "tokens": 10, "codebooks": [token_statistics(np.arange(5))]}}}))
    config = load_config(overrides=[*SMALL, "train.epochs=2", "train.tracking=mlflow"], workdir=tmp_path / "work")
    counts = ModelBuilder(config).run()
    assert not layout.tensorboard.exists()
    client = MlflowClient(f"sqlite:///{layout.mlflow_store}")
    experiment = client.get_experiment_by_name("audiotokens")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("train-")
    assert run.data.params == {key: str(value) for key, value in stage_params(config, "train").items()}
    history = epochs(layout.metrics)
    for tag, by_epoch in expected_scalars(history).items():
        logged = {metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, tag)}
        assert logged == pytest.approx(by_epoch), tag
    assert run.data.metrics["final/validation_mAP"] == pytest.approx(counts["best_validation_mAP"])
    assert sum(key.startswith("class_ap/") for key in run.data.metrics) == 4

    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(layout.mlflow_artifacts.resolve())
    for name in ("model.safetensors", "model_spec.json", "audiotokens.json", "README.md"):
        assert (artifacts / "model" / name).read_bytes() == (layout.model_dir / name).read_bytes(), name
    assert (artifacts / "report" / "metrics.jsonl").read_text() == layout.metrics.read_text()
    assert (artifacts / "report" / "curves.png").read_bytes() == layout.curves.read_bytes()
    summary = json.loads((artifacts / "report" / "summary.json").read_text())
    assert summary["best_epoch"] == counts["best_epoch"] and summary["epochs_run"] == 2
    # the token histograms, drawn from tokenized/stats.json when the run logs them
    assert {"stats.json", "histogram_train.png"} <= {path.name for path in (artifacts / "tokens").iterdir()}


def test_pretrain_tracks_to_tensorboard_and_the_mlflow_store_the_environment_names(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere" / "mlflow.db"
    store.parent.mkdir()
    monkeypatch.chdir(store.parent)  # a bare database store keeps artifacts in ./mlruns (MLflow's default)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "pretraining")
    layout = make_workdir(tmp_path / "work", n_train=48, n_validation=8)
    config = load_config(overrides=[*SMALL, "pretrain.epochs=2", "pretrain.batch_size=16",
                                    "train.tracking=tensorboard,mlflow"], workdir=tmp_path / "work")
    Pretrainer(config).run()
    history = rows(layout.pretrain_dir / "metrics.jsonl")
    assert {"loss/train", "masked_accuracy/heldout", "peak_memory_gib"} <= set(expected_scalars(history))
    [run_dir] = tensorboard_runs(layout, "pretrain")
    assert_epochs_match(read_run(run_dir), history)
    assert not layout.mlflow.exists()  # the environment's store, not the workdir's

    client = MlflowClient(f"sqlite:///{store}")
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["pretrain.objective"] == "mlm"
    assert run.data.metrics["final/heldout_loss"] == pytest.approx(history[-1]["heldout"]["loss"])
    listed = {item.path for item in client.list_artifacts(run.info.run_id, "pretrain")}
    assert {"pretrain/model.safetensors", "pretrain/metrics.jsonl"} <= listed
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(store.parent / "mlruns")


@pytest.mark.parametrize("value", ["wandb", "tensorboard,tensorboard", "none,mlflow", "", "tensorboard;mlflow"])
def test_tracking_setting_is_checked(value):
    with pytest.raises(UserError, match=r"^'train.tracking' must be tensorboard, mlflow, both comma-separated, or "
                                        "none, got"):
        load_config(overrides=[f"train.tracking={value}"])


@pytest.mark.parametrize("value", ["tensorboard", "mlflow", "none", "tensorboard,mlflow", "mlflow, tensorboard"])
def test_tracking_setting_accepts(value):
    assert load_config(overrides=[f"train.tracking={value}"]).train.tracking == value


def test_without_the_packages_tensorboard_is_a_note_and_mlflow_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    layout = Layout(tmp_path)
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        tracking = Tracking.open("tensorboard", layout, "train")
    assert not tracking.active and not layout.tensorboard.exists()
    [note] = [record.getMessage() for record in caplog.records if "tensorboard" in record.getMessage()]
    assert "not installed" in note and "audiotokens[tensorboard]" in note
    with pytest.raises(UserError, match=r"mlflow, which is not installed: pip install 'audiotokens\[mlflow\]'"):
        Tracking.open("tensorboard,mlflow", layout, "train")
    assert not layout.tensorboard.exists()


def test_an_mlflow_store_that_does_not_open_is_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    make_workdir(tmp_path, n_train=16, n_validation=8)
    config = load_config(overrides=[*SMALL, "train.tracking=tensorboard,mlflow"], workdir=tmp_path)
    with pytest.raises(UserError, match=r"^cannot open the MLflow store nosuchscheme://nowhere \(.*\); check "
                                        "MLFLOW_TRACKING_URI"):
        ModelBuilder(config).run()
    assert not Layout(tmp_path).last_checkpoint.exists() and not Layout(tmp_path).tensorboard.exists()


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_finishes(tmp_path, monkeypatch, caplog):
    layout = make_workdir(tmp_path, n_train=32, n_validation=16)
    config = load_config(overrides=[*SMALL, "train.epochs=2"], workdir=tmp_path)

    def disk_full(self, values, step):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "scalars", disk_full)
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        counts = ModelBuilder(config).run()
    assert counts["epochs_run"] == 2 and len(epochs(layout.metrics)) == 2
    warnings = [record.getMessage() for record in caplog.records if "tracking failed" in record.getMessage()]
    assert warnings == [("tensorboard tracking failed and stops for this run ([Errno 28] No space left on device); "
                         "metrics.jsonl goes on")]


@pytest.mark.parametrize("text", ["{not json", '{"splits": {"train": {}}}'])
def test_a_damaged_token_statistics_file_costs_the_histograms_only(tmp_path, caplog, text):
    layout = Layout(tmp_path)
    layout.token_stats.parent.mkdir(parents=True)
    layout.token_stats.write_text(text)
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        assert TokenUsage.read(layout) is None
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"{layout.token_stats} cannot be read (") and "re-run `audiotokens tokenize`" in warning
