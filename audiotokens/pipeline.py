"""Run stages with provenance: execute one, report status, re-run only what is stale."""
from __future__ import annotations

import importlib
import logging
import os
import time
from typing import Any

from .artifacts import Layout
from .config import Config
from .errors import UserError
from .provenance import STAGE_INPUTS, STAGES, stage_states, write_failure, write_record

log = logging.getLogger("audiotokens")

STAGE_CLASSES = {
    "split": "audiotokens.split:DatasetSplitter",
    "spectrogram": "audiotokens.spectrogram:SpectrogramProcessor",
    "cluster": "audiotokens.cluster:ClusterCreator",
    "tokenize": "audiotokens.tokenizer:SpecTokenizer",
    "train": "audiotokens.train:ModelBuilder",
    "evaluate": "audiotokens.evaluate:Evaluator",
}


def stage_class(stage: str):
    module, name = STAGE_CLASSES[stage].split(":")
    return getattr(importlib.import_module(module), name)


def check_inputs(layout: Layout, config: Config, stage: str, strict: bool) -> None:
    """Warn (or, strict, refuse) when a stage would read missing or stale inputs."""
    states = stage_states(layout, config)
    for name in STAGE_INPUTS[stage]:
        state = states[name]
        if state.state == "fresh":
            continue
        message = f"{stage} reads {name}, which is {state.state}" + (
            f" ({'; '.join(state.reasons)})" if state.reasons else "")
        if state.state in ("missing", "failed"):
            raise UserError(f"{message}; run `audiotokens {name}` first")
        if strict:
            raise UserError(f"{message}; re-run `audiotokens {name}` or drop --strict")
        log.warning("%s — results will not match the current config", message)


def execute(stage: str, config: Config, strict: bool = False, **options: Any) -> dict[str, Any]:
    """Run one stage, then write its provenance record (or a failure marker)."""
    layout = Layout(config.workdir)
    check_inputs(layout, config, stage, strict)
    # Marked failed until its record is written: a run killed outright (SIGKILL, power loss) may have
    # replaced some of its artifacts but not all, and later stages must not read such a mix.
    write_failure(layout, stage, f"unfinished: the run started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid "
                  f"{os.getpid()}) has not finished (still running, or killed); if it was stopped, run "
                  f"`audiotokens {stage}` again")
    started = time.perf_counter()
    try:
        counts = stage_class(stage)(config, **options).run() or {}
    except (Exception, KeyboardInterrupt) as exc:
        write_failure(layout, stage, f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError) else str(exc))
        raise
    write_record(layout, stage, config, counts, time.perf_counter() - started)
    return counts


def plan(config: Config, start: str | None = None, stop: str | None = None, force: bool = False) -> list[str]:
    """Stages in [start, stop] that are not fresh (all of them with force)."""
    first = STAGES.index(start) if start else 0
    last = STAGES.index(stop) if stop else len(STAGES) - 1
    if first > last:
        raise UserError(f"--from {start} comes after --to {stop}; stages run in the order {' → '.join(STAGES)}")
    wanted = STAGES[first:last + 1]
    if force:
        return list(wanted)
    states = stage_states(Layout(config.workdir), config)
    todo: list[str] = []
    for stage in wanted:
        # a stage goes stale the moment an input of it is re-run
        upstream_rerun = any(name in todo for name in STAGE_INPUTS[stage])
        if upstream_rerun or states[stage].state != "fresh":
            todo.append(stage)
    return todo


def run(config: Config, start: str | None = None, stop: str | None = None, force: bool = False,
        strict: bool = False) -> list[str]:
    todo = plan(config, start, stop, force)
    for stage in todo:
        log.info("── %s", stage)
        execute(stage, config, strict=strict)
    return todo
