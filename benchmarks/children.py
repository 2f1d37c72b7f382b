"""The suites' own child processes (floor servers, peers, naive servers, load generators, the operator):
started so that they end with the suite (quantship.local.lifetime: the kernel sends SIGTERM when the
thread that started them ends, even on a SIGKILL of the suite), and stopped so that one that ignores
SIGTERM is killed rather than waited on forever or left behind."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from quantship.local.lifetime import dying_with_parent

STOP_TIMEOUT_S = 30.0
"""How long a child may take to exit after SIGTERM before it is killed."""


def start(command: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """`command` started as subprocess.Popen would, dying with this process."""
    return subprocess.Popen(dying_with_parent(command), **popen)


def stop(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
