"""A body that arrived with its headers is read without a deadline (connections.BODY_ARRIVAL).

uvicorn with quantship's HTTP protocol, on both event loops, in a thread of this process; the app
records what the protocol told it and reads the body as the inference route does. Raw sockets
choose how the request is cut: in one write, or the headers first and the body later; and what the
protocol refuses itself (400, 431) behind a request still running is answered after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from server_harness import error_answer, protocol_serving, wait_until

from quantship.server import connections
from quantship.server.errors import ClientClosedRequest, RequestTimeout
from quantship.server.infer_route import BodyLimits, arrived, receive_body
from quantship.server.settings import ServerSettings
from quantship.server.throttled_log import ThrottledLog

BODY = b'{"inputs": []}'
HELD = "/held"
LIMITS = BodyLimits(max_bytes=1 << 20, timeout_s=5.0)
log = logging.getLogger(__name__)


@dataclass
class Recorder:
    """An ASGI app that reads the body as the inference route does and answers 200 "ok"; it keeps, per
    request, whether the body had arrived when the app first ran, and the body it read."""

    seen: list[tuple[bool, bytes]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    """A request to HELD waits for this before it answers."""
    runner: uvicorn.Server | None = None
    loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.loop = asyncio.get_running_loop()
        here = arrived(scope)
        body = await receive_body(receive, "", LIMITS, lambda: "test", log.info, here=here)
        self.seen.append((here, body))
        while scope["path"] == HELD and not self.released.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Recorder, int]]:
    app = Recorder()
    with protocol_serving(app, request.param, idle_timeout_s=5.0) as (runner, port):
        app.runner = runner
        yield app, port


def head(length: int = len(BODY), path: str = "/x") -> bytes:
    return f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {length}\r\n\r\n".encode()


def answers(sock: socket.socket, count: int) -> int:
    """Read until `count` responses have come; how many said 200."""
    received = b""
    while received.count(b"\r\n\r\nok") < count:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {received!r}"
        received += chunk
    return received.count(b"HTTP/1.1 200 ")


def test_a_request_sent_in_one_write_reaches_the_app_with_its_body_arrived(
    server: tuple[Recorder, int],
) -> None:
    app, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head() + BODY)
        assert answers(sock, 1) == 1
        sock.sendall(2 * (head() + BODY))  # pipelined, on the kept-alive connection
        assert answers(sock, 2) == 2
    assert app.seen == [(True, BODY)] * 3


def test_a_body_sent_after_its_headers_is_read_under_the_deadline(server: tuple[Recorder, int]) -> None:
    app, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head())
        time.sleep(0.2)  # the app runs on the headers alone, and waits for the body
        sock.sendall(BODY[:5])
        time.sleep(0.05)
        sock.sendall(BODY[5:])
        assert answers(sock, 1) == 1
    assert app.seen == [(False, BODY)]


def test_a_scope_without_the_extension_is_not_arrived() -> None:
    assert not arrived({"type": "http"})
    assert not arrived({"type": "http", "extensions": {}})
    assert not arrived({"type": "http", "extensions": {connections.BODY_ARRIVAL: {"complete": False}}})
    assert not arrived({"type": "http", "extensions": {connections.BODY_ARRIVAL: {}}})
    assert arrived({"type": "http", "extensions": {connections.BODY_ARRIVAL: {"complete": True}}})


def slow_receive(seconds: float) -> Any:
    """An ASGI receive whose one message takes `seconds` to come."""

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(seconds)
        return {"type": "http.request", "body": BODY, "more_body": False}

    return receive


def test_the_deadline_applies_unless_the_body_has_arrived() -> None:
    limits = BodyLimits(max_bytes=1 << 20, timeout_s=0.01)
    with pytest.raises(RequestTimeout):
        asyncio.run(receive_body(slow_receive(0.1), "", limits, lambda: "test", log.info))
    # said to be here: no deadline armed (a receive that then waited would not be cut off)
    here = receive_body(slow_receive(0.1), "", limits, lambda: "test", log.info, here=True)
    assert asyncio.run(here) == BODY


def test_a_line_held_back_does_not_name_its_request() -> None:
    """Under a storm of hang-ups the client log writes a few lines a second; naming a request (its
    client and path) is for a line written only."""
    named: list[str] = []

    def where() -> str:
        named.append("127.0.0.1:5000 POST /v2/models/m/infer")
        return named[-1]

    async def hang_up() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    records: list[logging.LogRecord] = []
    held = logging.getLogger(f"{log.name}.held")
    held.propagate = False  # each record formatted once, below: no other handler formats it
    held.setLevel(logging.INFO)
    held.addHandler(handler := Kept())

    async def storm() -> None:
        lines = ThrottledLog(60.0, held, logging.INFO, lines=3)
        for _ in range(20):
            with pytest.raises(ClientClosedRequest):
                await receive_body(hang_up, "10", LIMITS, where, lines.log)

    try:
        asyncio.run(storm())
    finally:
        held.removeHandler(handler)
    written = [record.getMessage() for record in records]
    assert len(written) == 3
    assert all(line.startswith(f"{named[0]}: client disconnected after 0 of 10") for line in written)
    assert len(named) == 3


def test_shutdown_cuts_no_upload_of_a_request_pipelined_behind_a_running_one(
    server: tuple[Recorder, int],
) -> None:
    """At the drain's share for connections, `cut_upload` wrote its raw 503 for the last request
    parsed, pipelined behind one still running whose body had arrived: the client read it as the
    running request's answer. The running request is answered; the pipelined one is the drain's."""
    app, port = server
    assert app.runner is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head(path=HELD) + BODY + head() + BODY[:5])  # the second body half sent
        wait_until(lambda: len(app.seen) == 1, what="the first request to run")
        protocols = list(app.runner.server_state.connections)
        assert len(protocols) == 1 and protocols[0].pipeline, "the second request waits in the pipeline"
        assert app.loop is not None
        cut = asyncio.run_coroutine_threadsafe(_cut_uploads(protocols), app.loop)
        cut.result(timeout=10)
        app.released.set()
        first = sock.makefile("rb").readline()
    assert first.startswith(b"HTTP/1.1 200 "), first


async def _cut_uploads(protocols: list[Any]) -> None:
    for protocol in protocols:
        protocol.cut_upload()


# -- what the protocol refuses itself, behind a request still running ---------------------------


def refusal_after_its_answer(sock: socket.socket, status: int) -> str:
    """Read until the server closes: the running request's answer (200 "ok"), then a refusal of
    `status`, whose message this returns (error_answer checks its form)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    first, separator, rest = received.partition(b"\r\n\r\nok")
    assert separator and first.startswith(b"HTTP/1.1 200 "), received[:200]
    return error_answer(rest, status)


