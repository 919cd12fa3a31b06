"""Token stores: exact nearest-centroid ids, every clip keeps its own tokens, refusals, statistics."""
import json

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from stores import frame_spec, write_frames, write_store, write_vocabulary

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.pipeline.files import save_npy
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import ClipIndex, open_split, open_store
from audiotokens.tokens import tokenize as tokenizer_module
from audiotokens.tokens.cluster import ClusterCreator
from audiotokens.tokens.histograms import token_histograms
from audiotokens.tokens.kmeans import assign_tokens, token_statistics
from audiotokens.tokens.tokenize import SpecTokenizer
from audiotokens.tokens.vocabulary import load_vocabulary


def config_for(workdir, *overrides):
    return load_config(None, list(overrides), workdir)


def tokens_of(workdir, split):
    """The whole token store and the split's view of it."""
    return open_split(Layout(workdir), "tokens", split)


def split_tokens(workdir, split) -> np.ndarray:
    """The split's tokens, clip after clip in split order."""
    tokens, view = tokens_of(workdir, split)
    return np.concatenate([tokens[o:o + n] for o, n in zip(view.offsets, view.lengths)])


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
    corpus, stores = {}, {}
    for split, n_clips in (("train", 60), ("validation", 25), ("test", 10)):
        lengths = rng.integers(1, 40, n_clips)
        owners = rng.integers(0, k, n_clips)
        frames = np.concatenate([centroids[o] + 0.01 * rng.standard_normal((n, dim))
                                 for o, n in zip(owners, lengths)]).astype(np.float32)
        stores[split] = (frames, lengths)
        corpus[split] = (frames, owners)
    views = write_store(tmp_path, stores, classes=("x", "y", "z"))
    corpus = {split: (frames, views[split], owners) for split, (frames, owners) in corpus.items()}
    write_vocabulary(tmp_path, centroids)
    return tmp_path, centroids, corpus


def test_every_clip_keeps_its_own_tokens(clip_corpus, tmp_path_factory):
    workdir, centroids, corpus = clip_corpus
    SpecTokenizer(config_for(workdir, "tokenize.batch_frames=7")).run()  # batches cut across clips
    frames_store = np.load(Layout(workdir).frames)
    rng = np.random.default_rng(3)
    for split, (frames, frames_view, owners) in corpus.items():
        tokens, view = tokens_of(workdir, split)
        assert view.ids == frames_view.ids and view.labels == frames_view.labels
        np.testing.assert_array_equal(view.offsets, frames_view.offsets)  # one token per frame: same rows
        np.testing.assert_array_equal(view.lengths, frames_view.lengths)
        for clip in rng.permutation(len(view)):  # each clip on its own, in shuffled order
            clip_id = frames_view.ids[clip]
            at = view.ids.index(clip_id)
            start, length = view.offsets[at], view.lengths[at]
            own = frames_store[frames_view.offsets[clip]:frames_view.offsets[clip] + frames_view.lengths[clip]]
            expected = assign_tokens(own, centroids, spherical=False)
            np.testing.assert_array_equal(tokens[start:start + length, 0], expected, err_msg=clip_id)
            assert (expected == owners[clip]).all()
    # another batch size gives the very same store
    other = tmp_path_factory.mktemp("other")
    write_store(other, {split: (frames, view.lengths) for split, (frames, view, _) in corpus.items()},
                classes=("x", "y", "z"))
    write_vocabulary(other, centroids)
    SpecTokenizer(config_for(other, "tokenize.batch_frames=1000")).run()
    assert Layout(workdir).tokens.read_bytes() == Layout(other).tokens.read_bytes()


def test_tokens_round_trip_as_int16(clip_corpus):
    workdir, centroids, corpus = clip_corpus
    SpecTokenizer(config_for(workdir)).run()
    stored = np.load(Layout(workdir).tokens)
    every = np.concatenate([frames for frames, _, _ in corpus.values()])  # the store's row order
    assert stored.dtype == np.int16 and stored.shape == (len(every), 1)
    np.testing.assert_array_equal(stored[:, 0].astype(np.int64), assign_tokens(every, centroids, False))
    for split, (frames, _, _) in corpus.items():
        np.testing.assert_array_equal(split_tokens(workdir, split)[:, 0], assign_tokens(frames, centroids, False))


