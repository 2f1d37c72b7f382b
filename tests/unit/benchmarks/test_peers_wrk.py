"""The peers suite reads wrk's report as it is: refusals and socket errors are errors, not throughput,
and a server that is gone stops the suite with one line that names it, after printing what was measured
(benchmarks/peers.py, run from the repository root as the suite runs: `benchmarks` is not an installed
package). The reports are wrk 4.1's, captured against `quantship serve`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from quantship.local.prometheus import free_port

ROOT = Path(__file__).resolve().parents[3]

REFUSED = """Running 1s test @ http://127.0.0.1:43200/v2/models/m/infer
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.58ms    3.94ms  36.91ms   94.44%
    Req/Sec     2.65k   688.79     4.15k    70.00%
  Latency Distribution
     50%    2.95ms
     75%    4.48ms
     90%    6.51ms
     99%   24.83ms
  2668 requests in 1.01s, 591.44KB read
  Non-2xx or 3xx responses: 2668
Requests/sec:   2640.45
Transfer/sec:    585.33KB
"""
"""Every request answered 400 (a body of the wrong shape)."""

KILLED_MID_CELL = """Running 3s test @ http://127.0.0.1:43200/v2/models/m/infer
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.97ms   28.41ms 193.39ms   92.40%
    Req/Sec     1.70k     1.25k    3.52k    60.00%
  Latency Distribution
     50%    2.18ms
     75%    3.76ms
     90%   28.93ms
     99%  164.67ms
  1705 requests in 3.06s, 686.58KB read
  Socket errors: connect 0, read 18, write 48737, timeout 0
Requests/sec:    558.03
Transfer/sec:    224.71KB
"""
"""The server killed a second into a 3 s cell: wrk exits 0."""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def parsed(report: str) -> dict[str, object]:
    code = (
        "import json, sys, dataclasses; from benchmarks import peers; "
        "print(json.dumps(dataclasses.asdict(peers.parse_wrk(sys.argv[1], 0.5, 1))))"
    )
    done = _python(code, report)
    assert done.returncode == 0, done.stderr
    cell: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return cell


def test_answers_not_2xx_are_errors() -> None:
    cell = parsed(REFUSED)
    assert cell["errors"] == 2668
    assert cell["per_s"] == 2640.45
    assert cell["p99_ms"] == 24.83


def test_socket_errors_of_a_server_killed_mid_cell_are_errors() -> None:
    assert parsed(KILLED_MID_CELL)["errors"] == 18 + 48737


def test_a_cell_with_errors_reaches_the_verdicts_unjudged() -> None:
    code = (
        "import json, sys; from benchmarks import goals, peers; "
        "refused = peers.parse_wrk(sys.argv[1], 0.5, 1); "
        "ours = peers.Cell(1000.0, 1.0, 2.0, None, 0.1, 0); "
        "row = goals.PeersRow('digits', 8, peers._figures(ours), {'kserve': peers._figures(refused)}, "
        "peers._figures(ours), 1e9, False); "
        "print(json.dumps([[v.met, v.detail] for v in goals.peers_verdicts([row])][:2]))"
    )
    done = _python(code, REFUSED)
    assert done.returncode == 0, done.stderr
    verdicts = json.loads(done.stdout.strip().splitlines()[-1])
    assert verdicts == [[None, "0 of 1 cells; digits c=8 not judged: kserve 2668 errors"]] * 2


def test_a_server_that_is_gone_stops_the_suite_with_one_line_after_what_was_measured(tmp_path: Path) -> None:
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is not installed (TOOLING.md: apt-get install wrk)"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    log = tmp_path / "kserve" / "server.log"
    code = """
import sys
from pathlib import Path
from rich.console import Console
from rich.table import Table
from benchmarks import peers
model = peers.Model("digits INT8", Path("m.onnx"), Path("a"), "{}")
rounds = {("quantship", 8): [peers.Cell(2900.0, 0.3, 0.7, 250.0, 0.9, 0)]}
gone = peers.Running(sys.argv[2], 1, name="kserve", log=Path(sys.argv[3]))
script = peers.post_script(Path(sys.argv[4]), "{}")
with peers._keeping_what_was_measured(Console(width=200), Table(), model, rounds):
    peers.measure(sys.argv[1], gone, script, 8)
"""
    done = _python(code, wrk, url, str(log), str(tmp_path / "post.lua"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"peers: kserve at {url}: wrk failed: unable to connect to {url.removeprefix('http://')} "
        f"Connection refused (server log: {log})"
    )
    assert "digits INT8 c=8 quantship: 2,900 0.3/0.7 250µs" in done.stdout
