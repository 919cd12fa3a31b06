"""Run the CLI in a child process and SIGKILL it at a chosen moment (helpers for the interruption tests).

Children are forked from a forkserver that has already imported the package, so a run costs no import
time; SIGKILL goes to the child itself, which gets no chance to clean up. Optional delays widen the
windows a kill should land in (they change timing only, never what is computed):
  parts=N     spectrogram parts of N clips (so a tiny corpus has several)
  clip=S      sleep S seconds before each clip's spectrogram
  replace=S   sleep S seconds before every os.replace (a temporary file is complete, not yet renamed)
  kmeans=S    sleep S seconds before k-means trains
  batch=S     sleep S seconds before each batch of nearest-centroid search
  epoch=S     sleep S seconds before each training epoch
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["audiotokens.cli", "audiotokens.pipeline.run", "audiotokens.features.spectrogram",
                                 "audiotokens.tokens.cluster", "audiotokens.tokens.tokenize",
                                 "audiotokens.training.train"])


def _slowed(function, seconds: float):
    def wrapper(*args, **kwargs):
        time.sleep(seconds)
        return function(*args, **kwargs)

    return wrapper


def _install_delays(delays: dict[str, float]) -> None:
    from audiotokens.features import spectrogram
    from audiotokens.tokens import kmeans, quantizer_kinds
    from audiotokens.training import optimisation as trainer

    if "parts" in delays:
        spectrogram.SpectrogramProcessor.__init__.__defaults__ = (int(delays["parts"]), 2**18)
    if "clip" in delays:
        spectrogram.process_clip = _slowed(spectrogram.process_clip, delays["clip"])
    if "replace" in delays:
        os.replace = _slowed(os.replace, delays["replace"])
    if "kmeans" in delays:
        quantizer_kinds.train_kmeans = _slowed(quantizer_kinds.train_kmeans, delays["kmeans"])
    if "batch" in delays:
        kmeans.NearestCentroid.__call__ = _slowed(kmeans.NearestCentroid.__call__, delays["batch"])
    if "epoch" in delays:
        trainer.Trainer.train_epoch = _slowed(trainer.Trainer.train_epoch, delays["epoch"])


def _run_cli(args: list[str], cwd: str, log: str, delays: dict[str, float]) -> None:
    os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    _install_delays(delays)
    from audiotokens.cli import main

    main(args, prog_name="audiotokens")


@dataclass
class Run:
    process: multiprocessing.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text() if self.log.is_file() else ""


def start(args: list[str], cwd: Path, log: Path, **delays: float) -> Run:
    process = _CONTEXT.Process(target=_run_cli, args=(list(args), str(cwd), str(log), delays), daemon=True)
    process.start()
    return Run(process, log)


def kill_when(run: Run, condition, timeout: float = 120.0) -> None:
    """SIGKILL the run as soon as condition() holds; fails if the run ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not run.process.is_alive():
            raise AssertionError(f"the run ended (exit {run.process.exitcode}) before the kill point:\n"
                                 f"{run.output()[-3000:]}")
        if time.monotonic() > deadline:
            run.process.kill()
            raise AssertionError("the kill point was not reached in time")
        time.sleep(0.002)
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.join()
    assert run.process.exitcode == -signal.SIGKILL


def finish(run: Run, timeout: float = 300.0) -> str:
    """Wait for a run that must succeed; its output."""
    run.process.join(timeout)
    assert run.process.exitcode == 0, f"exit {run.process.exitcode}:\n{run.output()[-3000:]}"
    return run.output()


def run_cli(args: list[str], cwd: Path, log: Path, **delays: float) -> str:
    return finish(start(args, cwd, log, **delays))


# ---------------------------------------------------------------- what a kill left behind


def is_temporary(path: Path, root: Path) -> bool:
    """Temporary names are hidden (`.name.<pid>.<random>.tmp`, `.split.tmp/`, `.model.old`); the workdir's
    lock file is hidden too but stays (the kernel releases the lock, the file is left empty)."""
    relative = path.relative_to(root)
    if relative.parts == (".audiotokens.lock",):
        return False
    return any(part.startswith(".") for part in relative.parts)


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_temporary(p, root))


def digests(root: Path, *relative: str) -> dict[str, str]:
    """sha256 of every final-named file under the given folders or files of root."""
    out = {}
    for name in relative:
        target = root / name
        files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        for path in files:
            if not is_temporary(path, root):
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_complete(root: Path) -> None:
    """Every final-named file is whole: it parses as what its name says."""
    import torch
    from safetensors.torch import load_file

    for path in sorted(p for p in root.rglob("*") if p.is_file() and not is_temporary(p, root)):
        suffix = path.suffix
        try:
            if suffix == ".npy":
                array = np.load(path, mmap_mode="r")
                assert array.size == 0 or np.asarray(array[-1:]).shape[0] == 1
            elif suffix == ".json":
                json.loads(path.read_text())
            elif suffix == ".jsonl":
                [json.loads(line) for line in path.read_text().splitlines()]
            elif suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)
            elif suffix == ".safetensors":
                load_file(path)
            elif suffix == ".png":
                assert path.read_bytes().endswith(b"IEND\xaeB`\x82")
        except Exception as exc:  # noqa: BLE001 - any failure to parse means a half-written file
            raise AssertionError(f"{path} is not a complete {suffix} file: {exc}") from None
