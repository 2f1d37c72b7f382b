"""uvicorn's HTTP protocol with six fixes: an idle timeout, a bound on a request's head, small
responses sent in one write, errors in JSON even where the protocol answers itself, a per-request
signal that the client has gone, and a client that stops reading its answer cut off (`pause_writing`).

uvicorn arms its keep-alive timer only after a response, and the first byte received disarms it for
good: a connection that never sends a request, or trickles its headers, stays open forever (200 such
connections were measured to stay open indefinitely). `HttpProtocol` gives every connection a
deadline while it waits for a request's headers: from the moment it opens, and again after each
response. A connection with no request under way is closed silently at the deadline (the keep-alive
case); one whose headers are still arriving gets 408 first. Once the headers are in, the body timeout
takes over (`infer_route.receive_body`), for bodies that did not arrive with their headers: the
protocol tells the app which did through the scope (`BODY_ARRIVAL`), and a body already here is
read without arming a deadline (asyncio.timeout: 7 µs of a tiny model's ~145 µs request, the median
of 20 paired rounds in process).

A request's head (request line and headers) may take at most --max-header-bytes; past that the
client gets 431 and the connection is closed, as nginx and h11 do. httptools has no limit, and builds
a header's value by appending each piece it receives: a 64 MiB header cost 4.3 s of CPU with the
event loop stalled (a liveness probe waited 7.5 s) and 180 MiB. The head is counted as it arrives,
in `data_received`, before httptools parses a piece (it hands a header over only once it is whole):
to its end, the first empty line, exactly. Only one head is not counted whole: one that begins in
the same piece of data as another request's message ends (pipelining), whose bytes in that piece
(at most one read, 256 KiB) are not counted, as httptools does not say where in a piece it began.

The protocol also tells the app, per request, when its client has gone (`CLIENT_GONE`): uvicorn
marks only the last request parsed disconnected, which behind pipelined requests is not the one
running, and pauses reading at a pipelined request's head, so that the client's end is not read
until the running request is answered: while one is watched, reading goes on behind it up to
PIPELINE_READ_AHEAD pipelined requests.

Each connection writes through `one_write.OneWriteTransport`, so a response's head and body leave in
one TCP segment rather than two (why, and the rule: one_write.py).

What the protocol answers itself, the app never seeing the request (408, 431, a 503 for an upload
cut by shutdown, and uvicorn's 400 for what httptools cannot parse), is `{"error": "..."}` as the
app's errors are (`raw_error`): as text/plain, tritonclient reported "an exception occurred in the
client while decoding the response" in place of the server's message. A 400 or 431 for a request
pipelined behind requests not yet answered waits for their answers (`_refuse`), so that each is read
as its own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from quantship.server.errors import error_json
from quantship.server.one_write import OneWriteTransport
from quantship.server.protocol import JSON_TYPE
from quantship.server.settings import ServerSettings

log = logging.getLogger("quantship.server")


def raw_error(status: HTTPStatus, message: str, *headers: tuple[bytes, bytes]) -> bytes:
    """A whole response the protocol writes itself, below the app: `{"error": message}` as the app
    answers errors (errors.py: tritonclient reads exactly that body), then the connection is closed."""
    body = error_json(message)
    lines = [
        b"HTTP/1.1 %d %s" % (status, status.phrase.encode()),
        b"content-type: " + JSON_TYPE.encode(),
        *(b"%s: %s" % header for header in headers),
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


TIMEOUT_RESPONSE = raw_error(
    HTTPStatus.REQUEST_TIMEOUT,
    "the request headers did not arrive within the idle timeout (--idle-timeout-s)",
)
HEAD_TOO_LARGE_RESPONSE = raw_error(
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
    "the request's headers are over the most this server takes (--max-header-bytes)",
)
CUT_RESPONSE = raw_error(
    HTTPStatus.SERVICE_UNAVAILABLE,
    "the server is shutting down and the request's body had not all arrived; retry elsewhere",
    (b"retry-after", b"1"),
)
MALFORMED_RESPONSE = raw_error(
    HTTPStatus.BAD_REQUEST,
    "the request is not valid HTTP/1.1: its request line, headers or body framing cannot be parsed",
)


BODY_ARRIVAL = "quantship.body_arrival"
"""An ASGI scope extension (`scope["extensions"]`, a dict as the spec has them): `{"complete": bool}`,
whether the request's whole body has arrived. `HttpProtocol` sets it as the parser reaches the
message's end, so a request sent in one piece is complete before the app first runs; and
`{"cut": True}` when shutdown closed the connection while the body was arriving (`cut_upload`)."""

CLIENT_GONE = "quantship.client_gone"
"""An ASGI scope extension: `{"client": ClientGone}` of the request, which says whether the connection
it came on is lost (`gone`), and returns once it is (`wait`): a batcher.Gone."""


PIPELINE_READ_AHEAD = 1
"""Pipelined requests parsed behind a request whose client is watched (`ClientGone.wait`) up to which
reading goes on, where uvicorn pauses at each: so a client that sends one request behind its large one
and hangs up is seen gone. Past it, reading stays paused, as uvicorn's (what a connection may make the
server hold), and a hang-up is seen once the running request is answered."""


class ClientGone:
    """Whether a request's client has gone: set by `HttpProtocol.connection_lost` for every request on
    the connection not yet answered, the one running and those pipelined behind it (uvicorn marks only
    the last parsed disconnected: a split request running ahead of a pipelined one made all its calls,
    and its answer was written to the closed transport)."""

    __slots__ = ("_read_ahead", "_waiter", "gone")

    def __init__(self, read_ahead: Callable[[], None]) -> None:
        self.gone = False
        self._read_ahead = read_ahead
        self._waiter: asyncio.Future[None] | None = None

    @property
    def watched(self) -> bool:
        return self._waiter is not None

    async def wait(self) -> None:
        """Return once the client has gone. Reading goes on meanwhile (`HttpProtocol._read_ahead`):
        uvicorn pauses it at a pipelined request's head, and the client's end would not be read until
        this request is answered."""
        if self.gone:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        self._read_ahead()
        await self._waiter

    def set(self) -> None:
        self.gone = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections that wait longer than `timeout_keep_alive`
    (our --idle-timeout-s) for a request's headers, answering 431 to a request whose head is over
    `h11_max_incomplete_event_size` bytes (our --max-header-bytes: uvicorn's setting for the same
    limit, which only its h11 protocol applies), answering a request httptools cannot parse in JSON,
    and writing through a OneWriteTransport."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle: asyncio.TimerHandle | None = None
        self._partial = False
        """Bytes of a request have come since the last response, but not yet all of its headers."""
        self._arrival: dict[object, object] = {"complete": False}
        """The BODY_ARRIVAL extension of the request being parsed."""
        self._max_head = self.config.h11_max_incomplete_event_size or ServerSettings.max_header_bytes
        self._in_head = True
        """A request's head is under way, or the next bytes begin one: from the connection's start, and
        from the end of each request's message to the end of the next one's headers."""
        self._head_bytes = 0
        """Bytes of the head under way received in earlier pieces of data."""
        self._head_tail = b""
        """Their last 3 bytes: the head's end (an empty line) may be split between two pieces."""
        self._head_began = False
        """A head began inside the piece being parsed (after another request's message ended)."""
        self._unanswered: collections.deque[ClientGone] = collections.deque()
        """The CLIENT_GONE of each request on the connection not yet answered, oldest (running) first."""
        self._refusal: bytes | None = None
        """A refusal (400, 431) of a request that came behind requests not yet answered, written once
        they are (`_refuse`); meanwhile what more comes is not parsed."""
        self._stalled: asyncio.TimerHandle | None = None
        """Armed while an answer waits for the client to read it (`pause_writing`)."""
        self._unread = 0
        """Bytes of the answer the transport held at the last check of the client's reading."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:  # the connection ends with the refusal: what follows is not read
            return
        self._partial = self._idle is not None
        if self._in_head and self._head_size(data) > self._max_head:
            self._refuse_head()  # before httptools parses it: that is the cost the limit avoids
            return
        self._head_began = False
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():  # a head is under way after this piece
            if self._head_began:  # counted from the next piece: httptools does not say where it began
                self._head_bytes = 0
            else:
                self._head_bytes += len(data)
            self._head_tail = (self._head_tail + data)[-3:]

    def _head_size(self, data: bytes) -> int:
        """The size of the head under way once `data` is in: to its end if `data` holds it (the first
        empty line), else all of `data`."""
        end = (self._head_tail + data).find(b"\r\n\r\n")
        return self._head_bytes + (len(data) if end < 0 else end + 4 - len(self._head_tail))

    def _refuse_head(self) -> None:
        log.info(
            "%s: request head over %d bytes (--max-header-bytes); answered 431 and closed",
            _peer(self.client), self._max_head,
        )  # fmt: skip
        self._refuse(HEAD_TOO_LARGE_RESPONSE)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse (it has logged `msg`): ours is JSON, as
        every other error (uvicorn's is text/plain, which tritonclient fails to decode)."""
        self._refuse(MALFORMED_RESPONSE)

    def _refuse(self, response: bytes) -> None:
        """Answer `response` and close the connection: at once, or, when the refused request came
        behind requests not yet answered (pipelined), once they are. The refused one is a head under
        way, or a queued request whose body's framing cannot be parsed (`_drop_queued`). Responses go
        in the order of the requests (RFC 9112, 9.3.2): written at once, the refusal was read as the
        running request's answer, and that request, its connection closed, counted as 499."""
        self._disarm()
        if (self._in_head or self._drop_queued()) and self._unanswered:
            self._refusal = response
            self.flow.pause_reading()
            return
        self.transport.write(response)
        self.transport.close()

    def _drop_queued(self) -> bool:
        """Whether the request being parsed waited in uvicorn's queue of pipelined requests (its head
        whole, its body unparsable: a bad chunk size), now taken out of it: refused, it never runs."""
        if not self.pipeline or self.pipeline[0][0] is not self.cycle:  # newest first (`appendleft`)
            return False
        self.pipeline.popleft()
        self._unanswered.pop()
        return True

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes, self._head_tail = False, 0, b""
        self._disarm()  # a request is under way: the body timeout and the app take it from here
        self._arrival = {"complete": False}
        gone = ClientGone(self._read_ahead)
        extensions = self.scope.setdefault("extensions", {})
        extensions[BODY_ARRIVAL], extensions[CLIENT_GONE] = self._arrival, {"client": gone}
        parsed = self.cycle
        super().on_headers_complete()
        if self.cycle is not parsed:  # a request to answer (not an upgrade), answered in order
            self._unanswered.append(gone)
            if self.pipeline and self._unanswered[0].watched:
                self._read_ahead()

    def _read_ahead(self) -> None:
        """Read on behind the running request whose client is watched, up to PIPELINE_READ_AHEAD
        pipelined requests (uvicorn pauses reading at each), so that the client's end is seen."""
        if len(self.pipeline) <= PIPELINE_READ_AHEAD and not self.transport.is_closing():
            self.flow.resume_reading()

    def on_message_complete(self) -> None:
        self._in_head = self._head_began = True  # what follows in this piece, if anything, is a head
        self._arrival["complete"] = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._unanswered:
            self._unanswered.popleft()
        super().on_response_complete()
        if self._refusal is not None:
            if not self._unanswered:  # the requests ahead of the refused head are answered: its turn
                refusal, self._refusal = self._refusal, None
                if not self.transport.is_closing():  # unless the last of them closed it (Connection: close)
                    self.transport.write(refusal)
                    self.transport.close()
            return
        if self.timeout_keep_alive_task is not None:  # uvicorn waits for the next request: so do we
            self._arm()

    def cut_upload(self) -> None:
        """Shutdown's share for connections is over: a request whose body is still arriving is answered
        503 and its connection closed (the app sees the client gone, and counts a 503: `BODY_ARRIVAL`).
        A request whose body is here is left to the drain (uvicorn cancels it; the app answers 503).
        With pipelined requests waiting (`pipeline`), `cycle` is the last one parsed, not the one
        running: a raw 503 would be read as the running request's answer, whose body had arrived. So
        nothing is written: the running request gets its answer (or the drain's 503, which closes the
        connection), and the one waiting is left to the drain like any other."""
        cycle = self.cycle
        if (
            self.pipeline
            or self._refusal is not None  # answered once the requests ahead are: nothing is cut here
            or cycle is None
            or cycle.response_complete
            or self._arrival["complete"]
            or self.transport.is_closing()
        ):
            return
        self._arrival["cut"] = True
        log.info("%s: body still arriving when the drain's share for connections ended; answered 503 and "
                 "closed", _peer(self.client))  # fmt: skip
        if not cycle.response_started:
            self.transport.write(CUT_RESPONSE)
        self.transport.close()

    def pause_writing(self) -> None:
        """The transport holds more of an answer than its high-water mark: the client reads slower than
        the server writes, or not at all. One that reads none of it for the idle timeout is cut off
        (`_check_reading`), its answer dropped: uvicorn has no such timeout, and held an answer until
        its client read it or left (three gpt2-lm answers of 4000 rows as JSON, ~300 MB each, to
        clients that read nothing: 1.4 GB, for good)."""
        super().pause_writing()
        self._unread = self.transport.get_write_buffer_size()
        self._stalled = self.loop.call_later(self.timeout_keep_alive, self._check_reading)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unstall()

    def _check_reading(self) -> None:
        unread = self.transport.get_write_buffer_size()
        if unread < self._unread:  # it read some since the last check, however slowly: it goes on
            self._unread = unread
            self._stalled = self.loop.call_later(self.timeout_keep_alive, self._check_reading)
            return
        self._stalled = None
        log.info("%s: read none of its answer for %g s (%d bytes unread); connection closed",
                 _peer(self.client), self.timeout_keep_alive, unread)  # fmt: skip
        self.transport.abort()

    def _unstall(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unstall()
        while self._unanswered:
            self._unanswered.popleft().set()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._idle = self.loop.call_later(self.timeout_keep_alive, self._expired)

    def _disarm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _expired(self) -> None:
        self._idle = None
        if self.transport.is_closing():
            return
        if self._partial:
            log.info(
                "%s: request headers incomplete after %g s; answered 408 and closed",
                _peer(self.client), self.timeout_keep_alive,
            )  # fmt: skip
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def uvicorn_options(idle_timeout_s: float, max_header_bytes: int) -> dict[str, Any]:
    """The uvicorn.Config options that give connections the idle timeout, the bound on a request's
    head and one-write responses."""
    return {
        "http": HttpProtocol,
        "timeout_keep_alive": idle_timeout_s,
        "h11_max_incomplete_event_size": max_header_bytes,
    }
