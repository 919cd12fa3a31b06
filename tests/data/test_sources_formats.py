"""Sources of other toolkits' formats: Hugging Face datasets on disk, lhotse manifests, Kaldi data directories.

Fixtures are written with the real libraries (datasets' save_to_disk, lhotse's to_file) or as real Kaldi
files. Each source must give the clips, labels, groups and durations its metadata describes, report what
it leaves out, and give the spectrogram stage the same frames, bit for bit, as a CSV manifest listing the
same audio (segments cut into files of their own).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audiotokens.data.audio as audio_module
from audiotokens.config import DataConfig, load_config
from audiotokens.data import sources
from audiotokens.data.audio import load_audio
from audiotokens.data.split import DatasetSplitter
from audiotokens.errors import UserError
from audiotokens.features.spectrogram import SpectrogramProcessor
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.stores import open_store

RATE = 16000


def write_pcm(path: Path, seconds: float, seed: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """int16 noise with a tone whose pitch depends on the seed; what is written is what decodes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 8000 * np.sin(2 * np.pi * (200 + 150 * seed) * t)
    samples = (tone[:, None] + rng.integers(-2000, 2000, (t.size, channels))).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype="PCM_16")
    return samples


def cut(samples: np.ndarray, path: Path, start: float, duration: float, rate: int = RATE) -> Path:
    """The segment as a file of its own: the equivalent of a segment in a CSV manifest."""
    first = round(start * rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples[first:first + round(duration * rate)], rate, subtype="PCM_16")
    return path


def decoded_samples(location: str) -> np.ndarray:
    samples, rate = load_audio(location)
    assert rate == RATE
    return np.round(samples.T * 32768).astype(np.int16)


