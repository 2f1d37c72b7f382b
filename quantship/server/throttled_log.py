"""A log that says a repeated line at most so often (`ThrottledLog`): for a model failing every call
(runner, background) and clients hanging up (service); and text made only for a line written (`Later`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class ThrottledLog:
    """`lines` log lines per `interval` seconds at the most, the next after a pause saying how many
    were held back since."""

    def __init__(
        self,
        interval: float,
        logger: logging.Logger,
        level: int = logging.ERROR,
        lines: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._logger = logger
        self._level = level
        self._lines = lines
        self._window_start = -float("inf")
        self._in_window = 0
        self._held = 0
        self._lock = threading.Lock()

    def log(self, message: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        with self._lock:
            if now - self._window_start >= self._interval:
                self._window_start, self._in_window = now, 0
            if self._in_window >= self._lines:
                self._held += 1
                return
            self._in_window += 1
            held, self._held = self._held, 0
        self._logger.log(
            self._level,
            message + (f" ({held} more since the last line)" if held else ""),
            *args,
            exc_info=exc_info,
            stacklevel=2,  # the line is the caller's
        )


class Later:
    """Text made only when a log line that quotes it (`%s`) is written: logging formats a line's
    arguments then, so a line a ThrottledLog holds back (most of them under a storm of hang-ups) does
    not build it."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make

    def __str__(self) -> str:
        return self._make()
