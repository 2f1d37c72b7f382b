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
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


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
    assert cpus.usable(cgroup(tmp_path, files)) == min(expected, AFFINITY)


def test_a_process_pinned_to_one_cpu_has_one() -> None:
    code = "from quantship.server import cpus; print(cpus.usable())"
    cpu = str(min(os.sched_getaffinity(0)))  # one this process may use (a cpuset need not hold 0)
    pinned = subprocess.run(
        ["taskset", "-c", cpu, sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert 0 < float(pinned.stdout) <= 1.0  # one, or less under a CPU quota
