"""The transport suite's floor servers are measured once they listen, however long their start takes
on a loaded host, and one that dies before it listens says so (benchmarks/transport.py, run from the
repository root as the suites run: `benchmarks` is not an installed package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

LATE_LISTENER = """
import socket, sys, threading, time
from benchmarks import transport
from quantship.local.prometheus import free_port
port = free_port()
def listen_late():
    time.sleep(3)  # longer than the 2 s the suite used to sleep
    server = socket.create_server(("127.0.0.1", port))
    while True:
        server.accept()[0].close()
threading.Thread(target=listen_late, daemon=True).start()
started = time.monotonic()
transport.wait_listening(port, lambda: True)
waited = time.monotonic() - started
socket.create_connection(("127.0.0.1", port), timeout=1).close()
print(waited)
"""

DEAD_SERVER = """
from benchmarks import transport
from quantship.local.prometheus import free_port
transport.wait_listening(free_port(), lambda: False)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_floor_server_slow_to_listen_is_waited_for() -> None:
    done = _python(LATE_LISTENER)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) >= 3


def test_a_floor_server_that_exits_before_it_listens_says_so() -> None:
    done = _python(DEAD_SERVER)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith("exited before it listened")
