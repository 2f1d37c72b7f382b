"""In-memory ports for the engine's unit tests, handed out by conftest.py's fixtures.

They are the ports' contract, nothing more.

Traffic is a profile per revision and SLI: from a given (loop) time on, so many events per
second with such a bad ratio. `counts` integrates the profile over the asked window, so windows,
minimum samples and a breach that starts mid-rollout behave as they would against Prometheus.
The loop clock is looptime's virtual one: step intervals of minutes take no real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from quantship import slo
from quantship.rollout import (
    Counts,
    GaugeMeasurement,
    Measurement,
    NoData,
    PortError,
    Track,
    Unreachable,
    Value,
)

OBJECTIVES = (
    slo.Objective(slo.SLI.ACCURACY_DELTA, budget=0.005),
    slo.Objective(slo.SLI.LATENCY, budget=0.01, latency_threshold=0.1),
    slo.Objective(slo.SLI.ERRORS, budget=0.001),
    slo.Objective(slo.SLI.CLIP_RATE, budget=0.001),
)
GOOD = {
    slo.SLI.ACCURACY_DELTA: 0.0,
    slo.SLI.LATENCY: 0.001,
    slo.SLI.ERRORS: 0.0,
    slo.SLI.CLIP_RATE: 0.00002,
}


def now() -> float:
    return asyncio.get_running_loop().time()


class MemoryWorkloads:
    def __init__(self, ready_after: float = 5.0) -> None:
        self.ready_after = ready_after
        self.running: dict[str, Track] = {}
        self.started: dict[str, float] = {}
        self.replicas: dict[str, int] = {}
        self.never_ready: set[str] = set()
        self.partly_ready: set[str] = set()
        """Revisions ready with some of their servers only: `ready`, not `all_ready`."""
        self.calls: list[tuple[str, ...]] = []

    async def run(self, revision: str, track: Track) -> None:
        self.calls.append(("run", revision, track.value))
        self.running[revision] = track
        self.started.setdefault(revision, now())

    async def ready(self, revision: str) -> bool:
        if revision not in self.running or revision in self.never_ready:
            return False
        # a revision a test put in `running` by hand has long been running
        return now() - self.started.get(revision, float("-inf")) >= self.ready_after

    async def all_ready(self, revision: str) -> bool:
        return revision not in self.partly_ready and await self.ready(revision)

    async def scale(self, revision: str, replicas: int) -> None:
        self.replicas[revision] = replicas

    async def remove(self, revision: str) -> None:
        self.calls.append(("remove", revision))
        self.running.pop(revision, None)
        self.started.pop(revision, None)


class MemoryRouter:
    def __init__(self) -> None:
        self.routes: list[tuple[str, str | None, int]] = []
        self.failures: list[PortError] = []
        """Errors to raise on the next calls, one each."""

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        if self.failures:
            raise self.failures.pop(0)
        self.routes.append((stable, canary, weight))
        return float(weight if canary else 0)

    @property
    def weights(self) -> list[int]:
        return [weight for _, canary, weight in self.routes if canary]


@dataclass
class Segment:
    start: float
    events_per_second: float
    bad_ratio: float


@dataclass
class MemoryMetrics:
    """Traffic profiles per (revision, SLI); `down` makes every query Unreachable."""

    profiles: dict[tuple[str, slo.SLI], list[Segment]] = field(default_factory=dict)
    fallback: dict[str, float] = field(default_factory=dict)
    down: bool = False
    queries: list[tuple[str, str, int]] = field(default_factory=list)

    def serve(
        self,
        revision: str,
        ratios: Mapping[slo.SLI, float],
        *,
        events_per_second: float = 10.0,
        start: float = 0,
    ) -> None:
        """From `start` on, `revision` sees this many events per second with these bad ratios."""
        for sli, ratio in ratios.items():
            self.profiles.setdefault((revision, sli), []).append(Segment(start, events_per_second, ratio))
        self.fallback.setdefault(revision, 0)

    async def counts(
        self, objective: slo.Objective, window_seconds: int, labels: Mapping[str, str]
    ) -> Measurement:
        revision = labels["revision"]
        self.queries.append((revision, objective.sli.value, window_seconds))
        if self.down:
            return Unreachable("connection refused")
        segments = self.profiles.get((revision, objective.sli))
        if not segments:
            return NoData(f"no series for revision {revision}")
        end = now()
        begin = end - window_seconds
        bad = total = 0.0
        ordered = sorted(segments, key=lambda s: s.start)
        for segment, following in zip(ordered, [*ordered[1:], None], strict=True):
            stop = min(end, following.start if following else end)
            overlap = max(0.0, stop - max(begin, segment.start))
            total += overlap * segment.events_per_second
            bad += overlap * segment.events_per_second * segment.bad_ratio
        return Counts(bad=bad, total=total)

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        if self.down:
            return Unreachable("connection refused")
        value = self.fallback.get(labels["revision"])
        return NoData("no series") if value is None else Value(value)
