"""A read-only or full workdir: one line naming the file and what to do (exit code 2), no partial artifact,
the previous artifacts intact.

Tests run as root here, where file modes do not stop writes. So the disk is refused honestly in two ways:
a real read-only bind mount and a real tiny tmpfs inside a private mount namespace (`unshare -m`, skipped
where that is not permitted), and, everywhere, the error the kernel would give injected at the one call
that writes (ENOSPC from numpy/torch/fallocate, EROFS from the temporary-file call).
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from killing import assert_complete, digests, temporaries
from projects import copy_project, trained_project

from audiotokens.cli import main
from audiotokens.pipeline.layout import Layout

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory, "singlelabel")


@pytest.fixture
def own_project(project, tmp_path) -> Path:
    return copy_project(project, tmp_path / "project")


def common(root: Path) -> list[str]:
    return ["--config", str(root / "run.toml"), "--workdir", str(root / "work")]


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.output, repr(result.exception))
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def refuse(exc_errno: int):
    def raiser(*args, **kwargs):
        raise OSError(exc_errno, os.strerror(exc_errno))

    return raiser


def run_records(names) -> set[str]:
    """What any run writes whether it succeeds or not: its failure marker and its log."""
    return {name for name in names if name.endswith(".failed.json") or name.startswith("logs/")}


def unchanged_and_clean(root: Path, before: dict[str, str], aside: tuple[str, ...] = ()) -> None:
    """Every file the failed run found is byte-identical, no new final-named file, no temporary left (but
    under `aside`: folders where a run keeps its own files apart from the finished run's)."""
    work = root / "work"
    after = {k: v for k, v in digests(work, ".").items() if not k.startswith(aside)}
    before = {k: v for k, v in before.items() if not k.startswith(aside)}
    stage_markers = run_records(after) | run_records(before)  # the failure is recorded, the run logged
    assert {k: v for k, v in after.items() if k not in stage_markers} == {
        k: v for k, v in before.items() if k not in stage_markers}
    assert temporaries(work) == []
    assert_complete(work)


# ---------------------------------------------------------------- simulated at the writing call


def test_workdir_under_a_regular_file(project, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the workdir's parent should be")
    result = CliRunner().invoke(main, ["split", "--config", str(project / "run.toml"),
                                       "--workdir", str(blocker / "work")])
    message = one_error_line(result)
    assert f"cannot write {blocker / 'work'}" in message and "Not a directory" in message
    assert "check that the workdir is writable or point --workdir elsewhere" in message


def test_full_disk_while_writing_the_vocabulary(own_project, monkeypatch):
    before = digests(own_project / "work", ".")
    monkeypatch.setattr(np, "savez", refuse(errno.ENOSPC))
    message = one_error_line(CliRunner().invoke(main, ["cluster", *common(own_project)]))
    vocabulary = Layout(own_project / "work").vocabulary
    assert f"cannot write {vocabulary}: No space left on device; free some space" in message
    unchanged_and_clean(own_project, before)


def test_full_disk_while_writing_the_frames(own_project, monkeypatch):
    before = digests(own_project / "work", ".")
    fsync = os.fsync

    def full_for_frames(fd):  # the disk fills while a part's frames go to it (delayed allocation fails at fsync)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("frames.partial"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_frames)
    message = one_error_line(CliRunner().invoke(main, ["spectrogram", *common(own_project),
                                                       "--set", "spectrogram.n_mels=40"]))
    assert message.startswith("error: cannot write ") and "frames.partial: No space left" in message
    shutil.rmtree(own_project / "work/processed/frames/shards")  # finished parts: complete, kept for a re-run
    unchanged_and_clean(own_project, before)


def test_full_disk_while_writing_a_checkpoint(own_project, monkeypatch):
    before = digests(own_project / "work", ".")
    monkeypatch.setattr(torch, "save", refuse(errno.ENOSPC))
    message = one_error_line(CliRunner().invoke(main, ["train", *common(own_project)]))
    assert "checkpoints/best.pt: No space left on device" in message
    restarted = ("output/metrics", "logs/")  # the metrics log restarts; every run writes its own log
    before = {k: v for k, v in before.items() if not k.startswith(restarted)}
    after = {k: v for k, v in digests(own_project / "work", ".").items() if not k.startswith(restarted)}
    assert {k: after.get(k) for k in before if not k.endswith("failed.json")} == {
        k: v for k, v in before.items() if not k.endswith("failed.json")}
    assert temporaries(own_project / "work") == []


def test_full_disk_while_writing_the_bundle(own_project, monkeypatch):
    before = digests(own_project / "work", ".")
    monkeypatch.setattr("audiotokens.model.bundle.save_weights", refuse(errno.ENOSPC))
    # training has finished: --resume goes straight to rewriting the bundle
    message = one_error_line(CliRunner().invoke(main, ["train", *common(own_project), "--resume"]))
    model_dir = Layout(own_project / "work").model_dir
    assert f"cannot write {model_dir}: No space left on device; free some space" in message
    # the resumed run's copy of the log and checkpoints (train.partial) and its TensorBoard run stay aside
    unchanged_and_clean(own_project, before, aside=("output/train.partial/", "output/tensorboard/"))


def test_read_only_workdir_refuses_the_temporary_file(own_project, monkeypatch):
    before = digests(own_project / "work", ".")
    monkeypatch.setattr(tempfile, "mkstemp", refuse(errno.EROFS))  # temporary files and staging folders alike
    monkeypatch.setattr(tempfile, "mkdtemp", refuse(errno.EROFS))
    message = one_error_line(CliRunner().invoke(main, ["cluster", *common(own_project)]))
    assert f"cannot write {Layout(own_project / 'work').vocabulary}: Read-only file system" in message
    unchanged_and_clean(own_project, before)


# ---------------------------------------------------------------- real filesystems in a private mount namespace


@cache
def can_mount() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                f"mount -t tmpfs -o size=16k tmpfs {shlex.quote(folder)}"],
                               capture_output=True, check=False)
    return probe.returncode == 0


