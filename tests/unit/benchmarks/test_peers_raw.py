"""The peers table's raw onnxruntime columns count the calls' own time, so "raw after idle" shows
what a pause does to a call, not the pause itself (benchmarks/peers.py)."""

from __future__ import annotations

from benchmarks import peers
from quantship import zoo


def test_raw_after_idle_counts_the_calls_not_the_sleep_between_them(sample: zoo.SampleModel) -> None:
    idle_s = 0.05  # a second holds at most 20 such pauses
    after_idle = peers.raw_calls_per_s(sample.model, width=64, idle_s=idle_s)
    # A one-row digits call takes tens of microseconds: with the sleep counted this would read <= 20.
    assert after_idle > 10 / idle_s
