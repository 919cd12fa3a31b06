"""Shards of a stage: the K-th of N deterministic slices of the clip catalogue, their locks and executors.

The spectrogram and tokenize stages split their work into N shards of consecutive clips (shard K holds
clips [K*n//N, (K+1)*n//N)); each shard writes its own part of the store under <store>/shards/N-K/, and
the stage assembles the parts in clip order into the one store, byte for byte what a single run writes.

- `audiotokens STAGE --shard K/N` computes one shard (resuming its own finished parts) and nothing else:
  no assembly, no provenance record. It holds a shared lock on the workdir (so any number of shard
  processes, on any machines sharing the filesystem, run at once while no other stage writes) and an
  exclusive lock of its own shard (a second process on the same shard is refused).
- `audiotokens STAGE` (no --shard) takes the workdir lock, computes every shard not finished yet (of the
  N already on disk, or N = 1), assembles, writes the record and removes the shard parts.
- `audiotokens STAGE --assemble` only assembles, refusing while a shard is missing or stale (made under
  other settings or inputs) (the step after a Slurm job array).
- `--executor dask` runs the unfinished shards as tasks on a dask.distributed cluster, then assembles.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import UserError
from . import stages as stage_table
from .layout import Layout
from .run import check_inputs, stage_log

log = logging.getLogger("audiotokens")

_NAME = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (K, from 0) of `count` (N)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N' with 0 <= K < N, as a Slurm array task writes $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match or not int(match[1]) < int(match[2]):
            raise UserError(f"--shard takes K/N with 0 <= K < N (e.g. 0/8), got '{text}'")
        return cls(index=int(match[1]), count=int(match[2]))

    @property
    def name(self) -> str:
        return f"{self.count}-{self.index}"

    def clip_range(self, n_clips: int) -> range:
        """The consecutive clips of this shard: the catalogue cut into `count` near-equal slices."""
        return range(self.index * n_clips // self.count, (self.index + 1) * n_clips // self.count)


def all_shards(count: int) -> list[Shard]:
    return [Shard(index=k, count=count) for k in range(count)]


def shards_on_disk(root: Path) -> dict[int, list[int]]:
    """N -> the shard indexes K that have a folder under root (root = <store>/shards)."""
    found: dict[int, list[int]] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        match = _NAME.match(folder.name)
        if match and folder.is_dir() and int(match[2]) < int(match[1]):
            found.setdefault(int(match[1]), []).append(int(match[2]))
    return found


def choose_count(root: Path, requested: int, is_current: Callable[[Shard], bool]) -> int:
    """N for a run: the one asked for, else the N whose shards on disk hold current work (most of them), else 0."""
    if requested:
        return requested
    counts = {n: sum(is_current(Shard(index=k, count=n)) for k in ks) for n, ks in shards_on_disk(root).items()}
    counts = {n: c for n, c in counts.items() if c}
    return max(counts, key=lambda n: (counts[n], -n)) if counts else 0


def pending_line(stage: str, count: int, missing: list[Shard]) -> str:
    """What `audiotokens status` says of shards on disk that are not assembled yet."""
    if not missing:
        return f"{stage} shards: all {count} finished, not assembled; run `audiotokens {stage} --assemble`"
    listed = ", ".join(str(s.index) for s in missing[:20]) + (" …" if len(missing) > 20 else "")
    return f"{stage} shards: {count - len(missing)} of {count} finished, not yet K = {listed}"


def stale_shards(root: Path, is_stale: Callable[[Shard], bool]) -> list[Shard]:
    """Shards on disk, of any N, whose work was done under other settings or inputs than the current ones."""
    return [shard for count, indexes in sorted(shards_on_disk(root).items())
            for shard in (Shard(index=k, count=count) for k in indexes) if is_stale(shard)]


def stale_message(stage: str, stale: list[Shard]) -> str:
    listed = ", ".join(f"{s.index}/{s.count}" for s in stale[:20]) + (" …" if len(stale) > 20 else "")
    return (f"{stage}: shards {listed} on disk were made with other settings or inputs than the current ones "
            f"(stale), so they are not assembled; run `audiotokens {stage}` without --assemble to compute them "
            f"again, or re-run each `audiotokens {stage} --shard K/N` with the current config, then --assemble")


def missing_message(stage: str, count: int, missing: list[Shard]) -> str:
    listed = ", ".join(str(s.index) for s in missing[:20]) + (" …" if len(missing) > 20 else "")
    return (f"{stage}: {len(missing)} of {count} shards not finished (K = {listed}); run "
            f"`audiotokens {stage} --shard K/{count}` for each, then `audiotokens {stage} --assemble`")


# ---------------------------------------------------------------- locks


@contextlib.contextmanager
def shard_lock(workdir: str | Path, stage: str, shard: Shard, share_workdir: bool = True) -> Iterator[None]:
    """Exclusive lock of one shard of a stage, with (share_workdir) a shared lock on the workdir.

    flock, like lock.workdir_lock: released by the kernel when the holder dies; on NFS Linux maps it to
    fcntl locks, which the server arbitrates between machines. A dask task runs with share_workdir=False:
    its coordinator already holds the workdir lock exclusively.
    """
    workdir = Path(workdir).resolve()
    layout = Layout(workdir)
    layout.shard_locks.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if share_workdir:
            handle = stack.enter_context(open(layout.lock, "a+"))
            if not _try_flock(handle, fcntl.LOCK_SH):
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(f"workdir {workdir} is in use by {holder}; shards run once it has finished")
        own = stack.enter_context(open(layout.shard_lock(stage, shard.name), "a+"))
        if not _try_flock(own, fcntl.LOCK_EX):
            own.seek(0)
            holder = own.read().strip() or "another process"
            raise UserError(f"shard {shard.index}/{shard.count} of {stage} in {workdir} is being computed by "
                            f"{holder}; give each process its own --shard")
        own.seek(0)
        own.truncate()
        own.write(f"audiotokens {stage} --shard {shard.index}/{shard.count} on {os.uname().nodename} "
                  f"(pid {os.getpid()}, since {time.strftime('%H:%M:%S')})")
        own.flush()
        yield


def _try_flock(handle, mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# ---------------------------------------------------------------- running shards


def run_shard(stage: str, config: Config, shard: Shard, strict: bool = False) -> dict[str, Any]:
    """`audiotokens STAGE --shard K/N`: one shard under its lock; the stage's record is left alone."""
    layout = Layout(config.workdir)
    with shard_lock(config.workdir, stage, shard):
        check_inputs(layout, config, stage, strict)
        with stage_log(layout.shard_log(stage, shard.name)):
            return stage_table.stage(stage).runner_class()(config, shard=shard).run()


