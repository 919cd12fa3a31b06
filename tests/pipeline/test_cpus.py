"""CPUs a process may use (affinity, cgroup quota, physical cores) and training's thread policy, from a fake
affinity mask, cgroup tree and CPU topology."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from audiotokens.features import spectrogram
from audiotokens.pipeline import cpus


def cgroup(root: Path, own: str = "", **quotas: str) -> Path:
    """A cgroup v2 tree under `root`: cpu.max per folder (key "" is the root itself; "/" in names as "__"),
    and the membership file naming `own` as the process's cgroup."""
    for folder, quota in quotas.items():
        path = root / "fs" / folder.replace("__", "/")
        path.mkdir(parents=True, exist_ok=True)
        (path / "cpu.max").write_text(f"{quota}\n")
    (root / "fs").mkdir(parents=True, exist_ok=True)
    (root / "membership").write_text(f"1:cpu:/\n0::/{own.replace('__', '/')}\n")
    return root


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """This process may run on CPUs 0-7 (four cores with two hyper-threads each) of a 16-CPU host; its
    cgroup tree and topology are fakes under tmp_path, to be filled in by the test."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    for cpu in range(16):
        topology = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{cpu // 2}\n")
    monkeypatch.setattr(cpus, "CPU_TOPOLOGY", tmp_path / "cpu")
    monkeypatch.setattr(cpus, "CGROUP", tmp_path / "fs")
    (tmp_path / "fs").mkdir()
    return tmp_path


def limit(root: Path) -> float | None:
    return cpus.cgroup_cpu_limit(root / "fs", root / "membership")


def test_quota_of_the_own_cgroup_and_those_above_it(tmp_path):
    assert limit(cgroup(tmp_path / "none", "job", job="max 100000")) is None
    assert limit(cgroup(tmp_path / "own", "job", job="150000 100000")) == 1.5
    assert limit(cgroup(tmp_path / "parent", "slice__job", slice="200000 100000", slice__job="max 100000")) == 2.0
    assert limit(cgroup(tmp_path / "smallest", "a__b", a="300000 100000", a__b="50000 100000")) == 0.5
    # a container: the own cgroup is mounted as the root
    assert limit(cgroup(tmp_path / "container", "", **{"": "250000 100000"})) == 2.5
    assert limit(cgroup(tmp_path / "garbled", "job", job="lots\n")) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path, tmp_path / "absent") == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.cgroup_cpu_limit(tmp_path, tmp_path / "absent") is None


def test_usable_cpus_from_affinity_and_quota(machine):
    assert cpus.usable_cpus() == 8  # the affinity mask, not the host's 16
    assert cpus.usable_cores() == 4  # hyper-threads of one core count once
    cgroup(machine, "", **{"": "250000 100000"})
    assert cpus.usable_cpus() == 2 and cpus.usable_cores() == 2  # 2.5 CPUs of time: 2 kept busy
    cgroup(machine, "", **{"": "50000 100000"})
    assert cpus.usable_cpus() == 1  # never 0


def test_topology_unreadable_counts_every_cpu(tmp_path):
    assert cpus.physical_cores({0, 1, 2}, tmp_path / "absent") == 3


def test_spectrogram_workers_follow_the_quota(machine):
    cgroup(machine, "", **{"": "300000 100000"})
    assert spectrogram._cpu_count() == 3  # spectrogram.workers = 0 (and baseline.workers = 0)


def test_training_threads_policy(machine):
    quiet = {"environment": {}, "load": 0.0, "host_cpus": 16}
    assert cpus.training_threads(**quiet).threads == 4  # idle: every usable core
    cgroup(machine, "", **{"": "300000 100000"})
    assert cpus.training_threads(**quiet).threads == 3  # the quota
    assert cpus.training_threads(environment={}, load=8.0, host_cpus=16).threads == 2  # host half busy
    busy = cpus.training_threads(environment={}, load=40.0, host_cpus=16)
    assert busy.threads == 1 and "load of other processes 40.0" in busy.reason
    assert cpus.training_threads(5, environment={}, load=40.0).threads == 5  # train.threads wins
    assert cpus.training_threads(environment={"OMP_NUM_THREADS": "2"}) is None  # torchrun's / the user's


def test_training_threads_read_this_machine(machine, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    choice = cpus.training_threads()
    assert choice.threads == 4 and choice.reason.startswith("4 usable cores")
