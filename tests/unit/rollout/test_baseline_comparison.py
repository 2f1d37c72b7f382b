"""Canary vs baseline: when the stable revision cannot be compared with, the judgement says so.

The comparison (`max_burn_rate_increase`) needs the stable revision's counts on the same window,
with at least `min_samples` events. Without them the canary is still judged on its absolute burn
rates, and the reason, the status message and each window of `lastAnalysis` say why the
comparison was left out, instead of passing as if it had been made.
"""

from __future__ import annotations

from collections.abc import Callable

from memory_ports import OBJECTIVES

from quantship import slo
from quantship.rollout import (
    Counts,
    Measurement,
    Measurements,
    NoData,
    Observations,
    Phase,
    RolloutSpec,
    RolloutStatus,
    Unreachable,
    Value,
    Verdict,
    decide,
    judge,
    short_window_ratio,
)

GOOD = Counts(bad=0, total=1000)
SLOW = Counts(bad=15, total=1000)
"""1.5 % slow: a latency burn rate of 1.5 against a 1 % budget."""


def measured(spec: RolloutSpec, canary: Measurement, baseline: Measurement | None) -> Measurements:
    keys = [(objective.sli, window) for objective in spec.objectives for window in spec.analysis.windows]
    return Measurements(
        at=0.0,
        canary=dict.fromkeys(keys, canary),
        baseline={} if baseline is None else dict.fromkeys(keys, baseline),
        fallback_ops=Value(0),
    )


def test_a_compared_canary_says_nothing_about_the_baseline(make_spec: Callable[..., RolloutSpec]) -> None:
    spec = make_spec()
    analysis = judge(measured(spec, GOOD, GOOD), spec)

    assert analysis.verdict is Verdict.PASS
    assert "stable revision" not in analysis.reason
    windows = [w for s in analysis.to_dict()["slos"] for w in s["windows"]]
    assert all(w["baselineProblem"] is None and w["baselineBurnRate"] == 0 for w in windows)


def test_a_baseline_with_too_few_samples_is_named_in_the_reason(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    spec = make_spec()  # min_samples 50
    analysis = judge(measured(spec, GOOD, Counts(bad=0, total=49)), spec)

    assert analysis.verdict is Verdict.PASS
    assert "not compared with the stable revision" in analysis.reason
    assert analysis.reason.endswith(
        "49 samples of the 50 needed for accuracy_delta, latency, errors and clip_rate on 30s and 2m)"
    )
    window = analysis.to_dict()["slos"][0]["windows"][0]
    assert window["baselineBurnRate"] is None and window["baselineProblem"] == "49 samples of the 50 needed"


def test_the_gaps_are_said_once_each_grouped_by_why(make_spec: Callable[..., RolloutSpec]) -> None:
    """An FP32 stable has no accuracy delta or clip rate, and a stable at 0% no traffic: the demo's
    promotion listed "0 samples of the 60 needed" six times, once per SLO and window, and read as if
    data were missing: "it measured none" says the stable has no such figures."""
    spec = make_spec(objectives=OBJECTIVES)  # windows 30s and 2m
    none = Counts(bad=0, total=0)
    baseline = {(objective.sli, window): none for objective in OBJECTIVES for window in spec.analysis.windows}
    baseline[(slo.SLI.LATENCY, 30)] = baseline[(slo.SLI.ERRORS, 30)] = Counts(bad=0, total=10)
    baseline[(slo.SLI.LATENCY, 120)] = baseline[(slo.SLI.ERRORS, 120)] = GOOD
    canary = measured(spec, GOOD, None)
    analysis = judge(Measurements(0.0, canary.canary, baseline, Value(0)), spec)

    assert analysis.verdict is Verdict.PASS
    assert analysis.reason.endswith(
        "(not compared with the stable revision: it measured none for accuracy_delta and clip_rate on 30s "
        "and 2m; 10 samples of the 50 needed for latency and errors on 30s)"
    )


def test_a_baseline_without_data_or_unreachable_is_named_with_its_kind(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    spec = make_spec()
    silent = judge(measured(spec, GOOD, NoData("no series for revision v1")), spec)
    down = judge(measured(spec, GOOD, Unreachable("connection refused")), spec)

    assert "NoData: no series for revision v1" in silent.reason
    assert "Unreachable: connection refused" in down.reason
    assert silent.verdict is down.verdict is Verdict.PASS


def test_no_stable_revision_is_said_too(make_spec: Callable[..., RolloutSpec]) -> None:
    spec = make_spec()
    analysis = judge(measured(spec, GOOD, None), spec)

    assert (
        "not compared with the stable revision" in analysis.reason and "no stable revision" in analysis.reason
    )


def test_the_regression_the_comparison_would_catch_passes_only_with_the_gap_said(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    # threshold 2 lets a burn of 1.5 pass on its own; vs a stable at 0 it is an increase of 1.5 > 0.5
    latency = slo.Objective(slo.SLI.LATENCY, budget=0.01, latency_threshold=0.1)
    spec = make_spec(objectives=(latency,), analysis={"burn_rate_threshold": 2.0})

    compared = judge(measured(spec, SLOW, GOOD), spec)
    uncompared = judge(measured(spec, SLOW, Counts(bad=0, total=10)), spec)

    assert compared.verdict is Verdict.FAIL and "above the stable revision" in compared.reason
    assert uncompared.verdict is Verdict.PASS
    assert (
        "not compared with the stable revision: 10 samples of the 50 needed for latency on 30s and 2m"
        in uncompared.reason
    )


def test_the_status_carries_the_gap(make_spec: Callable[..., RolloutSpec]) -> None:
    spec = make_spec(objectives=OBJECTIVES)
    analysis = judge(measured(spec, GOOD, Counts(bad=0, total=3)), spec)
    status = RolloutStatus(
        phase=Phase.PROGRESSING,
        stable="v1",
        canary="v2",
        step=0,
        weight=5,
        step_started_at=0.0,
        started_at=0.0,
    )

    decision = decide(status, Observations(now=60.0, analysis=analysis), spec)

    assert "not compared with the stable revision" in decision.status.message
    assert "not compared with the stable revision" in decision.status.history[-1]["reason"]
    assert decision.status.last_analysis is not None
    assert decision.status.last_analysis["slos"][0]["windows"][0]["baselineProblem"] is not None


def test_the_accuracy_delta_kubectl_shows_is_the_short_window_ratio_of_the_persisted_judgement(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    spec = make_spec()  # windows 30 s and 120 s
    measurements = measured(spec, GOOD, GOOD)
    canary = {**measurements.canary, (slo.SLI.ACCURACY_DELTA, 30): Counts(bad=3, total=1000)}
    persisted = judge(Measurements(0.0, canary, measurements.baseline, Value(0)), spec).to_dict()

    assert short_window_ratio(persisted, slo.SLI.ACCURACY_DELTA) == 0.003
    assert short_window_ratio(persisted, slo.SLI.ERRORS) == 0.0
    assert short_window_ratio(None, slo.SLI.ACCURACY_DELTA) is None


def test_samples_prometheus_extrapolated_are_counted_whole_and_never_up_to_the_minimum(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    """increase() extrapolates to the window's edges: the demo's promotion said "4.444 samples of the
    60 needed"; 49.7 rounded would read "50 of the 50 needed"."""
    spec = make_spec()  # min_samples 50
    analysis = judge(measured(spec, GOOD, Counts(bad=0, total=49.7)), spec)
    window = analysis.to_dict()["slos"][0]["windows"][0]
    assert window["baselineProblem"] == "49 samples of the 50 needed"