def shard_task(stage: str, config: Config, shard: Shard) -> dict[str, Any]:
    """One shard as a dask task: in the worker's own process (one core), under the shard's lock only."""
    config = dataclasses.replace(config, spectrogram=dataclasses.replace(config.spectrogram, workers=1))
    with shard_lock(config.workdir, stage, shard, share_workdir=False):
        return stage_table.stage(stage).runner_class()(config, shard=shard).run()


@contextlib.contextmanager
def dask_client(scheduler: str | None) -> Iterator[Any]:
    """A client of the dask.distributed cluster at `scheduler`, or of a LocalCluster closed with it."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise UserError("--executor dask needs dask.distributed: pip install 'audiotokens[dask]'") from None
    # distributed sets its loggers to INFO when imported; its start and stop chatter would bury the progress.
    # The nanny warns when it kills a worker slow to exit at shutdown, which is harmless here.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    if not scheduler:
        with local_cluster() as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as exc:
        raise UserError(f"cannot reach the dask scheduler at {scheduler} ({exc}); check --scheduler") from None
    with client:
        yield client


def local_cluster(n_workers: int | None = None):
    """A dask LocalCluster of single-thread worker processes (default: one per core), without dask's malloc tuning.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap
    threshold: every large numpy temporary is then mapped and unmapped afresh, and the spectrogram of a
    clip took ~1.5x as long (measured on the benchmark clips). Workers of an existing cluster should be
    started without it too (dask config `distributed.nanny.pre-spawn-environ`).
    """
    import dask
    from dask.distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)


def run_on_dask(stage: str, config: Config, shards: list[Shard], client) -> None:
    """Run `shards` as tasks on the client's cluster, with a progress bar; the first failure is raised."""
    from dask.distributed import as_completed
    from tqdm import tqdm

    futures = [client.submit(shard_task, stage, config, shard, pure=False, key=f"{stage}-shard-{shard.name}")
               for shard in shards]
    with tqdm(total=len(futures), unit="shard", desc=f"{stage} on dask") as bar:
        for future in as_completed(futures):
            future.result()  # a task's exception, re-raised here
            bar.update(1)


def default_dask_count(client) -> int:
    """Shards for a fresh dask run: two per worker thread, so a slow shard does not leave workers idle."""
    return max(1, 2 * sum(client.nthreads().values()))


@dataclass(frozen=True)
class Execution:
    """How a sharded stage run gets its shards finished: the --executor, --scheduler and --assemble flags."""

    executor: str = "local"  # local | dask
    scheduler: str | None = None
    assemble_only: bool = False


def finish_shards(stage: str, config: Config, count: int, execution: Execution, *,
                  unfinished: Callable[[int], list[Shard]], compute: Callable[[list[Shard]], Any],
                  stale: Callable[[], list[Shard]] = list) -> int:
    """Get every shard of N finished: here (`compute`), as dask tasks, or (assemble only) refuse, naming the
    shards on disk that are `stale` (made under other settings) else the missing K. `count` is the N chosen
    from disk (0: none there, so 1 here or two per dask worker thread); returns N once `unfinished(N)` is
    empty."""
    chosen = count
    if execution.executor == "dask" and not execution.assemble_only:
        with dask_client(execution.scheduler) as client:
            count = count or default_dask_count(client)
            todo = unfinished(count)
            log.info("%d of %d %s shards to compute on dask", len(todo), count, stage)
            run_on_dask(stage, config, todo, client)
    else:
        count = count or 1
        todo = unfinished(count)
        if todo and execution.assemble_only:
            old = [shard for shard in stale() if shard in todo or not chosen]
            raise UserError(stale_message(stage, old) if old else missing_message(stage, count, todo))
        if todo:
            compute(todo)
    missing = unfinished(count)
    if missing:  # e.g. a dask task that returned without finishing its shard (the shard changed under it)
        raise UserError(missing_message(stage, count, missing))
    return count