real_mounts = pytest.mark.skipif(not can_mount(), reason="needs root and a private mount namespace "
                                                          "(unshare -m) to mount a real read-only or full filesystem")

CHECKER = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
from pathlib import Path
from killing import assert_complete, temporaries
work = Path(sys.argv[1])
try:
    assert_complete(work)
    complete = ""
except AssertionError as exc:
    complete = str(exc)
print(json.dumps({{"incomplete": complete, "temporaries": [str(p) for p in temporaries(work)],
                  "files": sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())}}))
"""


def in_namespace(script: str) -> None:
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=True)


def cli_command(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, "-m", "audiotokens.cli", *args])


@real_mounts
def test_real_read_only_workdir(own_project, tmp_path):
    work = own_project / "work"
    before = digests(work, ".")
    listing = sorted(str(p) for p in work.rglob("*"))
    err, rc = tmp_path / "stderr", tmp_path / "rc"
    in_namespace(f"mount --bind {work} {work} && mount -o remount,bind,ro {work} && "
                 f"{cli_command('cluster', *common(own_project))} 2> {err}; echo $? > {rc}")
    assert rc.read_text().strip() == "2"
    lines = err.read_text().splitlines()
    # refused at the first write, the workdir lock, before any work
    assert lines[-1] == (f"error: cannot write {work}: Read-only file system; check that the workdir is writable "
                         "or point --workdir elsewhere")
    assert not any("Traceback" in line for line in lines)
    assert digests(work, ".") == before and sorted(str(p) for p in work.rglob("*")) == listing


MEMMAP_CHILD = """
import sys
from pathlib import Path
import numpy as np
from audiotokens.pipeline.files import create_npy
try:
    store = create_npy(Path(sys.argv[1]) / "store.npy", (100000, 64), np.float32)  # 25 MB on a 256 KB disk
    store[:] = 1.0
    store.flush()
    print("written")
except OSError as exc:
    print(f"OSError {exc.errno}")
"""


@real_mounts
def test_real_full_disk_memmap_store_raises_instead_of_sigbus(tmp_path):
    """Without the up-front reservation, writing through the map on a full disk kills with SIGBUS (135)."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    in_namespace(f"mount -t tmpfs -o size=256k tmpfs {disk} && "
                 f"{{ {shlex.quote(sys.executable)} -c {shlex.quote(MEMMAP_CHILD)} {disk} > {out}; "
                 f"echo $? >> {out}; }}")
    assert out.read_text().split() == ["OSError", str(errno.ENOSPC), "0"]


@real_mounts
@pytest.mark.parametrize("stage, where", [
    ("spectrogram", "first part"),
    ("spectrogram", "a later part"),
    ("tokenize", "token store"),
])
def test_real_full_disk(own_project, tmp_path, stage, where):
    """The workdir is a tmpfs holding the stage's inputs plus a little room: the stage runs out of space."""
    work = own_project / "work"
    frames_bytes = Layout(work).frames.stat().st_size
    room = {"first part": 8 * 1024, "a later part": frames_bytes // 2, "token store": 2 * 1024}[where]
    if stage == "spectrogram":
        for name in ("processed/frames", "processed/spectrogram.meta.json"):
            target = work / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    used = sum(-(-p.stat().st_size // 4096) * 4096 for p in work.rglob("*") if p.is_file())
    # (a tmpfs gives folders no data pages: counting them would leave room)
    stash = tmp_path / "stash"
    shutil.copytree(work, stash)
    err, rc, report = tmp_path / "stderr", tmp_path / "rc", tmp_path / "report.json"
    in_namespace(f"mount -t tmpfs -o size={used + room} tmpfs {work} && cp -a {stash}/. {work} && "
                 f"{{ {cli_command(stage, *common(own_project))} 2> {err}; echo $? > {rc}; }} && "
                 f"{shlex.quote(sys.executable)} -c {shlex.quote(CHECKER)} {work} > {report}")
    assert rc.read_text().strip() == "2", err.read_text()  # not killed by SIGBUS (rc 135), not a traceback
    lines = err.read_text().splitlines()
    assert "No space left on device" in lines[-1] and lines[-1].startswith("error: cannot write ")
    if where == "a later part":  # each frame is written once, into its shard's frames.partial
        assert "frames.partial:" in lines[-1]
    if os.environ.get("AUDIOTOKENS_SHOW_ERRORS"):
        print(f"\n{stage}, {where}: {lines[-1]}")
    assert not any("Traceback" in line for line in lines)
    found = json.loads(report.read_text())
    assert found["incomplete"] == "" and found["temporaries"] == []
    old = {str(p.relative_to(stash)) for p in stash.rglob("*") if p.is_file()}
    new_files = set(found["files"]) - old
    # all a failed stage may leave: its failure marker and (spectrogram) finished, resumable parts
    assert all(name.endswith(".failed.json") or "/shards/" in name for name in new_files), new_files
