"""The demo's drift loop: traffic drifts, the drift SLI rises, recalibrate from the capture.

The stable revision serves with `--capture-dir`, so the server keeps a reservoir of the rows it
served as `capture.npz`. When the load generator starts sending drifted inputs (darker images), the
servers' `quantship_activation_drift{tensor="all"}` (Jensen-Shannon divergence from the artifact's
calibration histograms) rises; this module reads it from the demo's metrics, waits for it to cross
the drift alert's threshold, waits for the server to write a capture holding the drifted rows, and
runs the real `quantship quantize --calibration capture.npz` on it. The demo then canaries the new
artifact through the rollout engine, like every other revision.

The alert itself judges an hour's average for half an hour (quantship.oncall.rules): a demo cannot
wait that long, so it compares the gauge as the servers export it with the same threshold.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from quantship import slo
from quantship.local.lifetime import dying_with_parent
from quantship.local.prometheus import PrometheusError, PrometheusProcess
from quantship.local.scrape import ScrapeSource
from quantship.oncall.rules import DRIFT_THRESHOLD, drift_series

DRIFT_SERIES = drift_series(per_tensor=False)
"""quantship_activation_drift{tensor="all"}: the overall drift the alert judges."""

DriftReader = Callable[[Mapping[str, str]], Awaitable[float | None]]
"""The overall drift gauge of the servers within some labels (max over replicas); None: not exported."""


class RecalibrationError(Exception):
    """The loop could not go on: the drift never rose, no capture came, or quantize failed."""


def prometheus_drift(prometheus: PrometheusProcess) -> DriftReader:
    async def read(labels: Mapping[str, str]) -> float | None:
        try:
            result = await prometheus.query(f"max({slo.with_labels(DRIFT_SERIES, labels)})")
        except (PrometheusError, httpx.HTTPError, ValueError):  # a figure missed, not a demo stopped
            return None
        return float(result[0]["value"][1]) if result else None

    return read


def scraped_drift(scraper: ScrapeSource) -> DriftReader:
    async def read(labels: Mapping[str, str]) -> float | None:
        return scraper.latest(DRIFT_SERIES, labels)

    return read


@dataclass
class DriftLoop:
    """The loop's figures, for the progress lines, summary.json and the report."""

    revision: str
    """The stable whose traffic drifts."""
    scale: float
    """Inputs are sent multiplied by this."""
    threshold: float = DRIFT_THRESHOLD
    calm: float | None = None
    """The stable's drift just before the traffic drifted."""
    drifted: float | None = None
    """The stable's drift once it crossed the threshold."""
    rose_in: float | None = None
    """Seconds from drifting the traffic to the drift crossing the threshold."""
    captured: int | None = None
    """Rows in the capture the new artifact was calibrated on."""
    recalibrated: str | None = None
    """The revision serving the recalibrated artifact."""
    after: float | None = None
    """The recalibrated revision's drift on the same drifted traffic, at its last canary step."""
    phase: str | None = None
    """How the recalibrated revision's rollout ended."""

    @property
    def ok(self) -> bool:
        return (
            self.drifted is not None
            and self.drifted > self.threshold
            and self.after is not None
            and self.after < self.threshold
            and self.phase == "Promoted"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "scale": self.scale,
            "threshold": self.threshold,
            "calm": _rounded(self.calm),
            "drifted": _rounded(self.drifted),
            "roseInSeconds": _rounded(self.rose_in, 1),
            "capturedRows": self.captured,
            "recalibrated": self.recalibrated,
            "after": _rounded(self.after),
            "phase": self.phase,
            "ok": self.ok,
        }


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


async def wait_for_drift(
    read: DriftReader, labels: Mapping[str, str], threshold: float, timeout: float
) -> tuple[float, float]:
    """Poll the drift gauge until it exceeds `threshold`: (the value, seconds it took)."""
    began = time.monotonic()
    last: float | None = None
    while time.monotonic() - began < timeout:
        last = await read(labels)
        if last is not None and last > threshold:
            return last, time.monotonic() - began
        await asyncio.sleep(0.5)
    raise RecalibrationError(
        f"drift of {slo.selector(labels)} stayed at {last} (threshold {threshold}) for {timeout:.0f} s"
    )


async def wait_for_capture(path: Path, since: float, timeout: float) -> int:
    """Until the server writes `path` after `since` (time.time()): the rows it holds. The server
    writes its capture at most every --capture-flush-s seconds and at shutdown."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.stat().st_mtime >= since:
                with np.load(path) as data:  # written by rename: never half a file
                    return len(data[data.files[0]])
        except FileNotFoundError:
            pass
        await asyncio.sleep(0.5)
    raise RecalibrationError(f"no capture written to {path} within {timeout:.0f} s of the drift")


def quantize_arguments(model: Path, capture: Path, evaluation: Path, out: Path) -> list[str]:
    """`quantship quantize MODEL -o OUT --calibration CAPTURE --evaluation EVALUATION`'s arguments:
    what `recalibrate` runs and the demo shows."""
    return [
        "quantize", str(model), "-o", str(out),
        "--calibration", str(capture), "--evaluation", str(evaluation),
    ]  # fmt: skip


def command_line(arguments: Sequence[str], cwd: Path | None = None) -> str:
    """`quantship ARGUMENTS` as a person can paste it in `cwd` (default: the current directory): the
    paths under it relative to it, every one whole (the demo showed bare file names: 'model.onnx')."""
    here = (cwd or Path.cwd()).resolve()
    shown = [
        str(Path(a).relative_to(here)) if Path(a).is_absolute() and Path(a).is_relative_to(here) else a
        for a in arguments
    ]
    return shlex.join(["quantship", *shown])


async def recalibrate(arguments: Sequence[str]) -> None:
    """`quantship quantize` with `arguments` (quantize_arguments), the command a person runs, in a
    child process: the demo's event loop keeps the traffic and the view going. Raises
    RecalibrationError with its output when it fails."""
    command = [sys.executable, "-m", "quantship", *arguments, "-q"]
    child = await asyncio.create_subprocess_exec(
        *dying_with_parent(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = await child.communicate()
    except BaseException:  # the demo is stopping: the quantizer goes with it
        child.kill()
        await child.wait()
        raise
    if child.returncode != 0:
        raise RecalibrationError(
            f"quantize exited with {child.returncode}:\n{output.decode(errors='replace')[-3000:]}"
        )
