"""Stopping the demo on Ctrl-C, SIGTERM or SIGHUP, even when a cancellation is lost.

The demo stops by cancelling its task; everything it started is stopped as the cancellation unwinds
through its context managers. A single `Task.cancel()` can be lost: anyio's cancel scopes (under
httpx) may swallow a native cancellation that lands in the same loop iteration as one of their own
(agronholm/anyio#1214: the request returns normally, the task goes on with `cancelling()` still 1).
It happened once on a loaded 2-core CI run: Ctrl-C during a canary, and the demo went on to its
recalibration. So the Stopper cancels again every RETRY_S until the demo reports that it is
unwinding (from then on a further cancellation would only cut its cleanup short) or has ended.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from typing import Any

RETRY_S = 1.0
"""Seconds between cancellations until the demo unwinds: long enough for a delivered one to reach
the cleanup, short enough that a lost one costs a person a second."""
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopper:
    def __init__(self, task: asyncio.Task[Any], *, retry_s: float = RETRY_S) -> None:
        self.task = task
        self.retry_s = retry_s
        self.unwinding = False
        self.signal: signal.Signals | None = None
        """The first signal that stopped the task: how the process should end once it has unwound."""

    def install(self, signals: Iterable[signal.Signals] = SIGNALS) -> None:
        """Stop on these signals (replacing asyncio.run's own Ctrl-C handler, which cancels once)."""
        loop = self.task.get_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop, sig)

    def stop(self, sig: signal.Signals | None = None) -> None:
        """Cancel the task, and again every `retry_s` until it unwinds or ends."""
        if self.signal is None:
            self.signal = sig
        if self.task.done() or self.unwinding:
            return
        self.task.cancel()
        self.task.get_loop().call_later(self.retry_s, self.stop)

    def unwind(self) -> None:
        """The demo is stopping what it started: let it finish."""
        self.unwinding = True
