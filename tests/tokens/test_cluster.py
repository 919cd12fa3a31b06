"""The fitted vocabulary: training frames only, explicit sampling, what faiss trained on, reports."""
import json
import logging

import faiss
import numpy as np
import pytest
from stores import frame_spec, write_store

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.provenance import write_record
from audiotokens.pipeline.run import execute
from audiotokens.tokens.cluster import ClusterCreator
from audiotokens.tokens.vocabulary import load_vocabulary

DIM = 8


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
    validation = blobs(rng, centers, 600)
    write_store(tmp_path, {"train": (train, clip_lengths(len(train), rng)),
                           "validation": (validation, clip_lengths(len(validation), rng))})
    return tmp_path, train, centers, validation


def config_for(workdir, *overrides):
    return load_config(None, ["cluster.quantizer=frame", "cluster.n_clusters=4", *overrides], workdir)  # one k-means


def report_of(workdir) -> dict:
    return json.loads(Layout(workdir).cluster_report.read_text())


def centroids_of(workdir) -> np.ndarray:
    """Codebook 0 of the fitted vocabulary: the centroids of the `frame` tokenizer."""
    return load_vocabulary(Layout(workdir).vocabulary).quantizer.codebooks[0]


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
    test = blobs(rng, far[None], 2000)
    leaky = np.concatenate([train, validation])
    for workdir, train_frames in ((tmp_path / "proper", train), (tmp_path / "leaky", leaky)):
        # one store holds every split; only the train split's rows may reach k-means
        write_store(workdir, {"validation": (validation, clip_lengths(len(validation), rng)),
                              "train": (train_frames, clip_lengths(len(train_frames), rng)),
                              "test": (test, clip_lengths(len(test), rng))})
        ClusterCreator(config_for(workdir)).run()

    def distance(workdir):
        return np.linalg.norm(centroids_of(workdir) - far, axis=1).min()

    assert distance(tmp_path / "proper") > 40
    # control: had the validation frames been clustered, a centroid would sit on the planted cluster
    assert distance(tmp_path / "leaky") < 1


def test_same_seed_gives_identical_centroids(corpus, tmp_path):
    workdir = corpus[0]
    runs = []
    for seed in (3, 3, 4):
        ClusterCreator(config_for(workdir, f"cluster.seed={seed}", "cluster.max_frames=2000")).run()
        runs.append(centroids_of(workdir))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_all_frames_count_is_what_faiss_trained_on(corpus, faiss_inputs, caplog):
    workdir, train, _, _ = corpus
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        counts = ClusterCreator(config_for(workdir, "cluster.niter=30")).run()
    report = report_of(workdir)
    (kmeans, x), = faiss_inputs
    # 4000 frames > faiss's default 256 per centroid x 4: it would have subsampled without our setting
    assert len(x) == len(train) == report["vectors_used"] == counts["frames_used"]
    assert report["vectors_available"] == counts["frames_available"] == len(train)
    assert f"on {len(train)} of {len(train)} training vectors" in caplog.text
    np.testing.assert_array_equal(x, train)
    # converged Lloyd centroids are the means of ALL the rows faiss was given (a subsample's means differ)
    centroids = centroids_of(workdir)
    owner = nearest(x, centroids)
    means = np.stack([x[owner == j].mean(0) for j in range(len(centroids))])
    np.testing.assert_allclose(centroids, means, atol=1e-5)
    # faiss stops early once the objective no longer changes
    book, = report["codebooks"]
    assert book["iterations_run"] == len(book["objective"]) <= 30
    assert book["objective"] == pytest.approx(list(kmeans.obj))


def test_max_frames_draws_a_uniform_sample_across_clips(corpus, faiss_inputs, caplog):
    workdir, train, _, _ = corpus
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        ClusterCreator(config_for(workdir, "cluster.max_frames=700")).run()
    report = report_of(workdir)
    (_, x), = faiss_inputs
    assert len(x) == report["vectors_used"] == 700 and report["vectors_available"] == len(train)
    assert "on 700 of 4000 training vectors" in caplog.text and "max_frames" in report["sampling"]
    # every trained row is a distinct training frame
    rows = {row.tobytes(): i for i, row in enumerate(train)}
    picked = np.array([rows[row.tobytes()] for row in x])
    assert len(np.unique(picked)) == 700
    # drawn across the clips, not from the first few (train rows come first in this store)
    index = json.loads(Layout(workdir).frames_index.read_text())
    train_clips = [i for i, clip_id in enumerate(index["ids"]) if clip_id.startswith("train-")]
    clips = np.searchsorted(np.asarray(index["offsets"])[train_clips], picked, side="right")
    assert len(np.unique(clips)) > 0.8 * len(train_clips) == 0.8 * report["clips_available"]
    # the report says what the code sizes count: the vectors k-means was fitted on
    centroids = centroids_of(workdir)
    oracle = np.bincount(nearest(x, centroids), minlength=4)
    np.testing.assert_array_equal(report["codebooks"][0]["sizes"], oracle)
    assert "700" in report["sizes_over"]


