"""The tokenizer family: assignments against brute force, decoding, windows, saving, usage, bad parameters."""
from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
from stores import write_store

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.pipeline.layout import Layout
from audiotokens.tokens.cluster import ClusterCreator
from audiotokens.tokens.kmeans import NearestCentroid
from audiotokens.tokens.quantizer_kinds import KINDS, quantizer_kind

# the kinds fitted on frames and searched; a codec's codes come from the codec (tests/tokens/test_codec.py)
SEARCHED = [name for name, kind in KINDS.items() if kind.reads_frames]
from audiotokens.tokens.quantizers import Quantizer, codebook_usage, fit_quantizer, reconstruction_mse
from audiotokens.tokens.vocabulary import load_vocabulary

N_MELS = 12
K = 16
NITER = 8
STACK = 3
# small settings per kind; scalar ignores n_clusters
OPTIONS = {"bands": 4, "stages": 3, "levels": 8, "stack": STACK}


def frames_like(seed: int, n: int = 2000) -> np.ndarray:
    """Mel-like frames: a few spectral shapes, random gains, noise; float32 in roughly [-4, 4]."""
    rng = np.random.default_rng(seed)
    shapes = rng.normal(0.0, 1.5, size=(6, N_MELS))
    which = rng.integers(0, len(shapes), n)
    gain = rng.uniform(0.5, 1.5, size=(n, 1))
    return (gain * shapes[which] + 0.3 * rng.standard_normal((n, N_MELS))).astype(np.float32)


def training_vectors(kind: str, frames: np.ndarray, stack: int = STACK, stack_stride: int = 0) -> np.ndarray:
    """Frames, or for `stacked` the windows of clips of 50 frames (as the cluster stage would sample)."""
    if kind != "stacked":
        return frames
    probe = Quantizer(kind="stacked", codebooks=[np.zeros((1, N_MELS * stack), np.float32)], combine="concat",
                      stack=stack, stride=stack_stride or stack)
    return np.concatenate([probe.windows(frames[i:i + 50]) for i in range(0, len(frames), 50)])


