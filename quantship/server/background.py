"""Sampled work off the response path: a bounded queue drained by one task into a worker thread.

The shadow evaluator and the clip counter each get a Lane. The service `offer`s a sample after the
answer is ready; once one arrives, the lane's task waits `gather_s` for more, takes up to `max_items`,
and runs `process` on them in the background thread. Gathering matters: every hand-off to a thread
costs a wake-up and a contended GIL, measured at several hundred microseconds of the event loop's
time, far more than the reference model's run; one hand-off per 16 samples keeps 5% shadowing
cheap. A full queue drops the sample and counts it: sampling must never hold memory or delay
answers. A failing `process` is logged and the lane goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lane(Generic[T]):
    def __init__(
        self,
        name: str,
        process: Callable[[list[T]], None],
        *,
        executor: Executor,
        capacity: int,
        on_drop: Callable[[], None],
        max_items: int = 16,
        gather_s: float = 0.05,
    ) -> None:
        self.name = name
        self.process = process
        self.executor = executor
        self.on_drop = on_drop
        self.max_items = max_items
        self.gather_s = gather_s
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(capacity)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name=f"{self.name} lane")

    def offer(self, item: T) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.on_drop()
            return False
        return True

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
        await self._queue.put(None)
        assert self._task is not None
        await self._task

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            items, stopping = ([] if first is None else [first]), first is None
            if not stopping and self._queue.qsize() < self.max_items - 1:
                await asyncio.sleep(self.gather_s)  # let more samples join this hand-off
            while not stopping and len(items) < self.max_items and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                else:
                    items.append(item)
            try:
                if items:
                    await loop.run_in_executor(self.executor, self.process, items)
            except Exception:
                log.exception("%s: processing %d sampled requests failed", self.name, len(items))
            finally:
                for _ in range(len(items) + (1 if stopping else 0)):
                    self._queue.task_done()
            if stopping:
                return
