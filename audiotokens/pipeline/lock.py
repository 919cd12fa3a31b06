"""One writer per workdir: an advisory lock that names its holder and dies with it.

Every stage that writes artifacts runs under `workdir_lock`. The lock is `flock` on
<workdir>/.audiotokens.lock, so the kernel releases it when the holder exits in any way (kill -9 and
the out-of-memory killer included): nothing is left behind to clean up. The file records the holder's
pid and what it is doing, so a second run can say who holds the workdir. Re-entrant within a process
(`run` holds it across its stages, each of which takes it again). Shard processes of the spectrogram and
tokenize stages hold it shared instead (shards.shard_lock), so that many run at once and none beside
another stage. `wait=True` waits for the holder instead of refusing (several tune processes preparing
one workdir).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from .files import write_error
from .layout import Layout

_held: dict[Path, int] = {}  # workdir -> nesting depth in this process


@contextlib.contextmanager
def workdir_lock(workdir: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    workdir = Path(workdir).resolve()
    if _held.get(workdir):
        _held[workdir] += 1
        try:
            yield
        finally:
            _held[workdir] -= 1
        return
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        handle = open(Layout(workdir).lock, "a+")  # noqa: SIM115 - held open for the lock's lifetime below
    except OSError as exc:
        raise write_error(workdir, exc) from None
    with handle:  # closing releases the flock
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            # shard processes share the lock without naming themselves here (shards.shard_lock)
            holder = handle.read().strip() or f"another process (shard processes? see {Layout().shard_locks}/)"
            raise UserError(f"workdir {workdir} is in use by {holder}; wait for it to finish, or give this "
                            "run its own --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"audiotokens {what} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})")
        handle.flush()
        _held[workdir] = 1
        try:
            yield
        finally:
            _held.pop(workdir, None)
            handle.seek(0)
            handle.truncate()
