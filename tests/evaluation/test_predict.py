"""predict and show: a bundle applied to audio files, agreeing with what evaluate computed."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from projects import project_config, trained_project, write_tone

from audiotokens.cli import main
from audiotokens.errors import UserError
from audiotokens.evaluation.evaluate import Evaluator
from audiotokens.evaluation.predict import chosen_classes, expand_paths, load_model, predict_cli, show_cli
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import SplitPlan


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "multilabel")


def run_predict(paths, model_dir=None, workdir=".", top_k=5, threshold=None, fmt="json") -> tuple[int, str]:
    out = io.StringIO()
    code = predict_cli([str(p) for p in paths], str(model_dir) if model_dir else None, str(workdir), top_k,
                       threshold, fmt, out=out)
    return code, out.getvalue()


def test_predict_on_the_audio_gives_the_scores_evaluate_computed(project, tmp_path):
    Evaluator(project_config(project)).run()
    out = Layout(project / "work").eval_dir("validation")
    ids = json.loads((out / "clips.json").read_text())["ids"]
    classes = json.loads((out / "clips.json").read_text())["classes"]
    evaluated = np.load(out / "scores.npy")
    audio = {clip["id"]: clip["audio"] for clip in SplitPlan.load(Layout(project / "work")).clips}

    # the bundle alone, copied elsewhere, with an unrelated workdir: predict must not need the project
    bundle = shutil.copytree(project / "work/output/model", tmp_path / "bundle")
    code, text = run_predict([audio[i] for i in ids], bundle, tmp_path, threshold=0.0)
    assert code == 0
    rows = json.loads(text)
    assert [r["path"] for r in rows] == [audio[i] for i in ids]
    predicted = np.array([[{t["class"]: t["score"] for t in r["top"]}[c] for c in classes] for r in rows])
    np.testing.assert_allclose(predicted, evaluated, atol=1e-5, rtol=0)
    assert all(r["error"] is None for r in rows)


def test_a_corrupt_file_gets_an_error_row_and_exit_code_1(project, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(project / "audio/clip00.wav", folder / "a.wav")
    (folder / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (folder / "notes.md").write_text("not audio")  # not an audio extension: ignored in a folder
    write_tone(folder / "sub" / "c.flac", ["high"], 3)
    code, text = run_predict([folder], project / "work/output/model", fmt="csv", top_k=2)
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [Path(r["path"]).name for r in rows] == ["a.wav", "a.wav", "b.wav", "c.flac", "c.flac"]
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("b.wav") and bad[0]["error"].startswith("undecodable")
    good = [r for r in rows if not r["error"]]
    assert [r["rank"] for r in good] == ["1", "2", "1", "2"]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in good)
    assert float(good[0]["score"]) >= float(good[1]["score"])

    code, text = run_predict([folder / "a.wav", folder / "missing.wav"], project / "work/output/model", fmt="table")
    assert code == 1
    assert "missing.wav\n  ERROR   missing" in text and "a.wav\n  0." in text


def test_threshold_and_top_k_choose_the_right_classes():
    scores = np.array([0.2, 0.9, 0.5, 0.7], dtype=np.float32)
    classes = ["a", "b", "c", "d"]
    assert [c["class"] for c in chosen_classes(scores, classes, 2, None)] == ["b", "d"]
    assert [c["class"] for c in chosen_classes(scores, classes, 2, 0.5)] == ["b", "d", "c"]
    assert chosen_classes(scores, classes, 5, 0.95) == []


def test_expand_paths_reads_folders_and_list_files(tmp_path):
    write_tone(tmp_path / "x" / "one.wav", ["low"], 0)
    write_tone(tmp_path / "x" / ".hidden" / "two.wav", ["low"], 0)
    write_tone(tmp_path / "y" / "three.ogg", ["low"], 0)
    (tmp_path / "list.txt").write_text("# clips\ny/three.ogg\n\nx\n/abs/where.wav\n")
    assert expand_paths([str(tmp_path / "list.txt")]) == [
        str(tmp_path / "y" / "three.ogg"), str(tmp_path / "x" / "one.wav"), "/abs/where.wav"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no audio files found"):
        expand_paths([str(tmp_path / "empty")])


def test_cli_exit_codes_and_json(project, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--model", str(tmp_path / "nothing"), str(project / "audio")])
    assert result.exit_code == 2 and "not a complete model bundle" in result.output
    result = runner.invoke(main, ["predict", "--workdir", str(project / "work"), "--format", "json", "--top-k", "1",
                                  str(project / "audio/clip01.wav"), str(project / "audio/clip02.wav")])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [len(r["top"]) for r in rows] == [1, 1] and rows[0]["top"][0]["class"] in {"low", "mid", "high"}


def test_show_draws_one_picture(project, tmp_path, monkeypatch):
    import matplotlib.image

    monkeypatch.chdir(tmp_path)
    path = show_cli(str(project / "audio/clip04.wav"), None, str(project / "work"), None)
    assert path == tmp_path / "clip04.tokens.png"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 600
    with pytest.raises(UserError, match="cannot read"):
        show_cli(str(tmp_path / "absent.wav"), None, str(project / "work"), str(tmp_path / "x.png"))


def test_a_frames_model_predicts_and_shows_from_audio_alone(project, tmp_path, monkeypatch):
    """A frames-input model: no vocabulary in the bundle; predict gives the scores evaluate computed."""
    from projects import copy_project

    from audiotokens.model.bundle import load_bundle
    from audiotokens.training.train import ModelBuilder

    own = copy_project(project, tmp_path / "own")
    config = project_config(own, "model.input=frames", "model.pooling=mean")
    ModelBuilder(config).run()
    bundle_dir = own / "work/output/model"
    assert load_bundle(bundle_dir).vocabulary is None and not (bundle_dir / "vocabulary").exists()
    Evaluator(config).run()
    out = Layout(own / "work").eval_dir("validation")
    ids, classes = (json.loads((out / "clips.json").read_text())[key] for key in ("ids", "classes"))
    audio = {clip["id"]: clip["audio"] for clip in SplitPlan.load(Layout(own / "work")).clips}
    code, text = run_predict([audio[i] for i in ids], bundle_dir, tmp_path, threshold=0.0)
    assert code == 0
    predicted = np.array([[{t["class"]: t["score"] for t in r["top"]}[c] for c in classes] for r in json.loads(text)])
    np.testing.assert_allclose(predicted, np.load(out / "scores.npy"), atol=1e-5, rtol=0)
    monkeypatch.chdir(tmp_path)
    assert show_cli(str(project / "audio/clip04.wav"), str(bundle_dir), str(tmp_path), None).stat().st_size > 0


def test_listed_classes_say_whether_the_model_predicts_them(project):
    bundle = load_model(project / "work/output/model")
    code, text = run_predict([project / "audio/clip00.wav"], project / "work/output/model", top_k=3)
    top = json.loads(text)[0]["top"]
    assert code == 0 and [t["predicted"] for t in top] == [t["score"] >= bundle.threshold for t in top]
    code, text = run_predict([project / "audio/clip00.wav"], project / "work/output/model", top_k=3, threshold=0.0)
    assert all(t["predicted"] for t in json.loads(text)[0]["top"])


@pytest.mark.parametrize("tokenizer", ["cluster.quantizer=subband cluster.bands=2",
                                       "cluster.quantizer=residual cluster.stages=2"], ids=["subband", "residual"])
def test_a_decoded_model_of_two_codebooks_predicts_what_evaluate_scored(project, tmp_path, tokenizer):
    """Decoded embeddings over a two-codebook vocabulary (concatenated or summed entries): the bundle carries
    that vocabulary, its decoding tables are the codebooks, and predict on the audio gives evaluate's scores."""
    from projects import copy_project

    from audiotokens.model.bundle import load_bundle
    from audiotokens.pipeline.run import execute
    from audiotokens.tokens.vocabulary import load_vocabulary

    own = copy_project(project, tmp_path / "own")
    config = project_config(own, *tokenizer.split(), "model.token_embedding=decoded")
    for stage in ("cluster", "tokenize", "train"):
        execute(stage, config)
    layout = Layout(own / "work")
    vocabulary = load_vocabulary(layout.vocabulary)
    bundle = load_bundle(layout.model_dir)
    assert vocabulary.quantizer.n_codebooks == 2 and bundle.vocabulary.digest == vocabulary.digest
    assert bundle.spec.codebook_sizes == vocabulary.codebook_sizes == [8, 8]
    assert bundle.spec.decode_combine == vocabulary.quantizer.combine
    for c, book in enumerate(vocabulary.quantizer.codebooks):
        np.testing.assert_array_equal(bundle.model.embedder.decode_table(c).numpy(), book)

    Evaluator(config, split="validation").run()
    out = layout.eval_dir("validation")
    ids, classes = (json.loads((out / "clips.json").read_text())[key] for key in ("ids", "classes"))
    audio = {clip["id"]: clip["audio"] for clip in SplitPlan.load(layout).clips}
    code, text = run_predict([audio[i] for i in ids], shutil.copytree(layout.model_dir, tmp_path / "bundle"),
                             tmp_path, threshold=0.0)
    assert code == 0
    predicted = np.array([[{t["class"]: t["score"] for t in r["top"]}[c] for c in classes] for r in json.loads(text)])
    np.testing.assert_allclose(predicted, np.load(out / "scores.npy"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("normalize, model_input", [("fixed", "tokens"), ("pcen", "frames")])
def test_a_bundle_frames_new_audio_with_its_own_normalize(project, tmp_path, normalize, model_input):
    """Frames scaled to a fixed dB range or by PCEN: the bundle's frame spec carries the setting, so
    predict on the audio alone (under the default config) gives the scores evaluate computed from the store."""
    from projects import copy_project

    from audiotokens.model.bundle import load_bundle
    from audiotokens.pipeline.run import execute

    own = copy_project(project, tmp_path / "own")
    config = project_config(own, f"spectrogram.normalize={normalize}", f"model.input={model_input}",
                            "model.pooling=mean")
    stages = ("spectrogram", "cluster", "tokenize", "train") if model_input == "tokens" else \
        ("spectrogram", "train")
    for stage in stages:
        execute(stage, config)
    layout = Layout(own / "work")
    assert load_bundle(layout.model_dir).spectrogram["normalize"] == normalize
    Evaluator(config, split="validation").run()
    out = layout.eval_dir("validation")
    ids, classes = (json.loads((out / "clips.json").read_text())[key] for key in ("ids", "classes"))
    audio = {clip["id"]: clip["audio"] for clip in SplitPlan.load(layout).clips}
    code, text = run_predict([audio[i] for i in ids], shutil.copytree(layout.model_dir, tmp_path / "bundle"),
                             tmp_path, threshold=0.0)
    assert code == 0
    predicted = np.array([[{t["class"]: t["score"] for t in r["top"]}[c] for c in classes]
                          for r in json.loads(text)])
    np.testing.assert_allclose(predicted, np.load(out / "scores.npy"), atol=1e-5, rtol=0)
