"""One large request must not take the server's memory, its event loop or its inference thread: a
request of more rows than the batch policy's max batch size runs in calls of at most that many,
answered exactly as one call would (gpt2-lm: 4000 rows in one call took the server from 174 MB to
2.7 GB), or a row a call where its rows mix (dynamic quantization, judged row by row by the gate); a
request that comes meanwhile runs between two of its calls (gpt2-lm's 4000 rows ran 0.5 s and more,
and a one-row request waited for all of them), and its calls stop once its client gave up; and a
large answer is encoded in a thread (a 1024-row JSON answer of gpt2-lm held the loop 2 s, and a
health probe waited as long)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from onnx import TensorProto, helper, numpy_helper
from server_harness import MODEL, LocalServer, fp32_artifact, settings_for, wait_until

from quantship.local.prometheus import free_port
from quantship.server import batch_policy, protocol
from quantship.server.batcher import Gone
from quantship.server.service import ModelService
from quantship.server.settings import BatchSettings
from quantship.slo import Metric

MOST_ROWS = 4
"""--max-batch-size of the servers here."""
WIDE = 64
"""Values a position of the wide output: an LM's logits over its vocabulary."""
BIG_ROWS = 1024
"""Rows of the request whose JSON answer is large (as the tester's gpt2-lm request)."""


def save(path: Path, nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto], x: list[Any]) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        outputs,
        [numpy_helper.from_array(np.arange(WIDE, dtype=np.float32) / WIDE, "wide")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_positions(path: Path) -> Path:
    """x [N, S] -> y = softmax over each row's S positions, and z [N, S, WIDE]: y times 0..1 at each
    position. S is open, so the batch policy takes --max-batch-size as it is (as for gpt2-lm)."""
    nodes = [
        helper.make_node("Softmax", ["x"], ["y"], axis=-1),
        helper.make_node("Unsqueeze", ["y", "last"], ["column"]),
        helper.make_node("Mul", ["column", "wide"], ["z"]),
    ]
    axes = helper.make_node("Constant", [], ["last"], value=numpy_helper.from_array(np.array([2], np.int64)))
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "S", WIDE]),
    ]
    return save(path, [axes, *nodes], outputs, ["N", "S"])


def build_dynamic(path: Path) -> Path:
    """x [N, 4] quantized to uint8 by one scale over the whole call (DynamicQuantizeLinear) and back:
    a row's answer depends on the rows it runs with."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    return save(path, nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], ["N", 4])


def build_transposed(path: Path) -> Path:
    """x [N, S] -> y = x transposed, [S, N], though declared [N, S]: a call's output leads with the
    rows only where S is the call's rows, so a split request falls back to one call of all its rows."""
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])]
    return save(path, nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"])], ["N", "S"])


def build_text(path: Path) -> Path:
    """x [N, S] -> y = x, and t: x's values written as strings (BYTES, encoded value by value)."""
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Cast", ["x"], ["t"], to=TensorProto.STRING),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"]),
        helper.make_tensor_value_info("t", TensorProto.STRING, ["N", "S"]),
    ]
    return save(path, nodes, outputs, ["N", "S"])


class TellsWhenRun(ModelService):
    """Sets `ran` once the model's outputs for a request of BIG_ROWS rows are there, before the answer
    is encoded: the moment a health probe is sent in the test below. Also says when a request of
    so many rows comes (`coming`), lists the rows of each request the model has answered, in order
    (`answered`), and holds the inference thread on demand (`hold`)."""

    ran = threading.Event()
    coming: ClassVar[dict[int, threading.Event]] = {}
    """Events a test sets up, by rows: set as a request of that many rows reaches the service, just
    before it goes to the batcher, which queues it before the event loop runs anything else."""
    answered: ClassVar[list[int]] = []

    async def infer(self, request: protocol.InferRequest, gone: Gone | None = None) -> protocol.InferResponse:
        rows = len(request.inputs["x"])
        if (coming := self.coming.get(rows)) is not None:
            coming.set()
        response = await super().infer(request, gone)
        self.answered.append(rows)
        if len(response.outputs["y"]) == BIG_ROWS:
            type(self).ran.set()
        return response

    def hold(self) -> threading.Event:
        """Hold the inference thread until the event returned is set (at most a minute): the model's
        next calls wait behind it, in order."""
        gate = threading.Event()
        self._infer_executor.submit(gate.wait, 60)
        return gate