def write_manifest(path: Path, rows: list[tuple[Path, list[str], str | None]]) -> Path:
    lines = ["path,label,group"] + [f"{audio},{';'.join(labels)},{group or ''}" for audio, labels, group in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def stage_frames(workdir: Path, *overrides: str) -> tuple[dict[str, np.ndarray], dict]:
    """Run the split and spectrogram stages; every clip's frames, and split.json."""
    config = load_config(None, ["split.strategy=random", "split.test_ratio=0", "spectrogram.workers=1",
                                "spectrogram.sample_rate=8000", "spectrogram.n_fft=256",
                                "spectrogram.hop_length=64", "spectrogram.n_mels=16", *overrides], workdir)
    DatasetSplitter(config).run()
    SpectrogramProcessor(config).run()
    layout = Layout(workdir)
    array, index = open_store(layout.frames, layout.frames_index)
    frames = {clip_id: np.array(array[offset:offset + length])
              for clip_id, offset, length in zip(index.ids, index.offsets, index.lengths)}
    return frames, json.loads(layout.split_json.read_text())


def assert_same_frames(source: dict[str, np.ndarray], manifest: dict[str, np.ndarray], ids: dict[str, str]):
    """Each source clip's frames equal, bit for bit, those of the manifest clip `ids` maps it to."""
    assert sorted(source) == sorted(ids)
    for source_id, manifest_id in ids.items():
        assert source[source_id].shape == manifest[manifest_id].shape, source_id
        assert np.array_equal(source[source_id], manifest[manifest_id]), source_id


def without(monkeypatch, package: str) -> None:
    """Make `import package` fail as it does where the package is not installed."""
    monkeypatch.setitem(sys.modules, package, None)


# ---------------------------------------------------------------- Hugging Face datasets


def hf_split(datasets, paths: list[Path], labels: list, groups: list[str], names=("cat", "dog", "eel")):
    table = datasets.Dataset.from_dict({"audio": [{"bytes": None, "path": str(p)} for p in paths],
                                        "label": labels, "speaker": groups})
    return table.cast_column("audio", datasets.Audio()).cast_column("label", datasets.ClassLabel(names=list(names)))


@pytest.fixture
def saved_dataset(tmp_path):
    """A DatasetDict (train / validation / test) saved with save_to_disk, audio embedded, and its files."""
    datasets = pytest.importorskip("datasets")
    files = {f"c{i}": tmp_path / "audio" / f"c{i}.wav" for i in range(7)}
    samples = {name: write_pcm(path, 0.3 + 0.05 * i, i) for i, (name, path) in enumerate(files.items())}
    paths = list(files.values())
    parts = datasets.DatasetDict(
        train=hf_split(datasets, paths[:5], [0, 1, 0, -1, 1], ["s1", "s2", "s1", "s3", "s3"]),
        validation=hf_split(datasets, paths[5:6], [1], ["s4"]),
        test=hf_split(datasets, paths[6:], [0], ["s5"]))
    parts.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved", files, samples


def test_hf_dataset_saved_splits_labels_groups_and_embedded_audio(saved_dataset):
    folder, _files, samples = saved_dataset
    data = DataConfig(source="hf_dataset", hf_dataset=str(folder), hf_group_column="speaker",
                      hf_eval_split="validation", hf_test_split="test")
    dataset = sources.load(data, with_eval=True)
    assert dataset.classes == ["cat", "dog", "eel"] and dataset.task == "singlelabel"  # ClassLabel names, all
    assert [(c.id, c.labels, c.group) for c in dataset.clips] == [
        ("train/0", [0], "s1"), ("train/1", [1], "s2"), ("train/2", [0], "s1"), ("train/4", [1], "s3")]
    assert [(c.id, c.labels) for c in dataset.eval_clips] == [("validation/0", [1])]
    assert [(c.id, c.labels) for c in dataset.test_clips] == [("test/0", [0])]
    assert [(m.id, m.reason) for m in dataset.missing] == [("train/3", "no label")]  # ClassLabel -1
    # the bytes save_to_disk embedded are decoded from the Arrow file: the very samples of each file
    order = {"train/0": "c0", "train/1": "c1", "train/2": "c2", "train/4": "c4", "validation/0": "c5",
             "test/0": "c6"}
    for clip in dataset.all_clips():
        assert clip.audio.startswith(str(folder)) and ".arrow::" in clip.audio
        assert np.array_equal(decoded_samples(clip.audio), samples[order[clip.id]])
    assert sources.source_of(data).auto_strategy == "official"


def test_hf_dataset_predefined_splits_become_the_split_stages(saved_dataset, tmp_path):
    folder, _, _ = saved_dataset
    keys = [f"data.hf_dataset={folder}", "data.source=hf_dataset", "data.hf_eval_split=validation",
            "data.hf_test_split=test", "data.hf_group_column=speaker"]
    DatasetSplitter(load_config(None, keys, tmp_path / "work")).run()
    plan = json.loads(Layout(tmp_path / "work").split_json.read_text())
    assert plan["strategy"] == "official"  # auto, with the dataset's own validation split
    assert plan["splits"] == {"train": ["train/0", "train/1", "train/2", "train/4"], "validation": ["validation/0"],
                              "test": ["test/0"]}
    with pytest.raises(UserError, match=r"^data.hf_test_split names the test split; leave split.test_list"):
        DatasetSplitter(load_config(None, [*keys, f"split.test_list={folder}/x.txt"], tmp_path / "w2")).run()
    with pytest.raises(UserError, match=r"^data.hf_test_split names the test split; split.official_side = \"test\""):
        DatasetSplitter(load_config(None, [*keys, "split.official_side=test"], tmp_path / "w3")).run()


def test_hf_dataset_relative_paths_and_what_is_left_out(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    for name in ("a.wav", "sub/b.wav"):
        write_pcm(folder / name, 0.2, len(name))
    table = datasets.Dataset.from_dict({"file": ["a.wav", "sub/b.wav", "gone.wav", None],
                                        "tags": [["rain", "wind"], ["wind"], ["rain"], ["rain"]]})
    table.save_to_disk(str(folder))
    dataset = sources.load(DataConfig(source="hf_dataset", hf_dataset=str(folder), hf_audio_column="file",
                                      hf_label_column="tags"))
    assert dataset.classes == ["rain", "wind"] and dataset.task == "multilabel"  # the values present, sorted
    assert [(c.id, c.audio, c.labels) for c in dataset.clips] == [
        ("0", str(folder / "a.wav"), [0, 1]), ("1", str(folder / "sub" / "b.wav"), [1])]
    reasons = {m.id: m.reason for m in dataset.missing}
    assert reasons == {"2": f"file not found: {folder / 'gone.wav'}", "3": "no audio in row 3"}
    with pytest.raises(UserError, match="holds one dataset without splits; leave data.hf_eval_split"):
        sources.load(DataConfig(source="hf_dataset", hf_dataset=str(folder), hf_audio_column="file",
                                hf_label_column="tags", hf_test_split="test"))


def test_hf_audiofolder_tree(tmp_path):
    pytest.importorskip("datasets")
    root = tmp_path / "tree"
    for rel in ("train/cat/1.wav", "train/cat/2.wav", "train/dog/3.wav", "test/cat/4.wav", "test/dog/5.wav"):
        write_pcm(root / rel, 0.2, int(rel[-5]))
    dataset = sources.load(DataConfig(source="hf_dataset", hf_dataset=str(root), hf_test_split="test"))
    assert dataset.classes == ["cat", "dog"]  # the labels datasets infers from the folder names
    assert [(c.id, c.labels, c.audio) for c in dataset.clips] == [
        (rel, [label], str(root / rel)) for rel, label in (("train/cat/1.wav", 0), ("train/cat/2.wav", 0),
                                                          ("train/dog/3.wav", 1))]
    assert [(c.id, c.labels) for c in dataset.test_clips] == [("test/cat/4.wav", [0]), ("test/dog/5.wav", [1])]


def test_hf_dataset_test_split_without_labels_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = [tmp_path / f"{i}.wav" for i in range(3)]
    for i, path in enumerate(paths):
        write_pcm(path, 0.2, i)
    datasets.DatasetDict(train=hf_split(datasets, paths[:2], [0, 1], ["a", "b"]),
                         test=hf_split(datasets, paths[2:], [-1], ["c"])).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserError, match=r"^data.hf_test_split = 'test': no row of that split of .* has a label "
                                        r"and audio \(e.g. test/0: no label\)$"):
        sources.load(DataConfig(source="hf_dataset", hf_dataset=str(tmp_path / "saved"), hf_test_split="test"))


@pytest.mark.parametrize("settings, fragment", [
    ({"hf_dataset": ""}, "^data.hf_dataset is empty"),
    ({"hf_dataset": "/nonexistent"}, "^data.hf_dataset /nonexistent is not a folder"),
    ({"hf_label_column": "class"}, (r"^data.hf_label_column = 'class' is not a column of .*; its columns are audio, "
                                    "label, speaker$")),
    ({"hf_group_column": "spk"}, "^data.hf_group_column = 'spk' is not a column"),
    ({"hf_audio_column": "label"}, (r"^data.hf_audio_column = 'label' of .* is ClassLabel\(names=\['cat', 'dog', "
                                    r"'eel'\]\); it must be an Audio feature or a column of audio file paths$")),
    ({"hf_split": "training"}, "^data.hf_split = 'training' is not a split of .*; it has train, validation, test$"),
    ({"hf_test_split": "train"}, "name the same split of .* twice"),
])
def test_hf_dataset_settings_are_checked_in_one_line(saved_dataset, settings, fragment):
    folder, _, _ = saved_dataset
    data = DataConfig(source="hf_dataset", **{"hf_dataset": str(folder), **settings})
    with pytest.raises(UserError, match=fragment) as caught:
        sources.load(data)
    assert "\n" not in str(caught.value)


def test_hf_dataset_frames_equal_the_csv_manifests(saved_dataset, tmp_path):
    folder, files, _ = saved_dataset
    frames, _plan = stage_frames(tmp_path / "hf", "data.source=hf_dataset", f"data.hf_dataset={folder}")
    labels = {"c0": "cat", "c1": "dog", "c2": "cat", "c4": "dog"}
    manifest = write_manifest(tmp_path / "m.csv", [(files[name], [label], None) for name, label in labels.items()])
    expected, _ = stage_frames(tmp_path / "csv", f"data.manifest={manifest}")
    assert_same_frames(frames, expected, {f"train/{name[1]}": str(files[name]) for name in labels})


def test_without_the_datasets_package_the_source_says_what_to_install(saved_dataset, monkeypatch):
    folder, _, _ = saved_dataset
    without(monkeypatch, "datasets")
    with pytest.raises(UserError, match=r"^data.source = hf_dataset needs the Hugging Face datasets package "
                                        r"\(datasets is missing\); install it with `pip install "
                                        r"'audiotokens\[formats\]'`$"):
        sources.load(DataConfig(source="hf_dataset", hf_dataset=str(folder)))


# ---------------------------------------------------------------- lhotse


@pytest.fixture
def lhotse_corpus(tmp_path):
    """Two recordings of 3 s (one also gone from disk) and supervisions over them, as lhotse writes them."""
    lhotse = pytest.importorskip("lhotse")
    samples = {"r1": write_pcm(tmp_path / "rec" / "r1.wav", 3.0, 1), "r2": write_pcm(tmp_path / "rec" / "r2.wav", 3.0, 2)}
    write_pcm(tmp_path / "rec" / "r3.wav", 3.0, 3)
    recordings = [lhotse.Recording.from_file(tmp_path / "rec" / f"{r}.wav", recording_id=r) for r in ("r1", "r2", "r3")]
    recordings.append(lhotse.Recording("r4", [lhotse.AudioSource("command", [0], "sox r4.flac -t wav - |")], RATE,
                                       RATE, 1.0))
    (tmp_path / "rec" / "r3.wav").unlink()
    Seg = lhotse.SupervisionSegment
    supervisions = [
        Seg("u1", "r1", start=0.25, duration=0.5, speaker="ann", language="en", custom={"event": "dog"}),
        Seg("u2", "r1", start=1.3125, duration=1.0, speaker="bob", language="fr", custom={"event": "cat"}),
        Seg("u3", "r2", start=0.0, duration=0.75, speaker="ann", language="fr", custom={"event": ["dog", "cat"]}),
        Seg("u4", "r2", start=2.5, duration=0.5, speaker="bob", language="en"),
        Seg("u5", "r2", start=1.0, duration=0.5, speaker="cid"),  # no language
        Seg("u6", "r3", start=0.0, duration=1.0, speaker="cid", language="en"),  # its file is gone
        Seg("u7", "r9", start=0.0, duration=1.0, speaker="cid", language="en"),  # no such recording
        Seg("u8", "r1", start=2.8, duration=1.0, speaker="cid", language="en"),  # runs 0.8 s past the end
        Seg("u9", "r4", start=0.0, duration=1.0, speaker="cid", language="en"),  # audio from a command
    ]
    lhotse.RecordingSet.from_recordings(recordings).to_file(tmp_path / "recordings.jsonl.gz")
    lhotse.SupervisionSet.from_segments(supervisions).to_file(tmp_path / "supervisions.jsonl.gz")
    return tmp_path, samples, recordings, supervisions


LHOTSE_CLIPS = {"u1": ("r1", 0.25, 0.5), "u2": ("r1", 1.3125, 1.0), "u3": ("r2", 0.0, 0.75), "u4": ("r2", 2.5, 0.5)}


def lhotse_data(folder: Path, **settings) -> DataConfig:
    return DataConfig(source="lhotse", lhotse_recordings=str(folder / "recordings.jsonl.gz"),
                      lhotse_supervisions=str(folder / "supervisions.jsonl.gz"), **settings)


def test_lhotse_one_clip_per_supervision_with_its_segment(lhotse_corpus):
    folder, samples, _, _ = lhotse_corpus
    dataset = sources.load(lhotse_data(folder, lhotse_label="language"))
    assert dataset.classes == ["en", "fr"] and dataset.task == "singlelabel"
    assert [(c.id, c.labels, c.group) for c in dataset.clips] == [
        ("u1", [0], "r1"), ("u2", [1], "r1"), ("u3", [1], "r2"), ("u4", [0], "r2")]  # groups: recordings
    for clip in dataset.clips:
        recording, start, duration = LHOTSE_CLIPS[clip.id]
        first = round(start * RATE)
        assert np.array_equal(decoded_samples(clip.audio), samples[recording][first:first + round(duration * RATE)])
    reasons = {m.id: m.reason for m in dataset.missing}
    assert sorted(reasons) == ["u5", "u6", "u7", "u8", "u9"]
    assert reasons["u5"] == "no language"
    assert reasons["u6"] == f"file not found: {folder / 'rec' / 'r3.wav'}"
    assert reasons["u7"] == "recording 'r9' is in no recordings manifest"
    assert reasons["u8"] == "segment 2.8-3.8 s lies outside recording 'r1' (0-3 s)"
    assert reasons["u9"] == "recording 'r4' is a 'command' source; only audio files are read"
    assert all(m.source == str(folder / "supervisions.jsonl.gz") for m in dataset.missing)


def test_lhotse_labels_and_groups_from_any_field_or_custom_key(lhotse_corpus):
    folder, _, _, _ = lhotse_corpus
    dataset = sources.load(lhotse_data(folder, lhotse_label="event", lhotse_group="speaker"))
    assert dataset.classes == ["cat", "dog"] and dataset.task == "multilabel"
    assert [(c.id, c.labels, c.group) for c in dataset.clips] == [
        ("u1", [1], "ann"), ("u2", [0], "bob"), ("u3", [0, 1], "ann")]
    assert {m.id: m.reason for m in dataset.missing}["u4"] == "no event"
    dataset = sources.load(lhotse_data(folder, lhotse_group=""))  # speaker labels by default, no groups
    assert dataset.classes == ["ann", "bob", "cid"] and {c.group for c in dataset.clips} == {None}


def test_lhotse_cuts_count_supervisions_from_their_cut(lhotse_corpus):
    folder, _samples, recordings, supervisions = lhotse_corpus
    lhotse = pytest.importorskip("lhotse")
    cuts = lhotse.CutSet.from_manifests(recordings=lhotse.RecordingSet.from_recordings(recordings[:2]),
                                        supervisions=lhotse.SupervisionSet.from_segments(supervisions[:4]))
    cuts.trim_to_supervisions().to_file(folder / "cuts.jsonl.gz")  # a cut per supervision, starting at it
    from_cuts = sources.load(DataConfig(source="lhotse", lhotse_cuts=str(folder / "cuts.jsonl.gz"),
                                        lhotse_label="language"))
    from_sets = sources.load(lhotse_data(folder, lhotse_label="language"))
    assert [c.to_json() for c in from_cuts.clips] == [c.to_json() for c in from_sets.clips]
    assert from_cuts.classes == from_sets.classes
    with pytest.raises(UserError, match="^set either data.lhotse_cuts or data.lhotse_recordings"):
        sources.load(lhotse_data(folder, lhotse_cuts=str(folder / "cuts.jsonl.gz")))
    with pytest.raises(UserError, match=r"^data.lhotse_supervisions .*recordings.jsonl.gz is a RecordingSet, not "
                                        "a SupervisionSet$"):
        sources.load(DataConfig(source="lhotse", lhotse_recordings=str(folder / "recordings.jsonl.gz"),
                                lhotse_supervisions=str(folder / "recordings.jsonl.gz")))


def test_a_segment_is_read_without_decoding_the_rest_of_its_file(lhotse_corpus, monkeypatch):
    folder, samples, _, _ = lhotse_corpus
    clip = next(c for c in sources.load(lhotse_data(folder)).clips if c.id == "u2")
    decoded = []
    original = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, *args, **kw: decoded.append(frames) or
                        original(self, frames, *args, **kw))
    assert decoded_samples(clip.audio).shape[0] == RATE  # 1 s from 1.3125 s on
    assert sum(decoded) == RATE < samples["r1"].shape[0] - round(1.3125 * RATE)


