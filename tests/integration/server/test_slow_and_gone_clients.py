"""Clients that hang up mid-body, trickle a body, or hold connections idle, against `quantship serve`.

One real server process with half-second body and idle timeouts; raw sockets send what no HTTP
client library would (half a body, a body at a trickle, nothing at all), tritonclient checks the
server still answers normal traffic after each fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from typing import BinaryIO

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from server_harness import MODEL, error_answer, wait_until
from tritonclient.utils import InferenceServerException

from quantship import artifact, slo
from quantship.local.processes import ServerProcess

INFER = f"/v2/models/{MODEL}/infer"
TIMEOUT_S = 0.5
DEADLINE_S = 30.0
"""How long a test waits for the server to act on a half-second timeout: generous, for a loaded box."""
REQUESTS = slo.Metric.REQUESTS_TOTAL
MAX_HEADER_BYTES = 16 * 1024


@pytest.fixture(scope="module")
def server(
    good_artifact: artifact.Artifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("slow-clients") / "serve.log"
    process = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="good",
        extra_args=[
            "--body-timeout-s",
            str(TIMEOUT_S),
            "--idle-timeout-s",
            str(TIMEOUT_S),
            "--max-header-bytes",
            str(MAX_HEADER_BYTES),
        ],
        log_path=log,
    )
    process.start()
    try:
        asyncio.run(process.wait_ready(timeout=120))
        yield process
    finally:
        process.stop()


def count(server: ServerProcess, code: int) -> float:
    """quantship_requests_total{code=...} as the server exports it (0 while the series is absent)."""
    families = text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == REQUESTS and sample.labels.get("code") == str(code)
    )


def assert_still_serving(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        tensor = triton.InferInput("X", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
        result = client.infer(MODEL, [tensor])
        assert result.as_numpy("label").shape == (1,)
    finally:
        client.close()


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def headers(length: int) -> bytes:
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def body() -> bytes:
    return json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    ).encode()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; fails if it never does."""
    received = b""
    sock.settimeout(DEADLINE_S)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {DEADLINE_S} s") from None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def read_response(stream: BinaryIO) -> bytes:
    """The status line of one whole HTTP response (headers and a Content-Length body)."""
    status = stream.readline()
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    stream.read(length)
    return status


def log_lines(server: ServerProcess, needle: str) -> list[str]:
    assert server.log_path is not None
    return [line for line in server.log_path.read_text(errors="replace").splitlines() if needle in line]


# -- a client gone mid-body: 499, never 5xx ---------------------------------------------------


