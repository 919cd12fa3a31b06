"""Kaldi / ESPnet data directories: wav.scp, an optional segments file, and a label file utt2<name>.

data.kaldi_dir is the directory, data.kaldi_labels the label file in it (utt2label by default; utt2spk,
utt2lang or any utt2<name>): `<utterance> <label> [<label> ...]`, several labels making the task
multi-label. Every file is a Kaldi table: one `<key> <value>` per line, whitespace-separated.
Decisions:
- utterances: the lines of `segments` (`<utterance> <recording> <start> <end>`, seconds; an end of -1
  means the end of the recording) when it exists, each a segment of its recording's file that decoding
  seeks to ("<path>::<start>,<duration>"); otherwise the recordings of wav.scp, each a whole file.
- wav.scp must name files. A piped command (`... |`), standard input (`-`) or an offset into an archive
  (`foo.ark:123`) is refused in one line: write the audio to files first. Relative paths are relative to
  the current directory, as Kaldi's tools read them.
- groups (for split.strategy = group, and auto): the speakers of utt2spk (or spk2utt), so a speaker stays
  on one side of the split; when the labels are themselves utt2spk, the recordings of `segments` (none
  without it).
- an utterance without a label, one whose recording is not in wav.scp or whose file does not exist, a
  labelled utterance in neither segments nor wav.scp, and a segment that ends before it starts are left
  out and reported; only "no clip at all" is fatal. A malformed or repeated line is an error naming the
  file and line.
- the class list is the sorted set of labels in the label file.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from ...errors import UserError
from ..audio import segment_location
from .audio_files import missing_reason
from .records import Clip, Dataset, Missing, detect_task
from .source import Source

log = logging.getLogger("audiotokens")

SPEAKER_LABELS = "utt2spk"
_ARCHIVE_OFFSET = re.compile(r":\d+$")  # Kaldi's "foo.ark:123": a position inside an archive


@dataclass
class Entry:
    value: str
    line: int


@dataclass
class Utterance:
    id: str
    recording: str
    start: float = 0.0
    end: float | None = None  # None: the whole recording (no segments file); -1: to its end


def read_table(path: Path, required: bool = True) -> dict[str, Entry]:
    """key -> (rest of the line, line number) of a Kaldi table file; {} for an absent optional file."""
    if not path.is_file():
        if required:
            raise UserError(f"{path} not found; a Kaldi data directory (data.kaldi_dir) needs it")
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    table: dict[str, Entry] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        key, value = parts[0], parts[1].strip() if len(parts) > 1 else ""
        if not value:
            raise UserError(f"{path} line {number}: '{key}' has no value; each line is '<key> <value>'")
        if key in table:
            raise UserError(f"{path} line {number}: '{key}' is listed again (first on line {table[key].line})")
        table[key] = Entry(value, number)
    return table


def recording_files(wav_scp: dict[str, Entry], path: Path) -> dict[str, str]:
    """recording -> absolute file path; anything that is not a plain file name is refused."""
    files = {}
    for recording, entry in wav_scp.items():
        what = _not_a_file(entry.value)
        if what:
            raise UserError(f"{path} line {entry.line}: recording '{recording}' is {what} ('{entry.value}'); "
                            "audiotokens reads audio files only: write each recording to a file and list the "
                            "files in wav.scp")
        files[recording] = os.path.abspath(entry.value)
    return files


def _not_a_file(value: str) -> str:
    if value.endswith("|"):
        return "a piped command"
    if value == "-":
        return "standard input"
    if _ARCHIVE_OFFSET.search(value) and not os.path.exists(value):
        return "an offset into an archive"
    return ""


def read_segments(path: Path) -> list[Utterance] | None:
    """The utterances of `segments` (None when the directory has none)."""
    if not path.is_file():
        return None
    utterances = []
    for utterance, entry in read_table(path).items():
        fields = entry.value.split()
        try:
            if len(fields) != 3:
                raise ValueError
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise UserError(f"{path} line {entry.line}: expected '<utterance> <recording> <start> <end>', got "
                            f"'{utterance} {entry.value}'") from None
        utterances.append(Utterance(utterance, fields[0], start, end))
    return utterances


def load_kaldi(folder_setting: str, labels_name: str) -> Dataset:
    folder = _folder(folder_setting)
    labels_path = folder / labels_name
    if not labels_name or not labels_path.is_file():
        raise UserError(f"data.kaldi_labels: {labels_path} not found; name the label file of {folder} "
                        "(utt2spk, utt2lang, any utt2<name>)")
    wav_path = folder / "wav.scp"
    wav_scp = read_table(wav_path)
    files = recording_files(wav_scp, wav_path)
    segments = read_segments(folder / "segments")
    utterances = segments if segments is not None else [Utterance(r, r) for r in wav_scp]
    labels = {utt: list(dict.fromkeys(entry.value.split())) for utt, entry in read_table(labels_path).items()}
    groups = _groups(folder, labels_path, segments)
    classes = sorted({label for names in labels.values() for label in names})
    index = {name: i for i, name in enumerate(classes)}
    clips, missing = [], []
    listed = "segments" if segments is not None else "wav.scp"
    for utterance in utterances:
        if utterance.id not in labels:
            missing.append(Missing(utterance.id, f"no label in {labels_path.name}", str(folder / listed)))
            continue
        audio, why = _location(utterance, files)
        if audio is None:
            missing.append(Missing(utterance.id, why, str(folder / listed)))
            continue
        clips.append(Clip(utterance.id, audio, sorted(index[name] for name in labels[utterance.id]),
                          groups.get(utterance.id)))
    known = {utterance.id for utterance in utterances}
    missing += [Missing(utt, f"not in {listed}: no audio", str(labels_path)) for utt in labels if utt not in known]
    if not utterances:
        raise UserError(f"{folder / listed} lists no utterance")
    if not clips:
        raise UserError(f"no usable utterance in {folder} ({len(missing)} left out; first: {missing[0].id}: "
                        f"{missing[0].reason})")
    if missing:
        log.info("%s: %d utterances left out (no label, no audio; listed in the split report)", folder, len(missing))
    return Dataset("kaldi", clips, classes, detect_task(clip.labels for clip in clips), missing=missing)


def _folder(setting: str) -> Path:
    if not setting:
        raise UserError("data.kaldi_dir is empty; set it to a Kaldi data directory (wav.scp, utt2<labels>)")
    folder = Path(setting)
    if not folder.is_dir():
        raise UserError(f"data.kaldi_dir {folder} is not a directory; set it to a Kaldi data directory")
    return folder


def _location(utterance: Utterance, files: dict[str, str]) -> tuple[str | None, str]:
    """The utterance's audio location, or None and why it has none."""
    path = files.get(utterance.recording)
    if path is None:
        return None, f"recording '{utterance.recording}' is not in wav.scp"
    if not os.path.isfile(path):
        return None, missing_reason(path)
    if utterance.end is None:
        return path, ""
    end = utterance.end
    if end == -1:  # Kaldi: to the end of the recording
        try:
            end = sf.info(path).duration
        except (sf.LibsndfileError, RuntimeError) as exc:
            return None, f"undecodable: {path} ({exc})"
    if end <= utterance.start or utterance.start < 0:
        return None, f"segment {utterance.start:g}-{utterance.end:g} s is empty"
    return segment_location(path, utterance.start, end - utterance.start), ""


def _groups(folder: Path, labels_path: Path, segments: list[Utterance] | None) -> dict[str, str]:
    """utterance -> group: its speaker, or its recording when the labels are the speakers."""
    if labels_path.name == SPEAKER_LABELS:
        return {utterance.id: utterance.recording for utterance in segments or []}
    utt2spk = read_table(folder / "utt2spk", required=False)
    if utt2spk:
        return {utt: entry.value.split()[0] for utt, entry in utt2spk.items()}
    spk2utt = read_table(folder / "spk2utt", required=False)
    return {utt: speaker for speaker, entry in spk2utt.items() for utt in entry.value.split()}


class KaldiSource(Source):
    """data.source = kaldi: a Kaldi data directory (data.kaldi_dir) with labels in data.kaldi_labels."""

    name = "kaldi"

    def read(self, with_eval: bool) -> Dataset:
        return load_kaldi(self.data.kaldi_dir, self.data.kaldi_labels)
