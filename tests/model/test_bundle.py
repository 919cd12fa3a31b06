"""A bundle is checked before it is used: its manifest of file digests, then the schema of its JSON files.

A hand-edited or damaged bundle (a pooling changed, another sample rate, a missing key, a JSON list) must
be refused in one line, never load with other scores or end in a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from stores import FRAME_DIM, N_CLUSTERS, frame_spec

from audiotokens.errors import UserError
from audiotokens.model.bundle import load_bundle, save_bundle, write_manifest
from audiotokens.model.parts import AudioClassifier, ModelSpec
from audiotokens.tokens.quantizers import Quantizer
from audiotokens.tokens.vocabulary import load_vocabulary, save_vocabulary


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    """A tokens bundle of a tiny BERT with [CLS] pooling, its vocabulary fitted on 16 kHz frames."""
    spec = frame_spec(FRAME_DIM, sample_rate=16000)
    codebooks = [np.random.default_rng(0).normal(size=(N_CLUSTERS, FRAME_DIM)).astype(np.float32)]
    save_vocabulary(tmp_path / "vocabulary", Quantizer(kind="frame", codebooks=codebooks, combine="concat"), spec)
    model_spec = ModelSpec(classes=["a", "b", "c"], codebook_sizes=[N_CLUSTERS], input_dim=FRAME_DIM,
                           encoder_params={"num_layers": 1, "num_heads": 2, "intermediate_size": 32},
                           hidden_size=16, dropout=0.0, pooling="cls", max_positions=34)
    torch.manual_seed(0)
    save_bundle(AudioClassifier(spec=model_spec).eval(), tmp_path / "model", classes=model_spec.classes,
                task="singlelabel", threshold=0.5, max_frames=32, vocabulary=load_vocabulary(tmp_path / "vocabulary"),
                spectrogram=spec, versions={})
    return tmp_path / "model"


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def without(key):
    return lambda data: {k: v for k, v in data.items() if k != key}


def other_sample_rate(meta):
    return {**meta, "spectrogram": {**meta["spectrogram"], "sample_rate": 8000}}


def layers_as_words(spec):
    return {**spec, "encoder_params": {**spec["encoder_params"], "num_layers": "two"}}


# (file, edit, what the schema check says once the manifest is made to match the edit; None: a valid bundle)
EDITS = {
    "pooling cls -> mean": ("model_spec.json", lambda spec: {**spec, "pooling": "mean"}, None),
    "sample rate 16000 -> 8000": ("audiotokens.json", other_sample_rate,
                                  "spectrogram settings differ from those its vocabulary was fitted on"),
    "num_layers 'two'": ("model_spec.json", layers_as_words, "'encoder_params.num_layers' must be an integer"),
    "no classes": ("audiotokens.json", without("classes"), "lacks 'classes'"),
    "a JSON list": ("audiotokens.json", lambda meta: list(meta), "is not a JSON object"),
    "no max_frames": ("audiotokens.json", without("max_frames"), "lacks 'max_frames'"),
    "no spectrogram": ("audiotokens.json", without("spectrogram"), "lacks 'spectrogram'"),
    "spec as a list": ("model_spec.json", lambda spec: [spec], "is not a JSON object"),
    "hidden size as text": ("model_spec.json", lambda spec: {**spec, "hidden_size": "16"},
                            "'hidden_size' must be an integer"),
    "dropout 5": ("model_spec.json", lambda spec: {**spec, "dropout": 5}, r"'dropout' must be in \[0, 1\)"),
    "hidden_layer -1": ("model_spec.json", lambda spec: {**spec, "hidden_layer": -1}, "'hidden_layer' must be 0"),
    "scale inf": ("model_spec.json", lambda spec: {**spec, "scale": float("inf")}, "'scale' must be a finite number"),
    "eval_hop -1": ("audiotokens.json", lambda meta: {**meta, "eval_hop": -1}, "'eval_hop' must be 0 or more"),
}


@pytest.mark.parametrize("case", EDITS)
def test_an_edited_bundle_file_is_refused_by_its_manifest_in_one_line(bundle_dir, case):
    name, change, _ = EDITS[case]
    edit_json(bundle_dir / name, change)
    with pytest.raises(UserError, match=rf"the bundle's files do not match its manifest: {name} changed") as error:
        load_bundle(bundle_dir)
    assert "\n" not in str(error.value) and "re-run `audiotokens train`" in str(error.value)


@pytest.mark.parametrize("case", EDITS)
def test_an_edit_the_manifest_agrees_with_still_meets_the_schema_check(bundle_dir, case):
    name, change, message = EDITS[case]
    edit_json(bundle_dir / name, change)
    write_manifest(bundle_dir)  # as if the edit had been signed: only the schema check stands in the way
    if message is None:  # another valid network: loads, and scores as that network
        assert load_bundle(bundle_dir).spec.pooling == "mean"
        return
    with pytest.raises(UserError, match=message) as error:
        load_bundle(bundle_dir)
    assert "\n" not in str(error.value) and name in str(error.value)


@pytest.mark.parametrize("damage, said", [
    (lambda b: (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:3000]),
     "model.safetensors changed"),
    (lambda b: (b / "vocabulary" / "codebooks.npz").unlink(), "vocabulary/codebooks.npz is missing"),
    (lambda b: (b / "vocabulary" / "vocabulary.json").write_text("{"), "vocabulary/vocabulary.json changed"),
    (lambda b: (b / "manifest.json").write_text("[1, 2"), "manifest.json is not valid JSON"),
])
def test_damaged_bundle_files_are_named(bundle_dir, damage, said):
    damage(bundle_dir)
    with pytest.raises(UserError, match=said) as error:
        load_bundle(bundle_dir)
    assert "\n" not in str(error.value)


def test_a_bundle_of_the_older_format_without_a_manifest_asks_for_a_new_training(bundle_dir):
    (bundle_dir / "manifest.json").unlink()
    edit_json(bundle_dir / "audiotokens.json", lambda meta: {**meta, "version": 2})
    with pytest.raises(UserError, match=r"older format.*re-run `audiotokens train`") as error:
        load_bundle(bundle_dir)
    assert "\n" not in str(error.value)


def test_the_model_card_may_be_rewritten_and_a_bundle_copy_loads(bundle_dir, tmp_path):
    import shutil

    (bundle_dir / "README.md").write_text("# notes added by hand\n")
    copy = shutil.copytree(bundle_dir, tmp_path / "elsewhere" / "model")
    assert load_bundle(copy).classes == ["a", "b", "c"]
