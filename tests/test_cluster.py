"""k-means vocabulary: training frames only, explicit sampling, what faiss trained on, reports."""
import json
import logging
from pathlib import Path

import faiss
import numpy as np
import pytest

from audiotokens.artifacts import ClipIndex, Layout, save_npy
from audiotokens.cluster import ClusterCreator, size_summary
from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.pipeline import execute
from audiotokens.provenance import write_record

DIM = 8


def make_store(workdir: Path, split: str, frames: np.ndarray, lengths) -> ClipIndex:
    """A frames store as the spectrogram stage writes it."""
    layout = Layout(workdir)
    lengths = np.asarray(lengths)
    assert lengths.sum() == len(frames)
    save_npy(layout.frames(split), frames)
    index = ClipIndex.from_lengths([f"{split}-{i}" for i in range(len(lengths))], lengths,
                                   [[i % 2] for i in range(len(lengths))], ["a", "b"], "singlelabel", split)
    index.save(layout.frames_index(split))
    return index


def blobs(rng, centers: np.ndarray, n: int, spread: float = 0.05) -> np.ndarray:
    labels = rng.integers(0, len(centers), n)
    return (centers[labels] + spread * rng.standard_normal((n, centers.shape[1]))).astype(np.float32)


def clip_lengths(total: int, rng) -> list[int]:
    lengths = []
    while sum(lengths) < total:
        lengths.append(int(min(rng.integers(20, 80), total - sum(lengths))))
    return lengths


@pytest.fixture
def corpus(tmp_path):
    """Training frames in 4 separated blobs; validation frames elsewhere."""
    rng = np.random.default_rng(0)
    centers = rng.random((4, DIM)) * 4
    train = blobs(rng, centers, 4000)
    make_store(tmp_path, "train", train, clip_lengths(len(train), rng))
    validation = blobs(rng, centers, 600)
    make_store(tmp_path, "validation", validation, clip_lengths(len(validation), rng))
    return tmp_path, train, centers


def config_for(workdir, *overrides):
    return load_config(None, ["cluster.n_clusters=4", *overrides], workdir)


def report_of(workdir) -> dict:
    return json.loads(Layout(workdir).cluster_report.read_text())


@pytest.fixture
def faiss_inputs(monkeypatch):
    """Every matrix handed to faiss.Kmeans.train, and the Kmeans objects."""
    seen = []
    original = faiss.Kmeans.train

    def spy(self, x, *args, **kwargs):
        seen.append((self, np.array(x, copy=True)))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(faiss.Kmeans, "train", spy)
    return seen


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(1)


def test_centroids_come_from_training_frames_only(tmp_path):
    rng = np.random.default_rng(1)
    centers = rng.random((3, DIM))
    train = blobs(rng, centers, 1500)
    far = np.full(DIM, 50.0)
    # a large, distinctive cluster that exists in validation only
    validation = np.concatenate([blobs(rng, far[None], 3000), blobs(rng, centers, 300)])
    leaky = np.concatenate([train, validation])
    for workdir, train_frames in ((tmp_path / "proper", train), (tmp_path / "leaky", leaky)):
        make_store(workdir, "train", train_frames, clip_lengths(len(train_frames), rng))
        make_store(workdir, "validation", validation, clip_lengths(len(validation), rng))
        ClusterCreator(config_for(workdir)).run()

    def distance(workdir):
        return np.linalg.norm(np.load(Layout(workdir).centroids) - far, axis=1).min()

    assert distance(tmp_path / "proper") > 40
    # control: had the validation frames been clustered, a centroid would sit on the planted cluster
    assert distance(tmp_path / "leaky") < 1


def test_same_seed_gives_identical_centroids(corpus, tmp_path):
    workdir = corpus[0]
    runs = []
    for seed in (3, 3, 4):
        ClusterCreator(config_for(workdir, f"cluster.seed={seed}", "cluster.max_frames=2000")).run()
        runs.append(np.load(Layout(workdir).centroids))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_all_frames_count_is_what_faiss_trained_on(corpus, faiss_inputs, caplog):
    workdir, train, _ = corpus
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        counts = ClusterCreator(config_for(workdir, "cluster.niter=30")).run()
    report = report_of(workdir)
    (kmeans, x), = faiss_inputs
    # 4000 frames > faiss's default 256 per centroid x 4: it would have subsampled without our setting
    assert len(x) == len(train) == report["frames_used"] == counts["frames_used"]
    assert report["frames_available"] == len(train)
    assert f"on {len(train)} of {len(train)} training frames" in caplog.text
    np.testing.assert_array_equal(x, train)
    # converged Lloyd centroids are the means of ALL the rows faiss was given (a subsample's means differ)
    centroids = np.load(Layout(workdir).centroids)
    owner = nearest(x, centroids)
    means = np.stack([x[owner == j].mean(0) for j in range(len(centroids))])
    np.testing.assert_allclose(centroids, means, atol=1e-5)
    # faiss stops early once the objective no longer changes
    assert report["iterations_run"] == len(report["objective"]) <= 30
    assert report["objective"] == pytest.approx(list(kmeans.obj))


