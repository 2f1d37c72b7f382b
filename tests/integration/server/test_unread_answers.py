"""A client that stops reading its answer is cut off after the idle timeout; one that reads slowly is not.

uvicorn with quantship's HTTP protocol, on both event loops, in a thread of this process, with a
two-second idle timeout; the app answers every request with a large body. Raw sockets with a small
receive buffer read it at the pace each test chooses, or not at all. As nginx's send_timeout, what the
kernel's send buffer (here up to 4 MB) takes counts as not read: a reader is seen reading once the
server can write more.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from server_harness import protocol_serving, wait_until

IDLE_TIMEOUT_S = 2.0
ANSWER_BYTES = 64 << 20
"""Far more than the kernel's buffers and the transport's high-water mark hold."""
REQUEST = b"GET /large HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


async def large_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % ANSWER_BYTES)]})  # fmt: skip
    await send({"type": "http.response.body", "body": bytes(ANSWER_BYTES)})


@pytest.fixture(params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[uvicorn.Server, int]]:
    with protocol_serving(large_answer, request.param, IDLE_TIMEOUT_S) as served:
        yield served


def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def test_a_client_that_reads_none_of_its_answer_is_cut_off(server: tuple[uvicorn.Server, int]) -> None:
    """uvicorn held the answer until the client read it or left: three gpt2-lm answers of ~300 MB to
    clients that read nothing held 1.4 GB, for good."""
    runner, port = server
    with connect(port) as sock:
        sock.sendall(REQUEST)
        wait_until(lambda: runner.server_state.connections, what="the connection to be taken")
        wait_until(lambda: not runner.server_state.connections, timeout=10 * IDLE_TIMEOUT_S,
                   what="the server to close a connection whose client reads nothing")  # fmt: skip


def test_a_client_that_reads_slowly_gets_its_answer_on(server: tuple[uvicorn.Server, int]) -> None:
    runner, port = server
    received = 0
    with connect(port) as sock:
        sock.sendall(REQUEST)
        deadline = time.monotonic() + 2.5 * IDLE_TIMEOUT_S
        while time.monotonic() < deadline:  # 256 KiB every 50 ms at most: far slower than the server writes
            for _ in range(64):
                chunk = sock.recv(4096)
                assert chunk, f"the server closed the connection after {received} bytes"
                received += len(chunk)
            time.sleep(0.05)
        assert runner.server_state.connections
    assert 0 < received < ANSWER_BYTES
