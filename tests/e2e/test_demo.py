"""`quantship demo --quick` end to end, as a person runs it: real servers, a real Prometheus, the
rollout engine, then the outcome read back from what the demo wrote and from the process table."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.prometheus


def _demo(workdir: Path, *flags: str) -> subprocess.Popen[str]:
    """The demo in `workdir`'s parent, given `workdir` relative to it: as `make demo` passes build/demo."""
    return subprocess.Popen(
        [sys.executable, "-m", "quantship", "demo", "--quick", "--workdir", workdir.name, *flags],
        cwd=workdir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _processes_mentioning(workdir: Path) -> list[str]:
    """Command lines of live processes that were started for this demo (servers, Prometheus)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmdline and " demo " not in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def _finish(process: subprocess.Popen[str], timeout: float) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the demo did not finish within {timeout:.0f} s:\n{output[-3000:]}")
    return output


def _check_outcome(workdir: Path, output: str, code: int) -> dict:
    assert code == 0, output[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"] is True
    rollouts = {r["revision"]: r for r in summary["rollouts"]}
    assert rollouts["v1-fp32"]["phase"] == "Promoted"
    assert rollouts["v2-int8"]["phase"] == "Promoted"
    assert rollouts["v2-int8"]["judgements"] >= 2, "promoted after judging every step"
    skewed = rollouts["v3-int8-skewed"]
    assert skewed["phase"] == "RolledBack"
    assert "clip_rate burn rate above 1 on both windows" in skewed["reason"], skewed["reason"]
    rollback = next(d for d in summary["decisions"] if d["action"] == "RollBack")
    clip = next(s for s in rollback["analysis"]["slos"] if s["slo"] == "clip_rate")
    assert clip["verdict"] == "fail" and all(w["burnRate"] > 1 for w in clip["windows"])
    assert (workdir / "reports" / "demo.html").read_text().count("data:image/png;base64,") >= 5
    assert not _processes_mentioning(workdir), "every child process is gone"
    return summary


def test_the_quick_demo_promotes_the_good_canary_and_rolls_the_skewed_one_back(tmp_path: Path) -> None:
    process = _demo(tmp_path / "demo")
    output = _finish(process, timeout=300)
    summary = _check_outcome(tmp_path / "demo", output, process.returncode)
    assert "Prometheus" in summary["settings"]
    assert "RollBack: " in output and "clip_rate" in output


def test_without_prometheus_the_direct_scrape_reaches_the_same_verdicts(tmp_path: Path) -> None:
    process = _demo(tmp_path / "demo", "--no-prometheus")
    output = _finish(process, timeout=300)
    summary = _check_outcome(tmp_path / "demo", output, process.returncode)
    assert "direct scrape" in summary["settings"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_stopping_the_demo_during_a_canary_stops_every_process_it_started(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """Servers and Prometheus run in sessions of their own: only the demo can stop them."""
    workdir = tmp_path / "demo"
    process = _demo(workdir)
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    seen, deadline = "", time.monotonic() + 180
    while "canary at 50%" not in seen:  # a canary is taking traffic: servers, Prometheus, load all up
        assert time.monotonic() < deadline and process.poll() is None, seen[-3000:]
        if selector.select(timeout=1):
            seen += process.stdout.readline()
    assert len(_processes_mentioning(workdir)) >= 3, "stable, canary and Prometheus are running"
    process.send_signal(stop)
    output = _finish(process, timeout=60)
    assert process.returncode == 130, output[-2000:]
    assert "interrupted" in output
    assert not _processes_mentioning(workdir), "every child process is gone"