def serve(model: Path, out: Path, queue: int = BatchSettings.max_queue_size) -> LocalServer:
    settings = settings_for(
        fp32_artifact(model, out),
        out.name,
        grpc_port=free_port(),
        batching=BatchSettings(max_batch_size=MOST_ROWS, max_queue_size=queue),
    )
    return LocalServer(settings, service=TellsWhenRun, our_protocol=True).start()


def served_with_session(
    factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]
) -> Iterator[tuple[LocalServer, ort.InferenceSession]]:
    """The model `build` writes, served, and its onnxruntime session, to run a whole request in one call."""
    out = factory.mktemp(name)
    model = build(out / f"{name}.onnx")
    server = serve(model, out / "artifact")
    yield server, ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    server.stop()


@pytest.fixture(scope="module")
def positions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, ort.InferenceSession]]:
    yield from served_with_session(tmp_path_factory, "positions", build_positions)


@pytest.fixture(scope="module")
def short_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """The positions model with --max-queue-size 2: a split request under way and one queued fill it."""
    out = tmp_path_factory.mktemp("short-queue")
    server = serve(build_positions(out / "positions.onnx"), out / "artifact", queue=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, ort.InferenceSession]]:
    yield from served_with_session(tmp_path_factory, "dynamic", build_dynamic)


@pytest.fixture(scope="module")
def transposed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalServer, ort.InferenceSession]]:
    yield from served_with_session(tmp_path_factory, "transposed", build_transposed)


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    out = tmp_path_factory.mktemp("text")
    server = serve(build_text(out / "text.onnx"), out / "artifact")
    yield server
    server.stop()


def calls(server: LocalServer) -> tuple[float, float, float]:
    """(calls, rows, calls of at most UNMEASURED_SPLIT_ROWS rows) the served model has run so far."""
    return (
        server.metric(f"{Metric.BATCH_SIZE}_count"),
        server.metric(f"{Metric.BATCH_SIZE}_sum"),
        server.metric(f"{Metric.BATCH_SIZE}_bucket", le=f"{float(batch_policy.UNMEASURED_SPLIT_ROWS)}"),
    )


def calls_since(server: LocalServer, before: tuple[float, float, float]) -> tuple[float, ...]:
    return tuple(after - earlier for after, earlier in zip(calls(server), before, strict=True))


def infer(server: LocalServer, transport: str, x: np.ndarray, *, binary: bool = True) -> Any:
    """The model's outputs for `x`, by the real tritonclient; over HTTP, as binary data or JSON."""
    if transport == "http":
        client: Any = http.InferenceServerClient(server.address, network_timeout=120.0)
        tensor: Any = http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        wanted = [http.InferRequestedOutput(name, binary_data=binary) for name in ("y", "z")]
        return client.infer(MODEL, [tensor], outputs=wanted)
    client = grpc.InferenceServerClient(f"127.0.0.1:{server.settings.grpc_port}")
    tensor = grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(MODEL, [tensor])


def infer_y(server: LocalServer, x: np.ndarray) -> np.ndarray:
    """Output y of a model with that one output, over HTTP."""
    client = http.InferenceServerClient(server.address)
    tensor = http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(MODEL, [tensor]).as_numpy("y")


def rows(count: int, positions: int) -> np.ndarray:
    """`count` rows of values of both signs and several magnitudes, each row unlike the others."""
    return np.random.default_rng(count).normal(0, 3, (count, positions)).astype(np.float32)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_request_of_more_rows_than_a_batch_runs_in_calls_of_a_batch_and_answers_as_one_call(
    positions: tuple[LocalServer, ort.InferenceSession], transport: str
) -> None:
    """The positions model has an open sequence dimension, so no call is timed: its large requests run
    in calls of at least batch_policy.UNMEASURED_SPLIT_ROWS (calls of --max-batch-size 4 or 1 rows
    made gpt2 2.5x slower)."""
    server, session = positions
    split = batch_policy.UNMEASURED_SPLIT_ROWS
    batching = http.InferenceServerClient(server.address).get_model_metadata(MODEL)["batching"]
    assert (batching["max_batch_size"], batching["split_rows"]) == (MOST_ROWS, split)
    x = rows(2 * split + 6, 5)
    before = calls(server)

    result = infer(server, transport, x)

    y, z = session.run(["y", "z"], {"x": x})  # the whole request in one call
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    np.testing.assert_array_equal(result.as_numpy("z"), z)
    ran = calls_since(server, before)
    assert ran[:2] == (3, len(x)), f"three calls ({split}, {split} and 6 rows): the fewest of at most {split}"
    assert ran[2] == 3, (
        f"the batch-size histogram's buckets reach calls of {split} rows, past --max-batch-size"
    )


