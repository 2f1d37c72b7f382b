"""The peers table's raw onnxruntime columns count the calls' own time, so "raw after idle" shows
what a pause does to a call, not the pause itself (benchmarks/peers.py, run from the repository
root as the suite runs: `benchmarks` is not an installed package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quantship import zoo

ROOT = Path(__file__).resolve().parents[3]


def test_raw_after_idle_counts_the_calls_not_the_sleep_between_them(sample: zoo.SampleModel) -> None:
    idle_s = 0.05  # a second holds at most 20 such pauses
    code = (
        "import sys; from pathlib import Path; import numpy as np; from benchmarks import peers; "
        "feed = {'X': np.zeros((1, 64), dtype=np.float32)}; "
        "print(peers.raw_calls_per_s(Path(sys.argv[1]), feed, idle_s=float(sys.argv[2])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(sample.model), str(idle_s)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    after_idle = float(done.stdout.strip().splitlines()[-1])
    # A one-row digits call takes tens of microseconds: with the sleep counted this would read <= 20.
    assert after_idle > 10 / idle_s
