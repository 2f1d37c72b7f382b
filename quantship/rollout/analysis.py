"""Judging a canary: multi-window burn rates per SLO, canary vs baseline, the fallback-ops gate.

`measure` asks a MetricsSource for everything a judgement needs (concurrently); `judge` is pure
and turns those measurements into an `Analysis`: a verdict with every number that led to it, so
the same data can go to the resource's status, an Event, a log line and the operator's metrics.

Per SLO and window: ratio = bad / total of the canary; burn rate = ratio / budget. The SLO is
breached when the burn rate exceeds the threshold on *both* windows (the long one proves the burn
is significant, the short one that it is still happening), or when the canary's burn rate
exceeds the stable revision's by more than `max_burn_rate_increase` on both windows. A window
with no data, an unreachable source or fewer than `min_samples` events makes the SLO
inconclusive, never a pass.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantship import slo
from quantship.rollout.ports import (
    Counts,
    GaugeMeasurement,
    Measurement,
    MetricsSource,
    NoData,
    Unreachable,
    Value,
)
from quantship.rollout.spec import RolloutSpec, format_duration
from quantship.rollout.state import to_timestamp


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


# -- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurements:
    """Raw answers of the metrics source for one judgement."""

    at: float
    canary: Mapping[tuple[slo.SLI, int], Measurement]
    baseline: Mapping[tuple[slo.SLI, int], Measurement]
    fallback_ops: GaugeMeasurement


def selector(spec: RolloutSpec, revision: str) -> dict[str, str]:
    """Labels of one revision's series. By revision, not track: promotion relabels the track."""
    return {**spec.analysis.labels, "model": spec.model, "revision": revision}


async def measure(
    source: MetricsSource, spec: RolloutSpec, canary: str, stable: str | None, now: float
) -> Measurements:
    """Every count `judge` needs: each SLO on both windows for the canary and the stable revision."""
    keys = [(objective, window) for objective in spec.objectives for window in spec.analysis.windows]
    canary_labels = selector(spec, canary)
    stable_labels = selector(spec, stable) if stable else None
    # asyncio.gather() of nothing is a future of []: no baseline without a stable revision
    counted, baseline, fallback_ops = await asyncio.gather(
        asyncio.gather(*(source.counts(o, w, canary_labels) for o, w in keys)),
        asyncio.gather(*(source.counts(o, w, stable_labels) for o, w in keys if stable_labels)),
        source.fallback_ops(canary_labels),
    )
    slots = [(objective.sli, window) for objective, window in keys]
    return Measurements(
        at=now,
        canary=dict(zip(slots, counted, strict=True)),
        baseline=dict(zip(slots, baseline, strict=False)),
        fallback_ops=fallback_ops,
    )


# -- judging --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowResult:
    window: int
    bad: float | None = None
    total: float | None = None
    burn_rate: float | None = None
    baseline_burn_rate: float | None = None
    problem: str | None = None
    """Why this window cannot be judged (no data, unreachable, too few samples); None when it can."""

    @property
    def ratio(self) -> float | None:
        return self.bad / self.total if self.bad is not None and self.total else None

    @property
    def increase(self) -> float | None:
        if self.burn_rate is None or self.baseline_burn_rate is None:
            return None
        return self.burn_rate - self.baseline_burn_rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": format_duration(self.window),
            "bad": self.bad,
            "total": self.total,
            "ratio": self.ratio,
            "burnRate": self.burn_rate,
            "baselineBurnRate": self.baseline_burn_rate,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class SLOResult:
    sli: slo.SLI
    budget: float
    threshold: float
    max_increase: float
    windows: tuple[WindowResult, ...]
    verdict: Verdict
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "slo": self.sli.value,
            "budget": self.budget,
            "burnRateThreshold": self.threshold,
            "maxBurnRateIncrease": self.max_increase,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "windows": [window.to_dict() for window in self.windows],
        }


@dataclass(frozen=True)
class GateResult:
    value: float | None
    limit: int
    verdict: Verdict
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "limit": self.limit,
            "verdict": self.verdict.value,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Analysis:
    at: float
    verdict: Verdict
    reason: str
    slos: tuple[SLOResult, ...]
    fallback_ops: GateResult

    @property
    def unreachable(self) -> bool:
        """Some answer did not come back at all (as opposed to coming back empty)."""
        problems = [w.problem or "" for s in self.slos for w in s.windows] + [self.fallback_ops.reason]
        return any("unreachable" in problem for problem in problems)

    def burn_rates(self) -> dict[tuple[str, str], float]:
        """(slo, window) -> the canary's burn rate, for the operator's quantship_burn_rate gauge."""
        return {
            (result.sli.value, format_duration(window.window)): window.burn_rate
            for result in self.slos
            for window in result.windows
            if window.burn_rate is not None
        }

    def ratio(self, sli: slo.SLI) -> float | None:
        """The canary's bad ratio of one SLI on the short window (accuracy delta for `kubectl get`)."""
        for result in self.slos:
            if result.sli is sli and result.windows:
                return result.windows[0].ratio
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": to_timestamp(self.at),
            "verdict": self.verdict.value,
            "reason": self.reason,
            "slos": [result.to_dict() for result in self.slos],
            "fallbackOps": self.fallback_ops.to_dict(),
        }


