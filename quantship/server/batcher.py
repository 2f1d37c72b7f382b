"""Dynamic batching: concurrent requests merged into one onnxruntime call, off the event loop.

The service submits each validated request; one worker task takes the oldest, adds whatever else
is waiting (and, with a queue delay, what arrives until the oldest has waited that long) up to
`max_batch_size` rows, runs the batch in the inference thread, and hands each request its rows of
the outputs (or runs it on the event loop itself, for a batch of at most `inline_rows` rows, whose
call was measured shorter than a hand-off to the thread: see batch_policy.INLINE_CALL_S). While
traffic comes one request at a time, a request of at most `alone_rows` rows skips the queue and the
worker and runs on the loop (`_alone`; why: batch_policy.ALONE_CALL_S). Only requests whose inputs
agree beyond the first dimension share a batch. A request of more than `max_batch_size` rows is a
batch of its own, run in the thread in calls of at most `split_rows` rows where the policy allows
(batch_policy.BatchPolicy.split_rows): one call at a time, each after a batch of the requests that
wait, so that a one-row request is not held for a whole split run (gpt2-lm's 4000 rows: 0.5 s and
more), and no more calls once its caller gave up (`_step`). The queue is bounded: when it is full,
`submit` raises Overloaded at once rather than growing memory; a split request counts against that
bound until it is answered (its inputs and its outputs so far are held meanwhile), not only while it
is queued. A model whose first dimension is not
a batch dimension runs one request per call, through the same queue (or past it, as above).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from quantship.server.errors import ClientClosedRequest, InferenceFailed, NotReady, Overloaded, ServerError
from quantship.server.runner import Outcome, Runner, SplitRun
from quantship.server.runner_layout import batch_key
from quantship.server.runner_signature import Tensors
from quantship.server.settings import BatchSettings

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]


class Gone(Protocol):
    """Whether the caller still waits for the answer (an HTTP client that disconnected): `gone` says
    it now, for nothing (read as each batch forms), `wait` returns once it is so."""

    @property
    def gone(self) -> bool: ...

    async def wait(self) -> None: ...


class BatchObserver(Protocol):
    def batch_ran(self, rows: int) -> None: ...
    def waited(self, seconds: float) -> None: ...


class _NoObserver:
    def batch_ran(self, rows: int) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass


class _Timeout:
    """No job came before the deadline."""


_TIMEOUT = _Timeout()

LONE_BATCHES = 8
"""Batches in a row of one request each after which a request may run without the queue (`_alone`):
enough to tell traffic at concurrency 1 from a lull between bursts."""


PROBE_INTERVAL_S = 1.0
"""Seconds since the last call in the inference thread before the next probe (PROBE_AFTER_RUNS)."""
PROBE_AFTER_RUNS = 16
"""Where a call in the thread can overlap with the loop's work (`overlap`: more than one CPU), a
request that may run alone on the loop with a call past inline_rows goes through the queue to the
thread instead, as a probe, once both PROBE_INTERVAL_S seconds and PROBE_AFTER_RUNS such requests
have passed since the last call in the thread. A call on the loop keeps requests that arrive
meanwhile unread, so the loop cannot see concurrency there: a second client's request waits in its
socket and then looks alone in turn, and the two clients' requests are read and run one after the
other where the thread would overlap them. The probe's call leaves the loop free to read them, and
a request waiting when it ends stops the skipping (`_ran`). A probe costs one hand-off whatever the
model (EfficientNet-Lite0 INT8 at c=1, gRPC: 1.1 ms more than a request on the loop, on a 2-CPU KVM
guest): spaced by requests alone (one in 17), probes were 6% of that model's requests and half of
its slowest 1% (2026-12-04); spaced by time too, they are ~0.1% of the wall time at any rate, one
request in 17 at most at low traffic, and hidden concurrency is found within a second at high
traffic. (Telling concurrency by the loop's time off the CPU since the call ended failed with a
fast client: at c=1, wrk's next request arrived before the loop had finished with the last one for
a third of the requests.)"""
SWEEP_INTERVAL_S = 0.01
"""Seconds after one sweep of a full queue for requests whose callers have gone (`_drop_abandoned`)
before the next: a sweep of 128 queued requests took 120-140 µs, a 429 without one 1.2 µs, so a
refusal sweeps at most this often (at most ~1.4% of the event loop under a storm of 429s). The price,
accepted: a client that hangs up just after a sweep frees no place until this has passed, so fresh
requests are refused meanwhile though its request sits in the queue (the 429 a full queue gives
anyway; the client retries; the worker drops it unrun on reaching it). Sweeping at every refusal
would cost a hundred 429s each; even a pass that only looked for a caller gone, without taking
the queue apart, reads every request (13 µs for 128: ten 429s each, under a storm of them)."""


class _Wake:
    """Put in the queue by `hurry`: the worker stops waiting for batch-mates."""


_WAKE = _Wake()


@dataclass(eq=False)
class _Job:
    inputs: Tensors
    rows: int
    key: tuple[Any, ...]
    enqueued: float
    """Loop time: what the queue delay's deadline counts from."""
    future: asyncio.Future[Outputs] = field(repr=False)
    queued_at: float = 0.0
    """By the batcher's `clock`: what the observed wait counts from."""
    gone: Gone | None = field(default=None, repr=False)


