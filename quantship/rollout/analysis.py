"""Judging a canary: multi-window burn rates per SLO, canary vs baseline, the fallback-ops gate.

`measure` asks a MetricsSource for everything a judgement needs (concurrently); `judge` is pure
and turns those measurements into an `Analysis`: a verdict with every number that led to it, so
the same data can go to the resource's status, an Event, a log line and the operator's metrics.

Per SLO and window: ratio = bad / total of the canary; burn rate = ratio / budget. The SLO is
breached when the burn rate exceeds the threshold on *both* windows (the long one proves the burn
is significant, the short one that it is still happening), or when the canary's burn rate
exceeds the stable revision's by more than `max_burn_rate_increase` on both windows, and each
window holds MIN_BAD_EVENTS bad events at least (fewer: inconclusive, see there). A window
with no data, an unreachable or misconfigured source or fewer than `min_samples` events makes
the SLO inconclusive, never a pass; each window says which (`Fault`); but a window short of
samples whose bad events alone breach, however the missing samples turn out, counts as breached.
Where the stable revision cannot be compared with (none, no data, too few samples), the
verdict's reason says so.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantship import slo
from quantship.rollout.ports import (
    Counts,
    GaugeMeasurement,
    Measurement,
    MetricsSource,
    Misconfigured,
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


class Fault(enum.StrEnum):
    """Why a window (or the fallback-ops gate) cannot be judged."""

    NO_DATA = "NoData"
    UNREACHABLE = "Unreachable"
    MISCONFIGURED = "Misconfigured"
    TOO_FEW_SAMPLES = "TooFewSamples"


MIN_BAD_EVENTS = 3
"""Bad events a window needs before its burn rate can fail a canary. Against a 0.1% budget one error
in 124 requests is a burn of 8: with canary and stable both failing 0.05% of 40 requests a second
(half the budget), a rule without this rolled 41% of healthy canaries back (one error, counted by both
windows, decided). Fewer bad events over the threshold make the SLO inconclusive, so a canary that
keeps burning with few requests still rolls back after `inconclusive_limit` judgements (or holds);
a single error leaves the short window a minute later. Compared as round(bad): Prometheus'
increase() extrapolates counts to the window's edges. Bad events are whole ones (WindowResult.bad_events:
a token model's shadowed rows with a flip, where its disagreements count each row's flipped share)."""


def _failing(kind: slo.SampleKind, model: str) -> str:
    failed = slo.dropped_samples(slo.DropReason.FAILED, kind)
    return (
        f"if the canary drops {kind.value} samples as failed ({failed}), its {model} fails (see its "
        "log): rebuild the artifact; "
    )


MORE_SAMPLES = {
    slo.SLI.ACCURACY_DELTA: _failing(slo.SampleKind.SHADOW, "FP32 reference") + "if it drops them for budget "
    f"({slo.dropped_samples(slo.DropReason.BUDGET, slo.SampleKind.SHADOW)}), a higher canary SLI CPU budget "
    "(spec.server.canarySliCpuBudget, which the stable's servers ignore; its server logs how many samples "
    "a minute the budget pays for, and under the confident-agreement rule only rows the FP32 model is sure "
    f"of are compared); if it drops them as behind "
    f"({slo.dropped_samples(slo.DropReason.BEHIND, slo.SampleKind.SHADOW)}), its CPU is "
    "busy serving and the SLIs take idle CPU only: more CPU or replicas (spec.resources, spec.replicas); "
    "else more traffic (or a higher shadow rate, where one was set below 1)",
    slo.SLI.CLIP_RATE: _failing(slo.SampleKind.CLIP, "observer model")
    + "else a higher clip sample rate or canary SLI CPU budget (spec.server.clipSampleRate, "
    "spec.server.canarySliCpuBudget), or more traffic",
}
"""What gives a sampled SLO more samples, said in the reason of a verdict that had too few (latency
and errors count every request: only traffic or longer windows help them, which goes without
saying). The shadow and clip samples are taken within a CPU budget: on an image model a canary's
default pays for ~240 reference runs a minute, and fewer comparisons where the FP32 model is unsure
of many rows under the confident-agreement rule (it is sure of a fifth of the zoo's EfficientNet-Lite0
requests). The SLI thread runs at SCHED_IDLE, so a budget buys samples from idle CPU only: a canary
whose cores are busy serving drops them as "behind" whatever its budget (EfficientNet-Lite0 back to
back: 0.2 gave no more comparisons than 0.05; 2026-12-04)."""


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
    fault: Fault | None = None
    """The kind of `problem`."""
    baseline_problem: str | None = None
    """Why the canary was not compared with the stable revision on this window ("10 samples of the 60
    needed", "it measured none", "no stable revision"); None when it was."""
    whole_bad: float | None = None
    """The bad events counted whole, where `bad` counts shares of them (Counts.whole_bad)."""
    least_burn_rate: float | None = None
    """The burn rate however the samples a window lacks turn out (all good: bad / min_samples), so
    that 60 errors of 60 requests fail a canary without waiting for the 100th; the burn rate itself
    on a window with enough samples."""

    @property
    def ratio(self) -> float | None:
        return self.bad / self.total if self.bad is not None and self.total else None

    @property
    def bad_events(self) -> float | None:
        """Bad events as the chance guard counts them: whole (a token model's rows with a flipped
        position, not the sum of their flipped shares, which 167 rows a minute flipping 1.5% of their
        tokens took to bring to MIN_BAD_EVENTS)."""
        return self.whole_bad if self.whole_bad is not None else self.bad

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
            "fault": None if self.fault is None else self.fault.value,
            "baselineProblem": self.baseline_problem,
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
    fault: Fault | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "limit": self.limit,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "fault": None if self.fault is None else self.fault.value,
        }