def test_max_frames_draws_a_uniform_sample_across_clips(corpus, faiss_inputs, caplog):
    workdir, train, _ = corpus
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        ClusterCreator(config_for(workdir, "cluster.max_frames=700")).run()
    report = report_of(workdir)
    (_, x), = faiss_inputs
    assert len(x) == report["frames_used"] == 700 and report["frames_available"] == len(train)
    assert "on 700 of 4000 training frames" in caplog.text and "max_frames" in report["sampling"]
    # every trained row is a distinct training frame
    rows = {row.tobytes(): i for i, row in enumerate(train)}
    picked = np.array([rows[row.tobytes()] for row in x])
    assert len(np.unique(picked)) == 700
    index = ClipIndex.load(Layout(workdir).frames_index("train"))
    clips = np.searchsorted(index.offsets, picked, side="right")
    assert report["clips_sampled"] == len(np.unique(clips)) > 0.8 * len(index)
    # sizes are counted over ALL training frames, not the sample
    centroids = np.load(Layout(workdir).centroids)
    oracle = np.bincount(nearest(train, centroids), minlength=4)
    np.testing.assert_array_equal(report["cluster_sizes"], oracle)


def test_memory_budget_limits_the_sample(corpus, faiss_inputs):
    workdir = corpus[0]
    budget = 900 * DIM * 4 / 2**30
    ClusterCreator(config_for(workdir, f"cluster.memory_budget_gb={budget!r}")).run()
    (_, x), = faiss_inputs
    assert len(x) == report_of(workdir)["frames_used"] == 900
    assert "memory_budget_gb" in report_of(workdir)["sampling"]


def test_float16_frames_are_converted(tmp_path, faiss_inputs):
    rng = np.random.default_rng(2)
    train = blobs(rng, rng.random((4, DIM)), 1000).astype(np.float16)
    make_store(tmp_path, "train", train, clip_lengths(len(train), rng))
    ClusterCreator(config_for(tmp_path)).run()
    (_, x), = faiss_inputs
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, train.astype(np.float32))
    centroids = np.load(Layout(tmp_path).centroids)
    assert centroids.dtype == np.float32 and centroids.shape == (4, DIM)
    assert report_of(tmp_path)["frames_dtype"] == "float16"


def test_spherical_mode_normalises_frames_and_centroids(corpus, faiss_inputs):
    workdir, train, _ = corpus
    ClusterCreator(config_for(workdir, "cluster.spherical=true")).run()
    (kmeans, x), = faiss_inputs
    assert kmeans.cp.spherical and isinstance(kmeans.index, faiss.IndexFlatIP)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    centroids = np.load(Layout(workdir).centroids)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    report = report_of(workdir)
    assert report["spherical"] is True
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    oracle = np.bincount((unit @ centroids.T).argmax(1), minlength=4)
    np.testing.assert_array_equal(report["cluster_sizes"], oracle)


def test_fewer_frames_than_clusters_is_a_user_error(tmp_path):
    rng = np.random.default_rng(3)
    make_store(tmp_path, "train", rng.random((30, DIM), dtype=np.float32), [10, 20])
    with pytest.raises(UserError, match="n_clusters = 50 needs at least 50 training frames, but only 30"):
        ClusterCreator(load_config(None, [], tmp_path)).run()
    assert not Layout(tmp_path).centroids.exists()


def test_fewer_than_39_frames_per_cluster_warns(tmp_path, caplog):
    rng = np.random.default_rng(4)
    make_store(tmp_path, "train", rng.random((300, DIM), dtype=np.float32), [100, 200])
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        ClusterCreator(config_for(tmp_path, "cluster.n_clusters=10")).run()
    assert "only 300 training frames for 10 clusters" in caplog.text
    assert report_of(tmp_path)["warnings"] and "300" in report_of(tmp_path)["warnings"][0]


def test_non_finite_frames_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    frames = rng.random((400, DIM), dtype=np.float32)
    frames[123, 2] = np.nan
    make_store(tmp_path, "train", frames, [200, 200])
    with pytest.raises(UserError, match="row 123 contains NaN"):
        ClusterCreator(config_for(tmp_path)).run()


def test_gpu_request_without_a_gpu_warns_and_trains_on_cpu(corpus, caplog):
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible to faiss")
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        ClusterCreator(config_for(corpus[0], "cluster.gpu=true")).run()
    assert "cluster.gpu" in caplog.text and report_of(corpus[0])["gpu"] is False


def test_report_and_record_through_the_pipeline(corpus):
    workdir = corpus[0]
    config = config_for(workdir, "spectrogram.n_mels=8", "spectrogram.hop_length=256")
    write_record(Layout(workdir), "spectrogram", config, {"frames": 4000})
    counts = execute("cluster", config)
    report = report_of(workdir)
    assert report["spectrogram"]["spectrogram.n_mels"] == 8
    assert report["spectrogram"]["spectrogram.hop_length"] == 256
    assert counts["frames_used"] == report["frames_used"] == 4000
    assert sum(report["cluster_sizes"]) == 4000 and report["dead_clusters"] == []
    assert report["wall_time_s"] > 0
    record = json.loads(Layout(workdir).record("cluster").read_text())
    assert record["params"]["cluster.n_clusters"] == 4 and record["counts"]["frames_used"] == 4000


def test_dead_and_tiny_clusters_are_named():
    sizes = np.array([0, 5, 1000, 2000, 9, 10, 0, 1976])  # mean 625: tiny below 6.25
    summary = size_summary(sizes)
    assert summary["dead_clusters"] == [0, 6]
    assert summary["tiny_clusters"] == [1]
    assert summary["tiny_threshold"] == pytest.approx(6.25)