@dataclass(eq=False)
class _Split:
    job: _Job
    run: SplitRun


class Batcher:
    def __init__(
        self,
        runner: Runner,
        settings: BatchSettings,
        *,
        executor: Executor,
        inline_rows: int = 0,
        alone_rows: int | None = None,
        overlap: bool = True,
        split_rows: int = 0,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.runner = runner
        self.clock = clock
        """What the queue wait is timed with: uvloop's loop.time() counts whole milliseconds, so the
        sub-millisecond buckets of quantship_queue_duration_seconds held only zeros."""
        self.batchable = runner.signature.batchable
        self.max_rows = settings.max_batch_size
        self.delay = settings.max_queue_delay_ms / 1000
        self.executor = executor
        self.inline_rows = inline_rows
        self.alone_rows = inline_rows if alone_rows is None else alone_rows
        self.overlap = overlap
        """A call in the inference thread can overlap with the loop's work (more than one CPU), so
        concurrency behind a call on the loop costs: probe for it (PROBE_AFTER_RUNS). With one CPU
        there is nothing to overlap, and a request that looks alone runs on the loop whatever waits."""
        self.split_rows = split_rows
        """A request of more rows runs in calls of at most this many (0: in one call)."""
        self.observer = observer if observer is not None else _NoObserver()
        self._queue: asyncio.Queue[_Job | _Wake | None] = asyncio.Queue(settings.max_queue_size)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the batcher first ran on, as its queue is bound to it (asyncio's _LoopBoundMixin).
        Kept, because on Python 3.11 asyncio.get_running_loop() makes a getpid() system call each
        time: on digits at concurrency 32, 1.25 of them a request (strace) and 3% of the event loop's
        samples (py-spy); 0.12 a request once kept."""
        self._closing = False
        self._splits: collections.deque[_Split] = collections.deque()
        """Requests of more than `split_rows` rows being run a call at a time (`_step`), oldest first."""
        self._idle = False
        """The worker waits for a first job on an empty queue."""
        self._ran_alone_this_turn = False
        """A request ran alone on the loop in this turn of the event loop (see `submit`)."""
        self._lone_batches = 0
        """Batches in a row that held one request: traffic without concurrency (see `_alone`)."""
        self._thread_ran_at = -math.inf
        """Loop time at which the last call in the inference thread ended: a probe, or traffic
        through the queue anyway (see PROBE_AFTER_RUNS)."""
        self._alone_runs = 0
        """Requests that ran alone on the loop with a call past inline_rows since then."""
        self._swept_at = -math.inf
        """Loop time of the last sweep of a full queue (SWEEP_INTERVAL_S)."""

    def start(self) -> None:
        self._task = self.loop.create_task(self._work(), name="batcher")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def submit(self, inputs: Tensors, rows: int, gone: Gone | None = None) -> Outputs:
        """The model's outputs for these inputs (already validated). Raises Overloaded when full.
        `gone`: a request whose caller has gone when its batch forms (or, skipping the queue, when it
        is submitted) fails with 499 and does not run; one split into calls makes no more calls once
        it is gone (a cancelled caller, both too)."""
        if self._closing:
            raise NotReady("the server is shutting down")
        loop = self.loop
        if self._alone(rows):
            if gone is not None and gone.gone:  # its body came slowly (a decode in a thread): nobody waits
                raise ClientClosedRequest("the client disconnected before its request ran")
            self._ran_alone_this_turn = True
            loop.call_soon(self._next_turn)
            return self._run_alone(inputs, rows)
        if self._ran_alone_this_turn:  # came with one that ran alone: there is concurrency
            self._lone_batches = 0
        if self._waiting() >= self._queue.maxsize and not self._drop_abandoned():
            raise Overloaded(
                f"{self._queue.maxsize} requests are already waiting for the model (--max-queue-size); "
                "retry later"
            )
        job = _Job(inputs, rows, batch_key(inputs), loop.time(), loop.create_future(), self.clock(), gone)
        self._queue.put_nowait(job)
        return await job.future

    def _waiting(self) -> int:
        """Requests held against --max-queue-size: those queued, and the split requests under way until
        they are answered (one taken from the queue would otherwise free its place: with a queue of 2,
        ten requests of 960 rows were all taken, the last answered after 4.4 s)."""
        waiting = self._queue.qsize()
        if self._splits:
            waiting += sum(not split.job.future.done() for split in self._splits)
        return waiting

    def _drop_abandoned(self) -> bool:
        """Take out of the full queue the requests whose callers no longer wait (`_abandoned`), keeping
        the others in order; whether that freed a place. Only when the queue is full, as a request is
        about to be refused: a client that hung up (or a gRPC deadline) left its request queued until
        the worker reached it, and fresh requests were refused 429 for a queue of nobody's work. At
        most once in SWEEP_INTERVAL_S: a sweep costs a hundred times the 429 (so a client gone just
        after one frees its place only once that has passed: see there)."""
        now = self.loop.time()
        if now - self._swept_at < SWEEP_INTERVAL_S:
            return False
        self._swept_at = now
        queued = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for item in queued:
            if not (isinstance(item, _Job) and _abandoned(item)):
                self._queue.put_nowait(item)
        return self._waiting() < self._queue.maxsize

    def _alone(self, rows: int) -> bool:
        """Whether this request may skip the queue and run at once, here on the loop: when the worker
        would have made it a batch of its own, of at most `alone_rows` rows. That saves the queue, a
        future and two task switches (a quarter of a tiny model's request CPU at concurrency 1), and
        beyond inline_rows the hand-off to the thread, but must not cost batching under concurrency:
        requests that arrive together run in the same turn of the loop, so only the first of a turn
        may skip, and only after LONE_BATCHES batches in a row held one request. A request queued
        behind one that skipped shows concurrency and stops the skipping until single-request
        batches come back; so does one that came while a probe ran (PROBE_AFTER_RUNS)."""
        return (
            self._lone_batches >= LONE_BATCHES
            and self._idle
            and not self._ran_alone_this_turn
            and rows <= self.alone_rows
            and (
                rows <= self.inline_rows
                or not self.overlap
                or self._alone_runs < PROBE_AFTER_RUNS
                or self.loop.time() - self._thread_ran_at < PROBE_INTERVAL_S
            )
            and self.delay == 0
            and self._queue.empty()
        )

    def _next_turn(self) -> None:
        self._ran_alone_this_turn = False

    def hurry(self) -> None:
        """Shutdown has begun: stop waiting for batch-mates, since a request held for a queue delay
        would only eat the drain budget. Requests are still taken (one may be between its checks and
        `submit`) until `close`."""
        self.delay = 0.0
        with contextlib.suppress(asyncio.QueueFull):  # a full queue: the worker is not waiting
            self._queue.put_nowait(_WAKE)

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        if self._closing:
            return
        self._closing = True
        if self._task is None:
            return
        await self._queue.put(None)  # after every queued job: they all run first
        await self._task

    async def _work(self) -> None:
        carry: _Job | None = None
        stopping = False
        while not stopping or self._splits:
            if stopping or (carry is None and self._splits and self._queue.empty()):
                await self._step()  # nothing else waits: the split request's next call
                continue
            if carry is None:
                first = await self._take()
            else:
                first, carry = carry, None
            if first is None:
                stopping = True
                continue
            if isinstance(first, _Wake) or _abandoned(first):
                continue
            batch, rows, carry, stopping = await self._gather(first)
            batch, rows = _still_wanted(batch, rows)
            if len(batch) == 1 and 0 < self.split_rows < rows:
                self._split(batch[0])
            elif batch:
                await self._execute(batch, rows)
            if self._splits:
                await self._step()  # a batch of waiting work, then a call of the split request: in turn

    async def _take(self) -> _Job | _Wake | None:
        """The next thing queued, waiting for one."""
        self._idle = True
        try:
            return await self._queue.get()
        finally:
            self._idle = False

    async def _gather(self, first: _Job) -> tuple[list[_Job], int, _Job | None, bool]:
        """A batch that starts with `first`: whatever waits (and, with a queue delay, what comes until
        `first` has waited that long) that can share its call; with its rows, the job that starts the
        next batch, if one was taken, and whether `close` asked the worker to stop."""
        batch, rows = [first], first.rows
        deadline = first.enqueued + self.delay
        while self.batchable and rows < self.max_rows:
            job = await self._next(deadline)
            if isinstance(job, _Timeout):
                break
            if job is None:
                return batch, rows, None, True
            if _abandoned(job):  # its rows are not the batch's
                continue
            if job.key != first.key or rows + job.rows > self.max_rows:
                return batch, rows, job, False  # `job` starts the next batch
            batch.append(job)
            rows += job.rows
        return batch, rows, None, False

    async def _next(self, deadline: float) -> _Job | _Timeout | None:
        """The next waiting job, waiting for one until `deadline` (loop time); _TIMEOUT if none came."""
        try:
            job = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - self.loop.time()
            if remaining <= 0 or self._closing or self.delay == 0:
                return _TIMEOUT
            try:
                job = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                return _TIMEOUT
        return _TIMEOUT if isinstance(job, _Wake) else job

    async def _execute(self, batch: Sequence[_Job], rows: int) -> None:
        """Run one batch and answer its requests. Supervised: whatever fails here (the model, an
        observer, a bug of ours) fails this batch's requests with 500 and the worker goes on, so no
        caller ever waits on a future nobody will set."""
        try:
            results = await self._run(batch, rows)
        except Exception as exc:
            error = _failure(exc, rows)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job, result in zip(batch, results, strict=True):
            if job.future.done():  # the caller may have gone away
                continue
            if isinstance(result, ServerError):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _split(self, job: _Job) -> None:
        """Take a request of more than `split_rows` rows: its calls run one at a time (`_step`), each
        after a batch of the work that waits, so that a small request does not wait for all of them;
        split requests run in the order they came."""
        self._splits.append(_Split(job, SplitRun(self.runner, job.inputs, job.rows, self.split_rows)))
        if job.gone is not None:
            _watch(job, job.gone)

    async def _step(self) -> None:
        """The oldest split request's next call, in the inference thread; its answer after the last.
        Supervised as `_execute` is. A request whose caller gave up (a gRPC deadline or cancellation,
        shutdown's cut) makes no more calls: nobody would read their rows."""
        job, run = self._splits[0].job, self._splits[0].run
        if job.future.done():
            self._splits.popleft()
            return
        try:
            await self._call(job, run)
        except Exception as exc:
            self._splits.popleft()
            if not job.future.done():
                job.future.set_exception(_failure(exc, job.rows))
            return
        if run.done:
            self._splits.popleft()
            self._ran(1)
            if not job.future.done():
                job.future.set_result(run.outputs)

    async def _call(self, job: _Job, run: SplitRun) -> None:
        made = len(run.calls)
        if not made:
            self.observer.waited(self.clock() - job.queued_at)
        try:
            await self.loop.run_in_executor(self.executor, run.step)
        finally:
            self._thread_ran_at, self._alone_runs = self.loop.time(), 0
            for rows in run.calls[made:]:  # what ran: a fallback to one call is one call
                self.observer.batch_ran(rows)

    def _ran(self, requests: int) -> None:
        """Count a batch that ran: lone if it held one request and, where concurrency costs
        (`overlap`), none waited in the queue when it ended: with batches capped at one request,
        that is how concurrency shows."""
        concurrency_seen = self.overlap and not self._queue.empty()
        self._lone_batches = self._lone_batches + 1 if requests == 1 and not concurrency_seen else 0

    def _run_alone(self, inputs: Tensors, rows: int) -> Outputs:
        """One request as a batch of its own, on the event loop; as `_execute` would answer it."""
        try:
            self._ran(1)
            if rows > self.inline_rows:
                self._alone_runs += 1
            self.observer.waited(0.0)
            self.observer.batch_ran(rows)  # at most alone_rows: one call
            [result] = self.runner.run_batch([inputs], [rows])
        except Exception as exc:
            raise _failure(exc, rows) from None
        if isinstance(result, ServerError):
            raise result
        return result

    async def _run(self, batch: Sequence[_Job], rows: int) -> list[Outcome]:
        loop = self.loop
        started = self.clock()
        for job in batch:
            self.observer.waited(started - job.queued_at)
        inputs, row_counts = [job.inputs for job in batch], [job.rows for job in batch]
        calls: list[int] = []  # one, unless a merged call falls back to a call a request
        keys = [job.key for job in batch]
        run = functools.partial(self.runner.run_batch, inputs, row_counts, calls=calls, keys=keys)
        try:
            if rows <= self.inline_rows:  # never a split request: inline_rows <= max_batch_size
                return run()
            return await loop.run_in_executor(self.executor, run)
        finally:
            self._ran(len(batch))  # once it ran: whether requests came meanwhile counts too
            if rows > self.inline_rows:  # the loop was free during the call (a probe, or traffic)
                self._thread_ran_at, self._alone_runs = loop.time(), 0
            for made in calls:  # a request split into calls runs in `_step`
                self.observer.batch_ran(made)


def _still_wanted(batch: list[_Job], rows: int) -> tuple[list[_Job], int]:
    """The batch less the requests whose callers no longer wait (`_abandoned`: those gone while it
    formed, as a queue delay passed; each was asked as it was taken too), with its rows. They do not
    run: under overload with client timeouts, their rows were most of the work, and fresh requests
    waited behind them; and a client that hung up while its request was queued cost an onnxruntime
    call before its 499."""
    if not any(map(_abandoned, batch)):
        return batch, rows  # the usual case: nothing built
    wanted = [job for job in batch if not _abandoned(job)]  # each asked: any() stopped at the first
    return wanted, sum(job.rows for job in wanted)


def _abandoned(job: _Job) -> bool:
    """Whether the request's caller no longer waits: it gave up while queued (a gRPC deadline or
    cancellation: its future done), or its HTTP client has gone (then answered 499 here)."""
    if job.future.done():
        return True
    if job.gone is not None and job.gone.gone:
        job.future.set_exception(ClientClosedRequest("the client disconnected while its request was queued"))
        return True
    return False


def _watch(job: _Job, gone: Gone) -> None:
    """Fail `job` with 499 once its client has gone (`gone.wait` returns), unless it was answered first."""
    watcher = asyncio.ensure_future(gone.wait())

    def caller_gone(_: object) -> None:
        if not watcher.cancelled() and watcher.exception() is None and not job.future.done():
            job.future.set_exception(ClientClosedRequest("the client disconnected before the answer"))

    watcher.add_done_callback(caller_gone)
    job.future.add_done_callback(lambda _: watcher.cancel())


def _failure(exc: Exception, rows: int) -> ServerError:
    """What a batch's callers get for an exception its run raised: ours (a 4xx) as it is, anything
    else a logged 500."""
    if isinstance(exc, ServerError):
        return exc
    log.exception("inference failed on a batch of %d rows", rows, exc_info=exc)
    return InferenceFailed(f"inference failed: {exc!r}")
