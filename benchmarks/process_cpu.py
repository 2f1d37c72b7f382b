"""CPU time of another process: what the benchmarks divide by requests for "server CPU a request"."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process `pid` has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def niced_cpu_seconds(pid: int, nice: int) -> float:
    """CPU seconds so far of `pid`'s threads that run at `nice` (/proc/PID/task/*/stat): the server's
    SLI thread is the one at background.NICE."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        if int(fields[16]) == nice:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS
