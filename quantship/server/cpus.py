"""How many CPUs this process may use: its affinity (taskset, a cpuset) and its cgroup's CPU quota (a
Kubernetes CPU limit), whichever is smaller. os.cpu_count() reports the machine's, which a pod with
`limits.cpu: 1` on a 64-core node must not believe."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable(cgroup_root: Path = CGROUP_ROOT) -> float:
    """CPUs' worth of time this process can get (fractional under a quota such as 1.5)."""
    get_affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    affinity = float(len(get_affinity(0)) if get_affinity is not None else os.cpu_count() or 1)
    quota = _quota(cgroup_root)
    return affinity if quota is None else min(affinity, quota)


def _quota(root: Path) -> float | None:
    """The CFS quota in CPUs: cgroup v2 `cpu.max` ("150000 100000"; "max ..." is none), else v1's
    `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1 is none). None when there is none or it cannot be
    read: then the affinity alone counts."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            limit_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if limit_us <= 0 or period_us <= 0 else limit_us / period_us
    return None
