"""How many CPUs this process may use, and how many threads training takes of them.

The host's core count says little inside a container or a job slot: the process may be pinned to a few
cores (its affinity mask) or given a share of them (a cgroup CPU quota: v2 `cpu.max`, v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`). Worker processes (spectrogram.workers = 0, baseline.workers = 0)
take one per usable CPU. Training's intra-op threads (train.threads = 0) take at most one per physical core
of those CPUs (two threads on the two hyper-threads of one core only wait for each other in matrix
products) and give way to what else runs: OpenMP threads wait for each other at every operation, so one
thread whose core is busy with another process stalls all of them (measured on 2 busy cores: 2 threads 24
samples/s, 1 thread 57). Each DataLoader worker runs on one intra-op thread (torch sets it so in every
worker), so workers never multiply the threads.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:  # Windows
    resource = None

CGROUP = Path("/sys/fs/cgroup")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")
_IMPORTED = time.monotonic()


def affinity_set() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU of the host where there is no such call)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return set(range(os.cpu_count() or 1))


def affinity_cpus() -> int:
    """How many CPUs this process may run on."""
    return len(affinity_set())


def physical_cores(cpus: set[int], topology: Path | None = None) -> int:
    """The physical cores that `cpus` lie on (hyper-threads of one core count once), from sysfs
    (`cpuN/topology/core_id` and `physical_package_id`); len(cpus) where the topology cannot be read."""
    topology = CPU_TOPOLOGY if topology is None else topology
    try:
        cores = {tuple((topology / f"cpu{cpu}" / "topology" / name).read_text().strip()
                       for name in ("physical_package_id", "core_id")) for cpu in cpus}
    except OSError:
        return len(cpus)
    return max(1, len(cores))


def cgroup_cpu_limit(root: Path | None = None, membership: Path | None = None) -> float | None:
    """CPUs' worth of time the cgroup quotas allow per period (e.g. 1.5), or None without a quota.

    cgroup v2: `cpu.max` holds "quota period" ("max period": none); the smallest quota of the process's own
    cgroup (`membership`, /proc/self/cgroup, names it under `root`) and of the cgroups above it counts (in a
    container, the container's cgroup is `root` itself). v1: `<root>/cpu/cpu.cfs_quota_us` (-1: none) over
    `cpu.cfs_period_us`.
    """
    root = CGROUP if root is None else root
    limits = [limit for folder in _cgroup_folders(root, membership) if (limit := _v2_limit(folder)) is not None]
    return min(limits) if limits else _v1_limit(root)


def _cgroup_folders(root: Path, membership: Path | None) -> list[Path]:
    """The process's cgroup v2 folder and those above it, up to `root`."""
    try:
        lines = (membership or Path("/proc/self/cgroup")).read_text().splitlines()
    except OSError:
        return [root]
    own = next((line[3:].strip("/") for line in lines if line.startswith("0::")), "")
    folder, folders = root / own, []
    while folder != root and root in folder.parents:
        folders.append(folder)
        folder = folder.parent
    return [*folders, root]


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(quota, period)
    except (OSError, ValueError):
        return None


def _v1_limit(root: Path) -> float | None:
    try:
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if quota.startswith("-") else _ratio(quota, period)
    except (OSError, ValueError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    value = int(quota) / int(period)
    return value if value > 0 else None


def usable_cpus() -> int:
    """CPUs this process can keep busy: its affinity, capped by the cgroup quota (rounded down, at least 1)."""
    return _capped(affinity_cpus(), cgroup_cpu_limit())


def usable_cores() -> int:
    """Physical cores this process can keep busy: those of its affinity, capped by the cgroup quota."""
    return _capped(physical_cores(affinity_set()), cgroup_cpu_limit())


def _capped(count: int, limit: float | None) -> int:
    return max(1, min(count, math.floor(limit)) if limit is not None else count)


@dataclass(frozen=True)
class ThreadChoice:
    """Training's intra-op threads and why (for the log)."""

    threads: int
    reason: str


def own_load() -> float:
    """This process's (and its finished workers') share of the 1-minute load average, about: its CPU seconds
    per second since it started, over at least a minute."""
    if resource is None:
        return 0.0
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return seconds / max(_age(), 60.0)


def _age() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere: since this module was imported)."""
    try:
        started = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])  # field 22
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def training_threads(requested: int = 0, *, cpus: int | None = None, load: float | None = None,
                     host_cpus: int | None = None, environment: dict[str, str] | None = None) -> ThreadChoice | None:
    """Intra-op threads for training: `requested` (train.threads) when > 0; None (leave torch's) when
    OMP_NUM_THREADS is set (by the user, or by torchrun: one per process); else the usable physical cores
    less the share other processes keep busy, at least 1. That share is the host's 1-minute load average,
    less this process's own (an earlier stage of `audiotokens run`), over the host's CPU count, at the start.

    `cpus` (usable cores), `load` (of other processes), `host_cpus` and `environment` default to this
    machine's.
    """
    if requested > 0:
        return ThreadChoice(requested, f"train.threads = {requested}")
    environment = os.environ if environment is None else environment
    if environment.get("OMP_NUM_THREADS"):
        return None
    cpus = usable_cores() if cpus is None else cpus
    load = max(0.0, os.getloadavg()[0] - own_load()) if load is None else load
    host_cpus = (os.cpu_count() or cpus) if host_cpus is None else host_cpus
    busy = min(1.0, load / max(host_cpus, 1))  # the share of each CPU other processes use, on average
    threads = max(1, min(cpus, math.floor(cpus * (1.0 - busy) + 0.5)))
    return ThreadChoice(threads, f"{cpus} usable cores, load of other processes {load:.1f} on {host_cpus} CPUs")
