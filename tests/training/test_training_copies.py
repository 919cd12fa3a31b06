"""Training on corrupted copies (augment.copies): which version of a clip an epoch reads, exact resume, every
input path (tokens of any quantizer, frames, the CNN, pre-training), clean validation, and the bundle."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from projects import RUN_SETTINGS, clip_labels, project_config, write_tone
from stores import assert_resume_matches_straight, make_frames_workdir, write_frames
from torch.utils.data import BatchSampler

import audiotokens
from audiotokens.cli import main
from audiotokens.config import load_config
from audiotokens.errors import UserError
from audiotokens.model.objectives import objective_for
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.provenance import stage_states
from audiotokens.pipeline.run import execute
from audiotokens.pipeline.stores import ClipIndex, copy_id, open_split, open_store
from audiotokens.tokens.cluster import ClusterCreator, vector_count
from audiotokens.tokens.vocabulary import load_vocabulary
from audiotokens.training.datasets import ClipDataset, CopyChoice, FrameClipDataset
from audiotokens.training.pretrain import PretrainClips

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "train.learning_rate=3e-3", "train.num_workers=0", "train.batch_size=8", "train.device=cpu"]


# ---------------------------------------------------------------- which version an epoch reads


def test_each_epoch_reads_the_clean_clip_or_one_of_its_copies_fixed_by_seed_and_epoch():
    counts = np.array([2, 0, 1, 2] * 50)
    choice = CopyChoice(inner=BatchSampler(range(200), 8, drop_last=False), copies=counts, seed=3)

    def epoch(e):
        choice.epoch = e
        return [item for batch in choice for item in batch]

    first = epoch(0)
    clips, versions = np.mod(first, 200), np.floor_divide(first, 200)
    assert clips.tolist() == list(range(200))  # the same clips in the same order, each once
    assert (versions <= counts).all() and set(versions[counts == 2]) == {0, 1, 2}
    assert abs((versions[counts == 2] == 0).mean() - 1 / 3) < 0.15  # clean as often as each copy
    assert epoch(1) != first and epoch(0) == first  # another epoch draws again; the same epoch, the same
    crops = CopyChoice(inner=[[(0, 2, 6), (1, 0, 4)]], copies=np.array([1, 1]), seed=0)
    assert [item[1:] for batch in crops for item in batch] == [(2, 6), (0, 4)]  # crops keep their frames


def test_a_dataset_reads_a_copys_rows_under_its_clips_index(tmp_path):
    rows = np.arange(30, dtype=np.float32).reshape(15, 2)
    np.save(tmp_path / "frames.npy", rows)
    index = ClipIndex(["a", "b"], np.array([0, 6]), np.array([3, 3]), [[0], [1]], ["x", "y"], "singlelabel",
                      copies=np.array([[3, -1], [9, 12]]))
    dataset = FrameClipDataset(store_path=tmp_path / "frames.npy", index=index, max_frames=10,
                               objective=objective_for("singlelabel"))
    assert dataset.copy_counts().tolist() == [1, 2]
    for item, start, clip in ((0, 0, 0), (1, 6, 1), (2, 3, 0), (3, 9, 1), (5, 12, 1)):
        frames, _, index_out = dataset[item]
        assert np.array_equal(frames, rows[start:start + 3]) and index_out == clip
    assert np.array_equal(dataset[(3, 1, 3)][0], rows[10:12])


# ---------------------------------------------------------------- resume, on a store with copies


def add_copies(root: Path, copies: int = 2) -> None:
    """Give every training clip of a frames workdir `copies` noisy copies, stored as the spectrogram stage
    does."""
    layout = Layout(root)
    frames, store = open_store(layout.frames, layout.frames_index)
    train = set(open_split(layout, "frames", "train")[1].ids)
    rng = np.random.default_rng(7)
    clips = []
    for clip_id, offset, length in zip(store.ids, store.offsets, store.lengths):
        clean = np.asarray(frames[offset:offset + length])
        clips.append((clip_id, clean))
        if clip_id in train:
            clips += [(copy_id(clip_id, k), clean + rng.normal(0, 0.3, clean.shape).astype(np.float32))
                      for k in range(1, copies + 1)]
    index = write_frames(root, clips)
    index.extra["copies"] = copies
    index.save(layout.frames_index)


def test_training_with_copies_reads_them_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    settings = [*SMALL, "model.input=frames", "train.epochs=3", "model.dropout=0.1", "train.batch_size=16"]
    configs = []
    for name in ("straight", "interrupted"):
        make_frames_workdir(tmp_path / name, n_train=48, n_validation=16)
        add_copies(tmp_path / name)
        configs.append(load_config(overrides=settings, workdir=tmp_path / name))
    read = []
    original = ClipDataset.locate
    monkeypatch.setattr(ClipDataset, "locate", lambda self, item: read.append((len(self.offsets), item))
                        or original(self, item))
    assert_resume_matches_straight(*configs, monkeypatch)
    copies_read = [item for n, item in read if item >= n]
    assert copies_read and all(n == 48 for n, item in read if item >= n)  # training clips only
    assert {item // 48 for item in copies_read} == {1, 2}


# ---------------------------------------------------------------- real audio through every stage


@pytest.fixture(scope="module")
def noisy_project(tmp_path_factory):
    """The tone corpus with two corrupted copies of each training clip, a vocabulary fitted on them too, and a
    token model trained on it; returns (root, train counts)."""
    root = tmp_path_factory.mktemp("noisy_project")
    rows = ["path,label"]
    for i in range(24):
        labels = clip_labels(i, "singlelabel")
        write_tone(root / "audio" / f"clip{i:02d}.wav", labels, i)
        rows.append(f"audio/clip{i:02d}.wav,{';'.join(labels)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    settings = RUN_SETTINGS.replace("[cluster]", "[augment]\ncopies = 2\n[cluster]\nfit_on_copies = true") \
        .replace("epochs = 2", "epochs = 4").replace("learning_rate = 1e-3", "learning_rate = 3e-3") \
        .replace("intermediate_size = 64", "intermediate_size = 64\npooling = \"mean\"")
    (root / "run.toml").write_text(f'[data]\nmanifest = "{root / "manifest.csv"}"\n' + settings)
    config = project_config(root)
    stages = ("split", "spectrogram", "cluster", "tokenize", "train", "evaluate")
    counts = {stage: execute(stage, config) for stage in stages}
    return root, counts


def test_a_model_trained_with_noise_beats_chance_on_clean_validation_audio(noisy_project):
    _, counts = noisy_project
    assert counts["spectrogram"]["copies"] == 2 * counts["train"]["train_clips"]
    assert counts["train"]["best_validation_accuracy"] >= 2 / 3  # three classes: chance is 1/3


def test_the_vocabulary_is_fitted_on_clean_and_corrupted_training_frames(noisy_project):
    root, counts = noisy_project
    _, train = open_split(Layout(root / "work"), "frames", "train")
    assert counts["cluster"]["frames_available"] == 3 * vector_count(train, 1, 1)



def test_fitting_on_copies_that_are_not_there_is_refused(noisy_project, tmp_path):
    root, _ = noisy_project
    shutil.copytree(root / "work" / "processed", tmp_path / "processed")
    index = ClipIndex.load(Layout(tmp_path).frames_index)
    index.extra.pop("copies")  # a store made without copies
    index.save(Layout(tmp_path).frames_index)
    with pytest.raises(UserError, match=r"^cluster.fit_on_copies = true but .* holds no corrupted copies of "
                                        r"training clips; set augment.copies > 0"):
        ClusterCreator(load_config(root / "run.toml", [], tmp_path)).run()


@pytest.mark.parametrize("quantizer", ["frame", "subband"])
def test_copies_get_the_tokens_of_their_frames_whatever_the_quantizer(noisy_project, tmp_path, quantizer):
    root, _ = noisy_project
    work = tmp_path / "work"
    shutil.copytree(root / "work" / "processed", work / "processed")
    config = load_config(root / "run.toml", [f"cluster.quantizer={quantizer}", "cluster.bands=4"], work)
    for stage in ("cluster", "tokenize"):
        execute(stage, config)
    layout = Layout(work)
    quantizer_ = load_vocabulary(layout.vocabulary).quantizer
    frames, frame_index = open_store(layout.frames, layout.frames_index)
    tokens, token_index = open_store(layout.tokens, layout.tokens_index)
    assert token_index.ids == frame_index.ids and token_index.extra["copies"] == 2
    _, view = open_split(layout, "tokens", "train")
    assert view.copies is not None and (view.copies >= 0).all()
    for i in range(len(view)):
        for start in view.copies[i]:
            length = view.lengths[i]
            want = quantizer_.encode(np.asarray(frames[start:start + length], dtype=np.float32))
            assert np.array_equal(np.asarray(tokens[start:start + length]), want)


def test_the_bundle_scores_clean_audio_without_the_stores(noisy_project, tmp_path):
    root, _ = noisy_project
    bundle = tmp_path / "bundle"
    shutil.copytree(root / "work" / "output" / "model", bundle)
    meta = json.loads((bundle / "audiotokens.json").read_text())
    assert meta["spectrogram"]["augment"]["copies"] == 2  # the frame spec records how training was made
    evaluated = root / "work" / "output" / "eval" / "validation"
    clips = json.loads((evaluated / "clips.json").read_text())["ids"]
    model = audiotokens.load(bundle, device="cpu")  # no processed/, no tokenized/ beside it
    scores = model.scores([root / clip for clip in clips])
    np.testing.assert_allclose(scores, np.load(evaluated / "scores.npy"), atol=1e-5)
    manifest = tmp_path / "clean.csv"
    labels = [clip_labels(int(clip[-6:-4]), "singlelabel")[0] for clip in clips]  # audio/clipNN.wav
    manifest.write_text("path,label\n" + "".join(f"{root / c},{label}\n" for c, label in zip(clips, labels)))
    result = CliRunner().invoke(main, ["evaluate", "--workdir", str(tmp_path / "eval"), "--model",
                                       str(bundle), "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    report = json.loads(next((tmp_path / "eval").rglob("metrics.json")).read_text())
    assert report["accuracy"] >= 2 / 3


@pytest.mark.parametrize("objective", ["mlm", "masked_frames"])
def test_pretraining_reads_the_copies_of_training_clips(noisy_project, tmp_path, monkeypatch, objective):
    root, _ = noisy_project
    work = tmp_path / "work"
    for folder in ("processed", "tokenized"):
        shutil.copytree(root / "work" / folder, work / folder)
    shutil.copytree(root / "work" / "output" / "vocabulary", work / "output" / "vocabulary")
    read = []
    original = PretrainClips.__getitem__
    monkeypatch.setattr(PretrainClips, "__getitem__", lambda self, i: read.append((len(self.lengths), i))
                        or original(self, i))
    settings = [f"pretrain.objective={objective}", "pretrain.epochs=2", "pretrain.heldout=0.2"]
    counts = execute("pretrain", load_config(root / "run.toml", settings, work))
    fit = counts["fit_clips"]
    assert any(i >= n for n, i in read if n == fit)  # training clips read as copies too
    assert all(i < n for n, i in read if n != fit)  # held-out clips always clean


def test_the_cnn_on_frames_trains_on_copies(noisy_project, tmp_path, monkeypatch):
    root, _ = noisy_project
    work = tmp_path / "work"
    shutil.copytree(root / "work" / "processed", work / "processed")
    read = []
    original = ClipDataset.locate
    monkeypatch.setattr(ClipDataset, "locate", lambda self, item: read.append((len(self.offsets), item))
                        or original(self, item))
    counts = execute("train", load_config(root / "run.toml", ["model.input=frames", "model.encoder=cnn",
                                                              "train.epochs=1"], work))
    assert counts["epochs_completed"] == 1 and any(item >= n for n, item in read)


def test_with_copies_the_frames_follow_the_assignment_of_clips_to_splits(noisy_project):
    root, _ = noisy_project
    layout = Layout(root / "work")
    moved = project_config(root, "split.validation_ratio=0.3")
    assert stage_states(layout, project_config(root), ["spectrogram"])["spectrogram"].state == "fresh"
    assert stage_states(layout, moved, ["spectrogram"])["spectrogram"].state == "stale"
    without = project_config(root, "augment.copies=0")
    assert "augment.copies" in stage_states(layout, without, ["spectrogram"])["spectrogram"].line()