@dataclass(frozen=True)
class Analysis:
    at: float
    verdict: Verdict
    reason: str
    slos: tuple[SLOResult, ...]
    fallback_ops: GateResult

    def faults(self) -> set[Fault]:
        """The kinds of problem that kept windows (or the fallback-ops gate) from being judged."""
        found = {w.fault for s in self.slos for w in s.windows} | {self.fallback_ops.fault}
        return {fault for fault in found if fault is not None}

    @property
    def unreachable(self) -> bool:
        """Some answer did not come back at all (as opposed to coming back empty)."""
        return Fault.UNREACHABLE in self.faults()

    @property
    def misconfigured(self) -> bool:
        """Some query was refused or matched several series: waiting will not fix it."""
        return Fault.MISCONFIGURED in self.faults()

    def burn_rates(self) -> dict[tuple[str, str], float]:
        """(slo, window) -> the canary's burn rate, for the operator's quantship_burn_rate gauge."""
        return {
            (result.sli.value, format_duration(window.window)): window.burn_rate
            for result in self.slos
            for window in result.windows
            if window.burn_rate is not None
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": to_timestamp(self.at),
            "verdict": self.verdict.value,
            "reason": self.reason,
            "slos": [result.to_dict() for result in self.slos],
            "fallbackOps": self.fallback_ops.to_dict(),
        }


def metrics_fault(faults: set[Fault]) -> Fault | None:
    """What keeps the analysis from judging that an operator must see (the Degraded condition):
    queries Prometheus refused, or a Prometheus that does not answer. None for mere lack of data."""
    for fault in (Fault.MISCONFIGURED, Fault.UNREACHABLE):
        if fault in faults:
            return fault
    return None


def metrics_trouble(fault: Fault | None, reason: str) -> str | None:
    """The Degraded message of `metrics_fault`'s fault."""
    if fault is Fault.MISCONFIGURED:
        return f"metrics queries misconfigured: {reason}"
    if fault is Fault.UNREACHABLE:
        return f"metrics unreachable: {reason}"
    return None


