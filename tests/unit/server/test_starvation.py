"""The log tells a lane starved of CPU (samples dropped as behind, minutes on end) from a burst."""

from __future__ import annotations

import logging

import pytest

from quantship.server.starvation import REPEAT_S, STARVED_WINDOWS, WINDOW_S, StarvationWatch
from quantship.slo import STARVED_BEHIND_PER_S

FLOOR = int(STARVED_BEHIND_PER_S * WINDOW_S)
"""Behind drops a window at which a window is not yet starved."""
STEADY = FLOOR * 10
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
    """One window's drops and hand-offs at its start, then the clock at the next window's."""
    watch.processed(0)  # opens the first window, or ends the last; counts nothing
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
    assert "2 minutes in a row" in warnings[0]
    assert "more CPU or replicas" in warnings[0] and "budget does not" in warnings[0]


def test_the_warning_repeats_while_it_lasts_and_the_recovery_is_told_once(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    watch, clock = watched
    windows = STARVED_WINDOWS + int(REPEAT_S / WINDOW_S) + 1
    for _ in range(windows):
        _window(watch, clock, behind=STEADY, processed=40)
    assert len(_said(caplog, logging.WARNING)) == 2  # one at the start, one REPEAT_S later
    _window(watch, clock, behind=0, processed=400)
    _window(watch, clock, behind=3, processed=500)
    watch.processed(1)  # ends the second window that kept up
    assert len(_said(caplog, logging.WARNING)) == 2
    assert _said(caplog, logging.INFO) == [
        "shadow: the SLI worker is no longer starved: 400 samples processed and 0 dropped as behind "
        "in the last 60 s"
    ]


def test_starvation_that_comes_and_goes_warns_at_most_every_repeat_interval(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    watch, clock = watched
    flaps = 0
    while clock.now < REPEAT_S:
        for _ in range(STARVED_WINDOWS):
            _window(watch, clock, behind=STEADY, processed=0)
        _window(watch, clock, behind=0, processed=16)
        flaps += 1
    watch.processed(1)
    assert flaps > 2
    assert len(_said(caplog, logging.WARNING)) == 1
    for _ in range(STARVED_WINDOWS + 1):
        _window(watch, clock, behind=STEADY, processed=0)
    assert len(_said(caplog, logging.WARNING)) == 2  # REPEAT_S after the first


@pytest.mark.parametrize(
    ("behind", "processed"),
    [
        (FLOOR, 0),  # at the floor, not above it: a fresh lane pricing its first sample drops a few
        (STEADY, STEADY),  # drops, but as many processed
    ],
    ids=["at the floor", "as many processed as dropped"],
)
def test_a_lane_that_keeps_up_or_drops_a_few_says_nothing(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture, behind: int, processed: int
) -> None:
    watch, clock = watched
    for _ in range(STARVED_WINDOWS + 2):
        _window(watch, clock, behind=behind, processed=processed)
    assert not caplog.records


def test_windows_keep_their_length_however_sparse_the_events(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    """Drops at two thirds of the floor's rate, in bursts just under a window apart: windows that
    stretched to the next event would hold two bursts each, over the floor."""
    watch, clock = watched
    burst = FLOOR * 2 // 3
    while clock.now < 10 * WINDOW_S:
        for _ in range(burst):
            watch.behind()
        clock.now += WINDOW_S - 1
    assert not caplog.records


def test_a_lull_between_starved_minutes_is_not_steady_starvation_and_ends_a_warning(
    watched: tuple[StarvationWatch, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    watch, clock = watched
    _window(watch, clock, behind=STEADY, processed=0)
    clock.now += 5 * WINDOW_S  # no traffic at all
    _window(watch, clock, behind=STEADY, processed=0)
    watch.processed(1)
    assert not caplog.records
    for _ in range(STARVED_WINDOWS):
        _window(watch, clock, behind=STEADY, processed=0)
    clock.now += 5 * WINDOW_S
    watch.processed(1)  # the first event after the lull
    assert len(_said(caplog, logging.WARNING)) == 1
    assert _said(caplog, logging.INFO) == [
        "shadow: the SLI worker is no longer starved: 0 samples processed and 0 dropped as behind "
        "in the last 60 s"
    ]
