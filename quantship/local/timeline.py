"""What the demo saw, second by second: the record behind its live view and its report.

A `Timeline` samples the running system once a second — the canary weight the router applies,
each serving revision's SLI ratios from the same MetricsSource the engine judges with, its
activation drift from the same metrics, and the client-side latency the load generator
measured — and keeps every decision of the engine.
Nothing is computed ahead or scripted: a figure is here only if the system produced it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quantship import slo
from quantship.local.recalibration import DriftReader
from quantship.local.traffic import LoadGenerator
from quantship.rollout import Counts, Decision, MetricsSource, RolloutStatus

SAMPLE_INTERVAL_S = 1.0
"""Seconds between samples; client latency percentiles are of the requests of the last one."""


@dataclass(frozen=True)
class RevisionSample:
    track: str
    requests_ok: int
    requests_failed: int
    ratios: Mapping[slo.SLI, float | None]
    """Bad ratio of each SLI over the short window; None: no events counted in it."""
    latency_p50: float | None
    latency_p95: float | None
    """Seconds, from the client's own clock, over the last sampling interval."""
    drift: float | None = None
    """The overall activation drift gauge (Jensen-Shannon bits); None: not exported (FP32)."""


@dataclass(frozen=True)
class Sample:
    at: float
    """Seconds since the demo started."""
    rollout: str
    weight: int
    revisions: Mapping[str, RevisionSample]


@dataclass(frozen=True)
class DecisionRecord:
    at: float
    rollout: str
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 2),
            "rollout": self.rollout,
            "action": self.decision.action.value,
            "phase": self.decision.status.phase.value,
            "weight": self.decision.status.weight,
            "reason": self.decision.reason,
            "analysis": self.decision.analysis.to_dict() if self.decision.analysis else None,
        }


@dataclass
class Timeline:
    objectives: tuple[slo.Objective, ...]
    window: int
    """Seconds: the window SLI ratios are sampled over (the engine's short window)."""
    model: str
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    rollout: str = ""
    status: RolloutStatus = field(default_factory=RolloutStatus)
    drift: DriftReader | None = None
    """Where each revision's activation drift is read from; None: not sampled."""

    def now(self) -> float:
        return time.monotonic() - self.started

    def begin(self, rollout: str, status: RolloutStatus) -> None:
        self.rollout, self.status = rollout, status

    def record(self, decision: Decision) -> None:
        self.status = decision.status
        self.decisions.append(DecisionRecord(self.now(), self.rollout, decision))

    async def sample(
        self, tracks: Callable[[], Mapping[str, Any]], metrics: MetricsSource, load: LoadGenerator
    ) -> Sample:
        since = asyncio.get_running_loop().time() - SAMPLE_INTERVAL_S
        revisions = {}
        for revision, track in tracks().items():
            measured = await asyncio.gather(
                *(
                    metrics.counts(objective, self.window, {"model": self.model, "revision": revision})
                    for objective in self.objectives
                )
            )
            ratios = {
                objective.sli: (m.bad / m.total if isinstance(m, Counts) and m.total else None)
                for objective, m in zip(self.objectives, measured, strict=True)
            }
            scope = {"model": self.model, "revision": revision}
            drift = await self.drift(scope) if self.drift is not None else None
            sent = load.sent.get(revision)
            recent = sorted(seconds for at, seconds in (sent.latencies if sent else ()) if at >= since)
            revisions[revision] = RevisionSample(
                track=str(track),
                requests_ok=sent.ok if sent else 0,
                requests_failed=sent.errors if sent else 0,
                ratios=ratios,
                latency_p50=statistics.median(recent) if recent else None,
                latency_p95=recent[int(0.95 * (len(recent) - 1))] if recent else None,
                drift=drift,
            )
        sample = Sample(self.now(), self.rollout, self.status.weight if self.status.canary else 0, revisions)
        self.samples.append(sample)
        return sample

    async def run(
        self,
        tracks: Callable[[], Mapping[str, Any]],
        metrics: MetricsSource,
        load: LoadGenerator,
        on_sample: Callable[[Sample], None] | None = None,
    ) -> None:
        """Sample once a second until cancelled."""
        while True:
            sample = await self.sample(tracks, metrics, load)
            if on_sample is not None:
                on_sample(sample)
            await asyncio.sleep(SAMPLE_INTERVAL_S)