def test_a_request_that_comes_while_a_large_one_runs_is_answered_between_its_calls(
    positions: tuple[LocalServer, ort.InferenceSession],
) -> None:
    """The inference thread is held while the large request's first call waits behind it; a one-row
    request comes, then the thread is let go. The small one runs after that call, not after all five
    of them, and the large one still answers as one call would."""
    server, session = positions
    service = server.service
    assert isinstance(service, TellsWhenRun)
    big, small = rows(4 * batch_policy.UNMEASURED_SPLIT_ROWS + 6, 5), rows(1, 5)
    coming = {len(big): threading.Event(), len(small): threading.Event()}
    TellsWhenRun.coming, TellsWhenRun.answered = coming, []
    before = calls(server)

    gate = service.hold()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            big_answer = pool.submit(infer, server, "http", big)
            assert coming[len(big)].wait(60), "the large request came"
            small_answer = pool.submit(infer, server, "grpc", small)
            assert coming[len(small)].wait(60), "the small request came"
        finally:
            gate.set()
        y = big_answer.result(timeout=120).as_numpy("y")
        small_answer.result(timeout=120)

    assert TellsWhenRun.answered == [len(small), len(big)], "the small request waited for the large one"
    np.testing.assert_array_equal(y, session.run(["y"], {"x": big})[0])
    assert calls_since(server, before)[:2] == (5 + 1, len(big) + len(small))


def json_request(x: np.ndarray) -> bytes:
    """An HTTP inference request of `x` as JSON, as it goes on the wire."""
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def hang_up(server: LocalServer, x: np.ndarray, coming: threading.Event) -> None:
    """Send `x` as a JSON request on a socket of our own, and close it once the server has the request."""
    with socket.create_connection(("127.0.0.1", server.settings.port), timeout=60) as sock:
        sock.sendall(json_request(x))
        assert coming.wait(60), "the large request came"


def hang_up_pipelined(server: LocalServer, x: np.ndarray, coming: threading.Event) -> None:
    """As `hang_up`, with a one-row request sent behind it on the connection (pipelined): uvicorn marks
    only the last request parsed disconnected, and stops reading the connection until the first is
    answered."""
    with socket.create_connection(("127.0.0.1", server.settings.port), timeout=60) as sock:
        sock.sendall(json_request(x) + json_request(rows(1, x.shape[1])))
        assert coming.wait(60), "the large request came"


def hang_up_pipelined_later(server: LocalServer, x: np.ndarray, coming: threading.Event) -> None:
    """As `hang_up_pipelined`, the one-row request sent once the server has the large one."""
    with socket.create_connection(("127.0.0.1", server.settings.port), timeout=60) as sock:
        sock.sendall(json_request(x))
        assert coming.wait(60), "the large request came"
        sock.sendall(json_request(rows(1, x.shape[1])))


def cancel(server: LocalServer, x: np.ndarray, coming: threading.Event) -> None:
    """Send `x` by tritonclient's gRPC client, and cancel the call once the server has the request."""
    client = grpc.InferenceServerClient(f"127.0.0.1:{server.settings.grpc_port}")
    tensor = grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    call = client.async_infer(MODEL, [tensor], callback=lambda result, error: None)
    assert coming.wait(60), "the large request came"
    call.cancel()


GAVE_UP_LINES = {
    "http": "/infer: the client disconnected before the answer; counted as 499",
    "grpc": "ModelInfer: the client cancelled the call, or its connection closed, before the answer; "
    "counted as 499",
}
"""What the log says of a request whose client gave up while it ran, by transport."""


