#!/usr/bin/env python3
"""Re-package the rendered benchmark set (a manifest of path,label,group) the way users hold AudioSet.

Usage: scripts/bench_audioset.py MANIFEST OUT [--eval-share 0.25] [--seed 0] [--missing-share 0.05]

Writes
  OUT/audioset/balanced_train_segments.csv, eval_segments.csv   AudioSet segments CSVs (3 '#' lines, then
      `YTID, start, end, "mid,mid"`); whole groups (source scores) on one side, about eval_share on eval
  OUT/audioset/class_labels_indices.csv    copied from the real AudioSet metadata (all 527 classes)
  OUT/audioset/audio/{bal_train|eval}/{ytid[:2]}/{ytid}.flac   48 kHz 24-bit FLAC; missing_share of the
      listed clips have no file, as YouTube removals leave holes in every copy of AudioSet
  OUT/parquet/data/{bal_train,eval}/NN.parquet   the Hugging Face agkphysics/AudioSet schema (video_id,
      audio {bytes, path}, labels, human_labels) with the same FLAC bytes, present clips only
  OUT/README.txt                           what was generated, with the counts and the class mapping

The ids are synthetic YouTube ids (11 characters of [A-Za-z0-9_-], the last one from the 16 characters a
real 64-bit id can end with), drawn from the seed and never equal to an id in the real segments CSVs.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audiotokens.data.split import TRAIN, VALIDATION, group_sides

DEFAULT_METADATA = Path(__file__).resolve().parents[2] / "shared" / "audioset"
FALLBACK_METADATA = Path("/work/shared/audioset")
SEGMENT_FILES = {"bal_train": "balanced_train_segments.csv", "eval": "eval_segments.csv"}
SAMPLE_RATE = 48000
SUBTYPE = "PCM_24"

# benchmark class -> (AudioSet display name, MID). The benchmark renders General MIDI programs (see
# scripts/bench_arrange.py); each maps to the AudioSet class that names that sound most closely.
AUDIOSET_CLASSES = {
    "bass": ("Double bass", "/m/02fsn"),  # GM 32 Acoustic Bass: an upright bass, not a bass guitar
    "cello": ("Cello", "/m/01xqw"),
    "choir": ("Choir", "/m/0l14jd"),  # GM 52 Choir Aahs
    "clarinet": ("Clarinet", "/m/01wy6"),
    "drums": ("Drum kit", "/m/02hnl"),  # the General MIDI percussion channel plays a whole kit
    "flute": ("Flute", "/m/0l14j_"),
    "guitar": ("Acoustic guitar", "/m/042v_gx"),  # GM 24 Acoustic Guitar (nylon)
    "harp": ("Harp", "/m/03m5k"),
    "organ": ("Organ", "/m/013y1f"),  # GM 19 Church Organ
    "piano": ("Piano", "/m/05r5c"),  # GM 0 Acoustic Grand Piano
    "saxophone": ("Saxophone", "/m/06ncr"),
    "speech": ("Speech", "/m/09x0r"),  # espeak-ng voices
    "trumpet": ("Trumpet", "/m/07gql"),
    "violin": ("Violin, fiddle", "/m/07y_7"),
}

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ID_LAST = "AEIMQUYcgkosw048"  # an 11-character id encodes 64 bits: its last character carries only 4


@dataclass(frozen=True)
class Row:
    path: Path
    labels: tuple[str, ...]
    group: str


@dataclass(frozen=True)
class Segment:
    ytid: str
    start: float
    labels: tuple[str, ...]
    path: Path
    side: str  # bal_train | eval
    missing: bool


def youtube_ids(n: int, seed: int, avoid: set[str]) -> list[str]:
    """n distinct youtube-like ids drawn from `seed`, none of them in `avoid`."""
    rng = random.Random(seed)
    ids: list[str] = []
    taken = set(avoid)
    while len(ids) < n:
        ytid = "".join(rng.choice(ID_ALPHABET) for _ in range(10)) + rng.choice(ID_LAST)
        if ytid not in taken:
            taken.add(ytid)
            ids.append(ytid)
    return ids


def real_ids(metadata: Path) -> set[str]:
    """YouTube ids of the real segments CSVs present in `metadata` (first field of non-comment rows)."""
    ids: set[str] = set()
    for name in SEGMENT_FILES.values():
        path = metadata / name
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                ids.update(line.split(",", 1)[0].strip() for line in handle if not line.startswith("#"))
    return ids


def class_mids(class_labels: Path, classes: set[str]) -> dict[str, tuple[str, str]]:
    """benchmark class -> (display name, MID), checked against the real class_labels_indices.csv."""
    unknown = sorted(classes - set(AUDIOSET_CLASSES))
    if unknown:
        raise SystemExit(f"no AudioSet class chosen for benchmark class(es) {', '.join(unknown)}; "
                         "add them to AUDIOSET_CLASSES")
    with open(class_labels, newline="", encoding="utf-8") as handle:
        names = {row["mid"]: row["display_name"] for row in csv.DictReader(handle)}
    for name, (display, mid) in AUDIOSET_CLASSES.items():
        if names.get(mid) != display:
            raise SystemExit(f"{class_labels}: {mid} is {names.get(mid)!r}, not {display!r} ({name})")
    return {name: AUDIOSET_CLASSES[name] for name in sorted(classes)}


def read_bench_manifest(path: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [Row(path.parent / r["path"], tuple(r["label"].split(";")), r.get("group") or r["path"])
                for r in csv.DictReader(handle)]


def plan_segments(rows: list[Row], eval_share: float, missing_share: float, seed: int,
                  avoid: set[str]) -> list[Segment]:
    """Sides by whole groups, ids, start times and the clips left without audio, all from `seed`."""
    sides = group_sides([r.group for r in rows], [str(r.path) for r in rows], eval_share, seed)
    ids = youtube_ids(len(rows), seed, avoid)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 30, len(rows)) * 10.0  # AudioSet segments start on whole seconds
    missing = np.zeros(len(rows), dtype=bool)
    for side in (TRAIN, VALIDATION):  # per side, and never a whole side: each keeps some audio
        members = rng.permutation(np.flatnonzero(sides == side))
        missing[members[:min(round(missing_share * len(members)), max(len(members) - 1, 0))]] = True
    return [Segment(ytid, float(start), row.labels, row.path, "eval" if side == VALIDATION else "bal_train",
                    bool(gone))
            for row, ytid, start, side, gone in zip(rows, ids, starts, sides, missing)]


def segments_csv(segments: list[Segment], mids: dict[str, tuple[str, str]], source: str) -> str:
    """The text of a segments CSV in AudioSet's format (3 '#' lines; labels quoted, comma-separated)."""
    labels = [mids[label][1] for s in segments for label in s.labels]
    counts = (f"# num_ytids={len(segments)}, num_segs={len(segments)}, num_unique_labels={len(set(labels))}, "
              f"num_positive_labels={len(labels)}")
    lines = [f"# Segments csv created by scripts/bench_audioset.py from {source}", counts,
             "# YTID, start_seconds, end_seconds, positive_labels"]
    for s in segments:
        row_mids = ",".join(mids[label][1] for label in s.labels)
        lines.append(f'{s.ytid}, {s.start:.3f}, {s.start + 10:.3f}, "{row_mids}"')
    return "\n".join(lines) + "\n"


