"""Tells the pod's log when a background lane's worker is starved of CPU, not of budget.

The background thread runs at SCHED_IDLE (background.lower_priority): only on CPU that the serving
threads leave idle. A server whose cores are busy serving drops most of its samples as "behind",
whatever its SLI CPU budget: a canary at `--canary-sli-cpu-budget 0.2` under back-to-back
EfficientNet-Lite0 INT8 traffic dropped ~15,000 shadow samples a minute as behind and compared ~40
(2026-12-05). The counter says so to Prometheus, and a rollout's hint to whoever reads the verdict;
this says it to whoever reads only the pod's logs, and that a budget will not help.

A lane is starved over a window when it dropped more samples as behind than it processed, and at
least slo.STARVED_BEHIND_PER_S a second: a fresh lane drops a few while it prices its first
sample, and a burst of traffic for a few seconds should not read as a server short of CPU. The
QuantshipSliStarved alert says it to Prometheus' users at the same rate. The warning comes once
`STARVED_WINDOWS` windows in a row were starved, again every `REPEAT_S` while it lasts, and an
info line when a window is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from quantship.slo import STARVED_BEHIND_PER_S, DropReason, Metric

log = logging.getLogger(__name__)

_BEHIND_DROPS = f'{Metric.SAMPLES_DROPPED_TOTAL}{{reason="{DropReason.BEHIND}"}}'

WINDOW_S = 60.0
"""Seconds a window counts drops and processed samples over: a rollout's analysis reads minutes."""
STARVED_WINDOWS = 2
"""Starved windows in a row before the warning: two minutes, a steady rate rather than a burst."""
REPEAT_S = 600.0
"""Seconds between warnings while the lane stays starved."""


class StarvationWatch:
    """Counts one lane's behind drops and processed samples per window; used on the event loop only
    (offers and hand-offs both happen there), with the event loop's clock."""

    def __init__(self, lane: str, clock: Callable[[], float]) -> None:
        self.lane = lane
        self.clock = clock
        self._window_end: float | None = None
        self._behind = self._processed = 0
        self._starved_in_a_row = 0
        self._warned_at: float | None = None

    def behind(self) -> None:
        self._roll()
        self._behind += 1

    def processed(self, samples: int) -> None:
        self._roll()
        self._processed += samples

    def _roll(self) -> None:
        now = self.clock()
        if self._window_end is None:
            self._window_end = now + WINDOW_S
        if now < self._window_end:
            return
        if now >= self._window_end + WINDOW_S:
            # a whole window without a behind drop or a hand-off: no traffic, nothing to tell
            self._starved_in_a_row, self._warned_at = 0, None
        elif self._behind > max(self._processed, STARVED_BEHIND_PER_S * WINDOW_S):
            self._starved_in_a_row += 1
            if self._starved_in_a_row >= STARVED_WINDOWS and (
                self._warned_at is None or now - self._warned_at >= REPEAT_S
            ):
                self._warn(now)
        else:
            self._starved_in_a_row = 0
            if self._warned_at is not None:
                log.info(
                    "%s: the SLI worker keeps up again: %d samples processed and %d dropped as behind "
                    "in the last %.0f s", self.lane, self._processed, self._behind, WINDOW_S,
                )  # fmt: skip
                self._warned_at = None
        self._behind = self._processed = 0
        self._window_end = now + WINDOW_S

    def _warn(self, now: float) -> None:
        self._warned_at = now
        log.warning(
            "%s: the SLI worker is starved of CPU: in the last %.0f s it processed %d samples and "
            "dropped %d as behind (%s), %d minutes "
            "in a row. It runs only on CPU the serving threads leave idle, and this server's CPUs are "
            "busy serving: more CPU or replicas give the SLIs samples; a larger SLI CPU budget does not",
            self.lane, WINDOW_S, self._processed, self._behind, _BEHIND_DROPS,
            self._starved_in_a_row * WINDOW_S // 60,
        )  # fmt: skip
