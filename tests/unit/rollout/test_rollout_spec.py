"""Rollout settings refuse what cannot work, and durations read and print like Prometheus's."""

from __future__ import annotations

import pytest

from quantship import slo
from quantship.rollout import AnalysisSpec, RolloutSpec, format_duration, parse_duration

CLIP = slo.Objective(slo.SLI.CLIP_RATE, budget=0.001)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2h", 7200), ("90s", 90)]
)
def test_durations_read_and_print_like_promql_ranges(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5", "1 m", "m", "5d", "-5s"])
def test_a_duration_that_is_not_one_says_how_to_write_it(text: str) -> None:
    with pytest.raises(ValueError, match=r"write e\.g\. 30s, 5m, 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"steps": ()}, "at least one step"),
        ({"steps": (5, 5, 100)}, "must increase"),
        ({"steps": (0, 100)}, "in 1..100"),
        ({"step_interval": 0}, "must be > 0"),
        ({"objectives": (CLIP, CLIP)}, "one objective per SLI"),
    ],
)
def test_a_rollout_spec_that_cannot_work_is_refused(fields: dict[str, object], complaint: str) -> None:
    arguments: dict[str, object] = {"model": "digits", "revision": "v2", "objectives": (CLIP,), **fields}
    with pytest.raises(ValueError, match=complaint):
        RolloutSpec(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"short_window": 300, "long_window": 60}, "0 < short < long"),
        ({"burn_rate_threshold": 0}, "threshold must be > 0"),
        ({"max_burn_rate_increase": -1}, "increase must be >= 0"),
        ({"min_samples": 0}, "must be >= 1"),
    ],
)
def test_an_analysis_that_cannot_judge_is_refused(fields: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        AnalysisSpec(**fields)  # type: ignore[arg-type]