def test_vocabularies_of_32768_or_more_use_int32(tmp_path):
    rng = np.random.default_rng(4)
    k = 2**15 + 200
    centroids = rng.random((k, 4)).astype(np.float32)
    order = np.concatenate([rng.permutation(k)[:4800], np.arange(k - 200, k)])
    frames = centroids[order]  # each frame sits exactly on a centroid, ids well above 32767 included
    write_store(tmp_path, {split: (frames, [2500, 2500]) for split in ("train", "validation")})
    write_vocabulary(tmp_path, centroids)
    SpecTokenizer(config_for(tmp_path)).run()
    stored = np.load(Layout(tmp_path).tokens)
    assert stored.dtype == np.int32 and stored.max() > 32767
    np.testing.assert_array_equal(stored[:, 0], np.concatenate([order, order]))


def test_spherical_flag_comes_from_the_vocabulary(tmp_path):
    rng = np.random.default_rng(5)
    stores = {split: ((rng.random((1500, 6)) * rng.uniform(0.1, 10, (1500, 1))).astype(np.float32), [500, 1000])
              for split in ("train", "validation")}
    write_store(tmp_path, stores)
    ClusterCreator(config_for(tmp_path, "cluster.quantizer=frame", "cluster.n_clusters=8", "cluster.spherical=true")).run()
    # the config now says otherwise: the vocabulary, not the config, decides how tokens are searched
    SpecTokenizer(config_for(tmp_path, "cluster.spherical=false")).run()
    vocabulary = load_vocabulary(Layout(tmp_path).vocabulary)
    assert vocabulary.quantizer.spherical
    centroids = vocabulary.quantizer.codebooks[0]
    frames = stores["validation"][0]
    unit = frames / np.linalg.norm(frames, axis=1, keepdims=True)
    similarity = unit.astype(np.float64) @ centroids.T.astype(np.float64)
    top2 = np.sort(similarity, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(split_tokens(tmp_path, "validation")[clear, 0], similarity.argmax(1)[clear])


def test_dimension_mismatch_names_both_dimensions(clip_corpus):
    workdir = clip_corpus[0]
    # fitted on the same frame spec, but on vectors of 12 values: the frames have 10
    write_vocabulary(workdir, np.random.default_rng(6).random((50, 12)), spec=frame_spec(10))
    with pytest.raises(UserError, match=r"vectors of dimension 12 but .*frames\.npy holds frames of shape \(10,\)"):
        SpecTokenizer(config_for(workdir)).run()


def test_a_vocabulary_fitted_on_frames_of_another_spec_is_refused(clip_corpus):
    workdir, centroids, corpus = clip_corpus
    layout = Layout(workdir)
    # the frames are re-made with another hop length: the vocabulary no longer describes them
    write_vocabulary(workdir, centroids, spec=frame_spec(10, hop_length=256))
    with pytest.raises(UserError, match="another frame spec.*re-run `audiotokens cluster`"):
        SpecTokenizer(config_for(workdir)).run()
    assert not layout.tokens.exists()
    # storage precision does not change what a frame means: float16 frames of the same spec are accepted
    write_vocabulary(workdir, centroids, spec=frame_spec(10))
    clips = [(clip_id, np.load(layout.frames)[o:o + n].astype(np.float16))
             for clip_id, o, n in zip(*_store_rows(layout))]
    write_frames(workdir, clips, frame_spec(10))
    SpecTokenizer(config_for(workdir)).run()
    frames = corpus["validation"][0]
    np.testing.assert_array_equal(split_tokens(workdir, "validation")[:, 0],
                                  assign_tokens(frames.astype(np.float16).astype(np.float32), centroids, False))


def _store_rows(layout):
    index = json.loads(layout.frames_index.read_text())
    return index["ids"], index["offsets"], index["lengths"]


def test_tokens_record_the_vocabulary_and_frame_spec_they_were_made_with(clip_corpus):
    workdir, centroids, _ = clip_corpus
    layout = Layout(workdir)
    SpecTokenizer(config_for(workdir)).run()
    _, index = open_store(layout.tokens, layout.tokens_index)
    vocabulary = load_vocabulary(layout.vocabulary)
    assert index.extra["vocabulary_digest"] == vocabulary.digest
    assert index.extra["frame_spec_digest"] == vocabulary.frame_spec_digest
    assert index.extra["codebook_sizes"] == [len(centroids)] and (index.extra["stack"], index.extra["stride"]) == (1, 1)
    assert index.ids == _store_rows(layout)[0]  # every clip of the store, whatever its split
    # another vocabulary gives another digest, so a model trained on the old tokens can tell
    write_vocabulary(workdir, centroids[::-1].copy())
    assert load_vocabulary(layout.vocabulary).digest != index.extra["vocabulary_digest"]


def test_missing_or_damaged_vocabulary_is_a_user_error(clip_corpus):
    workdir, centroids, _ = clip_corpus
    layout = Layout(workdir)
    with np.load(layout.vocabulary / "codebooks.npz") as stored:
        arrays = dict(stored)
    arrays["codebook_0"] = centroids[:10]  # codebooks that vocabulary.json does not describe
    np.savez(layout.vocabulary / "codebooks.npz", **arrays)
    with pytest.raises(UserError, match="re-run `audiotokens cluster`"):
        SpecTokenizer(config_for(workdir)).run()
    write_vocabulary(workdir, centroids)
    arrays = dict(np.load(layout.vocabulary / "codebooks.npz"))
    arrays["codebook_0"] = arrays["codebook_0"] + 1.0  # same shape, other values: the digest tells
    np.savez(layout.vocabulary / "codebooks.npz", **arrays)
    with pytest.raises(UserError, match="does not match"):
        SpecTokenizer(config_for(workdir)).run()
    for path in layout.vocabulary.iterdir():
        path.unlink()
    layout.vocabulary.rmdir()
    with pytest.raises(UserError, match="audiotokens cluster"):
        SpecTokenizer(config_for(workdir)).run()


def test_non_finite_frames_are_refused(clip_corpus):
    workdir, _, corpus = clip_corpus
    layout = Layout(workdir)
    frames = np.load(layout.frames)
    row = int(corpus["validation"][1].offsets[2]) + 1  # a frame of the third validation clip
    frames[row, 3] = np.inf
    save_npy(layout.frames, frames)
    clip_id = corpus["validation"][1].ids[2]
    with pytest.raises(UserError, match=rf"frames\.npy: a frame of clip '{clip_id}'.*NaN or inf"):
        SpecTokenizer(config_for(workdir, "tokenize.batch_frames=1")).run()
    assert not layout.tokens.exists()


def test_statistics_and_histogram(clip_corpus):
    workdir, centroids, corpus = clip_corpus
    SpecTokenizer(config_for(workdir)).run()
    everything = json.loads(Layout(workdir).token_stats.read_text())
    assert everything["codebook_sizes"] == [len(centroids)] and list(everything["splits"]) == list(corpus)
    for split, (frames, view, owners) in corpus.items():
        entry = everything["splits"][split]
        assert entry["clips"] == len(view) and entry["tokens"] == len(frames)
        stats, = entry["codebooks"]
        counts = np.bincount(assign_tokens(frames, centroids, False), minlength=len(centroids))
        assert stats["counts"] == counts.tolist() and stats["frames"] == len(frames)
        assert stats["entropy_bits"] == pytest.approx(scipy_entropy(counts, base=2))
        assert stats["perplexity"] == pytest.approx(2 ** scipy_entropy(counts, base=2))
        assert stats["top10_share"] == pytest.approx(np.sort(counts)[-10:].sum() / len(frames))
        assert stats["unused_ids"] == [t for t in range(len(centroids)) if t not in set(owners)]
        assert stats["unused_tokens"] == len(stats["unused_ids"]) > 0
    assert token_histograms(Layout(workdir)) == {split: Layout(workdir).token_histogram(split) for split in corpus}
    for split in corpus:
        assert Layout(workdir).token_histogram(split).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histograms_are_drawn_when_shown_and_removed_with_the_statistics_they_show(clip_corpus, monkeypatch):
    """The stage draws no histogram (matplotlib would cost it a second); one drawn later is removed when the
    stage replaces the statistics, so a histogram on disk always shows the current ones."""
    workdir, centroids, corpus = clip_corpus
    layout = Layout(workdir)
    SpecTokenizer(config_for(workdir)).run()
    assert list(layout.tokenized.glob("*.png")) == []
    drawn = token_histograms(layout)
    assert sorted(drawn) == sorted(corpus) and all(path.is_file() for path in drawn.values())
    write_vocabulary(workdir, centroids[::-1].copy())
    SpecTokenizer(config_for(workdir)).run()
    assert list(layout.tokenized.glob("*.png")) == []
    layout.token_stats.write_text("{\"splits\": {\"train\": {}}}")  # damaged: nothing drawn, no traceback
    assert token_histograms(layout) == {}


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_token_counts_of_a_view_equal_counting_clip_by_clip(monkeypatch, batch):
    """The statistics count a split's clips in batches of store rows that cut clips anywhere."""
    rng = np.random.default_rng(batch)
    lengths = rng.integers(0, 9, 60)
    index = ClipIndex.from_lengths([f"c{i}" for i in range(60)], lengths, [[] for _ in lengths], [], "")
    tokens = rng.integers(0, 5, (index.total_frames, 2)).astype(np.int16)
    chosen = [i for i in range(60) if rng.random() < 0.5]
    view = ClipIndex.from_lengths([f"c{i}" for i in chosen], lengths[chosen], [[] for _ in chosen], [], "")
    monkeypatch.setattr(tokenizer_module, "DEFAULT_BATCH", batch)
    counts = tokenizer_module.token_counts(tokens, index, view, [5, 5])
    rows = np.concatenate([tokens[index.offsets[i]:index.offsets[i] + lengths[i]] for i in chosen])
    for c in range(2):
        assert counts[c].tolist() == np.bincount(rows[:, c], minlength=5).tolist()


def test_statistics_of_an_empty_split_are_finite():
    stats = token_statistics(np.zeros(5, dtype=np.int64))
    assert stats["entropy_bits"] == 0.0 and stats["perplexity"] == 1.0 and stats["top10_share"] == 0.0
    assert stats["unused_tokens"] == 5


def test_an_interrupted_run_leaves_the_previous_tokens(clip_corpus, monkeypatch):
    workdir, centroids, _ = clip_corpus
    layout = Layout(workdir)
    SpecTokenizer(config_for(workdir)).run()
    token_histograms(layout)
    names = sorted(p.name for p in layout.tokenized.iterdir())
    before = {name: (layout.tokenized / name).read_bytes() for name in names}
    write_vocabulary(workdir, centroids[::-1].copy())  # new vocabulary: every id changes

    def interrupt(layout):  # the new store is complete in its staging folder, nothing swapped in yet
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer_module, "remove_histograms", interrupt)
    with pytest.raises(KeyboardInterrupt):
        SpecTokenizer(config_for(workdir)).run()
    assert {name: (layout.tokenized / name).read_bytes() for name in names} == before  # every file untouched
    assert sorted(p.name for p in layout.tokenized.iterdir()) == names  # and nothing left beside them
    assert {"tokens.npy", "index.json", "stats.json", "histogram_train.png"} <= set(names)
    monkeypatch.undo()
    SpecTokenizer(config_for(workdir)).run()
    assert layout.tokens.read_bytes() != before["tokens.npy"]
