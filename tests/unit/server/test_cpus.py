"""The CPUs a server may use, as its affinity and a cgroup quota (Kubernetes' limits.cpu) set them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantship.server import cpus

HOST = frozenset(range(4, 12))
"""The CPUs the process may run on, as the tests give them (a cpuset of 8 that does not start at 0),
so that every case means the same on any machine that runs them."""
CPUS = len(HOST)


def topology(tmp_path: Path, threads_per_core: int, file: str = "core_cpus_list") -> Path:
    """/sys/devices/system/cpu for HOST, `threads_per_core` of its CPUs to a physical core (SMT
    siblings), each core listing its CPUs as the kernel does ("4,5") in `file`."""
    root = tmp_path / "sys-devices-system-cpu"
    allowed = sorted(HOST)
    for start in range(0, len(allowed), threads_per_core):
        siblings = allowed[start : start + threads_per_core]
        for cpu in siblings:
            (root / f"cpu{cpu}" / "topology").mkdir(parents=True)
            (root / f"cpu{cpu}" / "topology" / file).write_text(",".join(map(str, siblings)) + "\n")
    return root


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "sys-fs-cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    return root


def membership(tmp_path: Path, text: str) -> Path:
    """/proc/self/cgroup as the kernel writes it."""
    (tmp_path / "proc-self-cgroup").write_text(text)
    return tmp_path / "proc-self-cgroup"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "50000 100000\n"}, 0.5),  # cgroup v2, limits.cpu: 500m
        ({"cpu.max": "max 100000\n"}, CPUS),  # no quota
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),  # cgroup v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, CPUS),
        ({"cpu.max": "1000000 100000\n"}, CPUS),  # a quota of 10 CPUs: the smaller of it and the affinity
        ({"cpu.max": "600000 100000\n"}, 6.0),
        ({"cpu.max": "garbage\n"}, CPUS),
        ({"cpu.max": "50000 0\n"}, CPUS),
        ({}, CPUS),
    ],
    ids=["v2 quota", "v2 none", "v1 quota", "v1 none", "quota above affinity", "quota below affinity",
         "unreadable", "zero period", "no cgroup"],
)  # fmt: skip
def test_the_quota_caps_the_affinity(tmp_path: Path, files: dict[str, str], expected: float) -> None:
    at_root = membership(tmp_path, "0::/\n2:cpu,cpuacct:/\n")  # a container's own view
    assert cpus.usable(cgroup(tmp_path, files), at_root, HOST) == expected


@pytest.mark.parametrize(
    ("member_of", "files", "expected"),
    [
        # a limit on the pod's group holds for the container below it, which has none of its own
        ("0::/kubepods/pod1/ctr\n", {"kubepods/pod1/cpu.max": "150000 100000\n",
                                     "kubepods/pod1/ctr/cpu.max": "max 100000\n"}, 1.5),
        # the smallest on the way up counts
        ("0::/kubepods/pod1/ctr\n", {"kubepods/pod1/cpu.max": "150000 100000\n",
                                     "kubepods/pod1/ctr/cpu.max": "50000 100000\n"}, 0.5),
        # the host's path, but the mount shows only this group (no cgroup namespace): its root is ours
        ("0::/kubepods/pod1/ctr\n", {"cpu.max": "50000 100000\n"}, 0.5),
        # cgroup v1, a systemd service with CPUQuota=50% on a host
        ("5:cpu,cpuacct:/system.slice/serve.service\n1:name=systemd:/system.slice/serve.service\n",
         {"cpu,cpuacct/system.slice/serve.service/cpu.cfs_quota_us": "50000\n",
          "cpu,cpuacct/system.slice/serve.service/cpu.cfs_period_us": "100000\n"}, 0.5),
        # a sibling's limit is not ours
        ("0::/system.slice/serve.service\n", {"system.slice/other.service/cpu.max": "50000 100000\n"},
         CPUS),
    ],
    ids=["pod limit", "smallest", "host path, own mount", "v1 service", "sibling"],
)  # fmt: skip
def test_the_quota_is_read_from_the_processs_own_cgroup_and_those_above_it(
    tmp_path: Path, member_of: str, files: dict[str, str], expected: float
) -> None:
    assert cpus.usable(cgroup(tmp_path, files), membership(tmp_path, member_of), HOST) == expected


def test_an_unreadable_membership_reads_the_mounts_root(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu.max": "50000 100000\n"})
    assert cpus.usable(root, tmp_path / "no-such-file", HOST) == 0.5


def test_a_process_pinned_to_one_cpu_has_one() -> None:
    code = "from quantship.server import cpus; print(cpus.usable())"
    cpu = str(min(os.sched_getaffinity(0)))  # one this process may use (a cpuset need not hold 0)
    pinned = subprocess.run(
        ["taskset", "-c", cpu, sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert 0 < float(pinned.stdout) <= 1.0  # one, or less under a CPU quota


@pytest.mark.parametrize(
    ("quota", "expected"),
    [
        ("50000 100000\n", 1),  # limits.cpu: 500m: one thread, not none
        ("150000 100000\n", 1),  # 1.5 CPUs: one thread, rounded down
        ("600000 100000\n", 6),  # 6 of the 8 CPUs
        ("max 100000\n", None),  # no quota: onnxruntime's own default, which follows the affinity
        (f"{CPUS * 100000} 100000\n", None),  # a quota no smaller than the affinity
    ],
    ids=["half a cpu", "one and a half", "six of eight", "no quota", "quota of the affinity"],
)
def test_serving_threads_follow_a_cpu_quota_smaller_than_the_affinity(
    tmp_path: Path, quota: str, expected: int | None
) -> None:
    at_root = membership(tmp_path, "0::/\n")
    no_smt = topology(tmp_path, threads_per_core=1)
    assert cpus.serving_threads(cgroup(tmp_path, {"cpu.max": quota}), at_root, no_smt, HOST) == expected


@pytest.mark.parametrize(
    ("quota", "expected"),
    [
        ("600000 100000\n", None),  # between the 4 cores and the 8 CPUs: onnxruntime's one thread a core
        ("400000 100000\n", None),  # the cores exactly
        ("300000 100000\n", 3),  # below the cores: the quota
        ("50000 100000\n", 1),  # rounded down, at least one
    ],
    ids=["between cores and cpus", "the cores", "below the cores", "half a cpu"],
)
def test_serving_threads_on_smt_count_physical_cores(
    tmp_path: Path, quota: str, expected: int | None
) -> None:
    smt = topology(tmp_path, threads_per_core=2)
    assert cpus.physical_cores(smt, HOST) == 4
    at_root = membership(tmp_path, "0::/\n")
    assert cpus.serving_threads(cgroup(tmp_path, {"cpu.max": quota}), at_root, smt, HOST) == expected


def test_kernels_before_5_4_name_a_cores_cpus_thread_siblings_list(tmp_path: Path) -> None:
    assert cpus.physical_cores(topology(tmp_path, 2, file="thread_siblings_list"), HOST) == 4


def test_an_unreadable_topology_counts_every_cpu_a_core(tmp_path: Path) -> None:
    assert cpus.physical_cores(tmp_path / "no-such-dir", HOST) is None
    quota = cgroup(tmp_path, {"cpu.max": "600000 100000\n"})  # with SMT known, None (above)
    assert cpus.serving_threads(quota, membership(tmp_path, "0::/\n"), tmp_path / "no-such-dir", HOST) == 6


def test_the_hosts_topology_is_read() -> None:
    if not (cpus.CPU_TOPOLOGY / f"cpu{min(os.sched_getaffinity(0))}" / "topology").is_dir():
        pytest.skip("this kernel shows no CPU topology in sysfs (gVisor, some containers)")
    cores = cpus.physical_cores()
    assert cores is not None and 1 <= cores <= len(os.sched_getaffinity(0))


def test_serving_threads_leave_onnxruntimes_own_variable_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORT_INTRA_OP_NUM_THREADS", "3")
    quota = cgroup(tmp_path, {"cpu.max": "50000 100000\n"})
    assert cpus.serving_threads(quota, membership(tmp_path, "0::/\n")) is None
