"""Sharded stages: any N shards (any executor) assemble to the unsharded store byte for byte; locks; resume."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from spectrogram_workdirs import clip, count_processed, distinct_clips, interrupt_after, write_split
from stores import write_store, write_vocabulary

from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.features.spectrogram import SpectrogramProcessor
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.lock import workdir_lock
from audiotokens.pipeline.shards import Shard, dask_client, local_cluster, shard_lock
from audiotokens.tokens.tokenize import SpecTokenizer

STORE_FILES = ("frames", "frames_index", "frame_spec", "frames_report")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight distinct clips and one bad one, and the store an unsharded run writes from them."""
    root = tmp_path_factory.mktemp("shards")
    clips = distinct_clips(root / "audio", 8, seconds=0.5)
    (root / "audio" / "bad.wav").write_text("not audio")
    clips.insert(4, clip("bad", root / "audio" / "bad.wav"))
    reference = root / "reference"
    write_split(reference, {"train": clips[2:], "validation": clips[:2]})
    SpectrogramProcessor(config(reference), part_clips=3).run()
    return clips, reference


def config(workdir, *overrides):
    return load_config(None, ["spectrogram.workers=1", *overrides], workdir)


def assert_same_store(workdir, reference):
    for name in STORE_FILES:
        assert getattr(Layout(workdir), name).read_bytes() == getattr(Layout(reference), name).read_bytes(), name


def test_shard_ranges_cover_the_catalogue_once_in_order():
    for n_clips in (0, 1, 7, 100):
        for count in (1, 2, 3, 8):
            ranges = [Shard(index=k, count=count).clip_range(n_clips) for k in range(count)]
            assert [i for r in ranges for i in r] == list(range(n_clips))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_is_a_user_error(text):
    with pytest.raises(UserError, match="--shard takes K/N"):
        Shard.parse(text)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_any_shard_count_assembles_the_unsharded_store(tmp_path, corpus, count):
    clips, reference = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    for k in reversed(range(count)):  # the order shards finish in does not matter
        SpectrogramProcessor(config(tmp_path), part_clips=2, shard=Shard(index=k, count=count)).run()
        assert not Layout(tmp_path).frames.exists()  # a shard never assembles
    SpectrogramProcessor(config(tmp_path), assemble=True).run()
    assert_same_store(tmp_path, reference)
    assert not (Layout(tmp_path).frames_dir / "shards").exists()  # parts removed once assembled


def test_a_killed_shard_leaves_the_others_and_a_rerun_redoes_only_it(tmp_path, monkeypatch, corpus):
    clips, reference = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    for k in (0, 2):
        SpectrogramProcessor(config(tmp_path), part_clips=1, shard=Shard(index=k, count=3)).run()
    interrupt_after(monkeypatch, parts=1)  # shard 1 (clips 3, 4, 5) is stopped after its first clip
    with pytest.raises(KeyboardInterrupt):
        SpectrogramProcessor(config(tmp_path), part_clips=1, shard=Shard(index=1, count=3)).run()
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"1 of 3 shards not finished \(K = 1\).*--shard K/3"):
        SpectrogramProcessor(config(tmp_path), assemble=True).run()
    processed = count_processed(monkeypatch)
    SpectrogramProcessor(config(tmp_path), part_clips=1).run()  # no --shard: finishes the shards on disk
    assert sorted(processed) == [4, 5]
    assert_same_store(tmp_path, reference)


def test_shards_on_disk_under_another_key_are_recomputed(tmp_path, monkeypatch, corpus):
    clips, reference = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    SpectrogramProcessor(config(tmp_path, "spectrogram.n_mels=32"), shard=Shard(index=0, count=2)).run()
    processed = count_processed(monkeypatch)
    SpectrogramProcessor(config(tmp_path), part_clips=3).run()
    assert sorted(processed) == list(range(len(clips)))
    assert_same_store(tmp_path, reference)


def test_assembling_shards_made_with_other_settings_names_them_stale(tmp_path, corpus):
    clips, _ = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    for k in range(2):
        SpectrogramProcessor(config(tmp_path, "spectrogram.n_mels=32"), shard=Shard(index=k, count=2)).run()
    with pytest.raises(UserError, match=r"spectrogram: shards 0/2, 1/2 on disk were made with other settings") \
            as error:
        SpectrogramProcessor(config(tmp_path), assemble=True).run()
    assert "not finished" not in str(error.value) and "run `audiotokens spectrogram` without --assemble" in \
        str(error.value)
    SpectrogramProcessor(config(tmp_path, "spectrogram.n_mels=32"), assemble=True).run()  # their own settings


