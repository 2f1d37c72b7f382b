"""A peers cell of several rounds shows each figure's median, so that one bad 5 s window (a p99 the
VM stretched) does not decide the cell; errors are never lost to the median (benchmarks/peers.py,
run from the repository root as the suite runs: `benchmarks` is not an installed package)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def combined(rounds: list[tuple[float, float, float, float | None, float, int]]) -> dict[str, object]:
    code = (
        "import json, sys, dataclasses; from benchmarks import peers; "
        "cells = [peers.Cell(*r) for r in json.loads(sys.argv[1])]; "
        "print(json.dumps(dataclasses.asdict(peers.median_cell(cells))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(rounds)], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_cell_of_rounds_shows_medians_the_highest_load_and_every_error() -> None:
    cell = combined([
        (3000.0, 0.3, 0.6, 250.0, 0.9, 0),
        (1500.0, 0.6, 9.0, 400.0, 1.8, 2),  # a window the VM stretched
        (2900.0, 0.3, 0.7, 260.0, 1.1, 1),
    ])  # fmt: skip
    assert cell == {"per_s": 2900.0, "p50_ms": 0.3, "p99_ms": 0.7, "cpu_us": 260.0, "load": 1.8, "errors": 3}


def test_a_cell_with_a_round_of_unknown_cpu_shows_none() -> None:
    assert combined([(100.0, 1.0, 2.0, 5.0, 1.0, 0), (100.0, 1.0, 2.0, None, 1.0, 0)])["cpu_us"] is None