def test_lhotse_frames_equal_the_csv_manifests(lhotse_corpus, tmp_path):
    folder, samples, _, _ = lhotse_corpus
    frames, _ = stage_frames(tmp_path / "lh", "data.source=lhotse", "data.lhotse_label=language",
                             f"data.lhotse_recordings={folder / 'recordings.jsonl.gz'}",
                             f"data.lhotse_supervisions={folder / 'supervisions.jsonl.gz'}")
    labels = {"u1": "en", "u2": "fr", "u3": "fr", "u4": "en"}
    rows = [(cut(samples[r], tmp_path / "cuts" / f"{u}.wav", start, duration), [labels[u]], r)
            for u, (r, start, duration) in LHOTSE_CLIPS.items()]
    expected, _ = stage_frames(tmp_path / "csv", f"data.manifest={write_manifest(tmp_path / 'm.csv', rows)}")
    assert_same_frames(frames, expected, {u: str(tmp_path / "cuts" / f"{u}.wav") for u in LHOTSE_CLIPS})


def test_without_lhotse_the_source_says_what_to_install(tmp_path, monkeypatch):
    without(monkeypatch, "lhotse")
    with pytest.raises(UserError, match=r"^data.source = lhotse needs the lhotse package \(lhotse is missing\); "
                                        r"install it with `pip install 'audiotokens\[formats\]'`$"):
        sources.load(DataConfig(source="lhotse", lhotse_cuts=str(tmp_path / "c.jsonl")))


