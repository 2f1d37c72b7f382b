"""How many CPUs this process may use: its affinity (taskset, a cpuset) and its cgroup's CPU quota (a
Kubernetes CPU limit), whichever is smaller. os.cpu_count() reports the machine's, which a pod with
`limits.cpu: 1` on a 64-core node must not believe.

The quota is read from this process's own cgroup (/proc/self/cgroup) and every cgroup above it, the
smallest counting, as the kernel enforces them all: a container sees its own group at the mount's
root (a cgroup namespace, or a bind mount in cgroup v1), a process on a host in a systemd slice sees
the path of its group below the host's root."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Set
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")
CORE_FILES = ("core_cpus_list", "thread_siblings_list")
"""A CPU's topology file that lists the CPUs of its physical core, by the name since Linux 5.4 and the
older one that it replaced."""
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct")


def usable(
    cgroup_root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP, allowed: Set[int] | None = None
) -> float:
    """CPUs' worth of time this process can get (fractional under a quota such as 1.5). `allowed`:
    the CPUs it may run on, when not its own affinity's (tests give a host of their own)."""
    quotas = [quota for group in _own_groups(cgroup_root, membership) if (quota := _quota(group)) is not None]
    return min([_count(_allowed_cpus() if allowed is None else allowed), *quotas])


def serving_threads(
    cgroup_root: Path = CGROUP_ROOT,
    membership: Path = MEMBERSHIP,
    topology: Path = CPU_TOPOLOGY,
    allowed: Set[int] | None = None,
) -> int | None:
    """onnxruntime intra-op threads for a serving session nobody chose a number for: None (onnxruntime's
    own default, one per physical core it may run on, which follows the affinity), unless a CPU quota
    allows less than that default: then the quota, rounded down, at least one. onnxruntime does not
    read cgroup quotas (microsoft/onnxruntime#29510), so a pod with limits.cpu: 2 on a 64-core node
    would get a pool of 32 threads, spinning against a quota of 2 that throttles them all. On a host
    with SMT, a quota between the physical cores and the logical CPUs (limits.cpu: 6 on 4 cores, 8
    CPUs) keeps the default, one thread per core. A deployer's ORT_INTRA_OP_NUM_THREADS (read by
    onnxruntime itself since that issue's fix) is left to it."""
    if os.environ.get("ORT_INTRA_OP_NUM_THREADS"):
        return None
    allowed = _allowed_cpus() if allowed is None else allowed
    cpus = usable(cgroup_root, membership, allowed)
    default = physical_cores(topology, allowed) or _count(allowed)
    return None if cpus >= default else max(1, int(cpus))


def physical_cores(topology: Path = CPU_TOPOLOGY, allowed: Set[int] | None = None) -> int | None:
    """Physical cores among the CPUs this process may run on (or `allowed`), SMT siblings counted
    once, as onnxruntime sizes its default pool; None where the topology cannot be read."""
    allowed = _allowed_cpus() if allowed is None else allowed
    if allowed is None:
        return None
    cores: set[str] = set()
    for cpu in allowed:
        siblings = None
        for name in CORE_FILES:
            with contextlib.suppress(OSError):
                siblings = (topology / f"cpu{cpu}" / "topology" / name).read_text().strip()
                break
        if siblings is None:
            return None
        cores.add(siblings)
    return len(cores) or None


def _count(allowed: Set[int] | None) -> float:
    """CPUs in `allowed`; the machine's where the OS does not say which this process may use."""
    return float(len(allowed) if allowed is not None else os.cpu_count() or 1)


def _allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on (taskset, a cpuset); None where the OS does not say."""
    get_affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    return get_affinity(0) if get_affinity is not None else None


def _own_groups(root: Path, membership: Path) -> Iterator[Path]:
    """The directories of this process's cgroup and of each one above it, up to the mount's root:
    cgroup v2's unified hierarchy, and v1's cpu controller where mounted."""
    paths = _membership(membership)
    mounts = [(root, paths.get("", "/"))]  # v2: "0::/kubepods/..."
    mounts += [(root / name, paths.get("cpu", "/")) for name in V1_CPU_MOUNTS if (root / name).is_dir()]
    for mount, path in mounts:
        group = mount / path.lstrip("/")
        if not group.is_dir():  # the path is the host's, the mount shows this group at its root
            group = mount
        yield group
        while group != mount:
            group = group.parent
            yield group


def _membership(membership: Path) -> dict[str, str]:
    """Controller -> cgroup path from /proc/self/cgroup ("" for v2's unified line); empty if unread."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in lines:  # "id:controllers:path"; v2's controllers are "", which splits to [""]
        fields = line.split(":", 2)
        if len(fields) == 3:
            for controller in fields[1].split(","):
                paths.setdefault(controller, fields[2])
    return paths


def _quota(group: Path) -> float | None:
    """The group's CFS quota in CPUs: cgroup v2 `cpu.max` ("150000 100000"; "max ..." is none), else
    v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1 is none). None when it has none or it cannot
    be read."""
    try:
        limit, period = (group / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        limit_us = int((group / "cpu.cfs_quota_us").read_text())
        period_us = int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if limit_us <= 0 or period_us <= 0 else limit_us / period_us
