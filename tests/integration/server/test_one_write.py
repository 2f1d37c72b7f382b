"""Responses leave in one TCP segment: `one_write.OneWriteTransport` over a real socket, and
`quantship serve` answering through it.

A TCP stream hides how its bytes were written; the receiving socket's kernel counters do not: Linux's
tcp_info counts the segments that carried data (`tcpi_data_segs_in`, since 4.6). On loopback a write
under the MSS (~64 KiB) is one segment, so a head and a body written apart are two.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import uvloop
from server_harness import MODEL

from quantship import artifact
from quantship.local.processes import ServerProcess
from quantship.server import protocol
from quantship.server.one_write import HOLD_BYTES, OneWriteTransport

TCPI_DATA_SEGS_IN = 152
"""offsetof(struct tcp_info, tcpi_data_segs_in) in linux/tcp.h: a u32 after 152 bytes of older fields."""
TIMEOUT_S = 30.0
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
BODY = b'{"ok":true}'


def data_segments_in(sock: socket.socket) -> int:
    """How many segments carrying data this socket has received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= TCPI_DATA_SEGS_IN + 4, "this kernel's tcp_info has no tcpi_data_segs_in (Linux < 4.6)"
    count: int = struct.unpack_from("I", info, TCPI_DATA_SEGS_IN)[0]
    return count