def flac_bytes(path: Path) -> bytes:
    """The clip resampled to 48 kHz (soxr, very high quality) as 24-bit FLAC."""
    import soundfile as sf
    import soxr

    audio, rate = sf.read(path, dtype="float64", always_2d=True)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="VHQ")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype=SUBTYPE)
    return buffer.getvalue()


def write_audio_and_shards(segments: list[Segment], mids: dict[str, tuple[str, str]], out: Path,
                           shards: dict[str, int]) -> None:
    """FLAC files of the present clips, and the same bytes in parquet shards (written shard by shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("video_id", pa.string()),
                        ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("labels", pa.list_(pa.string())), ("human_labels", pa.list_(pa.string()))])
    for side, n_shards in shards.items():
        present = [s for s in segments if s.side == side and not s.missing]
        folder = out / "parquet" / "data" / side
        folder.mkdir(parents=True, exist_ok=True)
        for shard, part in enumerate(np.array_split(np.arange(len(present)), n_shards)):
            records = {name: [] for name in schema.names}
            for s in (present[i] for i in part):
                data = flac_bytes(s.path)
                target = out / "audioset" / "audio" / side / s.ytid[:2] / f"{s.ytid}.flac"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                records["video_id"].append(s.ytid)
                records["audio"].append({"bytes": data, "path": f"{s.ytid}.flac"})
                records["labels"].append([mids[label][1] for label in s.labels])
                records["human_labels"].append([mids[label][0] for label in s.labels])
            pq.write_table(pa.table(records, schema=schema), folder / f"{shard:02d}.parquet")
            print(f"{side}: shard {shard + 1}/{n_shards} ({len(part)} clips)", flush=True)


def readme(segments: list[Segment], mids: dict[str, tuple[str, str]], args: argparse.Namespace) -> str:
    title = (f"AudioSet-format copy of {args.manifest} (scripts/bench_audioset.py, seed {args.seed}, "
             f"eval share {args.eval_share}, missing share {args.missing_share}).")
    lines = [title, ""]
    for side, name in SEGMENT_FILES.items():
        listed = [s for s in segments if s.side == side]
        gone = sum(s.missing for s in listed)
        lines.append(f"{name}: {len(listed)} clips listed, {gone} without audio (removals), "
                     f"{len(listed) - gone} in audioset/audio/{side}/ and parquet/data/{side}/")
    lines += [
        "",
        "audioset/class_labels_indices.csv: the real AudioSet list (527 classes); only the 14 below occur.",
        "audioset/audio/{bal_train|eval}/{ytid[:2]}/{ytid}.flac: 48 kHz 24-bit FLAC (resampled with soxr VHQ).",
        ("parquet/data/{bal_train,eval}/NN.parquet: Hugging Face agkphysics/AudioSet columns video_id, "
         "audio {bytes, path}, labels, human_labels; the same FLAC bytes, present clips only."),
        "Ids are synthetic (seeded) and absent from the real AudioSet segments CSVs.",
        "",
        "benchmark class -> AudioSet class (MID):",
    ]
    lines += [f"  {name:10s} -> {display} ({mid})" for name, (display, mid) in mids.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--eval-share", type=float, default=0.25)
    parser.add_argument("--missing-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metadata", type=Path, default=None,
                        help="real AudioSet metadata (class_labels_indices.csv, segments CSVs)")
    parser.add_argument("--shards", type=int, default=4, help="parquet shards for bal_train (eval: half)")
    args = parser.parse_args(argv)
    metadata = args.metadata or next(p for p in (DEFAULT_METADATA, FALLBACK_METADATA)
                                     if (p / "class_labels_indices.csv").is_file())
    rows = read_bench_manifest(args.manifest)
    mids = class_mids(metadata / "class_labels_indices.csv", {label for r in rows for label in r.labels})
    segments = plan_segments(rows, args.eval_share, args.missing_share, args.seed, real_ids(metadata))
    target = args.out / "audioset"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metadata / "class_labels_indices.csv", target / "class_labels_indices.csv")
    for side, name in SEGMENT_FILES.items():
        (target / name).write_text(segments_csv([s for s in segments if s.side == side], mids,
                                                args.manifest.name), encoding="utf-8")
    write_audio_and_shards(segments, mids, args.out, {"bal_train": args.shards,
                                                      "eval": max(1, args.shards // 2)})
    (args.out / "README.txt").write_text(readme(segments, mids, args), encoding="utf-8")
    print((args.out / "README.txt").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
