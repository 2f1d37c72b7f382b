"""A gRPC client that takes none of its answer is cut off after the idle timeout, as an HTTP one is
(test_unread_answers.py); a live one on the same server gets its answers whatever the timeout.

grpc core holds an answer that the client grants no HTTP/2 window for until the call ends, and a call
without a deadline never ends: pings (start_grpc) find such a client. The client here is
raw HTTP/2 (raw_http2.py): it sends a ModelInfer whose answer is larger than HTTP/2's initial window,
acknowledges pings until the answer begins, then grants no window and acknowledges no ping, as a
client whose process stopped. (One that never acknowledged any ping is cut by grpc core's own ping
timeout, a minute after its bandwidth probe; one that had was held until keepalive's two hours.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from raw_http2 import GOAWAY, PING, answer_pings_until_the_answer_begins, read_frame, start_unary_call
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact
from quantship.local.prometheus import free_port
from quantship.server import BatchSettings
from quantship.server.grpc_server import SERVICE
from quantship.server.grpc_v2 import inference_pb2 as pb

IDLE_TIMEOUT_S = 2.0
ROWS = 4000
"""Rows whose answer (10 probabilities and a label a row: 200 KB) is far over a 65,535-byte window."""


@pytest.fixture(scope="module")
def server(good_artifact: artifact.Artifact) -> Iterator[LocalServer]:
    served = LocalServer(
        settings_for(good_artifact, "unread", grpc_port=free_port(), idle_timeout_s=IDLE_TIMEOUT_S)
    ).start()
    yield served
    served.stop()


def large_request() -> bytes:
    message = pb.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="X", datatype="FP32", shape=[ROWS, 64])
    message.raw_input_contents.append(np.zeros((ROWS, 64), dtype=np.float32).tobytes())
    return message.SerializeToString()


def test_a_grpc_client_that_takes_none_of_its_answer_is_cut_off_and_a_live_one_is_not(
    server: LocalServer,
) -> None:
    """Before, the answer was held for keepalive's two hours: a 200 MB one, 430 MB of the server's RSS.
    The pings cost a live client nothing: tritonclient, connected throughout, acknowledges them
    whatever it reads, and its connection outlives several idle timeouts."""
    assert server.settings.grpc_port is not None
    live = triton.InferenceServerClient(f"127.0.0.1:{server.settings.grpc_port}")
    images = triton.InferInput("X", [ROWS, 64], "FP32")
    images.set_data_from_numpy(np.zeros((ROWS, 64), dtype=np.float32))
    try:
        assert live.infer(MODEL, [images]).as_numpy("probabilities").shape == (ROWS, 10)
        answered = server.metric("quantship_requests_total", code="200")
        started = time.monotonic()
        with start_unary_call(server.settings.grpc_port, f"/{SERVICE}/ModelInfer", large_request()) as sock:
            answer_pings_until_the_answer_begins(sock)
            sock.settimeout(10 * IDLE_TIMEOUT_S)
            seen: list[int] = []
            try:
                while (read := read_frame(sock)) is not None:  # reading frames grants no window
                    seen.append(read[0])
            except TimeoutError:
                pytest.fail(f"the connection is still open; frames seen since the answer began: {set(seen)}")
        assert PING in seen and GOAWAY in seen  # the server asked, had no answer, and said it was closing
        assert server.metric("quantship_requests_total", code="200") == answered + 1  # the model did answer

        time.sleep(max(0.0, 3 * IDLE_TIMEOUT_S - (time.monotonic() - started)))
        assert live.infer(MODEL, [images]).as_numpy("probabilities").shape == (ROWS, 10)
    finally:
        live.close()


SHORT_IDLE_TIMEOUT_S = 1.0
LONG_CALL_S = 4 * SHORT_IDLE_TIMEOUT_S
"""A lone request waits this long for batch-mates (--max-queue-delay-ms): a call that spans several
keepalive pings and ping timeouts."""


@pytest.fixture(scope="module")
def slow_server(good_artifact: artifact.Artifact) -> Iterator[LocalServer]:
    settings = settings_for(good_artifact, "slow", grpc_port=free_port(), idle_timeout_s=SHORT_IDLE_TIMEOUT_S)
    batching = BatchSettings(max_queue_delay_ms=LONG_CALL_S * 1000)
    served = LocalServer(replace(settings, batching=batching)).start()
    yield served
    served.stop()


async def test_calls_longer_than_the_idle_timeout_are_answered_to_live_clients(
    slow_server: LocalServer,
) -> None:
    """The pings that cut a client that stopped cost a live one nothing: a call under way for four
    idle timeouts (eight pings, each to be acknowledged within half of one) is answered, to
    tritonclient and to its asyncio client at once, and their idle connections stay usable."""
    port = slow_server.settings.grpc_port
    rows = np.zeros((3, 64), dtype=np.float32)
    images = triton.InferInput("X", [3, 64], "FP32")
    images.set_data_from_numpy(rows)
    aio_images = triton_aio.InferInput("X", [3, 64], "FP32")
    aio_images.set_data_from_numpy(rows)
    plain = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as aio:
            for _ in range(2):  # the second on connections idle for a few timeouts since
                started = time.monotonic()
                answers = await asyncio.gather(
                    asyncio.to_thread(plain.infer, MODEL, [images]), aio.infer(MODEL, [aio_images])
                )
                assert time.monotonic() - started >= LONG_CALL_S * 0.9, "the calls were long"
                assert [a.as_numpy("probabilities").shape for a in answers] == [(3, 10), (3, 10)]
                await asyncio.sleep(3 * SHORT_IDLE_TIMEOUT_S)
    finally:
        plain.close()
    assert slow_server.metric("quantship_requests_total", code="200") == 4