def receive(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(TIMEOUT_S)
    received = b""
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        assert chunk, f"the connection closed after {len(received)} of {size} bytes"
        received += chunk
    return received


# -- the transport, over a real loopback connection, on both event loops -----------------------

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
"""uvicorn runs on uvloop when it is installed (it is, in production) and on asyncio otherwise."""
Scenario = Callable[[OneWriteTransport, socket.socket], Awaitable[None]]


def over_loopback(loop: str, scenario: Scenario) -> None:
    """Run `scenario(transport, client)` on a fresh event loop of that kind: a OneWriteTransport over
    the server side of a real loopback connection, and the client's socket."""

    async def main() -> None:
        running = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
        real, _ = await running.connect_accepted_socket(asyncio.Protocol, accepted)
        with client:
            try:
                await scenario(OneWriteTransport(real, running), client)
            finally:
                real.abort()
                await asyncio.sleep(0)  # the abort completes on the loop

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


async def read(client: socket.socket, size: int) -> bytes:
    """`size` bytes from the client socket, read in a thread so that the loop goes on meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, receive, client, size)


def ended(client: socket.socket) -> bool:
    """Whether the other side has closed (or reset) the connection, with nothing more to read."""
    client.settimeout(TIMEOUT_S)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("loop", LOOPS)
def test_a_head_and_its_body_written_together_leave_as_one_segment(loop: str) -> None:
    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        before = data_segments_in(client)
        transport.write(HEAD)
        transport.write(BODY)
        assert await read(client, len(HEAD + BODY)) == HEAD + BODY
        assert data_segments_in(client) - before == 1

    over_loopback(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_write_nothing_follows_leaves_with_the_next_round_of_callbacks(loop: str) -> None:
    """An interim `100 Continue`, the head of a HEAD answer or of a streamed response: no body comes."""

    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        before = data_segments_in(client)
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        transport.write(interim)
        assert data_segments_in(client) == before, "held until the loop runs its callbacks"
        assert transport.get_write_buffer_size() == len(interim)
        await asyncio.sleep(0)
        assert await read(client, len(interim)) == interim
        assert data_segments_in(client) - before == 1
        assert transport.get_write_buffer_size() == 0

    over_loopback(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_writes_with_the_loop_between_them_stay_apart_and_in_order(loop: str) -> None:
    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        before = data_segments_in(client)
        transport.write(HEAD)
        await asyncio.sleep(0)
        transport.write(BODY)
        await asyncio.sleep(0)
        assert await read(client, len(HEAD + BODY)) == HEAD + BODY
        assert data_segments_in(client) - before == 2

    over_loopback(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_large_write_is_never_held_and_follows_a_held_one(loop: str) -> None:
    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        large = bytes(range(256)) * (HOLD_BYTES // 256 + 1)
        transport.write(memoryview(large))
        assert transport.get_write_buffer_size() < len(large), "not held"
        transport.write(HEAD)
        transport.write(memoryview(large))
        assert await read(client, 2 * len(large) + len(HEAD)) == large + HEAD + large

    over_loopback(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_writelines_and_write_eof_send_what_is_held_first(loop: str) -> None:
    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        before = data_segments_in(client)
        transport.write(HEAD)
        transport.writelines([BODY[:5], b"", BODY[5:]])
        assert await read(client, len(HEAD + BODY)) == HEAD + BODY
        assert data_segments_in(client) - before == 1
        transport.write(HEAD)
        transport.write_eof()
        assert await read(client, len(HEAD)) == HEAD
        assert ended(client)

    over_loopback(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_close_sends_what_is_held(loop: str) -> None:
    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        transport.write(HEAD)
        transport.close()
        assert await read(client, len(HEAD)) == HEAD
        assert ended(client)

    over_loopback(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_abort_drops_what_is_held(loop: str) -> None:
    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        transport.write(HEAD)
        transport.abort()
        await asyncio.sleep(0.05)  # the abort completes on the loop
        assert ended(client)
        assert data_segments_in(client) == 0, "the held bytes were sent"

    over_loopback(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_writes_once_the_client_has_gone_are_dropped(loop: str) -> None:
    """A request answered after its client hung up (behind a pipelined one, uvicorn does not know it
    gone): asyncio's transport drops the bytes, uvloop's raised RuntimeError, a traceback in the log."""

    async def scenario(transport: OneWriteTransport, client: socket.socket) -> None:
        client.shutdown(socket.SHUT_WR)
        while not transport.is_closing():  # the server reads the client's end, and closes
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # and its connection_lost has run
        transport.write(HEAD)
        transport.write(BODY)
        transport.writelines([HEAD, BODY])
        transport.write(bytes(HOLD_BYTES + 1))
        assert transport.get_write_buffer_size() == 0
        assert ended(client)

    over_loopback(loop, scenario)


# -- quantship serve ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    good_artifact: artifact.Artifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("one-write") / "serve.log"
    process = ServerProcess(good_artifact.root, model=MODEL, revision="good", log_path=log)
    process.start()
    try:
        asyncio.run(process.wait_ready(timeout=120))
        yield process
    finally:
        process.stop()


def one_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(status line, body) of one HTTP response with a Content-Length."""
    head = b""
    while b"\r\n\r\n" not in head:
        head += receive(sock, 1)
    status, *lines = head[:-4].split(b"\r\n")
    lengths = [int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")]
    assert len(lengths) == 1, head
    return status, receive(sock, lengths[0])


def request(method: str, path: str, body: bytes = b"", *headers: str, length: int | None = None) -> bytes:
    """The request's bytes; `length` declares a body that is not sent with them."""
    declared = len(body) if length is None else length
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {declared}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


INFER = f"/v2/models/{MODEL}/infer"
ROW = np.linspace(0, 1, 64, dtype=np.float32)
JSON_BODY = json.dumps(
    {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": ROW.tolist()}]}
)
BINARY_HEADER = json.dumps(
    {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}
).encode()


BINARY_LENGTH = f"{protocol.HEADER_LENGTH}: {len(BINARY_HEADER)}"
SMALL_RESPONSES = {
    "JSON inference": (request("POST", INFER, JSON_BODY.encode()), b"200"),
    "binary inference": (
        request("POST", INFER, BINARY_HEADER + ROW.tobytes(), BINARY_LENGTH),
        b"200",
    ),
    "a refused body": (request("POST", INFER, b"{not json"), b"400"),
    "an unknown model": (request("POST", "/v2/models/nope/infer", JSON_BODY.encode()), b"404"),
    "readiness (FastAPI)": (request("GET", "/v2/health/ready"), b"200"),
    "model metadata (FastAPI)": (request("GET", f"/v2/models/{MODEL}"), b"200"),
}


@pytest.mark.parametrize("what", SMALL_RESPONSES)
def test_a_small_response_leaves_the_server_as_one_segment(server: ServerProcess, what: str) -> None:
    sent, status = SMALL_RESPONSES[what]
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        for _ in range(3):  # and again on the kept-alive connection
            before = data_segments_in(sock)
            sock.sendall(sent)
            line, _ = one_response(sock)
            assert line.split()[1] == status, line
            assert data_segments_in(sock) - before == 1, f"{what}: answered in more than one segment"


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: ServerProcess) -> None:
    body = JSON_BODY.encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request("POST", INFER, b"", "expect: 100-continue", length=len(body)))
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        assert receive(sock, len(interim)) == interim
        sock.sendall(body)
        line, answer = one_response(sock)
    assert line.split()[1] == b"200"
    assert json.loads(answer)["model_name"] == MODEL


def test_pipelined_requests_are_answered_whole_and_in_order(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request("GET", "/v2/health/live") + request("POST", INFER, JSON_BODY.encode())
                     + request("GET", f"/v2/models/{MODEL}"))  # fmt: skip
        answers = [one_response(sock) for _ in range(3)]
    assert [line.split()[1] for line, _ in answers] == [b"200"] * 3
    assert "outputs" in json.loads(answers[1][1])
    assert json.loads(answers[2][1])["name"] == MODEL


def test_a_response_larger_than_what_is_joined_arrives_whole(
    server: ServerProcess, good_artifact: artifact.Artifact
) -> None:
    rows = np.random.default_rng(3).random((4096, 64), dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "X", "shape": list(rows.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": rows.nbytes}}]}).encode()  # fmt: skip
    answer = httpx.post(
        f"{server.url}{INFER}", content=header + rows.tobytes(), timeout=TIMEOUT_S,
        headers={protocol.HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert len(answer.content) > HOLD_BYTES
    session = ort.InferenceSession(good_artifact.model_path, providers=["CPUExecutionProvider"])
    expected = session.run(["label"], {"X": rows})[0]
    served = {output["name"]: output["data"] for output in answer.json()["outputs"]}
    assert served["label"] == expected.tolist()


def test_a_head_request_gets_its_head_alone_and_the_connection_goes_on(server: ServerProcess) -> None:
    """uvicorn writes no body for HEAD: the held head leaves with the loop's next round of callbacks."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        before = data_segments_in(sock)
        sock.sendall(request("HEAD", "/v2/health/ready"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += receive(sock, 1)
        assert head.startswith(b"HTTP/1.1 ")
        assert data_segments_in(sock) - before == 1
        sock.sendall(request("GET", "/v2/health/live"))
        line, _ = one_response(sock)
    assert line.split()[1] == b"200", "no body bytes came between the two answers"


def test_an_answer_before_closing_leaves_in_one_segment_then_the_connection_closes(
    server: ServerProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        before = data_segments_in(sock)
        sock.sendall(request("GET", f"/v2/models/{MODEL}", b"", "connection: close"))
        line, answer = one_response(sock)
        assert line.split()[1] == b"200"
        assert json.loads(answer)["name"] == MODEL
        assert data_segments_in(sock) - before == 1
        assert ended(sock)