def fit(kind: str, seed: int = 0, spherical: bool = False, **overrides):
    options = {**OPTIONS, **overrides}
    sample = training_vectors(kind, frames_like(seed), options["stack"], options.get("stack_stride", 0))
    quantizer, report = fit_quantizer(quantizer_kind(kind, **options), sample, n_clusters=K, niter=NITER, seed=seed,
                                      spherical=spherical)
    return quantizer, report, sample


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def assert_nearest(ids: np.ndarray, x: np.ndarray, book: np.ndarray) -> None:
    """ids are the brute-force nearest entries (squared L2, float64); only a near-exact tie may differ."""
    distances = np.square(x.astype(np.float64)[:, None, :] - book.astype(np.float64)[None]).sum(axis=2)
    reference = distances.argmin(axis=1)
    best = np.take_along_axis(distances, reference[:, None], axis=1)[:, 0]
    second = np.partition(distances, 1, axis=1)[:, 1] if book.shape[0] > 1 else best + 1
    tie = second - best <= 1e-5 * (1 + best)
    np.testing.assert_array_equal(ids[~tie], reference[~tie])
    chosen = np.take_along_axis(distances, ids[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(chosen, best, rtol=1e-5, atol=1e-6)


def brute_force_decode(quantizer: Quantizer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, decoded vectors) computed with plain numpy from the codebooks alone."""
    books = [book.astype(np.float64) for book in quantizer.codebooks]
    x = x.astype(np.float64)

    def nearest(v, book):
        return np.square(v[:, None, :] - book[None]).sum(axis=2).argmin(axis=1)

    ids, entries, start = [], [], 0
    if quantizer.combine == "sum":
        residual = x.copy()
        for book in books:
            ids.append(nearest(residual, book))
            residual -= book[ids[-1]]
        return np.stack(ids, axis=1), x - residual
    for book in books:
        part = x[:, start:start + book.shape[1]]
        ids.append(nearest(unit(part) if quantizer.spherical else part, book))
        entries.append(book[ids[-1]])
        start += book.shape[1]
    return np.stack(ids, axis=1), np.concatenate(entries, axis=1)


# ---------------------------------------------------------------- assignments equal brute force


@pytest.mark.parametrize("kind", SEARCHED)
def test_encode_equals_brute_force_nearest(kind):
    quantizer, _, _ = fit(kind)
    held_out = training_vectors(kind, frames_like(seed=7, n=600))
    ids = quantizer.encode(held_out)
    assert ids.dtype == np.int64 and ids.shape == (len(held_out), quantizer.n_codebooks)
    assert (ids >= 0).all() and (ids < np.asarray(quantizer.codebook_sizes)).all()
    if quantizer.combine == "sum":
        # each stage is the nearest entry to what the previous (encoded) stages left
        residual = held_out.astype(np.float64)
        for c, book in enumerate(quantizer.codebooks):
            assert_nearest(ids[:, c], residual, book)
            residual -= book[ids[:, c]]
    else:
        start = 0
        for c, book in enumerate(quantizer.codebooks):
            assert_nearest(ids[:, c], held_out[:, start:start + book.shape[1]], book)
            start += book.shape[1]
        assert start == held_out.shape[1]


@pytest.mark.parametrize("kind", ["frame", "stacked", "subband"])
def test_spherical_encode_is_nearest_unit_entry_per_codebook(kind):
    quantizer, _, _ = fit(kind, spherical=True)
    held_out = training_vectors(kind, frames_like(seed=8, n=600))
    ids = quantizer.encode(held_out)
    start = 0
    for c, book in enumerate(quantizer.codebooks):
        np.testing.assert_allclose(np.linalg.norm(book, axis=1), 1.0, rtol=1e-5)
        assert_nearest(ids[:, c], unit(held_out[:, start:start + book.shape[1]].astype(np.float64)), book)
        start += book.shape[1]


@pytest.mark.parametrize("spherical", [False, True])
def test_frame_reproduces_the_cluster_stage_centroids_and_tokens(tmp_path, spherical):
    frames = frames_like(seed=3)
    config = load_config(None, ["cluster.quantizer=frame", f"cluster.n_clusters={K}", f"cluster.niter={NITER}",
                                "cluster.seed=5",
                                f"cluster.spherical={str(spherical).lower()}"], tmp_path)
    # the stage fits on the train split's frames of the store (all of them: well within the memory budget)
    write_store(tmp_path, {"train": (frames, [500] * 4), "validation": (frames_like(seed=4, n=100), [100])})
    ClusterCreator(config).run()
    centroids = load_vocabulary(Layout(tmp_path).vocabulary).quantizer.codebooks[0]
    untouched = frames.copy()
    quantizer, _ = fit_quantizer(quantizer_kind("frame"), frames, n_clusters=K, niter=NITER, seed=5, spherical=spherical)
    np.testing.assert_array_equal(frames, untouched)  # the caller's sample is never normalised in place
    np.testing.assert_array_equal(quantizer.codebooks[0], centroids)
    np.testing.assert_array_equal(quantizer.encode(frames)[:, 0], NearestCentroid(centroids, spherical)(frames))


@pytest.mark.parametrize("spherical", [False, True])
def test_subband_with_one_band_is_frame(spherical):
    frame, _, sample = fit("frame", seed=4, spherical=spherical)
    subband, _, _ = fit("subband", seed=4, spherical=spherical, bands=1)
    assert subband.n_codebooks == 1
    np.testing.assert_array_equal(subband.codebooks[0], frame.codebooks[0])
    np.testing.assert_array_equal(subband.encode(sample), frame.encode(sample))


def test_subband_bands_are_contiguous_and_as_equal_as_possible():
    quantizer, _, _ = fit("subband", bands=5)  # 12 bins -> 3, 3, 2, 2, 2
    assert quantizer.codebook_dims == [3, 3, 2, 2, 2]
    assert quantizer.codebook_sizes == [K] * 5


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", SEARCHED)
def test_decode_of_encode_is_the_nearest_entries_combined(kind):
    quantizer, _, _ = fit(kind)
    held_out = training_vectors(kind, frames_like(seed=9, n=400))
    ids, expected = brute_force_decode(quantizer, held_out)
    np.testing.assert_array_equal(quantizer.encode(held_out), ids)
    decoded = quantizer.decode(quantizer.encode(held_out))
    assert decoded.dtype == np.float32 and decoded.shape == held_out.shape
    np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-5)


def test_residual_error_does_not_grow_with_stages():
    sample = frames_like(seed=2)
    errors = []
    for stages in range(1, 5):
        quantizer, _ = fit_quantizer(quantizer_kind("residual", stages=stages), sample, n_clusters=K, niter=NITER, seed=0)
        direct = float(np.mean(np.square(sample - quantizer.decode(quantizer.encode(sample)).astype(np.float64))))
        assert reconstruction_mse(quantizer, sample) == pytest.approx(direct, rel=1e-6)
        errors.append(direct)
    assert all(later <= earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.8 * errors[0], errors


def test_spherical_reconstruction_error_is_measured_against_unit_bands():
    quantizer, _, sample = fit("subband", spherical=True)
    _, decoded = brute_force_decode(quantizer, sample)
    target = np.concatenate([unit(part) for part in np.split(sample.astype(np.float64), [3, 6, 9], axis=1)],
                            axis=1)
    direct = float(np.mean(np.square(target - decoded)))
    assert reconstruction_mse(quantizer, sample, batch_rows=333) == pytest.approx(direct, rel=1e-4)
    assert direct < 0.5 * float(np.mean(np.square(target)))  # the codebooks really fit the unit bands


def test_scalar_reconstructs_within_half_a_level():
    sample = frames_like(seed=1)
    levels = 10
    quantizer, report = fit_quantizer(quantizer_kind("scalar", levels=levels), sample, n_clusters=K, niter=NITER, seed=0)
    low, high = float(sample.min()), float(sample.max())
    assert quantizer.n_codebooks == N_MELS and quantizer.codebook_sizes == [levels] * N_MELS
    np.testing.assert_allclose(quantizer.codebooks[5][:, 0], np.linspace(low, high, levels), rtol=1e-6)
    step = (high - low) / (levels - 1)
    error = np.abs(quantizer.decode(quantizer.encode(sample)) - sample)
    assert error.max() <= step / 2 * (1 + 1e-5)
    assert error.max() > step / 4  # the levels are really that coarse: the bound is not vacuous
    assert reconstruction_mse(quantizer, sample) == pytest.approx(float(np.mean(np.square(error))), rel=1e-4)
    assert report["codebooks"][0]["objective"] == []


# ---------------------------------------------------------------- stacked windows at clip ends


@pytest.mark.parametrize("stride", [3, 2, 1])
@pytest.mark.parametrize("n_frames", [0, 1, 2, 3, 4, 5, 6, 7, 10])
def test_stacked_windows_cover_every_frame_and_pad_with_the_last(n_frames, stride):
    stack = 3
    quantizer = Quantizer(kind="stacked", codebooks=[np.zeros((2, N_MELS * stack), np.float32)],
                          combine="concat", stack=stack, stride=stride)
    clip = np.repeat(np.arange(n_frames, dtype=np.float32)[:, None], N_MELS, axis=1)  # frame i holds i
    starts = []
    while n_frames and (not starts or starts[-1] + stack < n_frames):
        starts.append(len(starts) * stride)
    windows = quantizer.windows(clip)
    assert quantizer.n_tokens(n_frames) == len(starts) == len(windows)
    assert windows.shape == (len(starts), N_MELS * stack)
    for start, window in zip(starts, windows):
        expected = [min(start + j, n_frames - 1) for j in range(stack)]
        np.testing.assert_array_equal(window.reshape(stack, N_MELS), np.repeat(
            np.asarray(expected, np.float32)[:, None], N_MELS, axis=1))
    assert set(windows[:, ::N_MELS].ravel().tolist()) == set(range(n_frames))  # no frame dropped


def test_stacked_stride_defaults_to_stack_and_bits_per_frame_divide_by_it():
    quantizer, report, _ = fit("stacked")
    assert (quantizer.stack, quantizer.stride) == (STACK, STACK)
    assert quantizer.input_dim == N_MELS * STACK
    assert report["bits_per_frame"] == pytest.approx(math.log2(K) / STACK)
    overlapping, _, _ = fit("stacked", stack_stride=1)
    assert overlapping.stride == 1 and overlapping.bits_per_frame == pytest.approx(math.log2(K))


def test_windows_is_the_identity_without_stacking():
    quantizer, _, sample = fit("subband")
    assert quantizer.windows(sample) is sample
    assert quantizer.n_tokens(17) == 17


# ---------------------------------------------------------------- sizes, saving, usage


def test_bits_per_token_sum_log2_of_codebook_sizes():
    expected = {"frame": 4, "stacked": 4, "subband": 4 * 4, "residual": 3 * 4, "scalar": N_MELS * 3}
    for kind in SEARCHED:
        quantizer, report, _ = fit(kind)
        assert quantizer.bits_per_token == pytest.approx(expected[kind]), kind
        assert report["bits_per_token"] == pytest.approx(expected[kind]), kind


@pytest.mark.parametrize("kind", SEARCHED)
def test_state_round_trip_keeps_encode_decode_and_digest(kind):
    quantizer, _, sample = fit(kind, spherical=kind in ("subband",))
    meta, arrays = quantizer.state()
    meta = json.loads(json.dumps(meta))
    arrays = {name: np.array(array) for name, array in arrays.items()}
    restored = Quantizer.from_state(meta, arrays)
    ids = quantizer.encode(sample)
    np.testing.assert_array_equal(restored.encode(sample), ids)
    np.testing.assert_array_equal(restored.decode(ids), quantizer.decode(ids))
    assert restored.digest() == quantizer.digest()
    assert (restored.kind, restored.spherical, restored.stack, restored.stride) == (
        quantizer.kind, quantizer.spherical, quantizer.stack, quantizer.stride)
    changed = dict(arrays)
    changed["codebook_0"] = arrays["codebook_0"].copy()
    changed["codebook_0"][-1, 0] += 1.0  # the last (scalar: top) entry, keeping levels increasing
    assert Quantizer.from_state(meta, changed).digest() != quantizer.digest()
    with pytest.raises(ValueError, match="codebook shapes"):
        Quantizer.from_state(meta, {**arrays, "codebook_0": arrays["codebook_0"][:-1]})


def test_codebooks_are_read_only_and_encode_leaves_its_input_alone():
    quantizer, _, sample = fit("subband", spherical=True)
    with pytest.raises(ValueError):
        quantizer.codebooks[0][0, 0] = 1.0
    before = sample.copy()
    quantizer.encode(sample)
    np.testing.assert_array_equal(sample, before)


def test_rows_that_are_not_finite_get_minus_one():
    for kind in ("residual", "scalar"):
        quantizer, _, sample = fit(kind)
        batch = sample[:5].copy()
        batch[2, 3] = np.nan
        ids = quantizer.encode(batch)
        assert (ids[2] == -1).all() and (np.delete(ids, 2, axis=0) >= 0).all()
        np.testing.assert_array_equal(np.delete(ids, 2, axis=0), quantizer.encode(np.delete(batch, 2, axis=0)))


def test_codebook_usage_equals_a_direct_count():
    rng = np.random.default_rng(0)
    sizes = [5, 3, 8]
    ids = np.stack([rng.integers(0, 4, 300), rng.integers(0, 3, 300), np.r_[np.zeros(290), np.ones(10)]],
                   axis=1).astype(np.int64)
    usage = codebook_usage(ids, sizes)
    for c, (size, row) in enumerate(zip(sizes, usage)):
        counts = Counter(ids[:, c].tolist())
        entropy = -sum(n / 300 * math.log2(n / 300) for n in counts.values())
        assert row["used"] == len(counts) and row["dead"] == size - len(counts)
        assert row["entropy_bits"] == pytest.approx(entropy)
        assert row["perplexity"] == pytest.approx(2**entropy)
    assert usage[0]["dead"] == 1 and usage[2]["dead"] == 6


def test_fit_report_has_objective_sizes_and_dead_codes_per_codebook():
    quantizer, report, sample = fit("residual")
    ids = quantizer.encode(sample)
    assert len(report["codebooks"]) == 3
    for c, book in enumerate(report["codebooks"]):
        assert 1 <= len(book["objective"]) <= NITER
        np.testing.assert_array_equal(book["sizes"], np.bincount(ids[:, c], minlength=K))
        assert book["dead_codes"] == [i for i in range(K) if book["sizes"][i] == 0]
    assert report["train_reconstruction_mse"] == pytest.approx(reconstruction_mse(quantizer, sample))
    assert report["digest"] == quantizer.digest()
    json.dumps(report)  # JSON-able as is


# ---------------------------------------------------------------- bad parameters


KMEANS_KEYS = ("n_clusters", "spherical")  # fit_quantizer's; the other options are the kind's own settings


@pytest.mark.parametrize(("kind", "options", "key"), [
    ("tokens", {}, "cluster.quantizer"),
    ("frame", {"n_clusters": 301}, "cluster.n_clusters"),  # one more than the sample has rows
    ("residual", {"n_clusters": 0}, "cluster.n_clusters"),
    ("subband", {"bands": N_MELS + 1}, "cluster.bands"),
    ("subband", {"bands": 0}, "cluster.bands"),
    ("residual", {"stages": 0}, "cluster.stages"),
    ("scalar", {"levels": 1}, "cluster.levels"),
    ("stacked", {"stack": 0}, "cluster.stack"),
    ("stacked", {"stack": 3, "stack_stride": 4}, "cluster.stack_stride"),
    ("stacked", {"stack": 3, "stack_stride": -1}, "cluster.stack_stride"),
    ("residual", {"spherical": True}, "cluster.spherical"),
    ("scalar", {"spherical": True}, "cluster.spherical"),
])
def test_bad_parameters_name_their_config_key(kind, options, key):
    sample = frames_like(seed=0, n=300)
    if kind == "stacked":
        sample = np.tile(sample, (1, 3))  # windows of 3 frames
    kmeans = {"n_clusters": K, **{key: value for key, value in options.items() if key in KMEANS_KEYS}}
    settings = {key: value for key, value in options.items() if key not in KMEANS_KEYS}
    with pytest.raises(UserError) as error:
        fit_quantizer(quantizer_kind(kind, **settings), sample, niter=NITER, seed=0, **kmeans)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_inconsistent_states_are_refused():
    meta, arrays = fit("frame")[0].state()
    two = {"codebook_0": arrays["codebook_0"], "codebook_1": arrays["codebook_0"]}
    with pytest.raises(ValueError, match="one codebook"):
        Quantizer.from_state({**meta, "n_codebooks": 2, "codebook_sizes": [K, K],
                              "codebook_dims": [N_MELS, N_MELS]}, two)
    with pytest.raises(ValueError, match="cannot be spherical"):
        Quantizer(kind="residual", codebooks=[arrays["codebook_0"]], combine="sum", spherical=True)
    with pytest.raises(ValueError, match="increasing"):
        Quantizer(kind="scalar", codebooks=[np.array([[1.0], [0.0]])], combine="concat")
    with pytest.raises(ValueError, match="one frame per token"):
        Quantizer(kind="subband", codebooks=[arrays["codebook_0"]], combine="concat", stack=2, stride=2)
    with pytest.raises(ValueError, match="not a multiple of stack"):
        Quantizer(kind="stacked", codebooks=[arrays["codebook_0"]], combine="concat", stack=5, stride=5)
    with pytest.raises(ValueError, match="combines by 'sum'"):
        Quantizer(kind="residual", codebooks=[arrays["codebook_0"]], combine="concat")


def test_settings_are_read_by_their_kind_only_and_a_misspelt_one_is_refused():
    assert quantizer_kind("subband", bands=3, stages=9, stack=2) == quantizer_kind("subband", bands=3)
    assert quantizer_kind("stacked", stack=2, stack_stride=1).geometry == (2, 1)
    assert quantizer_kind("stacked", stack=5).geometry == (5, 5)  # stack_stride 0: windows side by side
    with pytest.raises(TypeError, match="stride"):
        quantizer_kind("stacked", stack=2, stride=1)  # the [cluster] key is stack_stride