# ---------------------------------------------------------------- Kaldi


def kaldi_dir(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def kaldi_corpus(tmp_path):
    """Two recordings of 2 s, a third whose file is gone, segments over them, languages and speakers."""
    audio = tmp_path / "audio"
    samples = {r: write_pcm(audio / f"{r}.flac", 2.0, seed) for seed, r in enumerate(("recA", "recB"), start=1)}
    folder = kaldi_dir(tmp_path / "data" / "train", {
        "wav.scp": f"recA {audio / 'recA.flac'}\nrecB {audio / 'recB.flac'}\nrecC {audio / 'recC.flac'}\n",
        "segments": ("spk1-a recA 0.00 0.50\n"
                     "spk2-b recA 0.75 1.60\n"
                     "spk1-c recB 0.5 -1\n"  # to the end of the recording
                     "spk2-d recB 0 1\n"  # no label
                     "spk2-g recB 1.5 1.0\n"  # ends before it starts
                     "spk3-e recC 0 1\n"  # its file is gone
                     "spk3-f recZ 0 1\n"),  # no such recording
        "utt2lang": "spk1-a en\nspk2-b fr\nspk1-c en fr\nspk3-e en\nspk3-f fr\nspk2-g fr\nspk9-z en\n",
        "utt2spk": "spk1-a spk1\nspk2-b spk2\nspk1-c spk1\nspk2-d spk2\nspk3-e spk3\nspk3-f spk3\n",
    })
    return folder, samples


KALDI_CLIPS = {"spk1-a": ("recA", 0.0, 0.5), "spk2-b": ("recA", 0.75, 0.85), "spk1-c": ("recB", 0.5, 1.5)}


def test_kaldi_segments_labels_speaker_groups_and_what_is_left_out(kaldi_corpus):
    folder, samples = kaldi_corpus
    dataset = sources.load(DataConfig(source="kaldi", kaldi_dir=str(folder), kaldi_labels="utt2lang"))
    assert dataset.classes == ["en", "fr"] and dataset.task == "multilabel"
    assert [(c.id, c.labels, c.group) for c in dataset.clips] == [
        ("spk1-a", [0], "spk1"), ("spk2-b", [1], "spk2"), ("spk1-c", [0, 1], "spk1")]
    for clip in dataset.clips:
        recording, start, duration = KALDI_CLIPS[clip.id]
        first = round(start * RATE)
        assert np.array_equal(decoded_samples(clip.audio), samples[recording][first:first + round(duration * RATE)])
    reasons = {m.id: m.reason for m in dataset.missing}
    assert reasons == {"spk2-d": "no label in utt2lang",
                       "spk3-e": f"file not found: {folder.parent.parent / 'audio' / 'recC.flac'}",
                       "spk3-f": "recording 'recZ' is not in wav.scp",
                       "spk2-g": "segment 1.5-1 s is empty",
                       "spk9-z": "not in segments: no audio"}


def test_kaldi_speaker_labels_group_by_recording_and_spk2utt_gives_groups(kaldi_corpus):
    folder, _ = kaldi_corpus
    dataset = sources.load(DataConfig(source="kaldi", kaldi_dir=str(folder), kaldi_labels="utt2spk"))
    assert dataset.classes == ["spk1", "spk2", "spk3"]
    assert [(c.id, c.group) for c in dataset.clips] == [("spk1-a", "recA"), ("spk2-b", "recA"), ("spk1-c", "recB"),
                                                        ("spk2-d", "recB")]
    (folder / "utt2spk").unlink()
    (folder / "spk2utt").write_text("spk1 spk1-a spk1-c\nspk2 spk2-b spk2-d\n")
    dataset = sources.load(DataConfig(source="kaldi", kaldi_dir=str(folder), kaldi_labels="utt2lang"))
    assert [(c.id, c.group) for c in dataset.clips] == [("spk1-a", "spk1"), ("spk2-b", "spk2"), ("spk1-c", "spk1")]


def test_kaldi_without_segments_an_utterance_is_a_file(tmp_path):
    write_pcm(tmp_path / "a.wav", 0.3, 1)
    write_pcm(tmp_path / "b.wav", 0.4, 2)
    folder = kaldi_dir(tmp_path / "d", {"wav.scp": f"u1 {tmp_path / 'a.wav'}\nu2 {tmp_path / 'b.wav'}\n",
                                        "utt2label": "u1 dog\nu2 cat\n"})
    dataset = sources.load(DataConfig(source="kaldi", kaldi_dir=str(folder)))
    assert [(c.id, c.audio, c.labels, c.group) for c in dataset.clips] == [
        ("u1", str(tmp_path / "a.wav"), [1], None), ("u2", str(tmp_path / "b.wav"), [0], None)]


@pytest.mark.parametrize("files, fragment", [
    ({"wav.scp": "u1 sox x.wav -t wav - |\n"}, (r"wav.scp line 1: recording 'u1' is a piped command \('sox x.wav "
                                                r"-t wav - \|'\); audiotokens reads audio files only")),
    ({"wav.scp": "u1 -\n"}, "recording 'u1' is standard input"),
    ({"wav.scp": "u1 /data/raw.ark:1234\n"}, "recording 'u1' is an offset into an archive"),
    ({"wav.scp": "u1 a.wav\nu1 b.wav\n"}, r"wav.scp line 2: 'u1' is listed again \(first on line 1\)"),
    ({"wav.scp": "u1\n"}, "wav.scp line 1: 'u1' has no value"),
    ({"wav.scp": "u1 a.wav\n", "segments": "s1 u1 0.5\n"}, ("segments line 1: expected '<utterance> <recording> "
                                                            "<start> <end>', got 's1 u1 0.5'")),
    ({"wav.scp": "u1 a.wav\n", "segments": "s1 u1 zero 1\n"}, "segments line 1: expected"),
    ({"segments": "s1 u1 0 1\n"}, r"wav.scp not found; a Kaldi data directory \(data.kaldi_dir\) needs it"),
])
def test_kaldi_metadata_problems_are_one_line_naming_file_and_line(tmp_path, files, fragment):
    folder = kaldi_dir(tmp_path / "d", {"utt2label": "s1 x\nu1 y\n", **files})
    with pytest.raises(UserError, match=fragment) as caught:
        sources.load(DataConfig(source="kaldi", kaldi_dir=str(folder)))
    assert "\n" not in str(caught.value)


def test_kaldi_settings_are_checked(tmp_path):
    with pytest.raises(UserError, match="^data.kaldi_dir is empty"):
        sources.load(DataConfig(source="kaldi"))
    kaldi_dir(tmp_path / "d", {"wav.scp": "u1 a.wav\n"})
    with pytest.raises(UserError, match=r"^data.kaldi_labels: .*utt2label not found; name the label file"):
        sources.load(DataConfig(source="kaldi", kaldi_dir=str(tmp_path / "d")))
    kaldi_dir(tmp_path / "d", {"utt2label": "u1 x\n"})
    with pytest.raises(UserError, match=r"^no usable utterance in .* \(1 left out; first: u1: file not found"):
        sources.load(DataConfig(source="kaldi", kaldi_dir=str(tmp_path / "d")))


def test_kaldi_frames_equal_the_csv_manifests(kaldi_corpus, tmp_path):
    folder, samples = kaldi_corpus
    frames, plan = stage_frames(tmp_path / "k", "data.source=kaldi", f"data.kaldi_dir={folder}",
                                "data.kaldi_labels=utt2lang")
    labels = {"spk1-a": ["en"], "spk2-b": ["fr"], "spk1-c": ["en", "fr"]}
    rows = [(cut(samples[r], tmp_path / "cuts" / f"{u}.flac", start, duration), labels[u], None)
            for u, (r, start, duration) in KALDI_CLIPS.items()]
    expected, _ = stage_frames(tmp_path / "csv", f"data.manifest={write_manifest(tmp_path / 'm.csv', rows)}")
    assert_same_frames(frames, expected, {u: str(tmp_path / "cuts" / f"{u}.flac") for u in KALDI_CLIPS})
    assert {c["id"]: c["group"] for c in plan["clips"]} == {"spk1-a": "spk1", "spk2-b": "spk2", "spk1-c": "spk1"}


def test_segment_locations_parse_back(tmp_path):
    location = audio_module.segment_location("/data/a b.wav", 1e-05, 3.0)
    assert location == "/data/a b.wav::1e-05,3.0"
    assert audio_module.parse_location(location) == audio_module.Location("/data/a b.wav", start=1e-05, duration=3.0)
    assert audio_module.parse_location("/s.parquet::7") == audio_module.Location("/s.parquet", 7)
    assert audio_module.parse_location("/d/x.arrow::sound::3") == audio_module.Location("/d/x.arrow", 3, "sound")
    assert audio_module.parse_location("/d/x::y.wav") == audio_module.Location("/d/x::y.wav")
