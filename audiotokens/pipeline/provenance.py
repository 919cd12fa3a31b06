"""Provenance records and the stage graph that decides what is stale.

A stage's fingerprint hashes its own parameters and its inputs' fingerprints, so changing
`cluster.n_clusters` changes the fingerprints of cluster, tokenize, train and evaluate while split and
spectrogram keep theirs. Each stage writes a record (Layout.record(stage)) with its parameters, the
fingerprints of the inputs it actually read, counts, wall time and package versions.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ..config import FILE, RUNTIME, Config, keys_with_role
from ..errors import UserError
from . import stages as stage_table
from .files import process_alive, read_json, write_json
from .layout import PARQUET_ROW_SEPARATOR, Layout

PACKAGES = ("numpy", "librosa", "soxr", "soundfile", "faiss-cpu", "torch", "transformers", "scikit-learn")


def stage_params(config: Config, stage: str) -> dict[str, Any]:
    """The flattened `section.key -> value` parameters that define a stage's output."""
    sections = stage_table.stage(stage).sections
    runtime, files = keys_with_role(RUNTIME, sections), keys_with_role(FILE, sections)
    params = {}
    for section in sections:
        for key, value in config.section(section).items():
            name = f"{section}.{key}"
            if name not in runtime:
                params[name] = value
    for name in stage_table.stage(stage).keys:  # keys of other sections: only when set, so adding one
        section, key = name.split(".", 1)         # to a stage keeps its earlier records fresh
        value = getattr(getattr(config, section), key)
        if value != getattr(type(getattr(config, section))(), key):
            params[name] = value
            files |= keys_with_role(FILE, (section,)) & {name}
    for name in sorted(files):
        if params.get(name):
            params[f"{name}#content"] = file_digest(Path(params[name]))
    if stage == "split":
        params[AUDIO_IDENTITY] = audio_identity(Layout(config.workdir))
    return params


AUDIO_IDENTITY = "data.audio#identity"  # size and mtime of every clip's audio file, as a digest
LARGE_FILE = 64 * 2**20  # output files above this are identified by size and mtime, below by content


def file_stat(path: str) -> str:
    """size:mtime_ns of an audio location (the shard of a parquet row); '' when it is gone."""
    try:
        stat = os.stat(path.split(PARQUET_ROW_SEPARATOR)[0])
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def audio_identity(layout: Layout) -> str:
    """Digest of the current identity of every clip's audio listed in split.json ('' before the split)."""
    clips = _catalogue(layout)
    if clips is None:
        return ""
    return hashlib.sha256("\n".join(file_stat(clip["audio"]) for clip in clips).encode()).hexdigest()[:16]


def audio_changes(layout: Layout) -> list[str]:
    """Audio locations whose size or mtime differ from what the split recorded (or that are gone)."""
    return [clip["audio"] for clip in _catalogue(layout) or () if file_stat(clip["audio"]) != clip.get("stat")]


def _catalogue(layout: Layout) -> list[dict[str, Any]] | None:
    """The clips of split.json; None when it is absent or not a catalogue (cut short, edited)."""
    try:
        clips = read_json(layout.split_json)["clips"] if layout.split_json.is_file() else None
    except (UserError, KeyError, TypeError):
        return None
    if not isinstance(clips, list) or not all(isinstance(clip, dict) and isinstance(clip.get("audio"), str)
                                              for clip in clips):
        return None
    return clips


def output_identity(path: Path) -> str:
    """What `status` compares to see a damaged or replaced artifact: content hash, or size+mtime if large."""
    if not path.is_file():
        return ""
    stat = path.stat()
    if stat.st_size > LARGE_FILE:
        return f"size={stat.st_size},mtime={stat.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _outputs(layout: Layout, stage: str) -> dict[str, str]:
    return {str(path.relative_to(layout.workdir)): output_identity(path) for path in layout.stage_files(stage)}


def input_fingerprint(params: dict[str, Any], inputs: dict[str, str], sections: tuple[str, ...]) -> str:
    """A stage's fingerprint as one of its readers sees it: whole, or through some sections only."""
    if sections:
        params = {k: v for k, v in params.items() if k.split(".", 1)[0] in sections}
    return fingerprint(params, inputs)


