"""scripts/bench_audioset.py: ids, the class mapping and the written AudioSet / parquet copies of a tiny
benchmark manifest, read back through the tool's own AudioSet and parquet sources."""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audioset_metadata import AUDIOSET

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_audioset as ba

from audiotokens.data.sources.audio_index import ytids_of_stem
from audiotokens.data.sources.audioset import load_audioset, read_segments
from audiotokens.data.sources.hf_parquet import load_hf_parquet

needs_metadata = pytest.mark.skipif(not (AUDIOSET / "class_labels_indices.csv").is_file(),
                                    reason="real AudioSet metadata not present")
YTID = re.compile(r"^[A-Za-z0-9_-]{10}[AEIMQUYcgkosw048]$")


def test_ids_are_youtube_like_distinct_seeded_and_avoid_given_ids():
    first = ba.youtube_ids(500, seed=3, avoid=set())
    assert all(YTID.match(i) for i in first) and len(set(first)) == 500
    assert ba.youtube_ids(500, seed=3, avoid=set()) == first
    assert ba.youtube_ids(500, seed=4, avoid=set()) != first
    avoided = set(first[:10])
    again = ba.youtube_ids(500, seed=3, avoid=avoided)
    assert not avoided & set(again)
    # the tool's audio index must recognise the file stems written for these ids
    assert all(i in ytids_of_stem(i) for i in first)


@needs_metadata
def test_every_benchmark_class_maps_to_its_real_audioset_mid():
    with open(AUDIOSET / "class_labels_indices.csv", newline="", encoding="utf-8") as handle:
        real = {row["display_name"]: row["mid"] for row in csv.DictReader(handle)}
    mids = ba.class_mids(AUDIOSET / "class_labels_indices.csv", set(ba.AUDIOSET_CLASSES))
    assert len({mid for _, mid in mids.values()}) == len(mids) == 14
    for display, mid in mids.values():
        assert real[display] == mid


@needs_metadata
def test_real_ids_are_read_from_the_segment_csvs():
    ids = ba.real_ids(AUDIOSET)
    assert "--PJHxphWEs" in ids and not any(i.startswith("#") for i in ids)


def make_manifest(folder: Path) -> Path:
    """4 short 44.1 kHz clips in 3 groups; the last clip carries two labels."""
    rng = np.random.default_rng(0)
    rows = [("a.flac", "piano", "g1"), ("b.flac", "cello", "g1"), ("c.flac", "speech", "g2"),
            ("d.flac", "drums;speech", "g3")]
    (folder / "audio").mkdir(parents=True)
    for name, _, _ in rows:
        sf.write(folder / "audio" / name, 0.3 * rng.standard_normal(4410), 44100, subtype="PCM_16")
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows((f"audio/{name}", label, group) for name, label, group in rows)
    return folder / "manifest.csv"


@needs_metadata
def test_tiny_set_reads_back_through_both_sources(tmp_path):
    manifest = make_manifest(tmp_path / "bench")
    out = tmp_path / "out"
    assert ba.main([str(manifest), str(out), "--eval-share", "0.3", "--missing-share", "0.25",
                    "--shards", "1", "--metadata", str(AUDIOSET)]) == 0
    meta = out / "audioset"
    train_rows = read_segments(meta / "balanced_train_segments.csv")
    eval_rows = read_segments(meta / "eval_segments.csv")
    assert len(train_rows) + len(eval_rows) == 4 and train_rows and eval_rows
    header = (meta / "eval_segments.csv").read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in header)
    by_id = {row.ytid: row for row in train_rows + eval_rows}
    assert all(YTID.match(i) and i not in ba.real_ids(AUDIOSET) for i in by_id)
    assert all(row.end - row.start == 10 for row in by_id.values())
    assert sorted(len(row.mids) for row in by_id.values()) == [1, 1, 1, 2]
    assert {"/m/09x0r", "/m/02hnl"} in [set(row.mids) for row in by_id.values()]

    train, evaluation, classes, missing = load_audioset(
        str(meta / "balanced_train_segments.csv"), str(meta / "audio"), str(meta / "class_labels_indices.csv"),
        eval_segments=str(meta / "eval_segments.csv"))
    assert len(classes.mids) == 527
    assert len(missing) == 1 and "no audio file" in missing[0].reason  # one of 4 clips removed
    present = {clip.id: clip for clip in train + evaluation}
    assert len(present) == 3
    for clip in present.values():
        info = sf.info(clip.audio)
        assert (info.samplerate, info.subtype, round(info.duration, 3)) == (48000, "PCM_24", 0.1)
        assert Path(clip.audio).parent.name == clip.id[:2]
        assert Path(clip.audio).parents[1].name == ("eval" if clip in evaluation else "bal_train")

    p_train, p_eval, p_classes, p_missing = load_hf_parquet(
        str(out / "parquet/data/bal_train/*.parquet"), str(meta / "class_labels_indices.csv"),
        eval_pattern=str(out / "parquet/data/eval/*.parquet"))
    assert p_classes.mids == classes.mids and not p_missing
    assert {c.id: c.labels for c in p_train} == {c.id: c.labels for c in train}
    assert {c.id: c.labels for c in p_eval} == {c.id: c.labels for c in evaluation}
