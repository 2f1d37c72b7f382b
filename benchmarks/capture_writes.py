"""What `--capture-dir` writes at a steady rate once its reservoir is full: every period (as before
session 40) against the periodic write that waits for a share of the rows to change (`capture.py`).

The reservoir and the capture are driven in process, without a server: EfficientNet-Lite0's rows
(602,112 bytes, 222 of them in the default 128 MiB), one a request at `RATE` a second, the flush
period ticked in simulated time. The writes are real (np.savez, fsync, rename in the workdir), each
timed; both policies see the same rows in the same slots (one reservoir decides for both).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from quantship.server.capture import Capture, CapturePick, Reservoir
from quantship.server.runner_signature import Signature, TensorSpec
from quantship.server.settings import ServerSettings

RATE = 20.0
"""Requests a second, one row each: a quiet production model."""
HOURS = 2
IMAGE = TensorSpec("images", "FP32", (None, 3, 224, 224))
"""EfficientNet-Lite0's input: 602,112 bytes a row."""
MiB = 1 << 20


@dataclass
class Writes:
    """One policy's writes, by simulated hour."""

    capture: Capture
    count: list[int] = field(default_factory=lambda: [0] * HOURS)
    size: list[int] = field(default_factory=lambda: [0] * HOURS)
    seconds: list[float] = field(default_factory=lambda: [0.0] * HOURS)

    def tick(self, hour: int, write: Callable[[], None]) -> None:
        """One flush period's end: `write` may write (or not); a write is counted and timed."""
        if not self.capture.changed:
            return
        started = time.perf_counter()
        write()
        if self.capture.changed:  # skipped
            return
        self.seconds[hour] += time.perf_counter() - started
        self.count[hour] += 1
        self.size[hour] += self.capture.path.stat().st_size


def simulate(workdir: Path, flush_s: float) -> tuple[Writes, Writes]:
    defaults = ServerSettings  # the class: its fields' defaults
    reservoir = Reservoir(
        Signature((IMAGE,), ()), defaults.capture_max_samples, defaults.capture_max_bytes, random.Random(40)
    )
    # math.inf: never due by itself; the loop below ends each period in simulated time
    every, waiting = (
        Writes(Capture(workdir / name, math.inf, batchable=True)) for name in ("every-period", "waiting")
    )
    for writes in (every, waiting):
        Capture.prepare(writes.capture.directory)
    image = np.random.default_rng(40).standard_normal((1, 3, 224, 224), dtype=np.float32)
    requests_a_period = round(RATE * flush_s)
    for period in range(round(HOURS * 3600 / flush_s)):
        hour = int(period * flush_s // 3600)
        for _ in range(requests_a_period):
            picks = reservoir.choose({IMAGE.name: image}, 1)
            if picks:
                pick = CapturePick({IMAGE.name: image}, picks, reservoir.capacity or 0)
                every.capture.process([pick])
                waiting.capture.process([pick])
        every.tick(hour, every.capture.flush)
        waiting.tick(hour, waiting.capture.flush_due)
    return every, waiting


def run(workdir: Path) -> None:
    flush_s = ServerSettings.capture_flush_s
    every, waiting = simulate(workdir, flush_s)
    table = Table(
        title=f"capture writes an hour: EfficientNet-Lite0 rows, 128 MiB reservoir, {RATE:g} req/s, "
        f"--capture-flush-s {flush_s:g} (simulated hours, real writes)"
    )
    for column in ("hour", "policy", "writes", "MiB written", "write s"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for hour in range(HOURS):
        for label, writes in (("every period", every), ("waits for 10% changed", waiting)):
            table.add_row(
                f"{hour + 1}", label, f"{writes.count[hour]}", f"{writes.size[hour] / MiB:,.0f}",
                f"{writes.seconds[hour]:.1f}",
            )  # fmt: skip
    Console(width=200).print(table)
