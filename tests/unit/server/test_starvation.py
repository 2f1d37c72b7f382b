"""The log tells a lane starved of CPU (samples dropped as behind, minutes on end) from a burst."""

from __future__ import annotations

import logging

import pytest

from quantship.server.starvation import REPEAT_S, STARVED_WINDOWS, WINDOW_S, StarvationWatch
from quantship.slo import STARVED_BEHIND_PER_S

STEADY = int(STARVED_BEHIND_PER_S * WINDOW_S) * 10
"""Behind drops a window, well past the floor: a starved canary drops ~15,000 a minute."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watched(caplog: pytest.LogCaptureFixture) -> tuple[StarvationWatch, Clock]:
    caplog.set_level(logging.INFO, logger="quantship.server.starvation")
    clock = Clock()
    return StarvationWatch("shadow", clock), clock


def _window(watch: StarvationWatch, clock: Clock, *, behind: int, processed: int) -> None:
    """One window's drops and hand-offs, spread over it, then the clock at the next window."""
    watch.processed(0)  # opens the first window; counts nothing
    for _ in range(behind):
        watch.behind()
    if processed:
        watch.processed(processed)
    clock.now += WINDOW_S


def _said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


def test_minutes_of_behind_drops_warn_once_with_the_counts_and_what_helps(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    watch, clock = watched
    for _ in range(STARVED_WINDOWS):
        assert not _said(caplog, logging.WARNING)
        _window(watch, clock, behind=STEADY, processed=40)
    _window(watch, clock, behind=STEADY, processed=40)  # the roll into this window tells
    warnings = _said(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"shadow: the SLI worker is starved of CPU: in the last 60 s it processed 40 samples and "
        f"dropped {STEADY} as behind"
    )
    assert 'quantship_samples_dropped_total{reason="behind"}' in warnings[0]
    assert "more CPU or replicas" in warnings[0] and "budget does not" in warnings[0]


def test_the_warning_repeats_while_it_lasts_and_the_recovery_is_told(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    watch, clock = watched
    windows = STARVED_WINDOWS + int(REPEAT_S / WINDOW_S) + 1
    for _ in range(windows):
        _window(watch, clock, behind=STEADY, processed=40)
    assert len(_said(caplog, logging.WARNING)) == 2  # one at the start, one REPEAT_S later
    _window(watch, clock, behind=0, processed=400)
    watch.processed(1)  # rolls the window that kept up
    assert len(_said(caplog, logging.WARNING)) == 2
    assert _said(caplog, logging.INFO) == [
        "shadow: the SLI worker keeps up again: 400 samples processed and 0 dropped as behind "
        "in the last 60 s"
    ]


@pytest.mark.parametrize(
    ("behind", "processed"),
    [
        (int(STARVED_BEHIND_PER_S * WINDOW_S) - 1, 0),  # a fresh lane pricing its first sample
        (STEADY, STEADY + 1),  # drops, but the worker keeps most of what it is offered
    ],
    ids=["few drops", "more processed than dropped"],
)
def test_a_lane_that_keeps_up_or_drops_a_few_says_nothing(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture, behind: int, processed: int
) -> None:
    watch, clock = watched
    for _ in range(STARVED_WINDOWS + 2):
        _window(watch, clock, behind=behind, processed=processed)
    assert not caplog.records


def test_a_burst_or_a_lull_between_starved_minutes_is_not_a_steady_starvation(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    watch, clock = watched
    _window(watch, clock, behind=STEADY, processed=0)
    _window(watch, clock, behind=0, processed=16)  # caught up in between
    _window(watch, clock, behind=STEADY, processed=0)
    clock.now += 5 * WINDOW_S  # no traffic at all
    _window(watch, clock, behind=STEADY, processed=0)
    watch.processed(1)
    assert not caplog.records
