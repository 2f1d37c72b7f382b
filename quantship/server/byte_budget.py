"""`ByteBudget`: how many bytes of some work may be in hand at once, on one event loop.

Decoding a JSON request costs 11 to 17 times its size in memory (a Python float and a list slot a
value, then the array): six 16 MiB JSON bodies decoded at once took the server from 142 to 1199 MiB.
InferRoute decodes large JSON through a budget, so that at most its bytes are being decoded at once.
Requests wait in turn rather than fail: json.loads holds the GIL, so decoding bodies side by side
takes as long as one after another, and a waiting body is already in memory, once, so the wait
costs no more than the decode work ahead of it and no memory beyond what has arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class ByteBudget:
    """At most `capacity` bytes held at once, granted first come, first served; a piece larger than
    the whole budget is granted when nothing else is held, and then runs alone."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a byte budget must be >= 1 byte")
        self.capacity = capacity
        self.in_flight = 0
        """Bytes held now."""
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Pieces waiting for their turn."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes of the budget for the block, waiting in turn for them."""
        await self._acquire(size)
        try:
            yield
        finally:
            self.in_flight -= size
            self._grant()

    async def _acquire(self, size: int) -> None:
        if not self._waiting and self._fits(size):
            self.in_flight += size
            return
        turn = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._waiting.append(entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as it was cancelled: give it back
                self.in_flight -= size
            elif entry in self._waiting:
                self._waiting.remove(entry)
            self._grant()  # those behind it may fit now
            raise

    def _fits(self, size: int) -> bool:
        return self.in_flight == 0 or self.in_flight + size <= self.capacity

    def _grant(self) -> None:
        """Wake waiters in order while the first one fits (order kept: a large piece is not starved
        by small ones slipping past it)."""
        while self._waiting:
            size, turn = self._waiting[0]
            if not turn.cancelled() and not self._fits(size):
                return
            self._waiting.popleft()
            if not turn.cancelled():  # a cancelled one leaves its place (its task has yet to see it)
                self.in_flight += size
                turn.set_result(None)