def readable_analysis(last_analysis: Any) -> bool:
    """Whether a judgement in its persisted form (the status's lastAnalysis: `Analysis.to_dict`'s,
    unless a person wrote it) has the shape `persisted_faults`, `why_inconclusive` and
    `short_window_ratio` read. One that has not is dropped (it records the last judgement; nothing
    is decided on it): reading it failed every tick with a traceback."""
    if last_analysis is None:
        return True
    if not isinstance(last_analysis, Mapping):
        return False
    results, gate = last_analysis.get("slos", []), last_analysis.get("fallbackOps") or {}
    if not isinstance(results, list) or not isinstance(gate, Mapping):
        return False
    if not all(
        isinstance(result, Mapping) and isinstance(result.get("windows", []), list) for result in results
    ):
        return False
    windows = [window for result in results for window in result.get("windows", [])]
    return isinstance(gate.get("fault"), str | None) and all(
        isinstance(window, Mapping)
        and isinstance(window.get("fault"), str | None)
        and (window.get("ratio") is None or type(window.get("ratio")) in (int, float))
        for window in windows
    )


def persisted_faults(last_analysis: Mapping[str, Any] | None) -> set[Fault]:
    """`Analysis.faults` of a judgement in its persisted form (the status's lastAnalysis)."""
    if not last_analysis:
        return set()
    found = [
        window.get("fault")
        for result in last_analysis.get("slos", [])
        for window in result.get("windows", [])
    ]
    found.append((last_analysis.get("fallbackOps") or {}).get("fault"))
    return {Fault(fault) for fault in found if fault in set(Fault)}


def why_inconclusive(last_analysis: Mapping[str, Any] | None) -> tuple[tuple[str, ...], ...]:
    """What a judgement (in its persisted form) found, without its numbers: each SLO's verdict with
    its windows' faults, and the fallback-ops gate's. Two judgements alike in this say the same
    thing, however their counts moved (a hold while Prometheus has no data for the canary)."""
    if not last_analysis:
        return ()
    found = [
        (
            str(result.get("slo")),
            str(result.get("verdict")),
            *(str(window.get("fault")) for window in result.get("windows", [])),
        )
        for result in last_analysis.get("slos", [])
    ]
    gate = last_analysis.get("fallbackOps") or {}
    return (*found, ("fallbackOps", str(gate.get("verdict")), str(gate.get("fault"))))


def short_window_ratio(last_analysis: Mapping[str, Any] | None, sli: slo.SLI) -> float | None:
    """The canary's bad ratio of one SLI on the short window of a judgement in its persisted form
    (`Analysis.to_dict`, the status's lastAnalysis): the accuracy delta `kubectl get qm` shows."""
    for result in (last_analysis or {}).get("slos", []):
        if result.get("slo") == sli.value and result.get("windows"):
            ratio = result["windows"][0].get("ratio")
            return float(ratio) if ratio is not None else None
    return None


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
    uncompared = _uncompared(results)
    if uncompared and verdict is not Verdict.INCONCLUSIVE:
        reason += f" (not compared with the stable revision: {uncompared})"
    return Analysis(measurements.at, verdict, reason, results, gate)