def file_digest(path: Path) -> str:
    """Content hash of a metadata file (size and mtime for very large ones); '' when absent."""
    if not path.is_file():
        return ""
    stat = path.stat()
    if stat.st_size > 256 * 2**20:
        return f"size={stat.st_size},mtime={int(stat.st_mtime)}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fingerprint(params: dict[str, Any], input_fingerprints: dict[str, str]) -> str:
    blob = json.dumps({"params": params, "inputs": input_fingerprints}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_record(layout: Layout, stage: str) -> dict[str, Any] | None:
    path = layout.record(stage)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except UserError:  # unreadable record: the stage counts as missing and will be re-run
        return None


def recorded_fingerprint(layout: Layout, stage: str) -> str:
    record = read_record(layout, stage)
    return record["fingerprint"] if record else ""


def write_record(
    layout: Layout,
    stage: str,
    config: Config,
    counts: dict[str, Any] | None = None,
    wall_time_s: float | None = None,
) -> dict[str, Any]:
    """Record that `stage` just produced its artifacts from `config` and its inputs as they are on disk."""
    params = stage_params(config, stage)
    inputs = {}
    for source in stage_table.stage(stage).inputs(config):
        upstream = read_record(layout, source.stage)
        inputs[source.stage] = input_fingerprint(upstream["params"], upstream["inputs"], source.sections) \
            if upstream else ""
    runtime = keys_with_role(RUNTIME, stage_table.stage(stage).sections)
    record = {
        "stage": stage,
        "fingerprint": fingerprint(params, inputs),
        "params": params,
        "inputs": inputs,
        "runtime": {name: value for name, value in _flat(config).items() if name in runtime},
        "counts": counts or {},
        "outputs": _outputs(layout, stage),
        "wall_time_s": round(wall_time_s, 3) if wall_time_s is not None else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
    }
    write_json(layout.record(stage), record)
    layout.failure(stage).unlink(missing_ok=True)
    return record


def _flat(config: Config) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


UNFINISHED = "unfinished"


def write_failure(layout: Layout, stage: str, message: str, running: bool = False) -> None:
    """Mark a stage failed (or, `running`, started and not finished: killed if its pid is gone later)."""
    try:
        write_json(layout.failure(stage), {"stage": stage, "error": message, "pid": os.getpid(),
                                           "state": UNFINISHED if running else "failed",
                                           "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except (OSError, UserError):
        pass  # a read-only or full workdir must not hide the original error


@dataclass
class StageState:
    stage: str
    state: str  # fresh | stale | missing | failed | running | killed
    reasons: list[str]
    expected: str  # fingerprint the current config would produce
    params: dict[str, Any]  # the parameters the current config gives the stage
    inputs: dict[str, str]  # the input fingerprints the current config gives the stage

    def line(self) -> str:
        why = f" — {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.stage}: {self.state}{why}"


def stage_states(layout: Layout, config: Config, stages=None) -> dict[str, StageState]:
    """Compare each stage's record with what the current config would produce, in graph order."""
    states: dict[str, StageState] = {}
    for entry in stage_table.STAGES:
        params = stage_params(config, entry.name)
        expected_inputs = {}
        for source in entry.inputs(config):
            upstream = states[source.stage]
            expected_inputs[source.stage] = input_fingerprint(upstream.params, upstream.inputs, source.sections)
        states[entry.name] = _judge(layout, entry.name, params, expected_inputs, states)
    return {s: states[s] for s in (stages or stage_table.NAMES)}


def _judge(layout, stage, params, expected_inputs, states) -> StageState:
    expected = fingerprint(params, expected_inputs)

    def state(name: str, reasons: list[str]) -> StageState:
        return StageState(stage, name, reasons, expected, params, expected_inputs)

    record = read_record(layout, stage)
    if layout.failure(stage).is_file():
        failure = read_json(layout.failure(stage))
        if failure.get("state") == UNFINISHED:
            return _unfinished(layout, stage, failure, state)
        error = failure.get("error", "")
        return state("failed", [error.splitlines()[0] if error else "see the log"])
    if record is None:
        return state("missing", [])
    if record["fingerprint"] == expected:
        damaged = _damaged_outputs(layout, record)
        return state("stale", damaged) if damaged else state("fresh", [])
    reasons = _param_changes(record.get("params", {}), params)
    if stage == "split" and record.get("params", {}).get(AUDIO_IDENTITY) != params.get(AUDIO_IDENTITY):
        reasons = [r for r in reasons if not r.startswith(AUDIO_IDENTITY)]
        reasons.append(_audio_change(layout))
    for name, fp in expected_inputs.items():
        if record.get("inputs", {}).get(name) != fp:
            if states[name].state == "fresh":
                reasons.append(f"{name} was re-run since")
            else:
                reasons.append(f"{name} is {states[name].state}")
    return state("stale", reasons or ["fingerprint changed"])


def _audio_change(layout: Layout) -> str:
    """Why the audio identity of the split differs: its catalogue is gone or damaged, or the audio changed."""
    name = layout.split_json.relative_to(layout.workdir)
    if not layout.split_json.is_file():
        return f"{name} is missing"
    if _catalogue(layout) is None:  # the identity of the audio cannot even be computed
        return f"{name} is damaged (not a readable clip catalogue); run `audiotokens split` again"
    changed = audio_changes(layout)
    return f"{len(changed)} clips' audio changed or is gone since the split" + (
        f" (first: {changed[0]})" if changed else "")


def _unfinished(layout: Layout, stage: str, failure: dict[str, Any], state) -> StageState:
    """Still running, or killed (any signal, the out-of-memory killer included): then say what it last logged."""
    pid = int(failure.get("pid", 0))
    if pid and process_alive(pid):
        return state("running", [f"pid {pid}, started {failure.get('failed_at', '?')}"])
    last = last_line(layout.stage_log(stage))
    why = (f"the run started {failure.get('failed_at', '?')} (pid {pid}) ended without finishing or reporting an "
           "error (killed: a signal, or the out-of-memory killer — see dmesg); "
           f"last log line: {last or 'none'}; run `audiotokens {stage}` again")
    return state("killed", [why])


def last_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


DAMAGE_LISTED = 3  # damaged files named in a status line; the rest are counted


def _damaged_outputs(layout: Layout, record: dict[str, Any]) -> list[str]:
    """Artifacts of a stage that are gone or differ from what the stage wrote."""
    reasons = []
    for name, identity in sorted(record.get("outputs", {}).items()):
        now = output_identity(layout.workdir / name)
        if now != identity:
            reasons.append(f"{name} is missing" if not now else f"{name} changed since the stage wrote it "
                           "(damaged or replaced)")
    if len(reasons) > DAMAGE_LISTED:
        reasons[DAMAGE_LISTED:] = [f"and {len(reasons) - DAMAGE_LISTED} more of its files"]
    return reasons


def _param_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            label = key.replace("#content", " (file content)")
            if key.endswith("#content"):
                changes.append(f"{label} changed")
            else:
                changes.append(f"{key} {old.get(key, '—')!r} → {new.get(key, '—')!r}")
    return changes
