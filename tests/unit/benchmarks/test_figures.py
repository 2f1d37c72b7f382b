"""The suites' figures mean what their tables say: a p99 is the 99th percentile by nearest rank (not
one rank high), the compute-heavy cell's seconds are the whole seconds wrk runs, the zoo is the
repository's wherever the suite is started from, and raw onnxruntime runs the row the servers get
(benchmarks/, run in a subprocess with the repository on the path: `benchmarks` is not installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _python(code: str, cwd: Path = ROOT, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_p99_of_a_hundred_latencies_is_the_99th_not_the_highest() -> None:
    code = (
        "from benchmarks.percentile import nearest_rank; "
        "print([nearest_rank(list(range(1, 101)), 0.99), nearest_rank(list(range(1, 1001)), 0.99), "
        "nearest_rank([7.0], 0.99), nearest_rank(list(range(1, 11)), 0.5)])"
    )
    assert _python(code) == "[99, 990, 7.0, 5]"


def test_the_server_suites_p99_is_the_nearest_rank() -> None:
    code = (
        "from benchmarks import server; "
        "print(server._summary('v', 1, [i / 1000 for i in range(1, 101)], 1.0).p99_ms)"
    )
    assert float(_python(code)) == 99.0


def test_fractional_heavy_seconds_are_the_whole_seconds_wrk_runs() -> None:
    assert (
        _python("from benchmarks import peers_heavy; print(peers_heavy.SECONDS)", PEERS_HEAVY_SECONDS="2.5")
        == "2"
    )


def test_the_zoo_is_the_repositorys_wherever_the_suite_starts(tmp_path: Path) -> None:
    code = "from benchmarks import peers_heavy, real_models; print(peers_heavy.ZOO, real_models.ZOO)"
    assert _python(code, cwd=tmp_path).split() == [str(ROOT / "build" / "zoo")] * 2


def test_raw_onnxruntime_is_fed_the_requests_row() -> None:
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [0.5, -1.25, 2.0]}]}
    )
    code = (
        "import sys; from benchmarks import peers; feed = peers.body_feed(sys.argv[1]); "
        "print({name: [str(x.dtype), list(x.shape), x.ravel().tolist()] for name, x in feed.items()})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, body], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "{'X': ['float32', [1, 3], [0.5, -1.25, 2.0]]}"
