"""Writing artifacts safely: atomic files and folders, JSON and .npy helpers, disk errors.

Every JSON artifact is written and read here: `json_text` is the one format (indented, numpy values as
JSON numbers and lists, a final newline), JSON-lines logs (metrics.jsonl) are one compact object a line.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

# Errors that mean the disk refused a write (as opposed to a bug): reported as UserError naming the file,
# or by the CLI as one line, never as a traceback.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
DISK_REFUSED = DISK_FULL | NOT_WRITABLE


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
    if isinstance(exc, OSError) and exc.errno in DISK_REFUSED:
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


def json_text(obj: Any) -> str:
    """The text of a JSON artifact (for a plain write inside a staging folder; elsewhere use write_json)."""
    return json.dumps(obj, indent=1, default=_json_default) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj))


def read_json(path: str | Path, what: str = "", fix: str = "re-run the stage that writes it") -> Any:
    """The JSON at `path`; a missing or damaged file is a UserError (`what` says what the file is, `fix` what
    to do about damage)."""
    path = Path(path)
    if not path.is_file():
        hint = f" ({what})" if what else ""
        raise UserError(f"{path} not found{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); {fix}") from None


def read_json_or_none(path: str | Path) -> Any:
    """The JSON at `path`, or None when it is absent, half-written or damaged (e.g. a shard's metadata: the
    shard is not finished; a report a page shows only when it is there)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def jsonl_text(rows: Iterable[Any]) -> str:
    """JSON lines: one compact object a line."""
    return "".join(json.dumps(row, default=_json_default) + "\n" for row in rows)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(jsonl_text(rows))


def append_jsonl(path: str | Path, row: Any) -> None:
    with open(path, "a") as handle:
        handle.write(jsonl_text([row]))


def read_jsonl(path: str | Path, fix: str | None = None) -> list[Any]:
    """The rows of a JSON-lines file ([] when it is absent); blank lines are skipped. A line that does not
    parse (cut by a killed writer) is skipped too, or, given `fix`, a UserError naming it and saying that."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if fix is not None:
                raise UserError(f"{path} line {number} is not valid JSON; {fix}") from None
    return rows


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
        if exc.errno in DISK_REFUSED:
            raise write_error(final_dir, exc) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_dir(folder: Path) -> None:
    """Remove a folder so that no reader sees part of it: renamed aside in one step, then deleted."""
    if not folder.is_dir():
        return
    aside = folder.with_name(f"{temp_prefix(folder)}gone")
    try:
        os.replace(folder, aside)
    except OSError as exc:
        raise write_error(folder, exc) from None
    shutil.rmtree(aside, ignore_errors=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic, np.ndarray)):  # numpy numbers, booleans and arrays as JSON values
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
