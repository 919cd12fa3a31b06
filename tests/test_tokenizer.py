"""Token stores: exact nearest-centroid ids, every clip keeps its own tokens, refusals, statistics."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from audiotokens import tokenizer as tokenizer_module
from audiotokens.artifacts import ClipIndex, Layout, open_store, save_npy
from audiotokens.cluster import ClusterCreator
from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.provenance import write_record
from audiotokens.tokenizer import SpecTokenizer, assign_tokens, centroids_digest, token_statistics


def make_store(workdir: Path, split: str, frames: np.ndarray, lengths) -> ClipIndex:
    """A frames store as the spectrogram stage writes it."""
    layout = Layout(workdir)
    lengths = np.asarray(lengths, dtype=np.int64)
    assert lengths.sum() == len(frames)
    save_npy(layout.frames(split), frames)
    ids = [f"{split}-{i:03d}" for i in range(len(lengths))]
    labels = [[i % 3] for i in range(len(lengths))]
    index = ClipIndex.from_lengths(ids, lengths, labels, ["x", "y", "z"], "singlelabel", split)
    index.save(layout.frames_index(split))
    return index


def write_centroids(workdir: Path, centroids: np.ndarray, spherical: bool = False, spectrogram=None) -> None:
    """output/centroids.npy plus the report fields the cluster stage records."""
    layout = Layout(workdir)
    centroids = centroids.astype(np.float32)
    save_npy(layout.centroids, centroids)
    layout.cluster_report.write_text(json.dumps({"spherical": spherical, "spectrogram": spectrogram or {},
                                                 "centroids_digest": centroids_digest(centroids)}))


def config_for(workdir, *overrides):
    return load_config(None, list(overrides), workdir)


def tokens_of(workdir, split):
    layout = Layout(workdir)
    return open_store(layout.tokens(split), layout.tokens_index(split))


def squared_distances(frames, centroids):
    frames, centroids = frames.astype(np.float64), centroids.astype(np.float64)
    return (frames ** 2).sum(1)[:, None] - 2 * frames @ centroids.T + (centroids ** 2).sum(1)[None]


def test_assignments_equal_numpy_brute_force():
    rng = np.random.default_rng(0)
    frames = rng.random((3000, 12), dtype=np.float32)
    centroids = rng.random((40, 12), dtype=np.float32)
    ids = assign_tokens(frames, centroids, spherical=False, batch_frames=257)
    d = squared_distances(frames, centroids)
    best = d.min(1)
    chosen = d[np.arange(len(frames)), ids]
    np.testing.assert_allclose(chosen, best, rtol=1e-5, atol=1e-6)  # always a nearest centroid
    second = np.partition(d, 1, axis=1)[:, 1]
    clear = second - best > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(ids[clear], d.argmin(1)[clear])


def test_spherical_assignment_uses_inner_product_of_unit_vectors():
    rng = np.random.default_rng(1)
    frames = (rng.random((2000, 6)) * rng.uniform(0.1, 10, (2000, 1))).astype(np.float32)
    centroids = rng.random((30, 6)).astype(np.float32)
    ids = assign_tokens(frames, centroids, spherical=True, batch_frames=333)
    unit_f = frames / np.linalg.norm(frames, axis=1, keepdims=True)
    unit_c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    similarity = unit_f.astype(np.float64) @ unit_c.T.astype(np.float64)
    top2 = np.sort(similarity, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    np.testing.assert_array_equal(ids[clear], similarity.argmax(1)[clear])
    # and it is not plain L2 on the raw frames
    assert (ids != squared_distances(frames, centroids).argmin(1)).mean() > 0.2


@pytest.fixture
def clip_corpus(tmp_path):
    """Clips whose frames all sit on one clip-specific centroid, so a token shifted between clips shows."""
    rng = np.random.default_rng(2)
    k, dim = 50, 10
    centroids = rng.random((k, dim)).astype(np.float32) * 10
    corpus = {}
    for split, n_clips in (("train", 60), ("validation", 25)):
        lengths = rng.integers(1, 40, n_clips)
        owners = rng.integers(0, k, n_clips)
        frames = np.concatenate([centroids[o] + 0.01 * rng.standard_normal((n, dim))
                                 for o, n in zip(owners, lengths)]).astype(np.float32)
        corpus[split] = (frames, make_store(tmp_path, split, frames, lengths), owners)
    write_centroids(tmp_path, centroids)
    return tmp_path, centroids, corpus


def test_every_clip_keeps_its_own_tokens(clip_corpus, tmp_path_factory):
    workdir, centroids, corpus = clip_corpus
    SpecTokenizer(config_for(workdir, "tokenize.batch_frames=7")).run()  # batches cut across clips
    rng = np.random.default_rng(3)
    for split, (frames, frames_index, owners) in corpus.items():
        tokens, index = tokens_of(workdir, split)
        assert index.ids == frames_index.ids and index.labels == frames_index.labels
        np.testing.assert_array_equal(index.offsets, frames_index.offsets)
        np.testing.assert_array_equal(index.lengths, frames_index.lengths)
        for clip in rng.permutation(len(index)):  # each clip on its own, in shuffled order
            clip_id = frames_index.ids[clip]
            at = index.ids.index(clip_id)
            start, length = index.offsets[at], index.lengths[at]
            own = frames[frames_index.offsets[clip]:frames_index.offsets[clip] + frames_index.lengths[clip]]
            expected = assign_tokens(own, centroids, spherical=False)
            np.testing.assert_array_equal(tokens[start:start + length, 0], expected, err_msg=clip_id)
            assert (expected == owners[clip]).all()
    # another batch size gives the very same stores
    other = tmp_path_factory.mktemp("other")
    for split, (frames, frames_index, _) in corpus.items():
        make_store(other, split, frames, frames_index.lengths)
    write_centroids(other, centroids)
    SpecTokenizer(config_for(other, "tokenize.batch_frames=1000")).run()
    for split in corpus:
        np.testing.assert_array_equal(tokens_of(workdir, split)[0], tokens_of(other, split)[0])


def test_tokens_round_trip_as_int16(clip_corpus):
    workdir, centroids, corpus = clip_corpus
    SpecTokenizer(config_for(workdir)).run()
    for split, (frames, _, _) in corpus.items():
        stored = np.load(Layout(workdir).tokens(split))
        assert stored.dtype == np.int16 and stored.shape == (len(frames), 1)
        np.testing.assert_array_equal(stored[:, 0].astype(np.int64), assign_tokens(frames, centroids, False))


def test_vocabularies_of_32768_or_more_use_int32(tmp_path):
    rng = np.random.default_rng(4)
    k = 2**15 + 200
    centroids = rng.random((k, 4)).astype(np.float32)
    order = np.concatenate([rng.permutation(k)[:4800], np.arange(k - 200, k)])
    frames = centroids[order]  # each frame sits exactly on a centroid, ids well above 32767 included
    for split in ("train", "validation"):
        make_store(tmp_path, split, frames, [2500, 2500])
    write_centroids(tmp_path, centroids)
    SpecTokenizer(config_for(tmp_path)).run()
    stored = np.load(Layout(tmp_path).tokens("train"))
    assert stored.dtype == np.int32 and stored.max() > 32767
    np.testing.assert_array_equal(stored[:, 0], order)


def test_spherical_flag_comes_from_the_cluster_stage(tmp_path, caplog):
    rng = np.random.default_rng(5)
    for split in ("train", "validation"):
        frames = (rng.random((1500, 6)) * rng.uniform(0.1, 10, (1500, 1))).astype(np.float32)
        make_store(tmp_path, split, frames, [500, 1000])
    ClusterCreator(config_for(tmp_path, "cluster.n_clusters=8", "cluster.spherical=true")).run()
    with caplog.at_level(logging.INFO, logger="audiotokens"):
        counts = SpecTokenizer(config_for(tmp_path, "cluster.spherical=false")).run()
    assert counts["spherical"] is True and "as recorded with the centroids" in caplog.text
    centroids = np.load(Layout(tmp_path).centroids)
    frames = np.load(Layout(tmp_path).frames("validation"))
    unit = frames / np.linalg.norm(frames, axis=1, keepdims=True)
    np.testing.assert_array_equal(tokens_of(tmp_path, "validation")[0][:, 0], (unit @ centroids.T).argmax(1))


def test_dimension_mismatch_names_both_dimensions(clip_corpus):
    workdir = clip_corpus[0]
    write_centroids(workdir, np.random.default_rng(6).random((50, 12)))
    with pytest.raises(UserError, match=r"dimension 12 but .*frames\.npy has frames of dimension 10"):
        SpecTokenizer(config_for(workdir)).run()


def test_centroids_from_other_spectrogram_settings_are_refused(clip_corpus):
    workdir = clip_corpus[0]
    layout = Layout(workdir)
    write_record(layout, "spectrogram", config_for(workdir, "spectrogram.n_mels=10"), {})
    ClusterCreator(config_for(workdir, "cluster.n_clusters=5")).run()
    # the frames are re-made with another hop length: the centroids no longer describe them
    rerun = config_for(workdir, "spectrogram.n_mels=10", "spectrogram.hop_length=256")
    write_record(layout, "spectrogram", rerun, {})
    with pytest.raises(UserError, match=r"hop_length=512 for the centroids vs 256 for the frames"):
        SpecTokenizer(config_for(workdir)).run()
    # storage precision does not change what a frame means
    half = config_for(workdir, "spectrogram.n_mels=10", "spectrogram.dtype=float16")
    write_record(layout, "spectrogram", half, {})
    SpecTokenizer(config_for(workdir)).run()


def test_missing_or_mismatched_centroids_are_user_errors(clip_corpus):
    workdir, centroids, _ = clip_corpus
    layout = Layout(workdir)
    save_npy(layout.centroids, centroids[:10])  # a report written for other centroids
    with pytest.raises(UserError, match="does not describe"):
        SpecTokenizer(config_for(workdir)).run()
    layout.centroids.unlink()
    with pytest.raises(UserError, match="run `audiotokens cluster` first"):
        SpecTokenizer(config_for(workdir)).run()


def test_non_finite_frames_are_refused(clip_corpus):
    workdir, _, corpus = clip_corpus
    frames, index, _ = corpus["validation"]
    frames = frames.copy()
    frames[17, 3] = np.inf
    make_store(workdir, "validation", frames, index.lengths)
    with pytest.raises(UserError, match=r"validation/frames\.npy row 17 contains NaN or inf"):
        SpecTokenizer(config_for(workdir, "tokenize.batch_frames=5")).run()


def test_statistics_and_histogram(clip_corpus):
    workdir, centroids, corpus = clip_corpus
    SpecTokenizer(config_for(workdir)).run()
    for split, (frames, _, owners) in corpus.items():
        stats = json.loads(Layout(workdir).token_stats(split).read_text())
        counts = np.bincount(assign_tokens(frames, centroids, False), minlength=len(centroids))
        assert stats["counts"] == counts.tolist() and stats["frames"] == len(frames)
        assert stats["entropy_bits"] == pytest.approx(scipy_entropy(counts, base=2))
        assert stats["perplexity"] == pytest.approx(2 ** scipy_entropy(counts, base=2))
        assert stats["top10_share"] == pytest.approx(np.sort(counts)[-10:].sum() / len(frames))
        assert stats["unused_ids"] == [t for t in range(len(centroids)) if t not in set(owners)]
        assert stats["unused_tokens"] == len(stats["unused_ids"]) > 0
        assert Layout(workdir).token_histogram(split).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_statistics_of_an_empty_split_are_finite():
    stats = token_statistics(np.zeros(5, dtype=np.int64))
    assert stats["entropy_bits"] == 0.0 and stats["perplexity"] == 1.0 and stats["top10_share"] == 0.0
    assert stats["unused_tokens"] == 5


def test_an_interrupted_run_leaves_the_previous_tokens(clip_corpus, monkeypatch):
    workdir, centroids, _ = clip_corpus
    layout = Layout(workdir)
    SpecTokenizer(config_for(workdir)).run()
    before = {split: layout.tokens(split).read_bytes() for split in ("train", "validation")}
    write_centroids(workdir, centroids[::-1].copy())  # new vocabulary: every id changes
    original = tokenizer_module.plot_histogram

    def fail_on_validation(stats, title, path):
        if title.startswith("validation"):
            raise KeyboardInterrupt
        original(stats, title, path)

    monkeypatch.setattr(tokenizer_module, "plot_histogram", fail_on_validation)
    with pytest.raises(KeyboardInterrupt):
        SpecTokenizer(config_for(workdir)).run()
    assert {split: layout.tokens(split).read_bytes() for split in before} == before
    assert sorted(p.name for p in layout.tokenized.iterdir()) == ["train", "validation"]
    monkeypatch.setattr(tokenizer_module, "plot_histogram", original)
    SpecTokenizer(config_for(workdir)).run()
    assert layout.tokens("train").read_bytes() != before["train"]
