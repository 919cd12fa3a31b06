"""Corrupted copies of training clips in the frame store (augment.copies): where they sit, what they hold, and
that every other clip is stored exactly as without them."""
import dataclasses
import json

import numpy as np
import pytest
from spectrogram_workdirs import Interrupt, count_processed, distinct_clips, interrupt_after, write_split

import audiotokens.features.spectrogram as spectrogram_module
from audiotokens.config import AugmentConfig, SpectrogramConfig, load_config
from audiotokens.data.audio import AudioError, load_mono
from audiotokens.data.corrupt import RandomCorruption
from audiotokens.errors import UserError
from audiotokens.features.spectrogram import SpectrogramProcessor, compute_frames, params_from_dict
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import ClipIndex, copy_id, open_split, spec_digest

pytestmark = pytest.mark.usefixtures("one_thread")

COPIES = ("augment.copies=2", "augment.reverb_probability=0.5", "augment.eq_probability=0.5")


def run_stage(workdir, *overrides, part_clips=256):
    return SpectrogramProcessor(load_config(None, ["spectrogram.workers=1", *overrides], workdir),
                                part_clips=part_clips).run()


def rows(workdir, split, clip_id):
    array, view = open_split(Layout(workdir), "frames", split)
    i = view.ids.index(clip_id)
    return np.asarray(array[view.offsets[i]:view.offsets[i] + view.lengths[i]])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six clips (three training, two validation, one test), stored without copies and with two per
    training clip."""
    root = tmp_path_factory.mktemp("copies")
    clips = distinct_clips(root / "audio", 6, seconds=0.5)
    splits = {"train": clips[:3], "validation": clips[3:5], "test": clips[5:]}
    plain, noisy = root / "plain", root / "noisy"
    for workdir in (plain, noisy):
        write_split(workdir, splits)
    run_stage(plain)
    counts = run_stage(noisy, *COPIES)
    return clips, splits, plain, noisy, counts


def test_each_training_clip_is_followed_by_its_copies_and_the_spec_records_how_they_were_made(corpus):
    clips, splits, _, noisy, counts = corpus
    layout = Layout(noisy)
    index = ClipIndex.load(layout.frames_index)
    train = {c["id"] for c in splits["train"]}
    expected = [name for c in clips for name in
                ([c["id"], copy_id(c["id"], 1), copy_id(c["id"], 2)] if c["id"] in train else [c["id"]])]
    assert index.ids == expected and index.extra["copies"] == 2
    lengths = dict(zip(index.ids, index.lengths.tolist()))
    assert all(lengths[copy_id(i, k)] == lengths[i] for i in train for k in (1, 2))
    spec = json.loads(layout.frame_spec.read_text())
    assert spec["augment"] == dataclasses.asdict(dataclasses.replace(
        AugmentConfig(), copies=2, reverb_probability=0.5, eq_probability=0.5))
    assert index.extra["frame_spec_digest"] == spec_digest(spec)
    assert params_from_dict(spec) == SpectrogramConfig()  # how the copies were made does not define a frame
    report = json.loads(layout.frames_report.read_text())
    assert report["copies"] == 6 and report["copies_skipped"] == [] and counts["copies"] == 6


def test_validation_test_and_clean_training_frames_equal_a_run_without_copies(corpus):
    _, splits, plain, noisy, _ = corpus
    for split, members in splits.items():
        for c in members:
            assert np.array_equal(rows(noisy, split, c["id"]), rows(plain, split, c["id"])), (split, c["id"])
    assert open_split(Layout(noisy), "frames", "validation")[1].copies is None
    assert open_split(Layout(noisy), "frames", "test")[1].copies is None


def test_a_copy_is_the_clips_audio_through_its_seeded_chain(corpus):
    _, splits, _, noisy, _ = corpus
    array, view = open_split(Layout(noisy), "frames", "train")
    augment = RandomCorruption.from_settings(load_config(None, list(COPIES)).augment)
    params = SpectrogramConfig()
    assert view.copies.shape == (3, 2) and (view.copies >= 0).all()
    for i, c in enumerate(splits["train"]):
        mono = load_mono(c["audio"], params.sample_rate)
        for number in (1, 2):
            corrupted = augment.apply(mono, params.sample_rate, augment.copy_seed(c["id"], number))
            want = compute_frames(corrupted, params)
            start = view.copies[i, number - 1]
            got = np.asarray(array[start:start + view.lengths[i]])
            assert np.abs(got - want).max() < 1e-6
            assert np.abs(got - rows(noisy, "train", c["id"])).max() > 0.05  # a copy is not the clean clip


def test_a_clip_whose_copies_cannot_be_made_is_kept_and_reported(tmp_path, monkeypatch):
    clips = distinct_clips(tmp_path / "audio", 3, seconds=0.5)
    write_split(tmp_path, {"train": clips[:2], "validation": clips[2:]})
    original = spectrogram_module.load_mono

    def refuse_the_first(location, *args, **kwargs):
        if location == clips[0]["audio"]:
            raise AudioError("undecodable", "a damaged block")
        return original(location, *args, **kwargs)

    monkeypatch.setattr(spectrogram_module, "load_mono", refuse_the_first)
    run_stage(tmp_path, "augment.copies=2")
    report = json.loads(Layout(tmp_path).frames_report.read_text())
    assert [(s["id"], s["reason"]) for s in report["copies_skipped"]] == [(clips[0]["id"], "undecodable")]
    assert report["copies"] == 2 and report["skipped"] == []
    _, view = open_split(Layout(tmp_path), "frames", "train")
    assert view.ids == [c["id"] for c in clips[:2]]
    assert view.copies.tolist()[0] == [-1, -1] and (view.copies[1] >= 0).all()


def test_a_clip_id_that_names_a_copy_is_refused(tmp_path):
    clips = distinct_clips(tmp_path / "audio", 2, seconds=0.5)
    clips[0]["id"] = "take#copy1"
    write_split(tmp_path, {"train": clips})
    with pytest.raises(UserError, match="clip id 'take#copy1' contains '#copy'.*augment.copies = 0"):
        run_stage(tmp_path, "augment.copies=1")


def test_new_training_clips_get_copies_and_an_interrupted_run_resumes_to_the_same_store(tmp_path, monkeypatch,
                                                                                      corpus):
    clips, splits, _, noisy, _ = corpus
    write_split(tmp_path, splits)
    interrupt_after(monkeypatch, parts=1)
    with pytest.raises(Interrupt):
        run_stage(tmp_path, *COPIES, part_clips=2)
    monkeypatch.undo()
    processed = count_processed(monkeypatch)
    run_stage(tmp_path, *COPIES, part_clips=2)
    assert sorted(processed) == [2, 3, 4, 5]  # the first part was kept
    assert Layout(tmp_path).frames.read_bytes() == Layout(noisy).frames.read_bytes()

    # other training clips: the copies follow the assignment, so the parts are made again
    write_split(tmp_path, {"train": clips[3:], "validation": clips[:3]})
    processed.clear()
    run_stage(tmp_path, *COPIES)
    assert sorted(processed) == list(range(6))
    _, view = open_split(Layout(tmp_path), "frames", "train")
    assert view.ids == [c["id"] for c in clips[3:]] and (view.copies >= 0).all()
    assert open_split(Layout(tmp_path), "frames", "validation")[1].copies is None
