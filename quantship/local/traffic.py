"""`TrafficRouter` as a weighted load generator: the demo's traffic, split the way a gateway would.

It sends the held-out rows of the sample model's requests.npz to the servers as Open Inference
Protocol v2 JSON requests, at a steady rate, choosing the canary for `weight` percent of them
and the stable for the rest, and (optionally) feeds each request's true label back through
`POST /v2/models/{name}/feedback`. `route` only changes the split, so the achieved weight is the
asked one. Per revision it counts what it sent and what came back, for the demo's live view.
`drift` transforms the inputs sent to one revision from now on: production data drifting away
from the calibration set, to show (and measure) how fast a breach is caught.

Used by the demo (`quantship demo`), the integration tests and the rollout benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from quantship import zoo

log = logging.getLogger(__name__)


@dataclass
class Sent:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    """Non-200 answers and transport errors."""
    feedback: int = 0
    latencies: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    """(loop time when answered, seconds it took) of recent successful requests, as the client saw them."""


class LoadGenerator:
    def __init__(
        self,
        endpoints: Callable[[str], list[str]],
        requests: Path,
        *,
        model: str,
        rate: float = 40.0,
        concurrency: int = 8,
        feedback: bool = True,
        seed: int = 0,
        timeout: float = 5.0,
    ) -> None:
        """`endpoints(revision)` gives a revision's base URLs (LocalWorkloads.endpoints); `requests`
        is an .npz with the model's input rows and, for feedback, a `labels` array."""
        data = np.load(requests)
        self.inputs = {name: data[name].astype(np.float32) for name in data.files if name != zoo.LABELS_KEY}
        self.labels = data[zoo.LABELS_KEY] if zoo.LABELS_KEY in data.files else None
        self.rows = len(next(iter(self.inputs.values())))
        self.endpoints = endpoints
        self.model = model
        self.rate = rate
        self.concurrency = concurrency
        self.feedback = feedback and self.labels is not None
        self.timeout = timeout
        self.sent: dict[str, Sent] = {}
        self._random = random.Random(seed)
        self._split: tuple[str, str | None, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._cursor = itertools.cycle(range(self.rows))
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._drift: dict[str, tuple[float, float]] = {}
        self._stopping = asyncio.Event()

    def drift(self, revision: str, scale: float = 1.0, offset: float = 0.0) -> None:
        """Send `revision` inputs * scale + offset from now on (1 and 0: the real data again)."""
        self._drift[revision] = (scale, offset)

    # -- the TrafficRouter port -----------------------------------------------------------------

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        self._split = (stable, canary, weight)
        return float(weight) if canary else 0.0

    # -- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="load generator")

    async def aclose(self) -> None:
        """Stop sending; wait for the answers already on their way (up to `timeout`), so the counts
        in `sent` match what the servers counted."""
        if self._task is not None:
            self._stopping.set()
            with contextlib.suppress(TimeoutError):  # then wait_for has cancelled it
                await asyncio.wait_for(self._task, timeout=self.timeout + 1)
            self._task = None
            self._stopping.clear()

    async def __aenter__(self) -> LoadGenerator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def choose(self) -> str | None:
        """The revision the next request goes to, by the current weights."""
        if self._split is None:
            return None
        stable, canary, weight = self._split
        if canary is not None and self._random.random() * 100 < weight:
            return canary
        return stable

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate
        next_at = loop.time()
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            try:
                while not self._stopping.is_set():
                    next_at += interval
                    revision = self.choose()
                    if revision is not None and not slots.locked():  # saturated: skip, do not queue up
                        await slots.acquire()
                        task = asyncio.create_task(self._one(client, revision, slots))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), max(0.0, next_at - loop.time()))
                await asyncio.gather(*pending, return_exceptions=True)
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient, revision: str, slots: asyncio.Semaphore) -> None:
        try:
            urls = self.endpoints(revision)
            stats = self.sent.setdefault(revision, Sent())
            stats.requests += 1
            if not urls:
                stats.errors += 1
                return
            counter = self._round_robin.setdefault(revision, itertools.count())
            url = urls[next(counter) % len(urls)]
            row = next(self._cursor)
            request_id = f"{revision}-{next(self._ids)}"
            loop = asyncio.get_running_loop()
            try:
                body = self._body(request_id, row, *self._drift.get(revision, (1.0, 0.0)))
                began = loop.time()
                response = await client.post(f"{url}/v2/models/{self.model}/infer", json=body)
            except httpx.HTTPError:
                stats.errors += 1
                return
            if response.status_code != 200:
                stats.errors += 1
                return
            stats.ok += 1
            stats.latencies.append((loop.time(), loop.time() - began))
            if self.feedback and self.labels is not None:
                label = {"id": request_id, "label": int(self.labels[row])}
                with contextlib.suppress(httpx.HTTPError):
                    if (
                        await client.post(f"{url}/v2/models/{self.model}/feedback", json=label)
                    ).status_code == 200:
                        stats.feedback += 1
        finally:
            slots.release()

    def _body(self, request_id: str, row: int, scale: float = 1.0, offset: float = 0.0) -> dict[str, Any]:
        return {
            "id": request_id,
            "inputs": [
                {
                    "name": name,
                    "shape": [1, *values.shape[1:]],
                    "datatype": "FP32",
                    "data": (values[row] * scale + offset).ravel().tolist(),
                }
                for name, values in self.inputs.items()
            ],
        }