def judge(measurements: Measurements, spec: RolloutSpec) -> Analysis:
    analysis = spec.analysis
    results = tuple(
        _judge_slo(
            objective,
            [
                _window(
                    window,
                    objective,
                    measurements.canary.get((objective.sli, window), NoData("not measured")),
                    measurements.baseline.get((objective.sli, window)),
                    analysis.min_samples,
                )
                for window in analysis.windows
            ],
            spec,
        )
        for objective in spec.objectives
    )
    gate = _judge_fallback(measurements.fallback_ops, analysis.max_fallback_ops)
    failed = [r.reason for r in results if r.verdict is Verdict.FAIL]
    if gate.verdict is Verdict.FAIL:
        failed.insert(0, gate.reason)
    unsure = [r.reason for r in results if r.verdict is Verdict.INCONCLUSIVE]
    if gate.verdict is Verdict.INCONCLUSIVE:
        unsure.append(gate.reason)
    if failed:
        verdict, reason = Verdict.FAIL, "; ".join(failed)
    elif unsure:
        verdict, reason = Verdict.INCONCLUSIVE, "; ".join(unsure)
    else:
        verdict, reason = Verdict.PASS, "all SLOs within budget on both windows"
    return Analysis(measurements.at, verdict, reason, results, gate)


def _window(
    window: int,
    objective: slo.Objective,
    canary: Measurement,
    baseline: Measurement | None,
    min_samples: int,
) -> WindowResult:
    span = format_duration(window)
    match canary:
        case Unreachable(reason=why):
            return WindowResult(window, problem=f"unreachable on {span}: {why}")
        case NoData(reason=why):
            return WindowResult(window, problem=f"no data on {span}: {why}")
        case Counts(bad=bad, total=total) if total < min_samples:
            return WindowResult(window, bad, total, problem=f"{total:.0f} of {min_samples} samples on {span}")
        case Counts(bad=bad, total=total):
            baseline_burn = None
            if isinstance(baseline, Counts) and baseline.total >= min_samples:
                baseline_burn = objective.burn_rate(baseline.bad / baseline.total)
            return WindowResult(window, bad, total, objective.burn_rate(bad / total), baseline_burn)
    raise TypeError(f"unexpected measurement {canary!r}")


def _judge_slo(objective: slo.Objective, windows: list[WindowResult], spec: RolloutSpec) -> SLOResult:
    threshold = spec.analysis.burn_rate_threshold
    max_increase = spec.analysis.max_burn_rate_increase
    name = objective.sli.value

    def result(verdict: Verdict, reason: str) -> SLOResult:
        return SLOResult(
            objective.sli, objective.budget, threshold, max_increase, tuple(windows), verdict, reason
        )

    problems = [w.problem for w in windows if w.problem]
    if problems:
        return result(Verdict.INCONCLUSIVE, f"{name}: {', '.join(problems)}")
    burns = " and ".join(
        f"{w.burn_rate:.2f} on {format_duration(w.window)} ({_percent(w.ratio)} of budget "
        f"{_percent(objective.budget)})"
        for w in windows
    )
    if all(w.burn_rate is not None and w.burn_rate > threshold for w in windows):
        return result(Verdict.FAIL, f"{name} burn rate above {threshold:g} on both windows: {burns}")
    increases = [w.increase for w in windows]
    if all(increase is not None and increase > max_increase for increase in increases):
        detail = " and ".join(
            f"{w.burn_rate:.2f} vs {w.baseline_burn_rate:.2f} on {format_duration(w.window)}" for w in windows
        )
        return result(
            Verdict.FAIL,
            f"{name} burns more than {max_increase:g} above the stable revision on both windows: {detail}",
        )
    return result(Verdict.PASS, f"{name} burn rate {burns}")


def _judge_fallback(measurement: GaugeMeasurement, limit: int) -> GateResult:
    match measurement:
        case Value(value=value) if value > limit:
            return GateResult(
                value, limit, Verdict.FAIL, f"fallback ops: {value:.0f} ops run in float (limit {limit})"
            )
        case Value(value=value):
            return GateResult(value, limit, Verdict.PASS, f"fallback ops: {value:.0f} (limit {limit})")
        case Unreachable(reason=why):
            return GateResult(None, limit, Verdict.INCONCLUSIVE, f"fallback ops: unreachable: {why}")
        case NoData(reason=why):
            return GateResult(None, limit, Verdict.INCONCLUSIVE, f"fallback ops: no data: {why}")
    raise TypeError(f"unexpected measurement {measurement!r}")


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3%}"