def _uncompared(results: tuple[SLOResult, ...]) -> str:
    """The windows judged without the stable revision's figures, grouped by why: "it measured none
    for accuracy_delta and clip_rate on 10s and 20s; 10 samples of the 60 needed for latency on 10s".
    An FP32 stable has no accuracy delta or clip rate, and one at 0% has no traffic: said once each,
    not once a window."""
    windows_by_why: dict[str, dict[str, list[str]]] = {}
    for result in results:
        for window in result.windows:
            if window.baseline_problem:
                by_sli = windows_by_why.setdefault(window.baseline_problem, {})
                by_sli.setdefault(result.sli.value, []).append(format_duration(window.window))
    parts = []
    for why, by_sli in windows_by_why.items():
        slis_by_windows: dict[tuple[str, ...], list[str]] = {}
        for sli, windows in by_sli.items():
            slis_by_windows.setdefault(tuple(windows), []).append(sli)
        where = ", ".join(f"{_listed(slis)} on {_listed(spans)}" for spans, slis in slis_by_windows.items())
        parts.append(f"{why} for {where}")
    return "; ".join(parts)


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


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
            return WindowResult(window, problem=f"unreachable on {span}: {why}", fault=Fault.UNREACHABLE)
        case Misconfigured(reason=why):
            return WindowResult(window, problem=f"misconfigured on {span}: {why}", fault=Fault.MISCONFIGURED)
        case NoData(reason=why):
            return WindowResult(window, problem=f"no data on {span}: {why}", fault=Fault.NO_DATA)
        case Counts(bad=bad, total=total) if not _counted(canary):
            # a NaN or infinite counter a server exports (a source reads it as it is): no ratio of it
            # is a measurement, and a NaN burn rate is above no threshold (it passed, or round() raised)
            whole = "" if canary.whole_bad is None else f" ({canary.whole_bad:g} whole)"
            counted = f"misconfigured on {span}: {bad:g} bad{whole} of {total:g}, not counts"
            return WindowResult(window, problem=counted, fault=Fault.MISCONFIGURED)
        case Counts(bad=bad, total=total) if total < min_samples:
            few = f"{_whole(total)} samples of the {min_samples} needed on {span}"
            least = objective.burn_rate(min(bad, total) / min_samples)
            return WindowResult(
                window,
                bad,
                total,
                problem=few,
                fault=Fault.TOO_FEW_SAMPLES,
                whole_bad=canary.whole_bad,
                least_burn_rate=least,
            )
        case Counts(bad=bad, total=total):
            burn = objective.burn_rate(bad / total)
            match baseline:
                case Counts(bad=base_bad, total=base_total) if not _counted(baseline):
                    why = f"it measured {base_bad:g} bad of {base_total:g}, not counts"
                case Counts(bad=base_bad, total=base_total) if base_total >= min_samples:
                    base_burn = objective.burn_rate(base_bad / base_total)
                    return WindowResult(
                        window, bad, total, burn, base_burn, whole_bad=canary.whole_bad, least_burn_rate=burn
                    )
                case Counts(total=0):  # an FP32 stable has no accuracy delta or clip rate; one at 0%, nothing
                    why = "it measured none"
                case Counts(total=base_total):
                    why = f"{_whole(base_total)} samples of the {min_samples} needed"
                case None:
                    why = "no stable revision"
                case NoData() | Unreachable() | Misconfigured():
                    why = f"{type(baseline).__name__}: {baseline.reason}"
            return WindowResult(
                window,
                bad,
                total,
                burn,
                baseline_problem=why,
                whole_bad=canary.whole_bad,
                least_burn_rate=burn,
            )
    raise TypeError(f"unexpected measurement {canary!r}")


