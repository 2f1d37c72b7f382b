"""Sampled work off the response path: a bounded queue drained by one task into a worker thread.

The shadow evaluator and the clip counter each get a Lane. The service `offer`s a sample after the
answer is ready; once one arrives, the lane's task waits `gather_s` for more, takes up to `max_items`,
and runs `process` on them in the background thread. Gathering matters: every hand-off to a thread
costs a wake-up and a contended GIL, measured at several hundred microseconds of the event loop's
time, far more than the reference model's run, and the SLI work itself is cheaper by the batch
(digits' clip counting: 0.8 ms a sample one at a time, 0.11 ms in sixteens); one hand-off per 16
samples, or per GATHER_S, keeps 5% sampling cheap. A full queue drops the sample and counts it:
sampling must never hold memory or delay answers. A failing `process` loses its samples, counted
(reason "failed") and logged a line per FAILURE_LOG_INTERVAL_S at most, and the lane goes on.
A lane that drops most of its samples as behind for minutes says so in the log (starvation.py).

A lane can have a CpuBudget: the CPU seconds its work may take per wall-clock second (the service
splits `--sli-cpu-budget` between the shadow and clip lanes that run, `--shadow-budget-share` to the
shadow lane). Sampling a share of requests costs a share of the model's compute, and on a large
network the observing session and the binning cost more than the served call (EfficientNet-Lite0
INT8: +60% server CPU a request at 5% shadow and 5% clip sampling, measured). Past the budget,
offered samples are dropped and counted (reason "budget") until the bucket refills: a slow SLI
signal, never a slower model. A sample is charged when it is queued, at what the lane's last
hand-off cost a sample, and the charge is settled with the measured CPU once it ran: charged only
once run, a worker starved on a busy core let its queues fill with whatever they held, and ran it
all when the load eased (EfficientNet-Lite0 INT8, 8 s of gRPC load: 3.8 s of CPU in the 8 s after,
at 65% of a core while raw onnxruntime measured beside it ran 30-50% slower; 2026-12-03).

Until a lane knows what a sample costs, its first hand-off is one sample, the probe; samples offered
meanwhile are queued unpriced and charged when they are taken, at the probe's price, or dropped as
"budget" if it does not cover them; no more than a hand-off's worth (`max_items`) wait so, the rest
dropped as "behind": a canary offers every request, and each holds its inputs (16 MiB at most).
Admitted for nothing, a fresh server's queues filled while a starved worker ran its first hand-off,
and all of it ran outside the budget, the debt past one bucket forgiven (EfficientNet-Lite0 INT8 at
c=1: clip samples 60 ms of CPU each, four unpriced hand-offs of 2.6 s where the bucket holds 0.5,
the worker at 8-13% of a core 11 s after the start against a 5% budget; 2026-12-04).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

from quantship.server.errors import InferenceFailed, InvalidInput
from quantship.server.runner import FAILURE_LOG_INTERVAL_S
from quantship.server.starvation import StarvationWatch
from quantship.server.throttled_log import ThrottledLog
from quantship.slo import DropReason

log = logging.getLogger(__name__)
T = TypeVar("T")

NICE = 19
"""The background thread's nice value: the lowest CPU priority, so that on a busy core the kernel
runs the event loop and the inference thread first. On one core at c=1 (digits INT8, default
sampling) the SLI work pushed p99 from 1.5-2.1 ms (SLIs off) to 4.5-5.2 ms; at nice 19, 2.4-3.2 ms.
Where allowed the thread is also SCHED_IDLE (`lower_priority`); the nice value still names it."""


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (a ThreadPoolExecutor initializer): nice 19,
    then the SCHED_IDLE policy. Under EEVDF (Linux 6.6+) a thread that wakes does not preempt a
    running nice-19 one before its time slice ends, so a request arriving while the SLI thread ran
    waited for it: p99 at c=1 1.2 ms against 0.35 ms with the SLIs off (digits INT8, one core, AMD
    EPYC, Linux 6.18). Any other thread preempts a SCHED_IDLE one at once: p99 0.5 ms. The price is
    on a saturated core, where the SLI thread gets less of what is left (digits INT8 c=32: ~24 FP32
    comparisons a second instead of ~100), the rest dropped and counted. Linux keeps both per
    thread, so this touches no other thread; elsewhere, or where not allowed, it quietly does less."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):  # no such call, or not allowed
        os.setpriority(os.PRIO_PROCESS, tid, NICE)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


GATHER_S = 0.2
"""Seconds a lane waits for more samples after the first. The SLIs are read over windows of seconds
to minutes, so a fifth of a second of lag costs them nothing, and at a few dozen samples a second
(5% of a 1,000 req/s server) it makes hand-offs of ~10 instead of ~2."""

HAND_OFF_ITEMS = 16
"""Samples a hand-off takes at most, by default: one hand-off per 16 samples keeps 5% sampling cheap
(the module's text), and a hand-off of 16 one-row samples is one ROWS_A_CALL call."""

ROWS_A_CALL = 32
"""Rows the background sessions (reference, observer) run in one call, at most: a hand-off of 16
one-row samples is one call, but large requests go one at a time, so that a hand-off never holds
sixteen requests' activations at once (256-row digits requests gathered together: +20-30 MiB of
RSS, measured; an image model's activations are megabytes a row)."""

TELL_PRICE_AFTER = 4
"""Hand-offs after which a budgeted lane logs what a sample costs and what its budget buys at that
price: the first few pay for warming the session up (EfficientNet-Lite0 beside a busy server, its
reference: 14.9, 12.3, 11.0, then 9.5-10.9 ms; its clip samples: 75, 50, 44, then 40-43 ms, and at
load average 7-8 on 2026-12-06, 76, 52, 62, then 52-65 ms)."""


class CpuBudget:
    """A token bucket of CPU seconds: `share` seconds accrue per second of wall time, up to `burst_s`
    seconds' worth; a queued sample reserves what it is expected to cost, and each processed batch
    of samples spends what it took in place of what it reserved. Used on the event loop only (offers
    and spending both happen there), so it needs no lock."""

    def __init__(self, share: float, *, burst_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.share = share
        self.capacity = share * burst_s
        self.clock = clock
        self._tokens = self.capacity
        self._at = clock()

    def allows(self) -> bool:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.share)
        self._at = now
        return self._tokens > 0

    def reserve(self, seconds: float) -> None:
        """Charge a queued sample's expected cost now (offers need tokens > 0, so this overdraws by
        one sample's cost at most)."""
        self._tokens -= seconds

    def spend(self, seconds: float, *, reserved: float = 0.0) -> None:
        """A batch took `seconds` of CPU; its samples had reserved `reserved`."""
        # the debt is floored at one bucket, so a burst never silences the SLIs for more than one refill
        self._tokens = max(-self.capacity, self._tokens + reserved - seconds)


class Lane(Generic[T]):
    def __init__(
        self,
        name: str,
        process: Callable[[list[T]], None],
        *,
        executor: Executor,
        capacity: int,
        on_drop: Callable[[DropReason], None],
        on_processed: Callable[[int], None] = lambda count: None,
        budget: CpuBudget | None = None,
        max_items: int = HAND_OFF_ITEMS,
        gather_s: float = GATHER_S,
    ) -> None:
        self.name = name
        self.process = process
        self.executor = executor
        self.on_drop = on_drop
        self.on_processed = on_processed
        """Told how many samples each hand-off processed without failing: the requests a sampled
        SLI's ratio stands on, which its alerts count."""
        self.budget = budget
        self.max_items = max_items
        self.gather_s = gather_s
        self._queue: asyncio.Queue[tuple[T, float | None] | None] = asyncio.Queue(capacity)
        """Samples with the CPU seconds each reserved from the budget (None: offered before the lane
        knew the price, charged when taken); None asks the lane to stop."""
        self._cost: float | None = None
        """CPU seconds a sample took in the last hand-off: what the next offer reserves. None until
        a hand-off has run: the lane is probing."""
        self._hand_offs = 0
        """Hand-offs run: a budgeted lane says what its budget buys after TELL_PRICE_AFTER."""
        self._enough = asyncio.Event()
        """Set once a hand-off's worth is queued: gathering stops early (a burst of offers faster
        than max_items per gather_s would otherwise fill the queue while the lane waits)."""
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._starvation = StarvationWatch(name, clock=lambda: asyncio.get_running_loop().time())
        self._failures = ThrottledLog(FAILURE_LOG_INTERVAL_S, log)

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name=f"{self.name} lane")

    def offer(self, item: T) -> bool:
        reserved: float | None = 0.0
        if self.budget is not None:
            if not self.budget.allows():
                self.on_drop(DropReason.BUDGET)
                return False
            # while probing, at most one hand-off's worth waits unpriced, behind the probe: each
            # holds a request's inputs, and a canary offers every request
            if self._cost is None and self._queue.qsize() >= self.max_items:
                self._dropped_behind()
                return False
            reserved = self._cost
        try:
            self._queue.put_nowait((item, reserved))
        except asyncio.QueueFull:
            self._dropped_behind()
            return False
        if self.budget is not None and reserved is not None:
            self.budget.reserve(reserved)
        if self._queue.qsize() >= self.max_items - 1:  # with the one the lane holds: a hand-off
            self._enough.set()
        return True

    def _dropped_behind(self) -> None:
        self.on_drop(DropReason.BEHIND)
        self._starvation.behind()

    async def idle(self) -> None:
        """Until everything offered so far has been processed (tests and shutdown wait on this)."""
        await self._queue.join()

    async def close(self, timeout: float) -> None:
        """Process what is queued, for at most `timeout` seconds, then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._finish(), timeout)
        except TimeoutError:
            log.warning("%s: gave up on %d sampled requests at shutdown", self.name, self._queue.qsize())
            self._task.cancel()

    async def _finish(self) -> None:
        self._closing = True  # nothing more is coming: no gathering from here on
        self._enough.set()
        await self._queue.put(None)
        assert self._task is not None
        await self._task

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            offered, stopping = ([] if first is None else [first]), first is None
            probing = self.budget is not None and self._cost is None
            wanted = 1 if probing else self.max_items
            if not stopping and not probing and not self._closing and self._queue.qsize() < wanted - 1:
                self._enough.clear()  # let more samples join this hand-off, up to a full one
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._enough.wait(), self.gather_s)
            while not stopping and len(offered) < wanted and not self._queue.empty():
                next_one = self._queue.get_nowait()
                if next_one is None:
                    stopping = True
                else:
                    offered.append(next_one)
            if not probing:
                offered = self._charge_unpriced(offered)
            items = [item for item, _ in offered]
            try:
                if items:
                    spent = await loop.run_in_executor(self.executor, self._timed, items)
                    self._cost = spent / len(items)
                    self._hand_offs += 1
                    self._starvation.processed(len(items))
                    self.on_processed(len(items))
                    if self.budget is not None and self._hand_offs == TELL_PRICE_AFTER:
                        self._tell_price(self.budget, self._cost)
                    if self.budget is not None:
                        self.budget.spend(spent, reserved=sum(reserved or 0.0 for _, reserved in offered))
            except Exception as exc:  # what it reserved stays spent: it may well have run
                self._failed(items, exc)
            finally:
                for _ in range(len(items) + (1 if stopping else 0)):
                    self._queue.task_done()
            if stopping:
                return

    def _failed(self, items: list[T], exc: Exception) -> None:
        """Count each sample of a failed hand-off as dropped, and say so at most once per
        FAILURE_LOG_INTERVAL_S: a session that cannot run on what the model serves fails every
        hand-off, and a canary offers every request. A traceback only where it is ours to fix."""
        for _ in items:
            self.on_drop(DropReason.FAILED)
        expected = isinstance(exc, InvalidInput | InferenceFailed)  # the session refused the inputs
        self._failures.log(
            "%s: %d sampled requests lost, their processing failed: %s",
            self.name, len(items), exc, exc_info=not expected,
        )  # fmt: skip

    def _tell_price(self, budget: CpuBudget, cost: float) -> None:
        """Log once what the budget buys: a rollout analysis that finds too few samples a window
        says so, and this says why (EfficientNet-Lite0's reference run: ~10 ms, ~30 a minute at
        the default budget's half).

        The price is this hand-off's CPU a sample, all of the lane's work (a clip sample: the
        observer's run, then counting and drift binning), and what else the machine runs raises
        it: one EfficientNet-Lite0 clip sample cost 38-65 ms within a minute on a 2-CPU VM at load
        average 7 (its observer's run 28-46 ms), 35 ms alone on a core; the server logged 41-57 ms
        in five runs at load average 7-9, and 88.8 in a walk of session 38. So the line says the
        load it was measured at."""
        affordable = f"{60 * budget.share / cost:.3g}" if cost > 0 else "any number of"
        log.info(
            "%s: a sample costs %.2f ms of CPU (hand-off %d's, at load average %.1f on %d CPUs: it "
            "varies with what else the machine runs); this lane's part of the SLI CPU budget, %.3g CPU "
            "seconds a second, pays for %s samples a minute at most",
            self.name, cost * 1e3, self._hand_offs, os.getloadavg()[0], os.cpu_count() or 1, budget.share,
            affordable,
        )  # fmt: skip

    def _charge_unpriced(self, offered: list[tuple[T, float | None]]) -> list[tuple[T, float | None]]:
        """Charge samples queued while the lane was probing at the price it found; drop, as "budget",
        those the budget does not cover."""
        if self.budget is None or self._cost is None:
            return offered
        kept: list[tuple[T, float | None]] = []
        for item, reserved in offered:
            if reserved is None:
                if not self.budget.allows():
                    self.on_drop(DropReason.BUDGET)
                    self._queue.task_done()
                    continue
                reserved = self._cost
                self.budget.reserve(reserved)
            kept.append((item, reserved))
        return kept

    def _timed(self, items: list[T]) -> float:
        """Process `items` in the worker thread; the CPU seconds that took on it (the background
        sessions run single-threaded, on the calling thread)."""
        started = time.thread_time()
        self.process(items)
        return time.thread_time() - started
