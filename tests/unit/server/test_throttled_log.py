"""ThrottledLog bounds a line that traffic can repeat: the 499 of every client whose deadline passes
(service.HANG_UP_LOG_LINES_PER_S), a model failing every call (runner.FAILURE_LOG_INTERVAL_S)."""

from __future__ import annotations

import logging

import pytest

from quantship.server.throttled_log import ThrottledLog


def test_a_burst_logs_its_share_of_lines_and_the_next_line_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    lines = ThrottledLog(
        1.0, logging.getLogger("quantship.test"), logging.INFO, lines=10, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="quantship.test"):
        for number in range(25):
            lines.log("gone %d", number)
        now[0] += 1.0
        lines.log("gone again")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f"gone {number}" for number in range(10)] + [
        "gone again (15 more since the last line)"
    ]
    assert {record.levelno for record in caplog.records} == {logging.INFO}


def test_one_line_an_interval_by_default(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    lines = ThrottledLog(10.0, logging.getLogger("quantship.test"), clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="quantship.test"):
        lines.log("failed")
        now[0] += 9.9
        lines.log("failed")
        now[0] += 0.1
        lines.log("failed")
    assert [record.getMessage() for record in caplog.records] == [
        "failed",
        "failed (1 more since the last line)",
    ]
    assert {record.levelno for record in caplog.records} == {logging.ERROR}
