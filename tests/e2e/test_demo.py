"""`quantship demo --quick` end to end, as a person runs it: real servers, a real Prometheus, the
rollout engine, the real quantizer recalibrating from a server's capture, then the outcome read back
from what the demo wrote and from the process table."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from quantship.oncall.rules import DRIFT_THRESHOLD

pytestmark = pytest.mark.prometheus


def _demo(workdir: Path, *flags: str, **popen: Any) -> subprocess.Popen[str]:
    """The demo in `workdir`'s parent, given `workdir` relative to it: as `make demo` passes build/demo."""
    return subprocess.Popen(
        [sys.executable, "-m", "quantship", "demo", "--quick", "--workdir", workdir.name, *flags],
        cwd=workdir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **{"env": {**os.environ, "COLUMNS": "200"}, **popen},
    )


def _processes_mentioning(workdir: Path) -> dict[int, str]:
    """Command lines of live processes that were started for this demo (servers, Prometheus), by pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmdline and " demo " not in cmdline:
            found[int(proc.name)] = cmdline
    return found


def _wait_for(process: subprocess.Popen[str], text: str, timeout: float = 180) -> str:
    """The demo's output up to the line holding `text`."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    seen, deadline = "", time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline and process.poll() is None, seen[-3000:]
        if selector.select(timeout=1):
            seen += process.stdout.readline()
    return seen


def _listening_port(cmdline: str) -> int:
    """The loopback port a server (--port N) or Prometheus (--web.listen-address=HOST:N) listens on."""
    words = cmdline.split()
    if "--port" in words:
        return int(words[words.index("--port") + 1])
    address = next(w for w in words if w.startswith("--web.listen-address="))
    return int(address.rsplit(":", 1)[1])


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan whose new parent does not reap it has ended all the same)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
    _check_drift_loop(summary, rollouts)
    assert (workdir / "reports" / "demo.html").read_text().count("data:image/png;base64,") >= 6
    assert not _processes_mentioning(workdir), "every child process is gone"
    return summary


def _check_drift_loop(summary: dict, rollouts: dict) -> None:
    """Drifted traffic raised the stable's drift SLI over the alert threshold; the artifact the real
    quantizer recalibrated from the stable's capture was promoted, its drift back under it."""
    drift = summary["drift"]
    assert drift["threshold"] == DRIFT_THRESHOLD
    assert drift["revision"] == "v2-int8"
    assert drift["calm"] < DRIFT_THRESHOLD < drift["drifted"], drift
    assert drift["capturedRows"] > 0
    recalibrated = rollouts[drift["recalibrated"]]
    assert recalibrated["phase"] == drift["phase"] == "Promoted", recalibrated["reason"]
    assert drift["after"] < DRIFT_THRESHOLD, drift
    assert drift["ok"] is True


def test_the_quick_demo_promotes_the_good_canary_and_rolls_the_skewed_one_back(tmp_path: Path) -> None:
    process = _demo(tmp_path / "demo")
    output = _finish(process, timeout=300)
    summary = _check_outcome(tmp_path / "demo", output, process.returncode)
    assert "Prometheus" in summary["settings"]
    assert "RollBack: " in output and "clip_rate" in output
    assert "drift rose to" in output and "recalibrating on the" in output


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
    _wait_for(process, "canary at 50%")  # a canary is taking traffic: servers, Prometheus, load all up
    assert len(_processes_mentioning(workdir)) >= 3, "stable, canary and Prometheus are running"
    process.send_signal(stop)
    output = _finish(process, timeout=60)
    # Ctrl-C is 130, as a shell reports it; a kill ends the demo by that signal once it has cleaned up
    assert process.returncode == (130 if stop == signal.SIGINT else -stop), output[-2000:]
    assert "interrupted" in output
    assert not _processes_mentioning(workdir), "every child process is gone"


def test_ctrl_c_while_quantizing_stops_the_quantizer_and_says_nothing_was_serving(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground group: the demo and the quantizer's child
    (onnxruntime's preprocess). The demo said it had stopped servers and Prometheus it never started."""
    workdir, scratch = tmp_path / "demo", tmp_path / "tmp"
    scratch.mkdir()
    process = _demo(
        workdir,
        env={**os.environ, "COLUMNS": "200", "TMPDIR": str(scratch)},
        start_new_session=True,
        preexec_fn=_as_a_foreground_job,
    )
    _wait_for(process, "quantizing int8-good", timeout=60)
    os.killpg(process.pid, signal.SIGINT)
    output = _finish(process, timeout=30)
    assert process.returncode == 130, output[-2000:]
    assert "interrupted: while building the artifacts (step 1), before any server" in output, output[-2000:]
    assert "were stopped" not in output
    deadline = time.monotonic() + 10  # nothing of the demo's group outlives it, nor the quantizer's scratch
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(process.pid) and not list(scratch.iterdir())


def test_a_second_demo_in_the_same_workdir_refuses_at_once_naming_the_first(tmp_path: Path) -> None:
    """Two demos in one workdir cleared and rewrote each other's captures, artifacts and summary."""
    workdir = tmp_path / "demo"
    first = _demo(workdir)
    try:
        _wait_for(first, "quantizing int8-good", timeout=60)  # past its lock, building its artifacts
        second = _demo(workdir)
        output = _finish(second, timeout=30)
        assert second.returncode == 3, output  # refused, as any input the command cannot use
        assert output.splitlines() == [
            f"error: another demo (pid {first.pid}) is running in {workdir}: wait for it to end, "
            "or give this one another --workdir"
        ]
        assert first.poll() is None, "the first demo runs on"
    finally:
        first.terminate()
        _finish(first, timeout=30)


def _as_a_foreground_job() -> None:
    """SIGINT at its default, as a terminal's shell starts a foreground job: a suite run in the
    background (`nohup ... &`, as CI may run it) hands its children SIGINT ignored, and Python then
    never raises KeyboardInterrupt (the demo's own handler only comes with its servers)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_demo_takes_its_servers_and_prometheus_with_it(tmp_path: Path) -> None:
    """SIGKILL leaves the demo no chance to stop anything: its children must end on their own, not
    linger under PID 1 still listening (issue 15)."""
    workdir = tmp_path / "demo"
    process = _demo(workdir)
    _wait_for(process, "canary at 50%")
    children = {pid: _listening_port(cmdline) for pid, cmdline in _processes_mentioning(workdir).items()}
    assert len(children) >= 3, "stable, canary and Prometheus are running"
    assert all(_accepts(port) for port in children.values())
    process.kill()
    process.communicate()
    try:
        deadline = time.monotonic() + 15  # a server's drain and Prometheus's shutdown take a second or two
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = {pid: port for pid, port in children.items() if _alive(pid)}
        assert not survivors, f"still running after the demo was killed (pid: port): {survivors}"
        assert not [port for port in children.values() if _accepts(port)], "a port still accepts"
    finally:
        for pid in children:  # the processes this test saw start; whatever the outcome, none outlives it
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
