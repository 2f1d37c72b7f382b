"""`judge` at its edges: exactly at a limit is not past it, every unjudgeable window says its kind,
the fallback gate's reason comes first, and `measure` without a stable revision has no baseline."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from memory_ports import MemoryMetrics

from quantship import slo
from quantship.rollout import (
    Counts,
    Measurement,
    Measurements,
    Misconfigured,
    NoData,
    RolloutSpec,
    Unreachable,
    Value,
    Verdict,
    judge,
    measure,
)
from quantship.rollout.analysis import Fault, readable_analysis

LATENCY = slo.Objective(slo.SLI.LATENCY, budget=0.01, latency_threshold=0.1)


def measured(
    spec: RolloutSpec, canary: Measurement, baseline: Measurement | None = None, fallback: float = 0
) -> Measurements:
    keys = [(objective.sli, window) for objective in spec.objectives for window in spec.analysis.windows]
    return Measurements(
        at=0.0,
        canary=dict.fromkeys(keys, canary),
        baseline={} if baseline is None else dict.fromkeys(keys, baseline),
        fallback_ops=Value(fallback),
    )


@pytest.fixture
def latency_spec(make_spec: Callable[..., RolloutSpec]) -> RolloutSpec:
    return make_spec(objectives=(LATENCY,))  # min_samples 50, windows 30 s and 120 s


def test_a_burn_rate_exactly_at_the_threshold_is_no_breach(latency_spec: RolloutSpec) -> None:
    analysis = judge(
        measured(latency_spec, Counts(bad=10, total=1000), Counts(bad=10, total=1000)), latency_spec
    )

    assert analysis.verdict is Verdict.PASS
    assert analysis.slos[0].reason == (
        "latency burn rate 1.00 on 30s (1.000% bad against a budget of 1.000%) and "
        "1.00 on 2m (1.000% bad against a budget of 1.000%)"
    )


def test_an_increase_exactly_at_the_limit_is_no_breach(latency_spec: RolloutSpec) -> None:
    at_limit = judge(
        measured(latency_spec, Counts(bad=5, total=1000), Counts(bad=0, total=1000)), latency_spec
    )
    past = judge(measured(latency_spec, Counts(bad=6, total=1000), Counts(bad=0, total=1000)), latency_spec)

    assert at_limit.verdict is Verdict.PASS
    assert past.verdict is Verdict.FAIL and "burns more than 0.5 above the stable revision" in past.reason


def test_exactly_min_samples_are_enough_on_both_sides(latency_spec: RolloutSpec) -> None:
    analysis = judge(measured(latency_spec, Counts(bad=0, total=50), Counts(bad=0, total=50)), latency_spec)

    assert analysis.verdict is Verdict.PASS and "not compared" not in analysis.reason
    assert all(w.baseline_burn_rate == 0 for w in analysis.slos[0].windows)


@pytest.mark.parametrize(
    ("canary", "fault"),
    [
        (NoData("no series"), Fault.NO_DATA),
        (Unreachable("connection refused"), Fault.UNREACHABLE),
        (Misconfigured("two series"), Fault.MISCONFIGURED),
        (Counts(bad=0, total=0), Fault.TOO_FEW_SAMPLES),
    ],
    ids=lambda value: value.value if isinstance(value, Fault) else None,
)
def test_every_unjudgeable_window_says_its_kind(
    latency_spec: RolloutSpec, canary: Measurement, fault: Fault
) -> None:
    analysis = judge(measured(latency_spec, canary), latency_spec)

    assert analysis.verdict is Verdict.INCONCLUSIVE
    assert [w.fault for w in analysis.slos[0].windows] == [fault, fault]
    assert analysis.faults() == {fault}
    windows = analysis.to_dict()["slos"][0]["windows"]
    assert [w["fault"] for w in windows] == [fault.value, fault.value] and windows[0]["ratio"] is None
    assert analysis.burn_rates() == {}


def test_burn_rates_for_the_operator_gauge_are_those_measured(latency_spec: RolloutSpec) -> None:
    analysis = judge(measured(latency_spec, Counts(bad=20, total=1000)), latency_spec)

    assert analysis.burn_rates() == {("latency", "30s"): 2.0, ("latency", "2m"): 2.0}


def test_the_fallback_gate_is_named_first_among_failures(latency_spec: RolloutSpec) -> None:
    analysis = judge(measured(latency_spec, Counts(bad=500, total=1000), fallback=3), latency_spec)

    assert analysis.verdict is Verdict.FAIL
    assert analysis.reason.startswith("fallback ops: 3 ops run in float (limit 0); latency burn rate above 1")


async def test_without_a_stable_revision_nothing_is_asked_about_a_baseline(latency_spec: RolloutSpec) -> None:
    metrics = MemoryMetrics()
    metrics.serve("v2", {slo.SLI.LATENCY: 0.0})

    measurements = await measure(metrics, latency_spec, "v2", None, now=0.0)

    assert measurements.baseline == {}
    assert {revision for revision, _, _ in metrics.queries} == {"v2"}


@pytest.mark.parametrize(
    "canary",
    [Counts(bad=1, total=1000), Unreachable("down"), Misconfigured("2 series"), NoData("none"), Counts(0, 0)],
)
def test_every_judgement_in_its_persisted_form_reads_back(
    latency_spec: RolloutSpec, canary: Measurement
) -> None:
    """The operator drops a lastAnalysis it cannot read (one a person wrote): never one it wrote."""
    analysis = judge(measured(latency_spec, canary, Counts(bad=1, total=1000)), latency_spec)

    assert readable_analysis(analysis.to_dict())


@pytest.mark.parametrize(
    "written",
    [
        "pass",
        {"slos": "x"},
        {"slos": ["x"]},
        {"slos": [{"windows": None}]},
        {"slos": [{"windows": [{"ratio": "half"}]}]},
        {"slos": [{"windows": [{"fault": ["NoData"]}]}]},
        {"fallbackOps": "pass"},
        {"fallbackOps": {"fault": {"kind": "NoData"}}},
    ],
)
def test_a_last_analysis_a_person_wrote_in_another_shape_is_unreadable(written: object) -> None:
    assert not readable_analysis(written)


@pytest.mark.parametrize(
    "canary",
    [
        Counts(bad=0, total=math.nan),
        Counts(bad=math.nan, total=1000),
        Counts(bad=0, total=math.inf),
        Counts(bad=math.inf, total=math.inf),
        Counts(bad=1, total=1000, whole_bad=math.nan),
    ],
)
def test_counts_that_are_nan_or_infinite_are_misconfigured_never_a_pass(
    latency_spec: RolloutSpec, canary: Counts
) -> None:
    """Any MetricsSource's figures (PrometheusSource reads NaN as no data; a direct scrape reads a
    server's NaN as it is): round(NaN) raised, and a NaN burn rate is above no threshold."""
    analysis = judge(measured(latency_spec, canary), latency_spec)

    assert analysis.verdict is Verdict.INCONCLUSIVE
    assert analysis.faults() == {Fault.MISCONFIGURED}
    assert "not counts" in analysis.reason


def test_a_baseline_that_is_nan_is_not_compared_with(latency_spec: RolloutSpec) -> None:
    analysis = judge(measured(latency_spec, Counts(1, 1000), Counts(bad=math.nan, total=1000)), latency_spec)

    assert analysis.verdict is Verdict.PASS
    assert "(not compared with the stable revision: it measured nan bad of 1000, not counts for latency" in (
        analysis.reason
    )


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_fallback_ops_gauge_that_is_nan_or_infinite_is_misconfigured(
    latency_spec: RolloutSpec, value: float
) -> None:
    analysis = judge(measured(latency_spec, Counts(0, 1000), fallback=value), latency_spec)

    assert analysis.verdict is Verdict.INCONCLUSIVE and analysis.faults() == {Fault.MISCONFIGURED}
