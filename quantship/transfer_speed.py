"""How slow a transfer may move before it is abandoned, as curl's --speed-limit/--speed-time: a
registry, or a proxy, that drips bytes just inside each read's timeout would hold a pull or push
for hours. `SpeedLimit` says the limit, `SpeedMeter` is told the bytes as they move and raises
`TooSlow`; `PacedAnswer` and `PacedUpload` tell it what an answer's body and a request's body
move. Used by the registry client's transport adapter (`oci_transport`) and by `fetch`'s http(s)
downloads. It imports nothing of quantship but `oci_reference`, for `OciError`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3.response

from quantship.oci_reference import OciError

MIN_SPEED_BYTES_S = 100
"""The slowest a transfer may move, in bytes a second over `SPEED_WINDOW_S` (curl's --speed-limit):
a registry, or a proxy, that drips bytes just inside each read's `timeout` would keep a pull or
push going for days. 100 B/s is fifty times under a GPRS link's few KB/s, so any real link passes;
what moves less than 6 KB a minute is not a slow link but a stalled one."""
SPEED_WINDOW_S = 60.0
"""Seconds over which `MIN_SPEED_BYTES_S` is measured (curl's --speed-time): long enough for TCP's
retransmission backoff, which can hold a healthy connection still for tens of seconds."""
CHUNK_BYTES = 2**20


@dataclass(frozen=True)
class SpeedLimit:
    """The slowest a push's or pull's every transfer may move: a request's body as it is sent, an
    answer's body as it is read (a manifest, a layer, a token realm's answer, a push's answers).
    One that moves fewer than `bytes_per_s` on average over `window_s` seconds is abandoned, as
    curl's --speed-limit/--speed-time do. Measured as bytes move, so it is noticed at the end of
    the window or, when nothing at all moves, once a read has waited `timeout`. The wait for an
    answer's first byte is the read timeout's (a registry may take long to answer an upload's PUT);
    from there its status line and headers are held to the limit too, as they are read."""

    bytes_per_s: float = MIN_SPEED_BYTES_S
    window_s: float = SPEED_WINDOW_S


SPEED_LIMIT = SpeedLimit()
"""What every push and pull is held to unless told otherwise."""


class TooSlow(OciError):
    """A transfer that moved slower than its `SpeedLimit`: abandoned."""


class SlowHeaders(TooSlow):
    """An answer's status line and headers, too slow: raised where they are read, which knows not
    what was asked; `Timeouts` names the request."""


class SpeedMeter:
    """The bytes one transfer moves, told as they move; raises `TooSlow` when those of a window
    of at least `limit.window_s` seconds average under `limit.bytes_per_s`. `what` names the
    transfer: the registry (or realm), the request and which way; `error` is what is raised."""

    def __init__(
        self,
        limit: SpeedLimit,
        what: str,
        clock: Callable[[], float] = time.monotonic,
        error: type[TooSlow] = TooSlow,
    ) -> None:
        self.limit, self.what, self.clock, self.error = limit, what, clock, error
        self.restart()

    def restart(self) -> None:
        """From nothing moved, now: the transfer begins (again)."""
        self.total = self.in_window = 0
        self.since = self.clock()

    def moved(self, count: int) -> None:
        self.total += count
        self.in_window += count
        now = self.clock()
        elapsed = now - self.since
        if elapsed < self.limit.window_s:
            return
        if self.in_window < self.limit.bytes_per_s * elapsed:
            raise self.error(
                f"{self.what} moved {self.in_window} bytes in {elapsed:.1f} s "
                f"({self.in_window / elapsed:.1f} bytes/s; {self.total} bytes in all), under the minimum "
                f"of {self.limit.bytes_per_s:g} bytes/s over {self.limit.window_s:g} s: abandoned"
            )
        self.since, self.in_window = now, 0


class PacedAnswer:
    """An answer's body as requests reads it (`stream`, urllib3's): each piece as soon as it
    arrives (`read1`; urllib3's `read` waits for a whole chunk, where a drip goes unseen), told
    to `meter`; hung up on when too slow. Everything else is urllib3's response's."""

    def __init__(self, raw: urllib3.response.BaseHTTPResponse, meter: SpeedMeter) -> None:
        self._raw, self._meter = raw, meter

    def stream(self, amt: int | None = CHUNK_BYTES, decode_content: bool | None = None) -> Iterator[bytes]:
        self._meter.restart()  # the body's first byte is the transfer's start, not its headers'
        while piece := self._raw.read1(amt, decode_content=decode_content):
            try:
                self._meter.moved(len(piece))
            except TooSlow:
                self._raw.close()  # the connection too: it is not given back to the pool
                raise
            yield piece

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class PacedUpload(io.BytesIO):
    """A request's body, which urllib3 reads a block at a time and sends: each block told to
    `meter` once it is sent (when the next is asked for). The meter starts at the first block,
    not before the connection was made, and again when urllib3 rewinds the body to send it once
    more (a retry after a 429, whose Retry-After moved nothing)."""

    def __init__(self, body: bytes, meter: SpeedMeter) -> None:
        super().__init__(body)
        self._meter = meter
        self._handed: int | None = None
        """The size of the block last read, sent by now; None before the first."""

    def read(self, size: int | None = -1) -> bytes:
        if self._handed is None:
            self._meter.restart()
        else:
            self._meter.moved(self._handed)
        block = super().read(size)
        self._handed = len(block)
        return block

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._handed = None
        return super().seek(offset, whence)