def test_a_malformed_request_behind_a_running_one_is_refused_after_its_answer(
    server: tuple[Recorder, int],
) -> None:
    """A valid request and bytes httptools cannot parse, pipelined in one write: the 400 was written at
    once and the connection closed, so the client read it as the valid request's answer (which was
    counted 499, its connection gone). Now the running request is answered, then the 400 follows."""
    app, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head(path=HELD) + BODY + b"HELLO\r\n\r\n")
        time.sleep(0.2)  # the parser has met the malformed request; the first one is held
        app.released.set()
        assert "not valid HTTP/1.1" in refusal_after_its_answer(sock, 400)


def test_a_head_over_the_limit_behind_a_running_request_is_refused_after_its_answer(
    server: tuple[Recorder, int],
) -> None:
    """As above, for the 431 of a pipelined head past --max-header-bytes."""
    app, port = server
    big = b"GET /x HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: " + b"a" * (2 * ServerSettings.max_header_bytes)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head(path=HELD) + BODY)
        wait_until(lambda: len(app.seen) == 1, what="the first request to run")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before all of it came
            for start in range(0, len(big), 4096):  # in pieces, as a large head arrives
                sock.sendall(big[start : start + 4096])
        time.sleep(0.2)
        app.released.set()
        assert "--max-header-bytes" in refusal_after_its_answer(sock, 431)


def test_a_queued_request_whose_body_cannot_be_parsed_is_refused_after_the_running_ones_answer(
    server: tuple[Recorder, int],
) -> None:
    """Its head was whole, so the 400 for its body (a chunk size that is none) waited for no one: the
    client read it as the running request's answer. Now the running one is answered first, and the
    refused one, taken out of uvicorn's queue, never runs."""
    app, port = server
    chunked = b"POST /x HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\nnot-a-size\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head(path=HELD) + BODY + chunked)
        wait_until(lambda: len(app.seen) == 1, what="the first request to run")  # all of it parsed
        app.released.set()
        assert "not valid HTTP/1.1" in refusal_after_its_answer(sock, 400)
    assert app.seen == [(True, BODY)]
