"""urllib3 connection pools whose answers' status lines and headers are told to a meter as they are
read, for the registry client's transport adapter (`oci_transport.Timeouts`). http.client reads
them as they come, a byte at a time if need be, each read waiting up to the read timeout, and
takes up to 100 header lines of 64 KiB each: a server that drips them holds a request for days,
before any body's reader (which the adapter meters) has begun.

Built on the extension points urllib3 and http.client offer: a PoolManager's
`pool_classes_by_scheme`, a pool's `ConnectionCls`, a connection's `response_class`. Nothing of
theirs is patched. It imports nothing of quantship.
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
from collections.abc import Callable
from typing import Any, Protocol

import urllib3
import urllib3.connection
import urllib3.poolmanager


class Meter(Protocol):
    """What is told of the bytes read: `restart` at the first, `moved` at each; it raises to stop."""

    def restart(self) -> None: ...

    def moved(self, count: int) -> None: ...


MeterFactory = Callable[[], Meter]
"""A fresh meter for each answer."""


class _MeteredReads(io.RawIOBase):
    """A socket's reads, each told to `meter` until `meter` is None. The meter starts at the first
    byte, not when the request was sent: a registry may think long before it answers (an upload's
    closing PUT), and that wait is the read timeout's."""

    def __init__(self, raw: io.RawIOBase, meter: Meter) -> None:
        super().__init__()
        self._raw = raw
        self.meter: Meter | None = meter
        self._begun = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        count = self._raw.readinto(buffer)
        if self.meter is not None and count:
            if not self._begun:
                self.meter.restart()
                self._begun = True
            self.meter.moved(count)
        return count

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()


class _MeteredHeaders(http.client.HTTPResponse):
    """http.client's answer, its status line and headers read through a `Meter`; its body is
    read past it (the body's reader meters that)."""

    def __init__(
        self, sock: socket.socket, meter: Meter, debuglevel: int = 0, method: str | None = None
    ) -> None:
        super().__init__(sock, debuglevel, method=method)
        # the buffered reader http.client made, unread yet: its socket read through the meter
        self._reads = _MeteredReads(self.fp.detach(), meter)
        self.fp = io.BufferedReader(self._reads)

    def begin(self) -> None:
        super().begin()
        self._reads.meter = None


class _MetersHeaders:
    """A urllib3 connection whose answers' headers each go through a meter `header_meter` makes."""

    def __init__(self, *args: Any, header_meter: MeterFactory, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_meter = header_meter

    def response_class(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None) -> Any:
        """What http.client calls to read an answer (its class, elsewhere)."""
        return _MeteredHeaders(sock, self._header_meter(), debuglevel, method)


class _Connection(_MetersHeaders, urllib3.connection.HTTPConnection):  # type: ignore[misc]
    pass


class _HTTPSConnection(_MetersHeaders, urllib3.connection.HTTPSConnection):  # type: ignore[misc]
    pass


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def meter_headers(manager: urllib3.PoolManager, meter: MeterFactory) -> None:
    """Have the pools `manager` makes from now on read each answer's status line and headers
    through a meter `meter` makes, unless it makes pools of its own kind (a SOCKS proxy's)."""
    if manager.pool_classes_by_scheme is not urllib3.poolmanager.pool_classes_by_scheme:
        return
    manager.pool_classes_by_scheme = {
        "http": functools.partial(_Pool, header_meter=meter),  # type: ignore[dict-item]
        "https": functools.partial(_HTTPSPool, header_meter=meter),  # type: ignore[dict-item]
    }
