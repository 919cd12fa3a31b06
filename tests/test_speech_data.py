"""The single-label speech renderer (scripts/render_speech.py): labels and groups as requested, read by the
manifest source as a single-label set, deterministic bytes; skipped where espeak-ng is not installed."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from audiotokens.data.sources.manifest import load_manifest
from audiotokens.data.sources.records import SINGLELABEL

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "render_speech.py"
sys.path.insert(0, str(SCRIPT.parent))
import render_speech as rs

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def render(out: Path, task: str, n: int, classes: int, *options: str) -> list[dict]:
    run_script(out, task, n, classes, *options)
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_script(out: Path, task: str, n: int, classes: int, *options: str) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), task, str(n), "--classes", str(classes),
                           "--workers", "1", *options], check=True, capture_output=True, text=True).stdout


def file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@needs_espeak
@pytest.mark.parametrize("task, classes", [("speaker", rs.SPEAKERS[:3]), ("language", rs.LANGUAGES[:3])])
def test_manifest_has_the_requested_classes_and_one_group_per_sentence(tmp_path, task, classes):
    n = 2
    rows = render(tmp_path, task, n, len(classes))
    assert list(rows[0]) == ["path", "label", "group"]
    assert Counter(r["label"] for r in rows) == {name: n for name in classes}
    by_group: dict[str, list[str]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row["label"])
    assert sorted(by_group) == [f"s{j:04d}" for j in range(n)]
    assert all(sorted(labels) == sorted(classes) for labels in by_group.values())  # every class says each
    for row in rows:
        info = sf.info(tmp_path / row["path"])
        assert info.samplerate == rs.SAMPLE_RATE
        assert rs.MIN_SECONDS <= info.duration <= rs.MAX_SECONDS
    record = json.loads((tmp_path / "dataset.json").read_text())
    assert record["classes"] == list(classes)
    assert record["request"] == {"task": task, "n": n, "classes": len(classes), "seed": 0, "format": "flac"}
    assert "eSpeak NG" in record["versions"]["espeak-ng"]

    dataset = load_manifest(tmp_path / "manifest.csv")  # the tool reads it as a single-label grouped set
    assert dataset.task == SINGLELABEL
    assert sorted(dataset.classes) == sorted(classes)
    assert {clip.group for clip in dataset.clips} == set(by_group)


@needs_espeak
def test_same_arguments_give_the_same_bytes_and_another_seed_other_audio(tmp_path):
    first = render(tmp_path / "a", "language", 2, 2)
    again = render(tmp_path / "b", "language", 2, 2)
    written = file_bytes(tmp_path / "a")
    assert {"manifest.csv", "clips.csv", "dataset.json"} < set(written)
    assert written == file_bytes(tmp_path / "b")
    assert first == again
    assert "nothing to do" in run_script(tmp_path / "a", "language", 2, 2)  # a complete set is left as it is
    assert "nothing to do" not in run_script(tmp_path / "b", "language", 3, 2)
    render(tmp_path / "c", "language", 2, 2, "--seed", "1")
    assert (tmp_path / "a" / first[0]["path"]).read_bytes() != (tmp_path / "c" / first[0]["path"]).read_bytes()


def test_the_lexicon_is_parallel_and_a_sentence_says_the_same_concepts_in_every_language():
    words = rs.lexicon()
    assert len({len(w) for w in words.values()}) == 1
    for concept in (("dog", "Hund", "chien", "perro", "cane", "cão", "hond", "pies"),
                    ("very", "sehr", "très", "muy", "molto", "muito", "heel", "bardzo")):
        assert {words[language].index(word) for language, word in zip(rs.LANGUAGES, concept)} == \
            {words["en"].index(concept[0])}
    sentence = rs.make_sentence(seed=0, index=5, n_concepts=len(words["en"]))
    for language in rs.LANGUAGES:
        spoken = sentence.text(words[language]).split()
        if sentence.number is not None:
            assert spoken.pop(sentence.number_at) == str(sentence.number)
        assert spoken == [words[language][c] for c in sentence.concepts]
