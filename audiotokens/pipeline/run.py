"""Run stages with provenance: execute one, report status, re-run only what is stale."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import UserError
from . import distributed
from . import stages as stage_table
from .files import write_error
from .layout import Layout
from .lock import workdir_lock
from .provenance import stage_states, write_failure, write_record
from .stages import NAMES, input_names

log = logging.getLogger("audiotokens")

def check_inputs(layout: Layout, config: Config, stage: str, strict: bool) -> None:
    """Warn (or, strict, refuse) when a stage would read missing or stale inputs."""
    states = stage_states(layout, config)
    for name in input_names(stage, config):
        state = states[name]
        if state.state == "fresh":
            continue
        message = f"{stage} reads {name}, which is {state.state}" + (
            f" ({'; '.join(state.reasons)})" if state.reasons else "")
        if state.state in ("missing", "failed", "killed", "running"):
            raise UserError(f"{message}; run `audiotokens {name}` first")
        if strict:
            raise UserError(f"{message}; re-run `audiotokens {name}` or drop --strict")
        log.warning("%s — results will not match the current config", message)


def execute(stage: str, config: Config, strict: bool = False, **options: Any) -> dict[str, Any]:
    """Run one stage under the workdir lock, then write its provenance record (or a failure marker).

    Under torchrun, process 0 does all of that; the others only compute their share (no lock, no record,
    no log file, warnings only on the console)."""
    distributed.check_stage(stage, stage_table.stage(stage).data_parallel)
    check_settings([stage], config)
    if not distributed.launched().writer:
        log.setLevel(logging.WARNING)
        return _runner(stage, config, options).run() or {}
    with workdir_lock(config.workdir, stage):
        return _execute(stage, config, strict, **options)


def check_settings(stages: Iterable[str], config: Config) -> None:
    """Each stage's checks of what the config alone can tell (its runner's `check_settings`), all before the
    first stage starts: a setting only a late stage reads must not fail after hours of the earlier ones."""
    for name in stages:
        check = getattr(stage_table.stage(name).runner_class(), "check_settings", None)
        if check is not None:
            check(config)


def _runner(stage: str, config: Config, options: dict[str, Any]):
    return stage_table.stage(stage).runner_class()(config, **options)


def _execute(stage: str, config: Config, strict: bool, **options: Any) -> dict[str, Any]:
    layout = Layout(config.workdir)
    check_inputs(layout, config, stage, strict)
    check_writable(layout, stage)
    # Marked failed until its record is written: a run killed outright (SIGKILL, power loss) may have
    # replaced some of its artifacts but not all, and later stages must not read such a mix.
    write_failure(layout, stage, f"unfinished: the run started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid "
                  f"{os.getpid()}) has not finished (still running, or killed); if it was stopped, run "
                  f"`audiotokens {stage}` again", running=True)
    started = time.perf_counter()
    try:
        with stage_log(layout.stage_log(stage)):
            counts = _runner(stage, config, options).run() or {}
    except (Exception, KeyboardInterrupt) as exc:
        write_failure(layout, stage, f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError) else str(exc))
        raise
    write_record(layout, stage, config, counts, time.perf_counter() - started)
    return counts


class StageLogHandler(logging.FileHandler):
    """A stage's log file that keeps the first write failure (a full disk) to report it in one line at the
    end, where logging would print a traceback for every line it could not write."""

    failure: OSError | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
        elif self.failure is None:
            self.failure = error


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[None]:
    """Also write the stage's log lines to `path` (line-buffered, so a killed run leaves its last line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = StageLogHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    try:
        yield
    except BaseException:
        log.removeHandler(handler)
        with contextlib.suppress(OSError):  # the stage's own error is the one to report
            handler.close()
        raise
    log.removeHandler(handler)
    try:
        handler.close()  # flushes the last lines: a full disk shows here
    except OSError as exc:
        raise write_error(path, exc) from None
    if handler.failure is not None:
        raise write_error(path, handler.failure)


def plan(config: Config, start: str | None = None, stop: str | None = None, force: bool = False,
         ran: list[str] = ()) -> list[str]:
    """Stages in [start, stop] that are not fresh (all of them with force); `ran`: stages re-run just before."""
    first = NAMES.index(start) if start else 0
    last = NAMES.index(stop) if stop else len(NAMES) - 1
    if first > last:
        raise UserError(f"--from {start} comes after --to {stop}; stages run in the order {' → '.join(NAMES)}")
    wanted = [name for name in NAMES[first:last + 1] if stage_table.stage(name).in_run(config)]
    if force:
        return list(wanted)
    states = stage_states(Layout(config.workdir), config)
    todo: list[str] = list(ran)
    for stage in wanted:
        # a stage goes stale the moment an input of it is re-run, unless it sees only sections of that input:
        # then its own fingerprint (over those sections, from the config) already says whether they change
        upstream_rerun = any(source.stage in todo and not source.sections
                             for source in stage_table.stage(stage).inputs(config))
        if upstream_rerun or states[stage].state != "fresh":
            todo.append(stage)
    return [stage for stage in todo if stage in wanted and stage not in ran]


def run(config: Config, start: str | None = None, stop: str | None = None, force: bool = False,
        strict: bool = False) -> list[str]:
    """Run the stages of [start, stop] in order, each one that is not fresh once the ones before it ran.

    States are judged again after every stage: a stage's fingerprint can depend on what an earlier one
    wrote (the split's catalogue names the audio files whose identity the split stands for).
    """
    ran: list[str] = []
    distributed.check_stage("run", data_parallel=False)
    check_settings(plan(config, start, stop, force=True), config)
    with workdir_lock(config.workdir, "run"):
        for stage in plan(config, start, stop, force=True):
            if force or stage in plan(config, stage, stage, ran=ran):
                log.info("── %s", stage)
                execute(stage, config, strict=strict)
                ran.append(stage)
    return ran


def check_writable(layout: Layout, stage: str) -> None:
    """Fail before minutes of work when the stage's output folders cannot be written."""
    for artifact in layout.stage_artifacts(stage):
        folder = artifact.parent
        folder.mkdir(parents=True, exist_ok=True)
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise write_error(folder, exc) from None