def test_a_client_gone_mid_body_counts_as_499_not_as_a_server_error(server: ServerProcess) -> None:
    before_499, before_500 = count(server, 499), count(server, 500)
    whole = body()
    for _ in range(10):
        with connect(server) as sock:
            sock.sendall(headers(len(whole)) + whole[: len(whole) // 2])
            time.sleep(0.05)  # the server has the headers and half the body, and waits for the rest
    wait_until(lambda: count(server, 499) == before_499 + 10, timeout=DEADLINE_S, what="ten 499s")
    assert count(server, 500) == before_500
    gone = log_lines(server, "client disconnected after")
    assert len(gone) >= 10 and all("counted as 499" in line for line in gone)
    assert not log_lines(server, "Exception in ASGI application")
    assert not log_lines(server, "Traceback")
    assert_still_serving(server)


def test_a_flood_of_clients_gone_mid_body_is_logged_ten_lines_a_second(server: ServerProcess) -> None:
    """A client that opens connections only to drop them mid-body must not flood the log: each such
    line goes through the service's throttle (HANG_UP_LOG_LINES_PER_S), and the first line after a
    pause says how many were held back, so the lines still account for every 499."""
    flood = 60  # connections dropped back to back: spread over 6 s, none would be held
    whole = body()
    before_499 = count(server, 499)
    time.sleep(1.1)  # a line of its own first, which tells what earlier tests' lines held back
    with connect(server) as sock:
        sock.sendall(headers(len(whole)) + whole[: len(whole) // 2])
    wait_until(lambda: count(server, 499) == before_499 + 1, timeout=DEADLINE_S, what="a first 499")
    before_499, before_lines = count(server, 499), len(log_lines(server, "client disconnected after"))
    for _ in range(flood):
        with connect(server) as sock:
            sock.sendall(headers(len(whole)) + whole[: len(whole) // 2])
    wait_until(lambda: count(server, 499) == before_499 + flood, timeout=DEADLINE_S, what="the flood's 499s")
    time.sleep(1.1)  # past the throttle's window: the next line tells what was held back
    with connect(server) as sock:
        sock.sendall(headers(len(whole)) + whole[: len(whole) // 2])
    wait_until(lambda: count(server, 499) == before_499 + flood + 1, timeout=DEADLINE_S, what="one more 499")
    lines = log_lines(server, "client disconnected after")[before_lines:]
    held = sum(
        int(m.group(1)) for line in lines if (m := re.search(r"\((\d+) more since the last line\)", line))
    )
    assert len(lines) < flood, f"{len(lines)} lines for {flood} hang-ups back to back"
    assert len(lines) + held == flood + 1, "every 499 is in the log, as a line or as held back"
    assert_still_serving(server)


# -- a body at a trickle: 408 within the body timeout --------------------------------------------


def test_a_body_at_a_trickle_gets_408_and_the_connection_closed(server: ServerProcess) -> None:
    before = count(server, 408)
    declared = 10 * 1024 * 1024 // 16  # within the server's --max-body-bytes; never all sent
    with connect(server) as sock:
        sock.sendall(headers(declared))
        answer, sent, deadline = b"", 0, time.monotonic() + DEADLINE_S
        while not answer and time.monotonic() < deadline:
            try:
                sock.sendall(b" " * 1024)  # 1 KiB every 50 ms: 20 KB/s, far too slow for the timeout
                sent += 1024
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.05)[0]:
                answer = sock.recv(65536)
        assert sent < declared
        answer += read_until_closed(sock)
    assert "--body-timeout-s" in error_answer(answer, 408)
    wait_until(lambda: count(server, 408) == before + 1, timeout=DEADLINE_S, what="the 408 counted")
    assert_still_serving(server)


def duration_sum(server: ServerProcess) -> float:
    """quantship_request_duration_seconds_sum: the latency the answered requests were recorded with."""
    families = text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == f"{slo.Metric.REQUEST_DURATION_SECONDS}_sum"
    )


def test_a_slow_upload_is_not_recorded_as_the_servers_latency(server: ServerProcess) -> None:
    """The latency clock started at the headers: a body sent over 2 s was recorded as a 2 s request
    in the histogram the latency SLO reads, so slow clients burned a good canary's budget. It starts
    once the body is whole, as over gRPC (grpc core hands a handler whole messages) and in Triton."""
    whole = body()
    pieces = [whole[i : i + len(whole) // 4] for i in range(0, len(whole), len(whole) // 4)]
    before = duration_sum(server)
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(headers(len(whole)))
        for piece in pieces[:-1]:
            time.sleep(TIMEOUT_S / 2 / len(pieces))  # within the body timeout, all of it
            sock.sendall(piece)
        last_byte = time.monotonic()  # before the last piece leaves: the server's clock starts after it
        sock.sendall(pieces[-1])
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")
        answered_within = time.monotonic() - last_byte
    recorded = duration_sum(server) - before
    assert 0 < recorded <= answered_within  # none of the upload's time is the server's


# -- idle connections: closed after the idle timeout ----------------------------------------------


def test_connections_that_send_nothing_are_closed(server: ServerProcess) -> None:
    sockets = [connect(server) for _ in range(20)]
    try:
        for sock in sockets:
            assert read_until_closed(sock) == b""  # closed, silently: no request, no answer
    finally:
        for sock in sockets:
            sock.close()
    assert_still_serving(server)


def test_headers_at_a_trickle_get_408_and_the_connection_closed(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())  # never the blank line
        answer = read_until_closed(sock)
    assert "--idle-timeout-s" in error_answer(answer, 408)  # JSON, as the app's errors: it was text
    assert_still_serving(server)


def test_a_kept_alive_connection_serves_requests_then_closes_when_idle(server: ServerProcess) -> None:
    whole = body()
    with connect(server) as sock, sock.makefile("rb") as stream:
        # Two requests on one connection, pipelined so that no pause between them meets the timeout.
        sock.sendall(2 * (headers(len(whole)) + whole))
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")
        assert read_until_closed(sock) == b""
    assert_still_serving(server)


def test_a_body_refused_before_it_arrived_gets_413_and_the_connection_closed(server: ServerProcess) -> None:
    """Kept open, the rest of the body was read as the next request's headers: a second, stray
    answer (408) came at the idle timeout."""
    with connect(server) as sock:
        sock.sendall(headers(64 * 1024 * 1024) + b'{"inputs": [')  # past --max-body-bytes
        status = sock.makefile("rb").readline()
        sock.sendall(b" " * 4096)  # the rest of the body keeps coming
        rest = read_until_closed(sock)
    assert status.startswith(b"HTTP/1.1 413 "), status
    assert b"HTTP/1.1" not in rest, "one answer, then the connection closed"
    assert_still_serving(server)


# -- a request's head past --max-header-bytes: 431 -----------------------------------------------


def test_a_head_over_the_limit_gets_431_and_the_connection_closed(server: ServerProcess) -> None:
    """Unbounded, httptools took a 64 MiB header whole (200), its CPU time quadratic in the size."""
    header = b"X-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n"
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for start in range(0, len(header), 4096):  # in pieces, as a large header arrives
                sock.sendall(header[start : start + 4096])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent
        answer = read_until_closed(sock)
    assert "--max-header-bytes" in error_answer(answer, 431)  # JSON, as the app's errors: it was text
    assert log_lines(server, "answered 431 and closed")
    assert_still_serving(server)


def test_tritonclient_reads_the_servers_message_in_a_431(server: ServerProcess) -> None:
    """Answered in text/plain, tritonclient.http reported "an exception occurred in the client while
    decoding the response" in place of the server's message."""
    client = triton.InferenceServerClient(server.address)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.get_server_metadata(headers={"X-Big": "a" * (2 * MAX_HEADER_BYTES)})
    finally:
        client.close()
    assert refused.value.status() == "431"
    assert refused.value.message() == (
        "the request's headers are over the most this server takes (--max-header-bytes)"
    )
    assert_still_serving(server)


def test_heads_within_the_limit_pass_alone_and_pipelined(server: ServerProcess) -> None:
    """A head just under the limit, sent in one piece with the body, and then pipelined behind a
    request: the bytes of a body are not counted as the next request's head."""
    whole = body()
    near = b"X-Padding: " + b"a" * (MAX_HEADER_BYTES - 512) + b"\r\n"
    head = headers(len(whole)).replace(b"\r\n\r\n", b"\r\n" + near + b"\r\n")
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(head + whole)
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")
        sock.sendall(2 * (head + whole))
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")


def test_a_head_over_the_limit_sent_in_one_piece_with_its_body_gets_431(server: ServerProcess) -> None:
    """A head was counted only while it stayed incomplete at the end of a piece of data: one that
    arrived whole in one piece, whatever its size, was taken (a 100,000-byte header got 200)."""
    big = b"X-Big: " + b"a" * (4 * MAX_HEADER_BYTES) + b"\r\n"
    whole = body()
    with connect(server) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before all of it came
            sock.sendall(headers(len(whole)).replace(b"\r\n\r\n", b"\r\n" + big + b"\r\n") + whole)
        answer = read_until_closed(sock)
    error_answer(answer, 431)
    assert_still_serving(server)


def test_a_chunked_body_framing_is_not_counted_as_the_next_head(server: ServerProcess) -> None:
    """Once a message ended, the rest of the piece of data it ended in (a chunked body's size lines,
    which on_body does not report) was counted as the next head: a valid request of many one-byte
    chunks was answered 200, counted, then refused 431 and its connection closed."""
    whole = body()
    chunked = b"%x\r\n%s\r\n" % (len(whole), whole) + b"1\r\n \r\n" * (MAX_HEADER_BYTES // 2) + b"0\r\n\r\n"
    head = headers(0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(head)
        time.sleep(0.2)  # the body comes in pieces of its own
        sock.sendall(chunked)
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")
        sock.sendall(headers(len(whole)) + whole)  # the connection is still open, and serves
        assert read_response(stream).startswith(b"HTTP/1.1 200 ")


# -- what httptools cannot parse: uvicorn's 400, in JSON ------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"HELLO\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["not HTTP", "two framings"],
)
def test_a_request_httptools_cannot_parse_gets_a_json_400_and_the_connection_closed(
    server: ServerProcess, request_bytes: bytes
) -> None:
    """uvicorn answered it "Invalid HTTP request received." in text/plain."""
    with connect(server) as sock:
        sock.sendall(request_bytes)
        answer = read_until_closed(sock)
    assert "not valid HTTP/1.1" in error_answer(answer, 400)
    assert_still_serving(server)