@pytest.mark.parametrize(
    "give_up",
    [hang_up, hang_up_pipelined, hang_up_pipelined_later, cancel],
    ids=["http", "http-pipelined", "http-pipelined-later", "grpc"],
)
def test_a_large_request_whose_client_gave_up_makes_no_more_calls(
    positions: tuple[LocalServer, ort.InferenceSession],
    give_up: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client hangs up, or cancels its RPC, while the large request's first call waits behind the
    held inference thread: that call runs, the four others do not, and the request counts as 499,
    logged one line (it was counted only: an on-call seeing 499s found nothing in the log)."""
    server, _ = positions
    service = server.service
    assert isinstance(service, TellsWhenRun)
    big = rows(4 * batch_policy.UNMEASURED_SPLIT_ROWS + 6, 5)
    coming = {len(big): threading.Event()}
    TellsWhenRun.coming = coming
    gone = server.metric(Metric.REQUESTS_TOTAL, code="499")
    before = calls(server)

    gate = service.hold()
    try:
        with caplog.at_level(logging.INFO, logger="quantship.server"):
            give_up(server, big, coming[len(big)])
            wait_until(
                lambda: server.metric(Metric.REQUESTS_TOTAL, code="499") > gone, what="the client gone"
            )
    finally:
        gate.set()
    infer(server, "http", rows(1, 5))  # runs once the call under way has ended

    assert calls_since(server, before)[0] == 1 + 1, "one call of the large request, one of the small"
    line = GAVE_UP_LINES["grpc" if give_up is cancel else "http"]
    assert [r.levelno for r in caplog.records if line in r.getMessage()] == [logging.INFO]
    if give_up is cancel:  # the line names the client, as the HTTP ones do
        assert [r.getMessage()[:15] for r in caplog.records if line in r.getMessage()] == ["ipv4:127.0.0.1:"]


@contextlib.contextmanager
def behind_a_hung_up_request(
    server: LocalServer,
    pool: concurrent.futures.ThreadPoolExecutor,
    big: np.ndarray,
    small: np.ndarray,
    coming: dict[int, threading.Event],
) -> Iterator[concurrent.futures.Future[Any]]:
    """The inference thread held: `big`'s first call waits behind it (its future is yielded), and
    `small`, queued behind that, loses its client. Once this yields the server has seen the hang-up; on
    leaving, the thread is let go."""
    service = server.service
    assert isinstance(service, TellsWhenRun)
    TellsWhenRun.coming = coming
    gate = service.hold()
    try:
        large = pool.submit(infer, server, "http", big)
        assert coming[len(big)].wait(60), "the large request came"
        hang_up(server, small, coming[len(small)])
        # the hang-up reached the server before this probe did: its end is read first
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=60).status_code == 200
        yield large
    finally:
        gate.set()


def test_a_request_whose_client_hung_up_while_it_was_queued_does_not_run(
    positions: tuple[LocalServer, ort.InferenceSession], caplog: pytest.LogCaptureFixture
) -> None:
    """A large request's first call waits behind the held inference thread; a small request queued
    meanwhile loses its client before the thread is let go. It is answered 499 as its batch forms,
    without a call: the calls that run are the large request's two."""
    server, session = positions
    big, small = rows(batch_policy.UNMEASURED_SPLIT_ROWS + 1, 5), rows(3, 5)
    coming = {len(big): threading.Event(), len(small): threading.Event()}
    answered = {code: server.metric(Metric.REQUESTS_TOTAL, code=code) for code in ("200", "499")}
    before = calls(server)

    with concurrent.futures.ThreadPoolExecutor(1) as pool, caplog.at_level(logging.INFO, "quantship.server"):
        with behind_a_hung_up_request(server, pool, big, small, coming) as large:
            pass  # the thread is let go as soon as the hang-up is in
        y = large.result(timeout=120).as_numpy("y")

    def since(code: str) -> float:
        return server.metric(Metric.REQUESTS_TOTAL, code=code) - answered[code]

    wait_until(lambda: since("200") + since("499") >= 2, what="both requests answered")
    assert (since("200"), since("499")) == (1, 1), "the large one answered, the small one 499"
    np.testing.assert_allclose(y, session.run(["y"], {"x": big})[0], rtol=1e-6)
    assert calls_since(server, before)[:2] == (2, len(big)), (
        "the large request's two calls, none of the small's"
    )
    queued = "the client disconnected while its request was queued; counted as 499"
    assert sum(queued in r.getMessage() for r in caplog.records) == 1, "logged one line"


def test_a_request_whose_client_hung_up_holds_no_place_in_a_full_queue(short_queue: LocalServer) -> None:
    """--max-queue-size 2: a large request's first call waits behind the held inference thread (its
    place), and a small request queued behind it (the other) loses its client. A fresh request is
    taken in the hung-up one's place, not refused 429 for a queue full of nobody's work."""
    server = short_queue
    big, small, fresh = rows(batch_policy.UNMEASURED_SPLIT_ROWS + 1, 5), rows(3, 5), rows(2, 5)
    coming = {count: threading.Event() for count in (len(big), len(small), len(fresh))}
    answered = {code: server.metric(Metric.REQUESTS_TOTAL, code=code) for code in ("200", "429", "499")}

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with behind_a_hung_up_request(server, pool, big, small, coming) as large:
            taken = pool.submit(infer, server, "http", fresh)
            # queued or refused in the event loop's turn that set this, before the thread is let go
            assert coming[len(fresh)].wait(60), "the fresh request came"
        large.result(timeout=120)
        y = taken.result(timeout=120).as_numpy("y")  # tritonclient raises on a 429

    def since(code: str) -> float:
        return server.metric(Metric.REQUESTS_TOTAL, code=code) - answered[code]

    assert y.shape == fresh.shape
    assert (since("200"), since("429"), since("499")) == (2, 0, 1), (
        "the large and fresh answered, not the small"
    )


def test_a_split_request_that_falls_back_to_one_call_counts_the_calls_that_ran(
    transposed: tuple[LocalServer, ort.InferenceSession],
) -> None:
    """The first call's output does not lead with its rows, so the whole request runs in one call: the
    batch-size histogram counts those two calls, not the three planned."""
    server, session = transposed
    x = rows(2 * batch_policy.UNMEASURED_SPLIT_ROWS + 6, 5)
    before = calls(server)

    answer = infer_y(server, x)

    np.testing.assert_array_equal(answer, session.run(["y"], {"x": x})[0])
    split = batch_policy.UNMEASURED_SPLIT_ROWS
    assert calls_since(server, before)[:2] == (2, split + len(x)), f"a call of {split} rows, then the whole"


def test_a_request_whose_rows_mix_runs_a_row_a_call_as_the_gate_judged_it(
    dynamic: tuple[LocalServer, ort.InferenceSession],
) -> None:
    """One scale over the call's rows: run together, the small rows would be quantized by the large
    ones' scale, and answered otherwise than one at a time, as the gate judged them."""
    server, session = dynamic
    batching = http.InferenceServerClient(server.address).get_model_metadata(MODEL)["batching"]
    assert (batching["max_batch_size"], batching["split_rows"]) == (1, 1)
    x = rows(10, 4) * np.geomspace(0.01, 100, 10, dtype=np.float32)[:, None]
    before = calls(server)

    answer = infer_y(server, x)

    alone = np.concatenate([session.run(["y"], {"x": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_array_equal(answer, alone)
    assert not np.array_equal(answer, session.run(["y"], {"x": x})[0]), "the rows do mix"
    assert calls_since(server, before)[:2] == (10, 10), "ten calls of one row"


def test_a_health_probe_is_answered_while_a_large_json_answer_is_encoded(
    positions: tuple[LocalServer, ort.InferenceSession],
) -> None:
    """The probe is sent once the model has run the request and before its 67 MB JSON answer is
    encoded; it must be answered before that request is counted as answered, which happens once its
    answer is encoded. Encoded on the event loop, the probe waited for the whole encoding."""
    server, session = positions
    TellsWhenRun.ran.clear()
    answered = server.metric(Metric.REQUESTS_TOTAL, code="200")
    x = rows(BIG_ROWS, 64)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(infer, server, "http", x, binary=False)
        assert TellsWhenRun.ran.wait(120), "the large request ran"
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=60).status_code == 200
        answered_before_the_probe = server.metric(Metric.REQUESTS_TOTAL, code="200") - answered
        z = big.result(timeout=300).as_numpy("z")

    assert answered_before_the_probe == 0, "the probe waited for the large answer's encoding"
    np.testing.assert_array_equal(z, session.run(["z"], {"x": x})[0])


def test_a_health_probe_is_answered_while_a_large_grpc_answer_is_encoded(text: LocalServer) -> None:
    """As over HTTP: half a million strings take the encoding about half a second, value by value; on
    the event loop, the probe sent once the model has run waited for all of it."""
    TellsWhenRun.ran.clear()
    answered = text.metric(Metric.REQUESTS_TOTAL, code="200")
    x = rows(BIG_ROWS, 512)

    def strings() -> np.ndarray:
        client = grpc.InferenceServerClient(f"127.0.0.1:{text.settings.grpc_port}")
        tensor = grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(MODEL, [tensor], outputs=[grpc.InferRequestedOutput("t")]).as_numpy("t")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(strings)
        assert TellsWhenRun.ran.wait(120), "the large request ran"
        assert httpx.get(f"{text.url}/v2/health/ready", timeout=60).status_code == 200
        answered_before_the_probe = text.metric(Metric.REQUESTS_TOTAL, code="200") - answered
        t = big.result(timeout=300)

    assert answered_before_the_probe == 0, "the probe waited for the large answer's encoding"
    assert t.shape == x.shape and float(t[3, 7]) == pytest.approx(float(x[3, 7]), rel=1e-5)