def _judge_slo(objective: slo.Objective, windows: list[WindowResult], spec: RolloutSpec) -> SLOResult:
    threshold = spec.analysis.burn_rate_threshold
    max_increase = spec.analysis.max_burn_rate_increase
    name = objective.sli.value

    def result(verdict: Verdict, reason: str) -> SLOResult:
        return SLOResult(
            objective.sli, objective.budget, threshold, max_increase, tuple(windows), verdict, reason
        )

    few_bad = [w for w in windows if w.bad_events is not None and round(w.bad_events) < MIN_BAD_EVENTS]
    short_of_samples = any(w.problem for w in windows)
    if short_of_samples and not few_bad and all(_above(w.least_burn_rate, threshold) for w in windows):
        least = " and ".join(
            f"{w.least_burn_rate:.2f} on {format_duration(w.window)} ({w.bad:.4g} bad of {w.total:.4g})"
            for w in windows
        )
        return result(
            Verdict.FAIL,
            f"{name} burn rate above {threshold:g} on both windows, whatever the samples still missing "
            f"of {spec.analysis.min_samples} bring: {least}",
        )
    problems = [w.problem for w in windows if w.problem]
    if problems:
        reason = f"{name}: {', '.join(problems)}"
        if objective.sli in MORE_SAMPLES and any(w.fault is Fault.TOO_FEW_SAMPLES for w in windows):
            reason += f" (to get more: {MORE_SAMPLES[objective.sli]})"
        return result(Verdict.INCONCLUSIVE, reason)
    burns = " and ".join(
        f"{w.burn_rate:.2f} on {format_duration(w.window)} ({_percent(w.ratio)} bad against a budget of "
        f"{_percent(objective.budget)})"
        for w in windows
    )
    if all(_above(w.burn_rate, threshold) for w in windows):
        breach = f"{name} burn rate above {threshold:g} on both windows: {burns}"
    elif all(increase is not None and increase > max_increase for increase in [w.increase for w in windows]):
        detail = " and ".join(
            f"{w.burn_rate:.2f} vs {w.baseline_burn_rate:.2f} on {format_duration(w.window)}" for w in windows
        )
        breach = (
            f"{name} burns more than {max_increase:g} above the stable revision on both windows: {detail}"
        )
    else:
        return result(Verdict.PASS, f"{name} burn rate {burns}")
    if few_bad:
        counts = " and ".join(f"{w.bad_events:.4g} on {format_duration(w.window)}" for w in few_bad)
        return result(
            Verdict.INCONCLUSIVE,
            f"{breach}; but bad events {counts} are too few to tell from chance ({MIN_BAD_EVENTS} at least)",
        )
    return result(Verdict.FAIL, breach)


def _counted(counts: Counts) -> bool:
    """Whether a source's figures are counts: none NaN or infinite."""
    whole = 0.0 if counts.whole_bad is None else counts.whole_bad
    return math.isfinite(counts.bad) and math.isfinite(counts.total) and math.isfinite(whole)


def _whole(samples: float) -> int:
    """Samples as a count, rounded down: Prometheus' increase() extrapolates to the window's edges
    ("4.444 samples of the 60 needed"), and rounding up could read "50 of the 50 needed" short."""
    return math.floor(samples)


def _above(burn_rate: float | None, threshold: float) -> bool:
    return burn_rate is not None and burn_rate > threshold


def _judge_fallback(measurement: GaugeMeasurement, limit: int) -> GateResult:
    match measurement:
        case Value(value=value) if not math.isfinite(value):  # NaN is over no limit: it passed
            why = f"fallback ops: misconfigured: {value:g} ops, not a count"
            return GateResult(None, limit, Verdict.INCONCLUSIVE, why, Fault.MISCONFIGURED)
        case Value(value=value) if value > limit:
            return GateResult(
                value, limit, Verdict.FAIL, f"fallback ops: {value:.4g} ops run in float (limit {limit})"
            )
        case Value(value=value):
            return GateResult(value, limit, Verdict.PASS, f"fallback ops: {value:.4g} (limit {limit})")
        case Unreachable(reason=why):
            return GateResult(
                None, limit, Verdict.INCONCLUSIVE, f"fallback ops: unreachable: {why}", Fault.UNREACHABLE
            )
        case Misconfigured(reason=why):
            return GateResult(
                None, limit, Verdict.INCONCLUSIVE, f"fallback ops: misconfigured: {why}", Fault.MISCONFIGURED
            )
        case NoData(reason=why):
            return GateResult(
                None, limit, Verdict.INCONCLUSIVE, f"fallback ops: no data: {why}", Fault.NO_DATA
            )
    raise TypeError(f"unexpected measurement {measurement!r}")


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3%}"
