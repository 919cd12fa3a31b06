"""The one place that knows artifact file names and layouts, and how to write them safely.

Layout under a workdir:
  processed/split.json              the clip catalogue (id, audio, labels, group) + classes, task, and the
                                    ids of each split (train, validation, test)
  processed/split_report.json       clips whose audio was not found, per-class counts per split
  processed/frames/frames.npy       frames of every clip, once per clip whatever the split,
                                    (total_frames, dim), memory-mappable
  processed/frames/index.json       per clip: id, offset, length; the frame spec's digest
  processed/frames/spec.json        the frame spec: every setting that defines a frame
  processed/frames/report.json      clips skipped by the spectrogram stage, with reasons
  processed/frames/shards/N-K/      while the stage runs: finished parts of shard K of N (shards.py)
  output/vocabulary/                the fitted tokenizer (vocabulary.json + codebooks.npz + report.json)
  tokenized/tokens.npy              token ids of every clip, (total_tokens, codebooks), int16 while k < 32768
  tokenized/index.json              per clip: id, offset, length; vocabulary and frame spec digests
  tokenized/stats.json, tokenized/histogram_<split>.png
  tokenized/shards/N-K/             until assembled: tokens.npy + shard.json of shard K of N
  output/model/                     portable bundle (save_pretrained + audiotokens.json + vocabulary)
  output/checkpoints/{last,best}.pt training state for --resume
  output/metrics.jsonl, output/curves.png, output/tensorboard/ (when tensorboard is installed)
  output/eval/<name>/               evaluation reports
  logs/<stage>.log                  the log of each stage's latest run
  output/baselines/<model>/<split>/ the MFCC baselines' reports (and <model>/fit.json)
A split is a view: the ids listed for it in split.json over a store (open_split). Each stage also writes
a provenance record at `Layout.record(stage)` (the stage table names it).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import stages as stage_table
from .errors import UserError

SPLITS = ("train", "validation", "test")  # test is optional: a split with no clips is absent


class Layout:
    """Paths of every artifact under one workdir."""

    def __init__(self, workdir: str | Path = "."):
        self.workdir = Path(workdir)
        self.processed = self.workdir / "processed"
        self.output = self.workdir / "output"
        self.tokenized = self.workdir / "tokenized"

    # split
    @property
    def split_json(self) -> Path:
        return self.processed / "split.json"

    @property
    def split_report(self) -> Path:
        return self.processed / "split_report.json"

    # spectrogram
    @property
    def frames_dir(self) -> Path:
        return self.processed / "frames"

    @property
    def frames(self) -> Path:
        return self.frames_dir / "frames.npy"

    @property
    def frames_index(self) -> Path:
        return self.frames_dir / "index.json"

    @property
    def frame_spec(self) -> Path:
        return self.frames_dir / "spec.json"

    @property
    def frames_report(self) -> Path:
        return self.frames_dir / "report.json"

    # cluster
    @property
    def vocabulary(self) -> Path:
        return self.output / "vocabulary"

    @property
    def cluster_report(self) -> Path:
        return self.vocabulary / "report.json"

    # tokenize
    @property
    def tokens(self) -> Path:
        return self.tokenized / "tokens.npy"

    @property
    def tokens_index(self) -> Path:
        return self.tokenized / "index.json"

    @property
    def token_stats(self) -> Path:
        return self.tokenized / "stats.json"

    def token_histogram(self, split: str) -> Path:
        return self.tokenized / f"histogram_{split}.png"

    def store(self, kind: str) -> tuple[Path, Path]:
        """(array, index) of the frames or tokens store."""
        return {"frames": (self.frames, self.frames_index), "tokens": (self.tokens, self.tokens_index)}[kind]

    # train
    @property
    def model_dir(self) -> Path:
        return self.output / "model"

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.output / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.output / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.output / "tensorboard"

    @property
    def baselines(self) -> Path:
        return self.output / "baselines"

    # evaluate
    def eval_dir(self, name: str) -> Path:
        return self.output / "eval" / name

    # provenance
    def record(self, stage: str) -> Path:
        return self.workdir / stage_table.stage(stage).record

    def stage_log(self, stage: str) -> Path:
        """The log of a stage's latest run (what `status` quotes when a run was killed)."""
        return self.workdir / "logs" / f"{stage}.log"

    def failure(self, stage: str) -> Path:
        return self.record(stage).with_name(f"{stage}.failed.json")


# ---------------------------------------------------------------- atomic writes


# Errors that mean the disk refused a write (as opposed to a bug): reported as UserError naming the file.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def write_error(path: str | Path, exc: OSError) -> UserError:
    """One line for a write the disk refused, saying what to do about it."""
    if exc.errno in DISK_FULL:
        hint = "free some space or point --workdir at a disk with room"
    else:
        hint = "check that the workdir is writable or point --workdir elsewhere"
    return UserError(f"cannot write {path}: {exc.strerror or exc}; {hint}")


LOW_SPACE = 1 << 20  # a write that fails with less free space than this left ran out of it