def test_a_stale_shard_among_current_ones_is_named_stale(tmp_path, corpus):
    clips, reference = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    SpectrogramProcessor(config(tmp_path), shard=Shard(index=0, count=2)).run()
    SpectrogramProcessor(config(tmp_path, "spectrogram.n_mels=32"), shard=Shard(index=1, count=2)).run()
    with pytest.raises(UserError, match=r"shards 1/2 on disk were made with other settings"):
        SpectrogramProcessor(config(tmp_path), assemble=True).run()
    SpectrogramProcessor(config(tmp_path)).run()  # recomputes the stale shard, keeps the current one
    assert_same_store(tmp_path, reference)


def test_a_shard_killed_before_its_first_part_is_unfinished_not_stale(tmp_path, corpus):
    clips, _ = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    SpectrogramProcessor(config(tmp_path), shard=Shard(index=0, count=2)).run()
    (Layout(tmp_path).frames_dir / "shards" / Shard(index=1, count=2).name).mkdir()  # no part, no key yet
    with pytest.raises(UserError, match=r"1 of 2 shards not finished \(K = 1\)") as error:
        SpectrogramProcessor(config(tmp_path), assemble=True).run()
    assert "stale" not in str(error.value)


def _try_shard_lock(workdir, shard: str) -> subprocess.CompletedProcess:
    code = ("import sys; from audiotokens.pipeline.shards import Shard, dask_client, local_cluster, shard_lock\n"
            f"with shard_lock({str(workdir)!r}, 'spectrogram', Shard.parse({shard!r})): print('held')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_shard_processes_lock_their_own_shard_and_share_the_workdir(tmp_path):
    with shard_lock(tmp_path, "spectrogram", Shard(index=0, count=3)), \
            shard_lock(tmp_path, "spectrogram", Shard(index=1, count=3)):
        other = _try_shard_lock(tmp_path, "2/3")  # a third shard process runs beside the two
        assert other.returncode == 0 and "held" in other.stdout, other.stderr
        same = _try_shard_lock(tmp_path, "1/3")
        assert same.returncode != 0 and "shard 1/3 of spectrogram" in same.stderr and "being computed" in same.stderr
        with pytest.raises(UserError, match="is in use"), workdir_lock(tmp_path, "spectrogram"):
            pass  # nothing assembles while shards run
    with workdir_lock(tmp_path, "spectrogram"):  # all released
        with_workdir = _try_shard_lock(tmp_path, "2/3")
    assert with_workdir.returncode != 0 and "in use by audiotokens spectrogram" in with_workdir.stderr


def test_shard_command_writes_no_record_and_assemble_writes_it(tmp_path, corpus):
    from click.testing import CliRunner

    from audiotokens.cli import main
    from audiotokens.pipeline.provenance import write_record

    clips, reference = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    write_record(Layout(tmp_path), "split", config(tmp_path))  # as if `audiotokens split` wrote the catalogue
    runner = CliRunner()
    base = ["--workdir", str(tmp_path), "--set", "spectrogram.workers=1"]
    expected = ["spectrogram shards: 1 of 2 finished, not yet K = 0",
                "spectrogram shards: all 2 finished, not assembled; run `audiotokens spectrogram --assemble`"]
    for k, line in zip((1, 0), expected):
        result = runner.invoke(main, ["spectrogram", *base, "--shard", f"{k}/2"])
        assert result.exit_code == 0, result.output
        assert line in runner.invoke(main, ["status", *base]).output
    assert not Layout(tmp_path).record("spectrogram").exists()
    result = runner.invoke(main, ["spectrogram", *base, "--assemble"])
    assert result.exit_code == 0, result.output
    assert "shards" not in runner.invoke(main, ["status", *base]).output
    assert Layout(tmp_path).record("spectrogram").is_file()
    assert_same_store(tmp_path, reference)
    result = runner.invoke(main, ["spectrogram", *base, "--shard", "2/2"])
    assert result.exit_code == 2 and "--shard takes K/N" in result.output


@pytest.mark.slow  # 11-27 s on the shared 2-core machine
def test_dask_local_cluster_equals_the_local_run(tmp_path, corpus):
    pytest.importorskip("dask.distributed")
    clips, reference = corpus
    write_split(tmp_path, {"train": clips[2:], "validation": clips[:2]})
    with local_cluster(2) as cluster:
        started = time.perf_counter()
        SpectrogramProcessor(config(tmp_path), part_clips=3, executor="dask", scheduler=cluster.scheduler_address,
                             shards=3).run()
        assert time.perf_counter() - started < 120
    assert_same_store(tmp_path, reference)
    assert np.load(Layout(tmp_path).frames).shape[0] > 0


# ---------------------------------------------------------------- tokenize


TOKEN_FILES = ("tokens", "tokens_index", "token_stats")


@pytest.fixture(scope="module")
def token_corpus(tmp_path_factory):
    """A frames store of 40 clips, a vocabulary, and the token store an unsharded run writes."""
    rng = np.random.default_rng(5)
    centroids = rng.random((30, 8)).astype(np.float32) * 10
    stores = {}
    for split, n_clips in (("train", 28), ("validation", 12)):
        lengths = rng.integers(1, 30, n_clips)
        owners = rng.integers(0, len(centroids), n_clips)
        stores[split] = (np.concatenate([centroids[o] + 0.01 * rng.standard_normal((n, 8))
                                         for o, n in zip(owners, lengths)]).astype(np.float32), lengths)
    reference = tmp_path_factory.mktemp("tokens") / "reference"
    token_workdir(reference, stores, centroids)
    SpecTokenizer(config(reference, "tokenize.batch_frames=50")).run()
    return stores, centroids, reference


def token_workdir(workdir, stores, centroids):
    write_store(workdir, stores, classes=("x", "y", "z"))
    write_vocabulary(workdir, centroids)


def assert_same_tokens(workdir, reference):
    for name in TOKEN_FILES:
        assert getattr(Layout(workdir), name).read_bytes() == getattr(Layout(reference), name).read_bytes(), name


@pytest.mark.parametrize("count", [1, 2, 3])
def test_any_token_shard_count_assembles_the_unsharded_store(tmp_path, token_corpus, count):
    stores, centroids, reference = token_corpus
    token_workdir(tmp_path, stores, centroids)
    for k in range(count):
        SpecTokenizer(config(tmp_path, "tokenize.batch_frames=7"), shard=Shard(index=k, count=count)).run()
        assert not Layout(tmp_path).tokens.exists()
    SpecTokenizer(config(tmp_path), assemble=True).run()
    assert_same_tokens(tmp_path, reference)
    assert not (Layout(tmp_path).tokenized / "shards").exists()


def test_a_missing_token_shard_is_the_only_one_computed_again(tmp_path, monkeypatch, token_corpus):
    stores, centroids, reference = token_corpus
    token_workdir(tmp_path, stores, centroids)
    for k in (0, 2):
        SpecTokenizer(config(tmp_path), shard=Shard(index=k, count=3)).run()
    assert SpecTokenizer(config(tmp_path)).pending_shards() == (3, [Shard(index=1, count=3)])
    with pytest.raises(UserError, match=r"tokenize: 1 of 3 shards not finished \(K = 1\)"):
        SpecTokenizer(config(tmp_path), assemble=True).run()
    computed = []
    original = SpecTokenizer._compute_shard

    def spy(self, frames, store, quantizer, key, shard):
        computed.append(shard)
        return original(self, frames, store, quantizer, key, shard)

    monkeypatch.setattr(SpecTokenizer, "_compute_shard", spy)
    SpecTokenizer(config(tmp_path)).run()
    assert computed == [Shard(index=1, count=3)]
    assert_same_tokens(tmp_path, reference)
    assert SpecTokenizer(config(tmp_path)).pending_shards() is None


def test_token_shards_of_another_vocabulary_are_not_assembled(tmp_path, token_corpus):
    stores, centroids, reference = token_corpus
    token_workdir(tmp_path, stores, centroids)
    write_vocabulary(tmp_path, centroids[::-1].copy())
    for k in range(2):
        SpecTokenizer(config(tmp_path), shard=Shard(index=k, count=2)).run()
    write_vocabulary(tmp_path, centroids)  # the vocabulary changed after the shards were written
    with pytest.raises(UserError, match=r"tokenize: shards 0/2, 1/2 on disk were made with other settings"):
        SpecTokenizer(config(tmp_path), assemble=True, shards=2).run()
    with pytest.raises(UserError, match=r"tokenize: shards 0/2, 1/2 on disk were made with other settings"):
        SpecTokenizer(config(tmp_path), assemble=True).run()  # N taken from the disk: the same stale shards
    SpecTokenizer(config(tmp_path)).run()
    assert_same_tokens(tmp_path, reference)


def test_dask_local_cluster_tokenizes_like_the_local_run(tmp_path, token_corpus):
    pytest.importorskip("dask.distributed")
    stores, centroids, reference = token_corpus
    token_workdir(tmp_path, stores, centroids)
    with local_cluster(2) as cluster:
        SpecTokenizer(config(tmp_path), executor="dask", scheduler=cluster.scheduler_address).run()
    assert_same_tokens(tmp_path, reference)


def test_dask_executor_without_dask_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # what an install without the extra sees
    with pytest.raises(UserError, match=r"needs dask\.distributed: pip install 'audiotokens\[dask\]'"), \
            dask_client(None):
        pass
