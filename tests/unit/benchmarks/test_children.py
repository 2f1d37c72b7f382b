"""A benchmark run stopped by SIGTERM (CI's cancel, `timeout`) or killed outright leaves no server
behind, and a SIGTERM also removes its temporary directory (benchmarks/__main__.py, benchmarks/children.py,
run from the repository root as the suites run: `benchmarks` is not an installed package). The child is
the peers suite's real floor server on the sample model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from quantship import zoo

ROOT = Path(__file__).resolve().parents[3]

SUITE_WITH_A_FLOOR = """
import json, sys, tempfile, time
from pathlib import Path
from benchmarks import peers
from benchmarks.__main__ import exit_on_sigterm
exit_on_sigterm()
model = peers.Model("digits", Path(sys.argv[1]), Path(sys.argv[1]), sys.argv[2])
with tempfile.TemporaryDirectory(prefix="quantship-bench-", dir=sys.argv[3]) as tmp:
    with peers.floor(model, Path(tmp), pin=False) as running:
        print(json.dumps([running.pid, tmp]), flush=True)
        time.sleep(300)
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that will never reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _start_suite(sample: zoo.SampleModel, tmp_path: Path) -> tuple[subprocess.Popen[str], int, Path]:
    rows = np.load(sample.requests)[zoo.INPUT_NAME][:1].astype(np.float32)
    body = json.dumps({"inputs": [{"name": zoo.INPUT_NAME, "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]})  # fmt: skip
    suite = subprocess.Popen(
        [sys.executable, "-c", SUITE_WITH_A_FLOOR, str(sample.model), body, str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert suite.stdout is not None
    line = suite.stdout.readline()
    assert line, f"the suite ended before its floor answered (exit code {suite.wait(30)})"
    floor_pid, workdir = json.loads(line)
    return suite, floor_pid, Path(workdir)


def test_sigterm_stops_the_servers_and_removes_the_temporary_directory(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    suite, floor_pid, workdir = _start_suite(sample, tmp_path)
    try:
        assert workdir.is_dir() and _alive(floor_pid)
        suite.send_signal(signal.SIGTERM)
        assert suite.wait(60) == 128 + signal.SIGTERM
        assert _gone_within(floor_pid, 10), "the floor server outlived the suite"
        assert not workdir.exists()
    finally:
        suite.kill()
        suite.wait()
        if _alive(floor_pid):
            os.kill(floor_pid, signal.SIGKILL)


def test_a_suite_killed_outright_takes_its_servers_with_it(sample: zoo.SampleModel, tmp_path: Path) -> None:
    suite, floor_pid, _ = _start_suite(sample, tmp_path)
    try:
        suite.kill()
        suite.wait()
        assert _gone_within(floor_pid, 30), "the floor server outlived a SIGKILL of the suite"
    finally:
        if _alive(floor_pid):
            os.kill(floor_pid, signal.SIGKILL)


def test_a_child_that_ignores_sigterm_is_killed() -> None:
    code = (
        "import sys; from benchmarks import children; "
        "child = children.start([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
        "time.sleep(60)'], stdout=-1); "
        "child.stdout.readline(); children.stop(child, timeout=1); print(child.returncode)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    assert int(done.stdout.split()[-1]) == -signal.SIGKILL
