"""How much evidence a breach needs: a burn rate over the threshold on bad events few enough to be
chance is inconclusive, not a failure (analysis.MIN_BAD_EVENTS); a window short of samples whose bad
events breach whatever the missing samples bring fails at once, not after the samples arrive."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quantship import slo
from quantship.rollout import Counts, Measurement, Measurements, RolloutSpec, Value, Verdict, judge
from quantship.rollout.analysis import MIN_BAD_EVENTS

ERRORS = slo.Objective(slo.SLI.ERRORS, budget=0.001)


def errors_judged(spec: RolloutSpec, canary: Measurement, baseline: Measurement | None = None) -> Verdict:
    return errors_analysis(spec, canary, baseline)[0]


def errors_analysis(
    spec: RolloutSpec, canary: Measurement, baseline: Measurement | None = None
) -> tuple[Verdict, str]:
    keys = [(slo.SLI.ERRORS, window) for window in spec.analysis.windows]
    measurements = Measurements(
        at=0.0,
        canary=dict.fromkeys(keys, canary),
        baseline={} if baseline is None else dict.fromkeys(keys, baseline),
        fallback_ops=Value(0),
    )
    analysis = judge(measurements, spec)
    return analysis.verdict, analysis.reason


@pytest.fixture
def spec(make_spec: Callable[..., RolloutSpec]) -> RolloutSpec:
    return make_spec(objectives=(ERRORS,), analysis={"min_samples": 100})


@pytest.mark.parametrize("bad", range(1, MIN_BAD_EVENTS))
def test_a_burn_on_fewer_bad_events_than_the_minimum_is_inconclusive(spec: RolloutSpec, bad: int) -> None:
    # one error in 124 requests burns 8x a 0.1% budget: chance, for a canary failing 0.05%
    verdict, reason = errors_analysis(spec, Counts(bad=bad, total=124))

    assert verdict is Verdict.INCONCLUSIVE
    assert "burn rate above 1 on both windows" in reason and "too few to tell from chance" in reason


def test_the_same_burn_on_the_minimum_of_bad_events_fails(spec: RolloutSpec) -> None:
    assert errors_judged(spec, Counts(bad=MIN_BAD_EVENTS, total=372)) is Verdict.FAIL
    # increase() extrapolates: 2.6 bad events are three that Prometheus scaled to the window's edges
    assert errors_judged(spec, Counts(bad=MIN_BAD_EVENTS - 0.4, total=372)) is Verdict.FAIL


def test_a_regression_against_the_stable_on_few_bad_events_is_inconclusive_too(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    # threshold 20 lets a burn of 16 pass on its own; vs a stable at 0 it is an increase of 16 > 0.5
    spec = make_spec(objectives=(ERRORS,), analysis={"min_samples": 100, "burn_rate_threshold": 20.0})
    stable = Counts(bad=0, total=10_000)

    few, reason = errors_analysis(spec, Counts(bad=2, total=125), stable)
    enough = errors_judged(spec, Counts(bad=4, total=250), stable)

    assert few is Verdict.INCONCLUSIVE and "above the stable revision" in reason
    assert enough is Verdict.FAIL


def test_a_breach_certain_before_min_samples_fails_at_once(spec: RolloutSpec) -> None:
    # 60 errors of 60 requests: even 40 good requests to come leave 60% errors, 600x the budget
    verdict, reason = errors_analysis(spec, Counts(bad=60, total=60))

    assert verdict is Verdict.FAIL
    assert "whatever the samples still missing of 100 bring" in reason and "600.00" in reason


@pytest.mark.parametrize(
    "canary",
    [Counts(bad=2, total=60), Counts(bad=0, total=60)],
    ids=["too few bad events", "no bad events"],
)
def test_a_window_short_of_samples_stays_inconclusive_when_the_rest_could_change_it(
    spec: RolloutSpec, canary: Counts
) -> None:
    verdict, reason = errors_analysis(spec, canary)

    assert verdict is Verdict.INCONCLUSIVE and "60 samples of the 100 needed" in reason


def test_a_token_canary_needs_rows_with_a_flip_not_rows_worth_of_flips(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    """A token model's shadowed row disagrees by its share of flipped tokens: a canary flipping 1.5%
    of every row's tokens (3x a 0.5% budget) read 1.5 bad events in 100 rows, and needed 167 rows a
    minute to fail. The chance guard counts the rows with a flip (whole events) instead."""
    accuracy = slo.Objective(slo.SLI.ACCURACY_DELTA, budget=0.005)
    spec = make_spec(objectives=(accuracy,), analysis={"min_samples": 100})
    keys = [(slo.SLI.ACCURACY_DELTA, window) for window in spec.analysis.windows]

    def judged(canary: Counts) -> tuple[Verdict, str]:
        analysis = judge(Measurements(0.0, dict.fromkeys(keys, canary), {}, Value(0)), spec)
        return analysis.verdict, analysis.reason

    every_row_flips = judged(Counts(bad=1.5, total=100, whole_bad=100))
    assert every_row_flips[0] is Verdict.FAIL, every_row_flips
    assert "burn rate above 1 on both windows: 3.00" in every_row_flips[1]
    by_shares_alone = judged(Counts(bad=1.5, total=100))  # a server without the whole count
    assert by_shares_alone[0] is Verdict.INCONCLUSIVE and "too few to tell from chance" in by_shares_alone[1]
    two_rows_flip_much = judged(Counts(bad=1.5, total=100, whole_bad=2))
    assert two_rows_flip_much[0] is Verdict.INCONCLUSIVE, "two rows are two events, however many tokens"
