"""Data sources: AudioSet segments CSVs (the real shared metadata), audio lookup, HF parquet, manifest, folder."""
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from audioset_metadata import AUDIOSET

from audiotokens.config import DataConfig
from audiotokens.data import sources
from audiotokens.data.sources.audio_index import ytids_of_stem
from audiotokens.data.sources.audioset import read_segments
from audiotokens.errors import UserError

BALANCED = AUDIOSET / "balanced_train_segments.csv"
EVAL = AUDIOSET / "eval_segments.csv"
CLASS_LABELS = AUDIOSET / "class_labels_indices.csv"
ONTOLOGY = AUDIOSET / "ontology.json"
needs_audioset = pytest.mark.skipif(not BALANCED.is_file(), reason="shared AudioSet metadata not present")


def raw_rows(path: Path) -> list[tuple[str, list[str]]]:
    """Oracle parse of a segments CSV with plain string operations: (ytid, [mid, ...]) per data line."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        ytid = line.split(",", 1)[0]
        quoted = line[line.index('"') + 1:line.rindex('"')]
        rows.append((ytid, quoted.split(",")))
    return rows


def class_index_oracle() -> dict[str, int]:
    with open(CLASS_LABELS, newline="") as handle:
        return {row["mid"]: int(row["index"]) for row in csv.DictReader(handle)}


def write_wav(path: Path, seconds: float = 0.01, sr: int = 8000, seed: int = 0) -> np.ndarray:
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * sr)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sr)
    return samples


# ---------------------------------------------------------------- AudioSet metadata


@needs_audioset
@pytest.mark.parametrize("path, count", [(BALANCED, 22160), (EVAL, 20371)])
def test_real_segments_csv_parses_like_the_raw_lines(path, count):
    segments = read_segments(path)
    oracle = raw_rows(path)
    assert len(segments) == len(oracle) == count
    assert [(s.ytid, s.mids) for s in segments] == oracle
    assert any(s.ytid.startswith("-") for s in segments)
    assert any(len(s.mids) > 1 for s in segments)  # quoted lists with commas stayed one field
    assert all(len(s.ytid) == 11 and s.end > s.start for s in segments)


@needs_audioset
def test_real_class_list_has_every_label_of_both_files():
    from audiotokens.data.sources.class_list import build_class_list, read_class_labels

    classes = read_class_labels(CLASS_LABELS)
    oracle = class_index_oracle()
    assert len(classes.mids) == len(oracle) == 527
    assert all(classes.index[mid] == index for mid, index in oracle.items())
    used = {mid for path in (BALANCED, EVAL) for _, mids in raw_rows(path) for mid in mids}
    assert used <= set(classes.mids)
    # ontology alone: only the MIDs used, in ontology order, named by the ontology
    ontology = json.loads(ONTOLOGY.read_text())
    from_ontology = build_class_list(used, ontology=str(ONTOLOGY))
    assert from_ontology.mids == [entry["id"] for entry in ontology if entry["id"] in used]
    names = {entry["id"]: entry["name"] for entry in ontology}
    assert from_ontology.names == [names[mid] for mid in from_ontology.mids]
    assert len(ontology) > len(from_ontology.mids)


@pytest.mark.parametrize("stem, expected", [
    ("--PJHxphWEs", ["--PJHxphWEs"]),
    ("Y--PJHxphWEs", ["--PJHxphWEs"]),
    ("Y--PJHxphWEs_30.000_40.000", ["--PJHxphWEs"]),
    ("--PJHxphWEs_30_40", ["--PJHxphWEs"]),
    ("YabcdefghijY", ["abcdefghijY"]),  # 12 characters: only the Y-prefixed reading
    ("Yabcdefghij_1_2", ["Yabcdefghij"]),  # an id that itself starts with Y
    ("notes", []),
    ("--PJHxphWEs_extra", []),
])
def test_ytids_of_stem(stem, expected):
    assert ytids_of_stem(stem) == expected


@needs_audioset
def test_audioset_lookup_in_every_layout(tmp_path):
    rows = raw_rows(BALANCED)
    ids = [ytid for ytid, _ in rows]
    dash = next(i for i in ids if i.startswith("-"))
    chosen = [dash, ids[100], ids[200], ids[300], ids[400], ids[500]]
    root = tmp_path / "audio"
    layouts = [
        f"bal_train/{chosen[0][:2]}/{chosen[0]}.flac",
        f"bal_train/{chosen[1][:2]}/{chosen[1]}.flac",
        f"flat/Y{chosen[2]}.wav",
        f"Y{chosen[3]}_30.000_40.000.wav",
        f"deep/er/{chosen[4]}_0_10.ogg",
        f"{chosen[5]}.WAV",
    ]
    for k, rel in enumerate(layouts):
        write_wav(root / rel, seed=k)
    (root / f"{ids[600]}.txt").write_text("not audio")  # an id, but not an audio file
    (root / f"{ids[700]}.json").write_text("{}")
    write_wav(root / "eval" / "Yzzzzzzzzzzz.wav")  # an id that no CSV lists

    data = DataConfig(source="audioset", segments=str(BALANCED), audio_root=str(root),
                      class_labels=str(CLASS_LABELS))
    dataset = sources.load(data)
    assert sorted(c.id for c in dataset.clips) == sorted(chosen)
    assert len(dataset.missing) == len(ids) - len(chosen)
    assert {m.id for m in dataset.missing} == set(ids) - set(chosen)
    assert all("no audio file" in m.reason for m in dataset.missing)
    index = class_index_oracle()
    wanted = dict(rows)
    for clip, rel in zip(sorted(dataset.clips, key=lambda c: chosen.index(c.id)), layouts):
        assert clip.audio == os.path.abspath(root / rel)
        assert clip.labels == sorted(index[mid] for mid in wanted[clip.id])
    multilabel = any(len(wanted[ytid]) > 1 for ytid in chosen)
    assert dataset.task == ("multilabel" if multilabel else "singlelabel")
    assert len(dataset.classes) == 527 and dataset.class_ids[0] == "/m/09x0r"


@needs_audioset
def test_audioset_eval_side_shares_lookup_and_classes(tmp_path):
    train_ids = [ytid for ytid, _ in raw_rows(BALANCED)][:3]
    eval_ids = [ytid for ytid, _ in raw_rows(EVAL)][:2]
    for ytid in train_ids:
        write_wav(tmp_path / "bal_train" / ytid[:2] / f"{ytid}.flac")
    for ytid in eval_ids:
        write_wav(tmp_path / "eval" / ytid[:2] / f"{ytid}.flac")
    data = DataConfig(source="audioset", segments=str(BALANCED), eval_segments=str(EVAL),
                      audio_root=str(tmp_path), class_labels=str(CLASS_LABELS))
    dataset = sources.load(data, with_eval=True)
    assert [c.id for c in dataset.clips] == train_ids
    assert [c.id for c in dataset.eval_clips] == eval_ids
    assert len(dataset.missing) == 22160 - 3 + 20371 - 2


@needs_audioset
def test_audioset_none_found_is_fatal(tmp_path):
    write_wav(tmp_path / "Yzzzzzzzzzzz.wav")
    data = DataConfig(source="audioset", segments=str(BALANCED), audio_root=str(tmp_path),
                      class_labels=str(CLASS_LABELS))
    with pytest.raises(UserError, match="no audio found"):
        sources.load(data)


def small_segments(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "segments.csv"
    path.write_text("# Segments csv\n# num_ytids=3\n# YTID, start_seconds, end_seconds, positive_labels\n"
                    + "\n".join(lines) + "\n")
    return path


def test_audioset_duplicates_kept_first_and_reported(tmp_path):
    path = small_segments(tmp_path, [
        '-aaaaaaaaaa, 0.000, 10.000, "/m/a,/m/b"',
        'bbbbbbbbbbb, 0.000, 10.000, "/m/b"',
        '-aaaaaaaaaa, 20.000, 30.000, "/m/c"',
    ])
    for ytid in ("-aaaaaaaaaa", "bbbbbbbbbbb"):
        write_wav(tmp_path / "audio" / f"{ytid}.wav")
    dataset = sources.load(DataConfig(source="audioset", segments=str(path), audio_root=str(tmp_path / "audio")))
    # no class list given: the MIDs present, sorted
    assert dataset.classes == ["/m/a", "/m/b", "/m/c"]
    assert [(c.id, c.labels) for c in dataset.clips] == [("-aaaaaaaaaa", [0, 1]), ("bbbbbbbbbbb", [1])]
    assert [(m.id, "duplicate" in m.reason and "line 6" in m.reason) for m in dataset.missing] == [
        ("-aaaaaaaaaa", True)]
    assert dataset.task == "multilabel"


@needs_audioset
def test_audioset_unknown_label_names_mid_file_and_line(tmp_path):
    path = small_segments(tmp_path, ['-aaaaaaaaaa, 0.000, 10.000, "/m/09x0r"',
                                     'bbbbbbbbbbb, 0.000, 10.000, "/m/09x0r,/m/notaclass"'])
    write_wav(tmp_path / "audio" / "-aaaaaaaaaa.wav")
    data = DataConfig(source="audioset", segments=str(path), audio_root=str(tmp_path / "audio"),
                      class_labels=str(CLASS_LABELS))
    with pytest.raises(UserError, match=r"segments\.csv line 5: label /m/notaclass"):
        sources.load(data)


def test_audioset_malformed_row_is_an_error(tmp_path):
    path = small_segments(tmp_path, ['-aaaaaaaaaa, zero, 10.000, "/m/a"'])
    write_wav(tmp_path / "audio" / "-aaaaaaaaaa.wav")
    with pytest.raises(UserError, match=r"line 4: start/end"):
        sources.load(DataConfig(source="audioset", segments=str(path), audio_root=str(tmp_path / "audio")))


# ---------------------------------------------------------------- Hugging Face parquet


def wav_bytes(samples: np.ndarray, sr: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sr, format="WAV")
    return buffer.getvalue()


def write_shard(path: Path, rows: list[dict]) -> None:
    table = pa.table({
        "video_id": [r["video_id"] for r in rows],
        "audio": [{"bytes": r["bytes"], "path": f"{r['video_id']}.wav"} for r in rows],
        "labels": [r["labels"] for r in rows],
        "human_labels": [r["names"] for r in rows],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_hf_parquet_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    audio = {name: rng.uniform(-0.5, 0.5, 400).astype(np.float32) for name in ("a", "b", "c", "d")}
    shard0 = [
        {"video_id": "-xxxxxxxxxa", "bytes": wav_bytes(audio["a"]), "labels": ["/m/2", "/m/1"],
         "names": ["Two", "One"]},
        {"video_id": "xxxxxxxxxxb", "bytes": wav_bytes(audio["b"]), "labels": ["/m/1"], "names": ["One"]},
        {"video_id": "xxxxxxxxxxe", "bytes": wav_bytes(audio["b"]), "labels": [], "names": []},
    ]
    shard1 = [
        {"video_id": "xxxxxxxxxxc", "bytes": wav_bytes(audio["c"]), "labels": ["/m/3"], "names": ["Three"]},
        {"video_id": "-xxxxxxxxxa", "bytes": wav_bytes(audio["d"]), "labels": ["/m/3"], "names": ["Three"]},
    ]
    write_shard(tmp_path / "data" / "bal_train" / "00.parquet", shard0)
    write_shard(tmp_path / "data" / "bal_train" / "01.parquet", shard1)
    read_columns = []
    real_read_table = pq.read_table
    monkeypatch.setattr(pq, "read_table",
                        lambda path, columns=None, **kw: read_columns.append(columns) or real_read_table(
                            path, columns=columns, **kw))

    data = DataConfig(source="hf_parquet", parquet=str(tmp_path / "data" / "bal_train" / "*.parquet"))
    dataset = sources.load(data)
    assert all(columns is not None and "audio" not in columns for columns in read_columns)
    assert dataset.class_ids == ["/m/1", "/m/2", "/m/3"] and dataset.classes == ["One", "Two", "Three"]
    assert dataset.task == "multilabel"
    assert [(c.id, c.labels) for c in dataset.clips] == [("-xxxxxxxxxa", [0, 1]), ("xxxxxxxxxxb", [0]),
                                                         ("xxxxxxxxxxc", [2])]
    reasons = {m.id: m.reason for m in dataset.missing}
    assert set(reasons) == {"xxxxxxxxxxe", "-xxxxxxxxxa"}
    assert "no labels" in reasons["xxxxxxxxxxe"] and "duplicate" in reasons["-xxxxxxxxxa"]
    # the location points at the row whose bytes decode to that clip's audio
    for clip, name in zip(dataset.clips, ("a", "b", "c")):
        shard, row = sources.split_location(clip.audio)
        assert os.path.isabs(shard)
        cell = real_read_table(shard, columns=["audio"]).column("audio")[row].as_py()
        decoded, sr = sf.read(io.BytesIO(cell["bytes"]), dtype="float32")
        assert sr == 16000 and np.allclose(decoded, audio[name], atol=1e-4)


@needs_audioset
def test_hf_parquet_with_class_labels_file(tmp_path):
    write_shard(tmp_path / "s.parquet", [{"video_id": "xxxxxxxxxxa", "bytes": wav_bytes(np.zeros(100)),
                                          "labels": ["/m/09x0r", "/t/dd00088"], "names": ["Speech", "x"]}])
    dataset = sources.load(DataConfig(source="hf_parquet", parquet=str(tmp_path / "*.parquet"),
                                      class_labels=str(CLASS_LABELS)))
    index = class_index_oracle()
    assert len(dataset.classes) == 527
    assert dataset.clips[0].labels == sorted([index["/m/09x0r"], index["/t/dd00088"]])


def test_hf_parquet_errors(tmp_path):
    with pytest.raises(UserError, match="matches no file"):
        sources.load(DataConfig(source="hf_parquet", parquet=str(tmp_path / "*.parquet")))
    pq.write_table(pa.table({"video_id": ["a"], "labels": [["/m/1"]]}), tmp_path / "noaudio.parquet")
    with pytest.raises(UserError, match="lacks column.*audio"):
        sources.load(DataConfig(source="hf_parquet", parquet=str(tmp_path / "noaudio.parquet")))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="not a readable parquet"):
        sources.load(DataConfig(source="hf_parquet", parquet=str(tmp_path / "bad.parquet")))


# ---------------------------------------------------------------- manifest


def manifest_dataset(tmp_path: Path, text: str, files=(), delimiter=";"):
    for name in files:
        write_wav(tmp_path / name)
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return sources.load(DataConfig(source="manifest", manifest=str(path), label_delimiter=delimiter))


def test_manifest_multilabel_groups_and_missing_files(tmp_path):
    text = ("path,label,group\n"
            "clips/a.wav,dog;cat,s1\n"
            "clips/b.wav, bird ,s2\n"
            "clips/gone.wav,cat,s1\n"
            "c.flac,dog; dog ;,\n")
    dataset = manifest_dataset(tmp_path, text, ["clips/a.wav", "clips/b.wav", "c.flac"])
    assert dataset.classes == ["bird", "cat", "dog"]  # sorted labels of every row
    assert dataset.task == "multilabel"
    assert [(c.id, c.labels, c.group) for c in dataset.clips] == [
        ("clips/a.wav", [2, 1], "s1"), ("clips/b.wav", [0], "s2"), ("c.flac", [2], None)]
    assert dataset.clips[0].audio == os.path.abspath(tmp_path / "clips" / "a.wav")
    assert [m.id for m in dataset.missing] == ["clips/gone.wav"]
    assert "file not found" in dataset.missing[0].reason


def test_manifest_single_label_and_other_delimiter(tmp_path):
    dataset = manifest_dataset(tmp_path, "label,path\nrock;pop,a.wav\njazz,b.wav\n", ["a.wav", "b.wav"],
                               delimiter="|")
    assert dataset.classes == ["jazz", "rock;pop"] and dataset.task == "singlelabel"
    dataset = manifest_dataset(tmp_path, "path,label\na.wav,rock|pop\nb.wav,jazz\n", ["a.wav", "b.wav"],
                               delimiter="|")
    assert dataset.classes == ["jazz", "pop", "rock"] and dataset.task == "multilabel"


@pytest.mark.parametrize("text, fragment", [
    ("file,label\na.wav,x\n", r"manifest\.csv.*lacks column\(s\) path"),
    ("path,group\na.wav,x\n", "lacks column.*label"),
    ("path,label\na.wav,x\nb.wav,y\na.wav,z\n", r"line 4: a\.wav is listed again \(first on line 2\)"),
    ("path,label\na.wav,x\nb.wav, ; \n", r"line 3: no label for b\.wav"),
    ("path,label\n,x\n", "line 2: empty path"),
    ("", "is empty"),
    ("path,label\n", "lists no clips"),
    ("path,label\na.wav\n", "line 2: 1 column"),
])
def test_manifest_errors_name_file_and_row(tmp_path, text, fragment):
    with pytest.raises(UserError, match=fragment):
        manifest_dataset(tmp_path, text, ["a.wav", "b.wav"])


def test_manifest_unreadable_and_all_missing(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"path,label\n\xff\xfe.wav,x\n")
    with pytest.raises(UserError, match="not UTF-8"):
        sources.load(DataConfig(source="manifest", manifest=str(path)))
    with pytest.raises(UserError, match="none of the 1 files"):
        manifest_dataset(tmp_path, "path,label\nnothere.wav,x\n")
    with pytest.raises(UserError, match="not found"):
        sources.load(DataConfig(source="manifest", manifest=str(tmp_path / "absent.csv")))


# ---------------------------------------------------------------- folder per class


def test_folder_per_class(tmp_path):
    root = tmp_path / "data"
    for rel in ("dog/1.wav", "dog/sub/2.flac", "cat/3.ogg", "cat/4.WAV", "bird/5.aiff"):
        samples = np.zeros(800, dtype=np.float32)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, samples, 8000)
    (root / "cat" / "readme.txt").write_text("x")
    (root / "empty").mkdir()
    (root / "cat" / ".hidden.wav").write_bytes(b"")
    write_wav(root / "loose.wav")
    dataset = sources.load(DataConfig(source="folder", folder=str(root)))
    assert dataset.classes == ["bird", "cat", "dog"] and dataset.task == "singlelabel"
    assert [(c.id, c.labels) for c in dataset.clips] == [
        ("bird/5.aiff", [0]), ("cat/3.ogg", [1]), ("cat/4.WAV", [1]), ("dog/1.wav", [2]), ("dog/sub/2.flac", [2])]
    assert all(os.path.isfile(c.audio) and os.path.isabs(c.audio) for c in dataset.clips)
    with pytest.raises(UserError, match="not a directory"):
        sources.load(DataConfig(source="folder", folder=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="no audio files"):
        sources.load(DataConfig(source="folder", folder=str(root / "empty")))


@pytest.mark.parametrize("settings, fragment", [
    ({"source": "manifest"}, "data.manifest is empty"),
    ({"source": "folder"}, "data.folder is empty"),
    ({"source": "audioset"}, "data.segments is empty"),
    ({"source": "audioset", "segments": "/nonexistent.csv"}, "data.segments /nonexistent.csv not found"),
    ({"source": "hf_parquet"}, "data.parquet is empty"),
    ({"source": "hf_dataset"}, "data.hf_dataset is empty"),
    ({"source": "lhotse"}, "data.lhotse_recordings is empty"),
    ({"source": "kaldi"}, "data.kaldi_dir is empty"),
])
def test_unset_source_keys_are_named(settings, fragment):
    with pytest.raises(UserError, match=fragment):
        sources.load(DataConfig(**settings))


@pytest.mark.parametrize("settings, with_eval, fragment", [
    ({"source": "nemo"}, False, ("^'data.source' must be one of manifest, folder, audioset, hf_parquet, hf_dataset, "
                                 "lhotse, kaldi, got 'nemo'$")),
    ({"source": "manifest", "manifest": "m.csv"}, True, "^data.source=manifest has no eval side of its own"),
    ({"source": "folder", "folder": "f"}, True, "^data.source=folder has no eval side of its own"),
    ({"source": "audioset", "segments": "s.csv"}, True, "^data.eval_segments is empty; set it to the eval segments"),
    ({"source": "hf_parquet", "parquet": "*.parquet"}, True, "^data.eval_parquet is empty; set it to a glob"),
    ({"source": "hf_dataset", "hf_dataset": "d"}, True, ("^data.hf_eval_split is empty; set it to the name of the "
                                                         "dataset's validation split")),
    ({"source": "lhotse"}, True, "^data.source=lhotse has no eval side of its own"),
    ({"source": "kaldi"}, True, "^data.source=kaldi has no eval side of its own"),
])
def test_the_source_is_looked_up_and_only_its_own_eval_side_is_loaded(settings, with_eval, fragment):
    with pytest.raises(UserError, match=fragment) as caught:
        sources.load(DataConfig(**settings), with_eval=with_eval)
    assert "\n" not in str(caught.value)


def test_audio_extensions_follow_libsndfile():
    assert {"wav", "flac", "ogg", "aiff", "au"} <= sources.AUDIO_EXTENSIONS
    assert ("mp3" in sources.AUDIO_EXTENSIONS) == ("MP3" in sf.available_formats())
    assert sources.is_audio_file("x/Y.FLAC") and not sources.is_audio_file("x.txt")
    assert not sources.is_audio_file(".x.wav") and not sources.is_audio_file("wav")
