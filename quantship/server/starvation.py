"""Tells the pod's log when a background lane's worker is starved of CPU, not of budget.

The background thread runs at SCHED_IDLE (background.lower_priority): only on CPU that the serving
threads leave idle. A server whose cores are busy serving drops most of its samples as "behind",
whatever its SLI CPU budget: a canary at `--canary-sli-cpu-budget 0.2` under back-to-back
EfficientNet-Lite0 INT8 traffic dropped ~15,000 shadow samples a minute as behind and compared ~40
(2026-12-05). The counter says so to Prometheus, and a rollout's hint to whoever reads the verdict;
this says it to whoever reads only the pod's logs, and that a budget will not help.

A lane is starved over a window when it dropped more samples as behind than it processed, and at
least slo.STARVED_BEHIND_PER_S a second: a fresh lane drops a few while it prices its first
sample, and a burst of traffic for a few seconds should not read as a server short of CPU. Windows
lie on a fixed grid of the event loop's clock; one without a drop or a hand-off (no traffic) is not
starved. The warning comes once `STARVED_WINDOWS` windows in a row were starved, and again at most
every `REPEAT_S` however starvation comes and goes; an info line follows the first window that is
not starved after a warning. The QuantshipSliStarved alert reads the same threshold per server,
without the comparison with processed samples, which no metric counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from quantship.slo import STARVED_BEHIND_PER_S, DropReason, dropped_samples

log = logging.getLogger(__name__)

WINDOW_S = 60.0
"""Seconds a window counts drops and processed samples over: a rollout's analysis reads minutes."""
STARVED_WINDOWS = 2
"""Starved windows in a row before the warning: two minutes, a steady rate rather than a burst."""
REPEAT_S = 600.0
"""Seconds between warnings, at least, while the lane stays starved or starves again."""


class StarvationWatch:
    """Counts one lane's behind drops and processed samples per window; used on the event loop only
    (offers and hand-offs both happen there), with the event loop's clock."""

    def __init__(self, lane: str, clock: Callable[[], float]) -> None:
        self.lane = lane
        self.clock = clock
        self._window_end: float | None = None
        self._behind = self._processed = 0
        self._starved_in_a_row = 0
        self._last_warning: float | None = None
        self._told_starved = False
        """A warning stands that no info line has answered yet."""

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
            return
        if now < self._window_end:
            return
        self._judge(self._window_end)
        ended = math.floor((now - self._window_end) / WINDOW_S) + 1  # this one and any without events
        if ended > 1:
            self._judge(self._window_end + WINDOW_S)  # empty: the rest would change nothing more
        self._window_end += ended * WINDOW_S

    def _judge(self, end: float) -> None:
        """The window that ended at `end`, on the counts so far; then the counts start again."""
        if self._behind > max(self._processed, STARVED_BEHIND_PER_S * WINDOW_S):
            self._starved_in_a_row += 1
            if self._starved_in_a_row >= STARVED_WINDOWS and (
                self._last_warning is None or end - self._last_warning >= REPEAT_S
            ):
                self._warn(end)
        else:
            self._starved_in_a_row = 0
            if self._told_starved:
                log.info(
                    "%s: the SLI worker is no longer starved: %d samples processed and %d dropped as "
                    "behind in the last %.0f s", self.lane, self._processed, self._behind, WINDOW_S,
                )  # fmt: skip
                self._told_starved = False
        self._behind = self._processed = 0

    def _warn(self, end: float) -> None:
        self._last_warning, self._told_starved = end, True
        log.warning(
            "%s: the SLI worker is starved of CPU: in the last %.0f s it processed %d samples and "
            "dropped %d as behind (%s), %d minutes in a row. It runs only on CPU the serving threads "
            "leave idle, and this server's CPUs are busy serving: more CPU or replicas give the SLIs "
            "samples; a larger SLI CPU budget does not",
            self.lane, WINDOW_S, self._processed, self._behind, dropped_samples(DropReason.BEHIND),
            self._starved_in_a_row * WINDOW_S // 60,
        )  # fmt: skip
