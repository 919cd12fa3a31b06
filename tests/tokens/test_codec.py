"""Neural-codec tokens (cluster.quantizer = codec) with a tiny random codec of each class, saved in the test:
codes equal the codec's own encode, clip by clip and in batches, the vocabulary's codebooks are the codec's
vectors, the vocabulary round-trips, and a missing, foreign or changed folder is refused in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_codecs import CODEBOOKS, CODECS, FRAMES, direct_codes, direct_latent, save_tiny_codec

from audiotokens.config import load_config
from audiotokens.data.audio import load_mono
from audiotokens.errors import UserError
from audiotokens.features.spectrogram import frame_width, frames_of, params_from_dict, params_to_dict
from audiotokens.tokens.cluster import ClusterCreator
from audiotokens.tokens.codec import CodecRecord, codec_record, encode_clips
from audiotokens.tokens.quantizer_kinds import quantizer_kind
from audiotokens.tokens.quantizers import Quantizer, fit_quantizer
from audiotokens.tokens.vocabulary import load_vocabulary, save_vocabulary

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=CODECS)
def codec(request, tmp_path_factory):
    """(kind, the model, its folder)."""
    folder = tmp_path_factory.mktemp(f"codec_{request.param}") / "model"
    return request.param, save_tiny_codec(request.param, folder), folder


def clips_of(kind: str, lengths, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    hop = FRAMES[kind][1]
    return [(0.3 * rng.standard_normal((rows, hop))).astype(np.float32) for rows in lengths]


def codec_quantizer(folder, codebooks: int = 0) -> Quantizer:
    kind = quantizer_kind("codec", codec_model=str(folder), codec_codebooks=codebooks)
    return fit_quantizer(kind, None, n_clusters=2, niter=1, seed=0)[0]


def test_the_record_reads_rate_hop_and_codebooks_from_the_folder(codec):
    kind, _, folder = codec
    record = codec_record(str(folder), 0)
    assert (record.model_type, record.sample_rate, record.hop_length) == (kind, *FRAMES[kind])
    assert record.codebooks == CODEBOOKS[kind] and record.model == str(folder.absolute())
    assert CodecRecord.from_dict(json.loads(json.dumps(record.as_dict()))) == record


@pytest.mark.parametrize("codebooks", [0, 2])
def test_codes_are_the_codecs_own_whether_clips_are_batched_or_not(codec, codebooks):
    kind, model, folder = codec
    record = codec_record(str(folder), codebooks)
    clips = clips_of(kind, [6, 6, 9, 6, 1])  # three of one length share a forward pass; the others go alone
    batched = encode_clips(record, clips)
    singles = [encode_clips(record, [clip])[0] for clip in clips]
    for clip, ids, single in zip(clips, batched, singles):
        expected = direct_codes(kind, model, clip.reshape(-1), codebooks or CODEBOOKS[kind])
        assert ids.dtype == np.int64 and ids.shape == (len(clip), codebooks or CODEBOOKS[kind])
        np.testing.assert_array_equal(ids, expected)
        np.testing.assert_array_equal(single, expected)


def test_fewer_codebooks_are_the_first_ones(codec):
    kind, _, folder = codec
    clip = clips_of(kind, [8], seed=1)
    every = encode_clips(codec_record(str(folder), 0), clip)[0]
    first = encode_clips(codec_record(str(folder), 2), clip)[0]
    np.testing.assert_array_equal(first, every[:, :2])


def test_decoded_ids_are_the_codecs_quantised_latent(codec):
    kind, model, folder = codec
    quantizer = codec_quantizer(folder)
    clip = clips_of(kind, [7], seed=2)[0]
    ids = quantizer.encode(clip)
    assert quantizer.kind == "codec" and quantizer.combine == "sum" and quantizer.n_mels == FRAMES[kind][1]
    np.testing.assert_allclose(quantizer.decode(ids), direct_latent(kind, model, ids), rtol=1e-5, atol=1e-5)
    # codebook c's row i is the codec's vector of id i in codebook c: the latent moves by book[i] - book[0]
    # when codebook c's id goes from 0 to i, and the all-zero ids decode to the sum of every book's row 0
    zeros = np.zeros((1, quantizer.n_codebooks), dtype=np.int64)
    base = direct_latent(kind, model, zeros)[0]
    np.testing.assert_allclose(sum(book[0] for book in quantizer.codebooks), base, rtol=1e-5, atol=1e-5)
    for c, book in enumerate(quantizer.codebooks):
        ids = np.zeros((len(book), quantizer.n_codebooks), dtype=np.int64)
        ids[:, c] = np.arange(len(book))
        np.testing.assert_allclose(direct_latent(kind, model, ids) - base, book - book[0], rtol=1e-5, atol=1e-5)


def test_the_vocabulary_records_the_codec_and_round_trips(codec, tmp_path):
    kind, _, folder = codec
    quantizer = codec_quantizer(folder)
    spec = {"features": "codec", "sample_rate": FRAMES[kind][0], "hop_length": FRAMES[kind][1], "max_duration": 0.0}
    save_vocabulary(tmp_path / "vocabulary", quantizer, spec)
    meta = json.loads((tmp_path / "vocabulary" / "vocabulary.json").read_text())
    assert meta["quantizer"]["codec"]["model_type"] == kind and len(meta["quantizer"]["codec"]["digest"]) == 16
    loaded = load_vocabulary(tmp_path / "vocabulary").quantizer
    assert loaded.digest() == quantizer.digest() and loaded.codec == quantizer.codec
    clip = clips_of(kind, [5], seed=3)[0]
    np.testing.assert_array_equal(loaded.encode(clip), quantizer.encode(clip))
    assert quantizer.bits_per_frame == CODEBOOKS[kind] * np.log2(quantizer.codebook_sizes[0])


def test_a_changed_folder_is_refused_when_encoding(tmp_path):
    folder = tmp_path / "model"
    save_tiny_codec("dac", folder)
    quantizer = codec_quantizer(folder)
    save_tiny_codec("dac", folder, seed=1)  # another model in the same folder
    with pytest.raises(UserError, match=r"'cluster.codec_model' .* now holds another model") as caught:
        quantizer.encode(clips_of("dac", [4])[0])
    assert "\n" not in str(caught.value) and "re-run `audiotokens cluster`" in str(caught.value)


def test_a_missing_or_foreign_folder_or_an_unoffered_count_is_one_line(tmp_path):
    for folder, wording in ((tmp_path / "absent", "not a local Hugging Face model folder"),
                            (tmp_path / "bert", "holds a 'bert' model, not a codec")):
        if folder.name == "bert":
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        with pytest.raises(UserError, match=wording) as caught:
            codec_record(str(folder), 0)
        assert "cluster.codec_model" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="needs 'cluster.codec_model'"):
        codec_record("", 0)
    save_tiny_codec("encodec", tmp_path / "encodec")
    with pytest.raises(UserError, match=r"cluster.codec_codebooks' = 4: .* gives 1, 2, 3 codebooks"):
        codec_record(str(tmp_path / "encodec"), 4)


def test_codec_rows_are_the_clips_samples_at_the_codecs_rate(tmp_path):
    path = tmp_path / "clip.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.2 * rng.standard_normal(16000 + 77)).astype(np.float32), 16000)
    config = load_config(overrides=["spectrogram.features=codec", "spectrogram.sample_rate=8000",
                                    "spectrogram.hop_length=1920", "spectrogram.n_fft=1024"])
    params = config.spectrogram
    rows = frames_of(str(path), params)
    samples = load_mono(str(path), 8000)
    assert rows.shape == (len(samples) // 1920, 1920) and frame_width(params) == 1920
    np.testing.assert_array_equal(rows.reshape(-1), samples[:rows.size])
    spec = params_to_dict(params)
    assert spec == {"features": "codec", "sample_rate": 8000, "hop_length": 1920, "max_duration": 0.0}
    assert params_to_dict(params_from_dict(spec)) == spec


def test_the_cluster_stage_names_the_frame_settings_a_codec_needs(tmp_path):
    save_tiny_codec("dac", tmp_path / "model")
    config = load_config(overrides=["cluster.quantizer=codec", f"cluster.codec_model={tmp_path / 'model'}"],
                         workdir=tmp_path)
    with pytest.raises(UserError, match="set spectrogram.features = codec, spectrogram.sample_rate = 8000, "
                                        "spectrogram.hop_length = 32") as caught:
        ClusterCreator.check_settings(config)
    assert "\n" not in str(caught.value)
    ClusterCreator.check_settings(load_config(overrides=[
        "cluster.quantizer=codec", f"cluster.codec_model={tmp_path / 'model'}", "spectrogram.features=codec",
        "spectrogram.sample_rate=8000", "spectrogram.hop_length=32"], workdir=tmp_path))


def test_the_standin_models_have_the_real_models_rates(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "standin_models.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, rate in (("dac16", 16000), ("encodec24", 24000)):
        record = codec_record(str(tmp_path / name), 8)
        assert (record.sample_rate, record.hop_length, record.codebooks) == (rate, 320, 8)
    assert json.loads((tmp_path / "wav2vec2" / "config.json").read_text())["model_type"] == "wav2vec2"
