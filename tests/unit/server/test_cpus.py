"""The CPUs a server may use, as its affinity and a cgroup quota (Kubernetes' limits.cpu) set them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantship.server import cpus

AFFINITY = len(os.sched_getaffinity(0))


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
        ({"cpu.max": "max 100000\n"}, AFFINITY),  # no quota
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),  # cgroup v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, AFFINITY),
        ({"cpu.max": "1000000 100000\n"}, 10.0),  # a quota of 10 CPUs: the smaller of it and the affinity
        ({"cpu.max": "garbage\n"}, AFFINITY),
        ({"cpu.max": "50000 0\n"}, AFFINITY),
        ({}, AFFINITY),
    ],
    ids=["v2 quota", "v2 none", "v1 quota", "v1 none", "quota above affinity", "unreadable", "zero period",
         "no cgroup"],
)  # fmt: skip
def test_the_quota_caps_the_affinity(tmp_path: Path, files: dict[str, str], expected: float) -> None:
    at_root = membership(tmp_path, "0::/\n2:cpu,cpuacct:/\n")  # a container's own view
    assert cpus.usable(cgroup(tmp_path, files), at_root) == min(expected, AFFINITY)


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
         AFFINITY),
    ],
    ids=["pod limit", "smallest", "host path, own mount", "v1 service", "sibling"],
)  # fmt: skip
def test_the_quota_is_read_from_the_processs_own_cgroup_and_those_above_it(
    tmp_path: Path, member_of: str, files: dict[str, str], expected: float
) -> None:
    assert cpus.usable(cgroup(tmp_path, files), membership(tmp_path, member_of)) == min(expected, AFFINITY)


def test_an_unreadable_membership_reads_the_mounts_root(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu.max": "50000 100000\n"})
    assert cpus.usable(root, tmp_path / "no-such-file") == min(0.5, AFFINITY)


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
        ("150000 100000\n", None if AFFINITY <= 1.5 else 1),  # 1.5 CPUs: one thread, rounded down
        ("max 100000\n", None),  # no quota: onnxruntime's own default, which follows the affinity
        (f"{AFFINITY * 100000} 100000\n", None),  # a quota no smaller than the affinity
    ],
    ids=["half a cpu", "one and a half", "no quota", "quota of the affinity"],
)
def test_serving_threads_follow_a_cpu_quota_smaller_than_the_affinity(
    tmp_path: Path, quota: str, expected: int | None
) -> None:
    at_root = membership(tmp_path, "0::/\n")
    assert cpus.serving_threads(cgroup(tmp_path, {"cpu.max": quota}), at_root) == expected


def test_serving_threads_leave_onnxruntimes_own_variable_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORT_INTRA_OP_NUM_THREADS", "3")
    quota = cgroup(tmp_path, {"cpu.max": "50000 100000\n"})
    assert cpus.serving_threads(quota, membership(tmp_path, "0::/\n")) is None