def disk_failure(path: str | Path, exc: BaseException) -> UserError | None:
    """The UserError for a write that failed because the disk is full or refuses writes; else None.

    Libraries report a full disk in their own ways (numpy a short write without errno, torch and
    safetensors their own exception types), so any failure while the filesystem has almost no free
    space left counts as a full disk. Call it before removing the partial output, which frees space.
    """
    if isinstance(exc, OSError) and exc.errno in DISK_FULL | NOT_WRITABLE:
        return write_error(path, exc)
    if isinstance(exc, Exception) and _free_bytes(Path(path)) < LOW_SPACE:
        return write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return None


def _free_bytes(path: Path) -> int:
    for folder in (path, *path.parents):
        try:
            stats = os.statvfs(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            break
        return stats.f_bavail * stats.f_frsize
    return LOW_SPACE


def temp_prefix(path: Path) -> str:
    """Temporary names beside `path` carry the writer's process id, so leftovers of a killed run are known."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files or folders of `path` whose writer process no longer runs (a killed stage)."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        pid = leftover.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def staging_dir(final_dir: Path) -> Path:
    """A fresh hidden folder beside final_dir for a directory artifact (then swapped in with replace_dir)."""
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final_dir)
        return Path(tempfile.mkdtemp(prefix=temp_prefix(final_dir), suffix=".tmp", dir=final_dir.parent))
    except OSError as exc:
        raise write_error(final_dir, exc) from None


@contextlib.contextmanager
def atomic_dir(final_dir: str | Path) -> Iterator[Path]:
    """Yield a staging folder beside `final_dir`; on success it replaces `final_dir`, on error it is removed.

    The directory counterpart of atomic_path (model bundle, evaluation reports); a full or read-only
    disk raises UserError naming `final_dir`.
    """
    final_dir = Path(final_dir)
    tmp = staging_dir(final_dir)
    try:
        yield tmp
        usual_permissions(tmp)
        replace_dir(tmp, final_dir)
    except BaseException as exc:
        failure = disk_failure(final_dir, exc)  # checked before the removal frees the space
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    A reader never sees a half-written file under the final name, and an interrupted writer leaves
    the previous version intact (its temporary file is removed by the next write of `path`). A full or
    read-only disk raises UserError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(tmp)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        failure = disk_failure(path, exc)
        tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise


def usual_permissions(folder: Path) -> None:
    """mkdtemp and some writers (safetensors) make private files; artifacts get what the umask allows."""
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_json_default) + "\n")


def read_json(path: str | Path, what: str = "") -> Any:
    path = Path(path)
    if not path.is_file():
        hint = f" ({what})" if what else ""
        raise UserError(f"{path} not found{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run the stage that writes it") from None


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def create_npy(path: Path, shape: tuple[int, ...], dtype) -> np.memmap:
    """A writable memory-mapped .npy (at a temporary path given by atomic_path).

    Its disk space is reserved up front: writing through a map into a sparse file on a full disk kills
    the process with SIGBUS instead of raising an error.
    """
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        _reserve_space(path)
    except OSError as exc:
        if exc.filename is None:  # so that the message names the file (atomic_path names the final one)
            exc.filename = str(path)
        raise
    return array


def _reserve_space(path: Path) -> None:
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        try:
            if size:
                os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # EINVAL/EOPNOTSUPP: cannot reserve here
                raise


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written directory into place (used for the model bundle and reports)."""
    old = final_dir.with_name(f".{final_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    try:
        if final_dir.exists():
            os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
    except OSError as exc:
        if exc.errno in DISK_FULL | NOT_WRITABLE:
            raise write_error(final_dir, exc) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------- per-split stores


@dataclass
class ClipIndex:
    """Where each clip's rows sit in a store (frames.npy / tokens.npy), and its labels.

    Clip i owns rows offsets[i] : offsets[i] + lengths[i]. Labels are class ids into `classes`. A store's
    own index holds every clip in row order without labels; a split's view (open_split) holds the split's
    clips, their rows in the store (not necessarily contiguous) and their labels from split.json.
    """

    ids: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    labels: list[list[int]]
    classes: list[str]
    task: str  # sources.records.MULTILABEL or SINGLELABEL; objectives.objective_for gives its meaning
    split: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def total_frames(self) -> int:
        return int(self.lengths.sum()) if len(self.lengths) else 0

    @classmethod
    def from_lengths(cls, ids, lengths, labels, classes, task, split="") -> ClipIndex:
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths
        return cls(list(ids), offsets, lengths, [list(map(int, x)) for x in labels], list(classes), task, split)

    def row_of(self) -> dict[str, int]:
        """Clip id -> its position in this index."""
        return {clip_id: i for i, clip_id in enumerate(self.ids)}

    def label_matrix(self) -> np.ndarray:
        """(clips, classes) 0/1 matrix."""
        matrix = np.zeros((len(self), len(self.classes)), dtype=np.float32)
        for row, labels in enumerate(self.labels):
            matrix[row, labels] = 1.0
        return matrix

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "task": self.task,
            "classes": self.classes,
            "total_frames": self.total_frames,
            "ids": self.ids,
            "offsets": self.offsets.tolist(),
            "lengths": self.lengths.tolist(),
            "labels": self.labels,
            **self.extra,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ClipIndex:
        raw = read_json(path, "run the stage that writes it first")
        known = {"split", "task", "classes", "total_frames", "ids", "offsets", "lengths", "labels"}
        return cls(
            ids=raw["ids"],
            offsets=np.asarray(raw["offsets"], dtype=np.int64),
            lengths=np.asarray(raw["lengths"], dtype=np.int64),
            labels=raw["labels"],
            classes=raw["classes"],
            task=raw["task"],
            split=raw.get("split", ""),
            extra={k: v for k, v in raw.items() if k not in known},
        )


def open_store(array_path: Path, index_path: Path) -> tuple[np.ndarray, ClipIndex]:
    """Memory-map a store's array and load its index, checking they belong together."""
    index = ClipIndex.load(index_path)
    if not array_path.is_file():
        raise UserError(f"{array_path} not found; re-run the stage that writes it")
    array = np.load(array_path, mmap_mode="r")
    if array.shape[0] != index.total_frames:
        raise UserError(
            f"{array_path} has {array.shape[0]} rows but {index_path} lists {index.total_frames}; "
            "the artifact is incomplete, re-run the stage that writes it"
        )
    return array, index


# ---------------------------------------------------------------- the frame spec


def spec_digest(spec: dict[str, Any]) -> str:
    """Digest of a frame spec (or any JSON-able settings); later artifacts carry it to refuse mixes."""
    import hashlib

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def read_frame_spec(layout: Layout) -> dict[str, Any]:
    """The frame spec the spectrogram stage wrote beside the frames."""
    return read_json(layout.frame_spec, "run `audiotokens spectrogram` first")


# ---------------------------------------------------------------- splits as views over the stores


@dataclass
class SplitPlan:
    """processed/split.json: the clip catalogue, the classes and task, and the ids of each split."""

    classes: list[str]
    task: str
    clips: list[dict[str, Any]]  # id, audio, labels, group; the spectrogram stage's work list
    splits: dict[str, list[str]]  # split name -> clip ids (absent or empty: no such split)
    raw: dict[str, Any]

    @classmethod
    def load(cls, layout: Layout) -> SplitPlan:
        path = layout.split_json
        if not path.is_file():
            raise UserError(f"{path} not found; run `audiotokens split` first")
        raw = read_json(path)
        malformed = UserError(f"{path} is malformed (needs 'classes', 'task', 'clips' with id, audio and labels, "
                              "and 'splits' of ids); re-run `audiotokens split`")
        if not isinstance(raw, dict) or not isinstance(raw.get("clips"), list) \
                or not isinstance(raw.get("splits"), dict) or not isinstance(raw.get("classes"), list) \
                or not isinstance(raw.get("task"), str):
            raise malformed
        if not all(isinstance(c, dict) and {"id", "audio", "labels"} <= c.keys() for c in raw["clips"]):
            raise malformed
        return cls(raw["classes"], raw["task"], raw["clips"],
                   {name: list(ids) for name, ids in raw["splits"].items()}, raw)

    def names(self) -> list[str]:
        """The splits that have clips, in SPLITS order."""
        return [name for name in SPLITS if self.splits.get(name)]

    def ids(self, split: str) -> list[str]:
        ids = self.splits.get(split) or []
        if not ids:
            raise UserError(f"split '{split}' has no clips in processed/split.json; splits with clips: "
                            f"{', '.join(self.names())}")
        return ids


def split_view(store: ClipIndex, plan: SplitPlan, split: str) -> ClipIndex:
    """The clips of `split` that the store holds, with their rows in the store and their labels."""
    row = store.row_of()
    labels = {clip["id"]: clip["labels"] for clip in plan.clips}
    ids = [clip_id for clip_id in plan.ids(split) if clip_id in row]
    rows = np.asarray([row[clip_id] for clip_id in ids], dtype=np.int64)
    return ClipIndex(ids, store.offsets[rows] if len(rows) else np.zeros(0, np.int64),
                     store.lengths[rows] if len(rows) else np.zeros(0, np.int64),
                     [list(labels[clip_id]) for clip_id in ids], list(plan.classes), plan.task, split,
                     dict(store.extra))


def open_split(layout: Layout, kind: str, split: str) -> tuple[np.ndarray, ClipIndex]:
    """The whole store ("frames" or "tokens") memory-mapped, and the index of one split's view of it.

    Clips of the split that the store lacks (skipped by the spectrogram stage, reported there) are left out.
    """
    array_path, index_path = layout.store(kind)
    array, store = open_store(array_path, index_path)
    view = split_view(store, SplitPlan.load(layout), split)
    if len(view) == 0:
        raise UserError(f"no clip of split '{split}' has {kind} in {array_path}; every one was skipped "
                        f"(see {layout.frames_report}) — check the audio, then re-run `audiotokens spectrogram`")
    return array, view