def test_memory_budget_limits_the_sample(corpus, faiss_inputs):
    workdir = corpus[0]
    budget = 900 * DIM * 4 / 2**30
    ClusterCreator(config_for(workdir, f"cluster.memory_budget_gb={budget!r}")).run()
    (_, x), = faiss_inputs
    assert len(x) == report_of(workdir)["vectors_used"] == 900
    assert "memory_budget_gb" in report_of(workdir)["sampling"]


def test_float16_frames_are_converted(tmp_path, faiss_inputs):
    rng = np.random.default_rng(2)
    train = blobs(rng, rng.random((4, DIM)), 1000).astype(np.float16)
    write_store(tmp_path, {"train": (train, clip_lengths(len(train), rng))})
    ClusterCreator(config_for(tmp_path)).run()
    (_, x), = faiss_inputs
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, train.astype(np.float32))
    centroids = centroids_of(tmp_path)
    assert centroids.dtype == np.float32 and centroids.shape == (4, DIM)
    assert report_of(tmp_path)["frames_dtype"] == "float16"


def test_spherical_mode_normalises_frames_and_centroids(corpus, faiss_inputs):
    workdir, train, _, _ = corpus
    ClusterCreator(config_for(workdir, "cluster.spherical=true")).run()
    (kmeans, x), = faiss_inputs
    assert kmeans.cp.spherical and isinstance(kmeans.index, faiss.IndexFlatIP)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    vocabulary = load_vocabulary(Layout(workdir).vocabulary)
    centroids = vocabulary.quantizer.codebooks[0]
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    report = report_of(workdir)
    assert report["spherical"] is True and vocabulary.quantizer.spherical  # tokenize reads it from here
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    oracle = np.bincount((unit @ centroids.T).argmax(1), minlength=4)
    np.testing.assert_array_equal(report["codebooks"][0]["sizes"], oracle)


def test_fewer_frames_than_clusters_is_a_user_error(tmp_path):
    rng = np.random.default_rng(3)
    write_store(tmp_path, {"train": (rng.random((30, DIM), dtype=np.float32), [10, 20])})
    with pytest.raises(UserError, match="n_clusters = 50 needs at least 50 training vectors, but only 30"):
        ClusterCreator(load_config(None, ["cluster.quantizer=frame", "cluster.n_clusters=50"], tmp_path)).run()
    assert not Layout(tmp_path).vocabulary.exists()


def test_fewer_than_39_frames_per_cluster_warns(tmp_path, caplog):
    rng = np.random.default_rng(4)
    write_store(tmp_path, {"train": (rng.random((300, DIM), dtype=np.float32), [100, 200])})
    with caplog.at_level(logging.WARNING, logger="audiotokens"):
        ClusterCreator(config_for(tmp_path, "cluster.n_clusters=10")).run()
    assert "only 300 training vectors for 10 clusters" in caplog.text
    assert report_of(tmp_path)["warnings"] and "300" in report_of(tmp_path)["warnings"][0]


def test_non_finite_frames_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    frames = rng.random((400, DIM), dtype=np.float32)
    frames[123, 2] = np.nan
    write_store(tmp_path, {"train": (frames, [200, 200])})
    with pytest.raises(UserError, match=r"frames\.npy: training vector 123 contains NaN"):
        ClusterCreator(config_for(tmp_path)).run()
    assert not Layout(tmp_path).vocabulary.exists()


def test_gpu_request_without_a_gpu_is_a_user_error(corpus):
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible to faiss")
    with pytest.raises(UserError, match=r"cluster\.gpu = true.*no GPU.*faiss-gpu"):
        ClusterCreator(config_for(corpus[0], "cluster.gpu=true")).run()
    assert not Layout(corpus[0]).vocabulary.exists()


