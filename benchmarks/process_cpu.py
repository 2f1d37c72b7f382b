"""CPU time of another process: what the benchmarks divide by requests for "server CPU a request"."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(path: Path) -> list[str]:
    """The fields of a /proc stat file after the parenthesised name: [0] is the state (field 3), so
    utime is [11], stime [12], nice [16]."""
    return path.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process `pid` has used so far (/proc/PID/stat)."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds_by_nice(pid: int, nice: int) -> tuple[float, float]:
    """CPU seconds so far of `pid`'s threads at `nice`, and of its other threads (/proc/PID/task/*/stat):
    the server's SLI thread is the one at background.NICE, serving (event loop, inference) the others."""
    at, others = 0, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = _stat(task / "stat")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        ticks = int(fields[11]) + int(fields[12])
        if int(fields[16]) == nice:
            at += ticks
        else:
            others += ticks
    return at / CLOCK_TICKS, others / CLOCK_TICKS
