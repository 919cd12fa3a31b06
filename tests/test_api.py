"""The public Python API agrees with the CLI: predict scores, stored tokens, the vocabulary, run's errors."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from projects import SAMPLE_RATE, TONES, copy_project, project_config, trained_project
from stores import FRAME_DIM, frame_spec

import audiotokens
from audiotokens.cli import main
from audiotokens.evaluation.predict import predict_cli
from audiotokens.model.bundle import save_bundle
from audiotokens.model.parts import AudioClassifier, ModelSpec
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.provenance import stage_states
from audiotokens.pipeline.stores import open_store
from audiotokens.tokens.quantizers import Quantizer
from audiotokens.tokens.vocabulary import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs/python-api.md"  # its "## Example" block runs below
OTHER_RATE = 44100


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "multilabel")


@pytest.fixture(scope="module")
def model(project):
    return audiotokens.load(project / "work/output/model", device="cpu")


def cli_json(paths, project, top_k=3, threshold=None) -> list[dict]:
    out = io.StringIO()
    assert predict_cli([str(p) for p in paths], None, str(project / "work"), top_k, threshold, "json", out=out) == 0
    return json.loads(out.getvalue())


def as_dicts(rows: list[dict]) -> list[dict[str, float]]:
    return [{item["class"]: item["score"] for item in row["top"]} for row in rows]


def assert_same_predictions(got: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    assert [list(g) for g in got] == [list(e) for e in expected]  # same classes, same order
    for g, e in zip(got, expected):
        np.testing.assert_allclose(list(g.values()), list(e.values()), atol=1e-6)


def tone_at(rate: int, seconds: float = 0.6, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.4 * np.sin(2 * np.pi * TONES["mid"] * t) + 0.3 * np.sin(2 * np.pi * TONES["high"] * t)
    return np.stack([mono * (1 - 0.3 * c) for c in range(channels)]).astype(np.float32)


def test_predict_on_files_equals_the_cli(project, model):
    files = sorted((project / "audio").glob("*.wav"))[:6]
    expected = as_dicts(cli_json(files, project, top_k=2))
    assert_same_predictions(model.predict(files, top_k=2), expected)
    threshold = as_dicts(cli_json(files, project, threshold=0.3))
    assert_same_predictions(model.predict([str(f) for f in files], threshold=0.3), threshold)


def test_in_memory_audio_at_another_rate_equals_the_cli_on_the_same_audio_as_a_file(project, model, tmp_path):
    stereo = tone_at(OTHER_RATE, channels=2)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo.T, OTHER_RATE, subtype="FLOAT")  # float samples: the file holds exactly the array
    expected = as_dicts(cli_json([path], project, top_k=3))[0]
    for waveform in (stereo, torch.from_numpy(stereo)):
        assert_same_predictions(model.predict([(waveform, OTHER_RATE)], top_k=3), [expected])
    np.testing.assert_array_equal(model.scores([(stereo.T, OTHER_RATE)]),  # soundfile's (n, channels)
                                  model.scores([(stereo, OTHER_RATE)]))
    assert_same_predictions(model.predict([sf.read(path, dtype="float32")], top_k=3), [expected])
    mono_path = tmp_path / "mono.wav"
    sf.write(mono_path, stereo[0], OTHER_RATE, subtype="FLOAT")
    np.testing.assert_allclose(model.scores([(stereo[0], OTHER_RATE)]), model.scores([mono_path]), atol=1e-6)


def test_scores_cover_every_class_and_batching_does_not_change_them(project, model):
    files = sorted((project / "audio").glob("*.wav"))[:5]
    together = model.scores(files, batch_size=32)
    one_by_one = np.concatenate([model.scores([f], batch_size=1) for f in files])
    assert together.shape == (5, len(model.classes))
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_a_frames_model_scores_like_the_cli(project, tmp_path):
    spec = ModelSpec(classes=["a", "b", "c"], input="frames", codebook_sizes=[], input_dim=FRAME_DIM, encoder="bert",
                     encoder_params={"num_layers": 1, "num_heads": 2, "intermediate_size": 32}, hidden_size=16,
                     dropout=0.0, pooling="mean", max_positions=64)
    torch.manual_seed(0)
    save_bundle(AudioClassifier(spec=spec).eval(), tmp_path / "model", classes=spec.classes, task="singlelabel",
                threshold=0.5, max_frames=62, vocabulary=None, spectrogram=frame_spec(FRAME_DIM), versions={})
    files = sorted((project / "audio").glob("*.wav"))[:3]
    out = io.StringIO()
    assert predict_cli([str(f) for f in files], str(tmp_path / "model"), ".", 3, None, "json", out=out) == 0
    model = audiotokens.load(tmp_path / "model")
    waveforms = [sf.read(f, dtype="float32") for f in files]
    assert_same_predictions(model.predict(waveforms, top_k=3), as_dicts(json.loads(out.getvalue())))
    tokenizer = audiotokens.AudioTokenizer.from_bundle(tmp_path / "model")
    assert tokenizer.frames(*waveforms[0]).shape[1] == FRAME_DIM
    with pytest.raises(audiotokens.UserError, match="no vocabulary"):
        tokenizer.tokens(*waveforms[0])


def test_bad_items_are_user_errors(model, tmp_path):
    with pytest.raises(audiotokens.UserError, match="sample rate"):
        model.scores([(np.zeros(20000, dtype=np.float32), 0)])
    with pytest.raises(audiotokens.UserError, match="at least 1000 Hz, got 1"):  # not upsampled 16,000-fold
        model.scores([(np.zeros(20000, dtype=np.float32), 1)])
    with pytest.raises(audiotokens.UserError, match=r"\(channels, n\) or \(n, channels\)"):
        model.scores([(np.zeros((1, 2, 20000), dtype=np.float32), 16000)])
    with pytest.raises(audiotokens.UserError, match="too short"):
        model.scores([(np.zeros(100, dtype=np.float32), 16000)])
    with pytest.raises(audiotokens.UserError, match="NaN"):
        model.scores([(np.full(20000, np.nan, dtype=np.float32), 16000)])
    with pytest.raises(audiotokens.UserError, match="missing"):
        model.predict([tmp_path / "absent.wav"])


# ---------------------------------------------------------------- the tokenizer


def stored_tokens(work: Path, clip_id: str) -> np.ndarray:
    rows, index = open_store(*Layout(work).store("tokens"))
    row = index.row_of()[clip_id]
    return np.asarray(rows[index.offsets[row]:index.offsets[row] + index.lengths[row]]).reshape(index.lengths[row], -1)


def test_tokens_equal_the_tokenize_stage(project):
    work = project / "work"
    from_workdir = audiotokens.AudioTokenizer.from_workdir(work)
    from_bundle = audiotokens.AudioTokenizer.from_bundle(work / "output/model")
    for name in ("clip00.wav", "clip07.wav"):
        waveform, rate = sf.read(project / "audio" / name, dtype="float32")
        expected = stored_tokens(work, f"audio/{name}")
        np.testing.assert_array_equal(from_workdir.tokens(waveform, rate), expected)
        np.testing.assert_array_equal(from_bundle.tokens(waveform, rate), expected)


def test_decode_of_tokens_is_the_nearest_centroid(project):
    tokenizer = audiotokens.AudioTokenizer.from_workdir(project / "work")
    waveform, rate = sf.read(project / "audio/clip03.wav", dtype="float32")
    frames = tokenizer.frames(waveform, rate).astype(np.float32)
    decoded, start = [], 0
    for centroids in tokenizer.quantizer.codebooks:  # one per band (one for the frame tokenizer), in order
        band = frames[:, start:start + centroids.shape[1]]
        nearest = ((band[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)  # brute force
        decoded.append(centroids[nearest])
        start += centroids.shape[1]
    assert start == frames.shape[1]
    np.testing.assert_allclose(tokenizer.decode(tokenizer.tokens(waveform, rate)), np.concatenate(decoded, axis=1),
                               atol=0)


def test_decode_of_a_residual_and_a_stacked_tokenizer(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.random((30, FRAME_DIM)).astype(np.float32)
    books = [rng.normal(size=(6, FRAME_DIM)).astype(np.float32), rng.normal(size=(5, FRAME_DIM)).astype(np.float32) * .1]
    residual = Quantizer(kind="residual", codebooks=books, combine="sum")
    tokenizer = audiotokens.AudioTokenizer(frame_spec=frame_spec(FRAME_DIM),
                                           vocabulary=Vocabulary(residual, frame_spec(FRAME_DIM), tmp_path))
    ids = tokenizer.frames_to_tokens(frames)
    first = ((frames[:, None] - books[0][None]) ** 2).sum(-1).argmin(1)  # greedy residual search, by hand
    second = (((frames - books[0][first])[:, None] - books[1][None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(ids, np.stack([first, second], axis=1))
    np.testing.assert_allclose(tokenizer.decode(ids), books[0][first] + books[1][second], atol=1e-6)
    stacked = Quantizer(kind="stacked", codebooks=[rng.normal(size=(7, 2 * FRAME_DIM)).astype(np.float32)],
                        combine="concat", stack=2, stride=2)
    tokenizer = audiotokens.AudioTokenizer(frame_spec=frame_spec(FRAME_DIM),
                                           vocabulary=Vocabulary(stacked, frame_spec(FRAME_DIM), tmp_path))
    ids = tokenizer.frames_to_tokens(frames)
    assert ids.shape == (15, 1)
    pairs = frames.reshape(15, 2 * FRAME_DIM)
    nearest = ((pairs[:, None] - stacked.codebooks[0][None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_allclose(tokenizer.decode(ids[:, 0]), stacked.codebooks[0][nearest], atol=0)
    with pytest.raises(audiotokens.UserError, match="outside codebook"):
        tokenizer.decode(np.array([[9]]))


# ---------------------------------------------------------------- run


def cli_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    return result.output.strip().removeprefix("error: ")


def test_run_raises_the_cli_message(project, tmp_path):
    work = tmp_path / "empty"
    expected = cli_error(["run", "--workdir", str(work), "--set", "cluster.n_cluster=5"])
    with pytest.raises(audiotokens.UserError) as raised:
        audiotokens.run(workdir=work, overrides=["cluster.n_cluster=5"])
    assert str(raised.value) == expected and "n_cluster" in expected
    expected = cli_error(["run", "--workdir", str(work), "--from", "train", "--to", "split"])
    with pytest.raises(audiotokens.UserError) as raised:
        audiotokens.run(workdir=work, stages=("train", "split"))
    assert str(raised.value) == expected
    with pytest.raises(audiotokens.UserError, match="unknown stage 'clustr'"):
        audiotokens.run(workdir=work, stages=["clustr"])


def test_run_reruns_the_named_stages_with_provenance(project, tmp_path):
    root = copy_project(project, tmp_path / "copy")
    ran = audiotokens.run(root / "run.toml", stages=["cluster"], workdir=root / "work",
                          overrides=["cluster.n_clusters=6"])
    assert ran == ["cluster"]
    tokenizer = audiotokens.AudioTokenizer.from_workdir(root / "work")
    assert tokenizer.codebook_sizes == [6] * len(tokenizer.quantizer.codebooks)
    states = stage_states(Layout(root / "work"), project_config(root, "cluster.n_clusters=6"))
    assert states["cluster"].state == "fresh" and states["tokenize"].state == "stale"


# ---------------------------------------------------------------- the documented example


def readme_example() -> str:
    text = API_DOC.read_text()
    section = text[text.index("## Example"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_example_runs(project, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(project / "work/output/model", work / "output/model")
    sf.write(work / "clip.wav", tone_at(SAMPLE_RATE)[0], SAMPLE_RATE)
    monkeypatch.chdir(work)
    exec(compile(readme_example(), str(API_DOC), "exec"), {})  # noqa: S102 - the documented example itself
    printed = capsys.readouterr().out
    model = audiotokens.load("output/model")
    assert str(model.classes) in printed and "unknown config key 'cluster.n_cluster'" in printed


# ---------------------------------------------------------------- shell completion


def complete(env: dict[str, str]) -> str:
    code = "from audiotokens.cli import main; main(prog_name='audiotokens')"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                            text=True, check=True, cwd=ROOT, timeout=60)
    return result.stdout


def test_bash_completion_script_and_commands():
    script = complete({"_AUDIOTOKENS_COMPLETE": "bash_source"})
    assert "_audiotokens_completion" in script and "complete " in script
    words = complete({"_AUDIOTOKENS_COMPLETE": "bash_complete", "COMP_WORDS": "audiotokens ex", "COMP_CWORD": "1"})
    assert "plain,export" in words.splitlines() and "plain,evaluate" not in words.splitlines()