def test_report_and_record_through_the_pipeline(tmp_path):
    rng = np.random.default_rng(6)
    config = config_for(tmp_path, "spectrogram.n_mels=8", "spectrogram.hop_length=256")
    spec = frame_spec(DIM, hop_length=256)
    train = blobs(rng, rng.random((4, DIM)), 4000)
    write_store(tmp_path, {"train": (train, clip_lengths(4000, rng))}, spec=spec)
    write_record(Layout(tmp_path), "split", config, {})
    write_record(Layout(tmp_path), "spectrogram", config, {"frames": 4000})
    counts = execute("cluster", config)
    report = report_of(tmp_path)
    vocabulary = load_vocabulary(Layout(tmp_path).vocabulary)
    # the vocabulary carries the frame spec it was fitted on (what tokenize and predict compare)
    assert report["frame_spec"] == vocabulary.frame_spec == spec
    assert report["kind"] == "frame" and report["digest"] == vocabulary.digest
    assert counts["frames_used"] == report["vectors_used"] == 4000
    book, = report["codebooks"]
    assert sum(book["sizes"]) == 4000 and book["dead_codes"] == []
    assert report["validation_reconstruction_mse"] is None  # no validation split here
    assert report["wall_time_s"] > 0
    record = json.loads(Layout(tmp_path).record("cluster").read_text())
    assert Layout(tmp_path).record("cluster").name == "vocabulary.meta.json"
    assert record["params"]["cluster.n_clusters"] == 4 and record["counts"]["frames_used"] == 4000


def test_validation_reconstruction_error_equals_numpy(corpus):
    workdir, _, _, validation = corpus
    ClusterCreator(config_for(workdir)).run()
    centroids = centroids_of(workdir).astype(np.float64)
    oracle = ((validation - centroids[nearest(validation, centroids)]) ** 2).mean()
    assert report_of(workdir)["validation_reconstruction_mse"] == pytest.approx(oracle, rel=1e-5)


def test_dead_codes_are_named(tmp_path):
    """Four codes for three distinct frames: at least one code is never the nearest, and the report names it."""
    rng = np.random.default_rng(7)
    points = rng.random((3, DIM)).astype(np.float32) * 10
    train = points[rng.integers(0, 3, 600)]
    write_store(tmp_path, {"train": (train, [300, 300])})
    ClusterCreator(config_for(tmp_path)).run()
    book, = report_of(tmp_path)["codebooks"]
    oracle = np.bincount(nearest(train, centroids_of(tmp_path)), minlength=4)
    assert book["sizes"] == oracle.tolist()
    assert book["dead_codes"] == np.flatnonzero(oracle == 0).tolist() != []


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], ("frame", 1, 1, [DIM], [4])),
    (["cluster.quantizer=stacked", "cluster.stack=3", "cluster.stack_stride=2"], ("stacked", 3, 2, [3 * DIM], [4])),
    (["cluster.quantizer=subband", "cluster.bands=3"], ("subband", 1, 1, [3, 3, 2], [4] * 3)),
    (["cluster.quantizer=residual", "cluster.stages=2"], ("residual", 1, 1, [DIM, DIM], [4, 4])),
    (["cluster.quantizer=scalar", "cluster.levels=5"], ("scalar", 1, 1, [1] * DIM, [5] * DIM)),
], ids=["frame", "stacked", "subband", "residual", "scalar"])
def test_each_tokenizer_reads_its_own_cluster_keys(corpus, overrides, expected):
    workdir = corpus[0]
    counts = ClusterCreator(config_for(workdir, *overrides)).run()
    q = load_vocabulary(Layout(workdir).vocabulary).quantizer
    assert (q.kind, q.stack, q.stride, q.codebook_dims, q.codebook_sizes) == expected
    assert counts["dim"] == q.input_dim


def test_a_stride_longer_than_the_stack_is_refused_before_any_frame_is_read(tmp_path):
    with pytest.raises(UserError, match=r"cluster\.stack_stride = 5 must be between 1 and cluster\.stack = 4"):
        ClusterCreator(config_for(tmp_path, "cluster.quantizer=stacked", "cluster.stack=4",
                                  "cluster.stack_stride=5")).run()


def test_the_largest_seed_fits_every_codebook_of_a_subband_vocabulary(corpus):
    """Codebook c is seeded cluster.seed + c; faiss takes a C int, so the largest valid seed must still work."""
    workdir = corpus[0]
    ClusterCreator(config_for(workdir, "cluster.quantizer=subband", "cluster.bands=3", f"cluster.seed={2**31 - 1}")).run()
    assert load_vocabulary(Layout(workdir).vocabulary).quantizer.codebook_sizes == [4] * 3
