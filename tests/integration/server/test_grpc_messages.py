"""ModelInfer messages made by hand with grpcio's own stubs, as clients other than tritonclient make
them: typed contents (KServe's SDK sends those) answer as raw contents do; and malformed ones, the kind
a buggy client sends, are each the client's error (INVALID_ARGUMENT, counted as a 400) with a message
naming the problem, never a traceback in the log or an INTERNAL, and the server keeps serving."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import MODEL, LocalServer, mostly, settings_for, shapes, wait_until

from quantship import artifact
from quantship.local.prometheus import free_port
from quantship.server.grpc_server import MAX_MESSAGE_CHARS, SERVICE
from quantship.server.grpc_v2 import inference_pb2 as pb

ROW = np.zeros((1, 64), dtype=np.float32)


def infer_request(
    shape: list[int],
    *,
    name: str = "X",
    raw: bytes | None = None,
    fp32: list[float] | None = None,
    outputs: Sequence[str] = (),
) -> bytes:
    message = pb.ModelInferRequest(model_name=MODEL)
    tensor = message.inputs.add(name=name, datatype="FP32", shape=shape)
    if fp32 is not None:
        tensor.contents.fp32_contents.extend(fp32)
    if raw is not None:
        message.raw_input_contents.append(raw)
    for output in outputs:
        message.outputs.add(name=output)
    return message.SerializeToString()


def classified(count: int) -> bytes:
    """A request whose output asks for Triton's classification extension (top `count` classes)."""
    message = pb.ModelInferRequest.FromString(infer_request([1, 64], raw=ROW.tobytes()))
    message.outputs.add(name="label").parameters["classification"].int64_param = count
    return message.SerializeToString()


CASES: dict[str, tuple[bytes, str]] = {
    "not protobuf": (b"\xff\xff\xff\xff", "the request is not a valid ModelInferRequest message"),
    "cut short": (infer_request([1, 64], raw=ROW.tobytes())[:-7], "not a valid ModelInferRequest message"),
    "raw and typed contents": (
        infer_request([1, 64], raw=ROW.tobytes(), fp32=[0.0] * 64),
        "input 'X' has both contents and raw_input_contents: give one",
    ),
    "an output twice": (
        infer_request([1, 64], raw=ROW.tobytes(), outputs=("label", "label")),
        "output 'label' is requested twice",
    ),
    # the element count wrapped around to 0 in 64-bit arithmetic, and numpy refused the shape: was a 500
    "a shape past any array, typed contents": (
        infer_request([2**32, 2**32, 64], fp32=[]),
        "input 'X' has shape [4294967296, 4294967296, 64]: larger than any array can be",
    ),
    "a shape past any array, zero elements": (
        infer_request([2**40, 2**40, 0], raw=b""),
        "input 'X' has shape [1099511627776, 1099511627776, 0]: larger than any array can be",
    ),
    "the classification extension": (classified(2), "output 'label': the classification extension is not"),
    "too few typed values": (infer_request([1, 64], fp32=[0.0] * 63), "has 63 values in fp32_contents"),
    # echoed whole, these passed the client's 8 KiB metadata limit: it read RESOURCE_EXHAUSTED
    "a 20 KB input name": (
        infer_request([1, 64], name="X" * 20_000, raw=ROW.tobytes()),
        "unknown input 'XXXX",
    ),
    "10,000 dimensions": (
        infer_request([-1] * 10_000, raw=ROW.tobytes()),
        "has 10000 dimensions; at most 32",
    ),
}


@pytest.fixture(scope="module")
def infer(local_server: LocalServer) -> Iterator[Callable[[bytes], bytes]]:
    with grpc.insecure_channel(f"127.0.0.1:{local_server.settings.grpc_port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer")  # bytes in, bytes out: nothing parses them
        yield lambda payload: call(payload, timeout=30)


def test_typed_contents_answer_as_raw_contents_do(
    infer: Callable[[bytes], bytes], traffic: tuple[np.ndarray, ...]
) -> None:
    rows = traffic[0][:3]
    typed = pb.ModelInferResponse.FromString(infer(infer_request([3, 64], fp32=rows.ravel().tolist())))
    raw = pb.ModelInferResponse.FromString(infer(infer_request([3, 64], raw=rows.tobytes())))
    assert [output.name for output in typed.outputs] == ["label", "probabilities"]
    assert list(typed.outputs[1].shape) == [3, 10]
    assert typed.raw_output_contents == raw.raw_output_contents


def test_classification_of_none_is_no_classification_as_over_http(infer: Callable[[bytes], bytes]) -> None:
    answer = pb.ModelInferResponse.FromString(infer(classified(0)))
    assert [output.name for output in answer.outputs] == ["label"]


@pytest.mark.parametrize(("payload", "message"), CASES.values(), ids=CASES.keys())
def test_a_malformed_message_is_the_clients_error_and_the_server_keeps_serving(
    infer: Callable[[bytes], bytes], local_server: LocalServer, caplog: Any, payload: bytes, message: str
) -> None:
    counted = local_server.metric("quantship_requests_total", code="400")
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as raised:
        infer(payload)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert message in raised.value.details()
    assert len(raised.value.details()) <= MAX_MESSAGE_CHARS
    assert local_server.metric("quantship_requests_total", code="400") == counted + 1
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    answer = pb.ModelInferResponse.FromString(infer(infer_request([1, 64], raw=ROW.tobytes())))
    assert [output.name for output in answer.outputs] == ["label", "probabilities"]


def test_a_call_that_sends_no_message_at_all_is_the_clients_error(
    local_server: LocalServer, caplog: Any
) -> None:
    """A client stream closed with no message (no unary client sends one; a stream stub can): ModelInfer
    reads none, and answers so, where a call cut before its message came has nobody to answer."""
    counted = local_server.metric("quantship_requests_total", code="400")
    with grpc.insecure_channel(f"127.0.0.1:{local_server.settings.grpc_port}") as channel:
        stream = channel.stream_unary(f"/{SERVICE}/ModelInfer")
        with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as raised:
            stream(iter(()), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "the call ended with no request message"
    # counted once the handler returns: the abort that tells the client is how the handler learns
    # the call was still there to answer, so the status may leave a moment before the count
    wait_until(
        lambda: local_server.metric("quantship_requests_total", code="400") == counted + 1, what="the 400"
    )
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_a_call_whose_deadline_passes_before_its_message_came_is_the_clients_499(
    local_server: LocalServer, caplog: Any
) -> None:
    """As an HTTP client that hangs up mid-body: the client's doing, counted and logged so (a message
    cut short by its deadline ends as one core refused: nothing but the deadline tells them apart)."""
    caplog.set_level(logging.INFO, logger="quantship.server")
    counted = {code: local_server.metric("quantship_requests_total", code=code) for code in ("413", "499")}

    def late() -> Iterator[bytes]:
        time.sleep(2.0)  # the stream's headers are sent; its message would come after the deadline
        yield infer_request([1, 64], raw=ROW.tobytes())

    with grpc.insecure_channel(f"127.0.0.1:{local_server.settings.grpc_port}") as channel:
        stream = channel.stream_unary(f"/{SERVICE}/ModelInfer")
        with pytest.raises(grpc.RpcError) as raised:
            stream(late(), timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(
        lambda: local_server.metric("quantship_requests_total", code="499") > counted["499"],
        timeout=10, what="the call to be counted",
    )  # fmt: skip
    assert local_server.metric("quantship_requests_total", code="499") == counted["499"] + 1
    assert local_server.metric("quantship_requests_total", code="413") == counted["413"]
    assert any(
        r.getMessage().startswith("ipv4:127.0.0.1:")
        and r.getMessage().endswith(
            "ModelInfer: its deadline passed before its request message came; counted as 499"
        )
        for r in caplog.records
    )


def test_a_slow_message_is_not_recorded_as_the_servers_latency(local_server: LocalServer) -> None:
    """ModelInfer's handler starts with the call, before its message has come (read as a client
    stream): the latency clock starts once the message is whole, as over HTTP once the body is."""
    sent_at: list[float] = []

    def late() -> Iterator[bytes]:
        time.sleep(1.0)
        sent_at.append(time.monotonic())
        yield infer_request([1, 64], raw=ROW.tobytes())

    before = local_server.metric("quantship_request_duration_seconds_sum")
    with grpc.insecure_channel(f"127.0.0.1:{local_server.settings.grpc_port}") as channel:
        answer = channel.stream_unary(f"/{SERVICE}/ModelInfer")(late(), timeout=30)
    answered_within = time.monotonic() - sent_at[0]
    assert [output.name for output in pb.ModelInferResponse.FromString(answer).outputs] == [
        "label",
        "probabilities",
    ]
    recorded = local_server.metric("quantship_request_duration_seconds_sum") - before
    assert 0 < recorded <= answered_within  # none of the wait for the message is the server's


BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def impatient_server(good_artifact: artifact.Artifact) -> Iterator[LocalServer]:
    server = LocalServer(
        settings_for(good_artifact, "impatient", grpc_port=free_port(), body_timeout_s=BODY_TIMEOUT_S)
    ).start()
    yield server
    server.stop()


def test_a_message_slower_than_the_body_timeout_is_a_408_as_over_http(
    impatient_server: LocalServer, caplog: Any
) -> None:
    """A client that sent its call's headers, then stalled, held its call as long as its deadline
    allowed (without one, as long as its connection acknowledged pings): over HTTP such a body is a
    408 after --body-timeout-s."""
    caplog.set_level(logging.INFO, logger="quantship.server")

    def stalled() -> Iterator[bytes]:
        time.sleep(10 * BODY_TIMEOUT_S)
        yield infer_request([1, 64], raw=ROW.tobytes())

    address = f"127.0.0.1:{impatient_server.settings.grpc_port}"
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.stream_unary(f"/{SERVICE}/ModelInfer")(stalled(), timeout=5 * BODY_TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.details() == "the request message did not arrive within 1 s (--body-timeout-s)"
    assert impatient_server.metric("quantship_requests_total", code="408") == 1
    assert impatient_server.metric("quantship_requests_total", code="499") == 0
    assert impatient_server.metric("quantship_requests_in_flight") == 0
    assert any(
        r.getMessage().startswith("ipv4:127.0.0.1:")
        and r.getMessage().endswith("ModelInfer: request message not received within 1 s; answered 408")
        for r in caplog.records
    )


def test_other_rpcs_refuse_a_malformed_message_too(local_server: LocalServer, caplog: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{local_server.settings.grpc_port}") as channel:
        metadata = channel.unary_unary(f"/{SERVICE}/ModelMetadata")
        with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as raised:
            metadata(b"\xff\xff", timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelMetadataRequest message" in raised.value.details()
        assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []
        answer = pb.ModelMetadataResponse.FromString(
            metadata(pb.ModelMetadataRequest(name=MODEL).SerializeToString(), timeout=30)
        )
        assert answer.name == MODEL


# -- whatever a client sends: never a server error ------------------------------------------------------

DIMENSIONS = st.one_of(st.sampled_from([0, 1, 64, -1, 2**31, 2**32, 2**62, 2**63 - 1]), st.integers(0, 9))
TYPED = {
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "bool_contents": st.booleans(),
    "bytes_contents": st.binary(max_size=8),
}


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """ModelInfer requests near the model's (X, FP32 [-1, 64]), raw or typed, each field mostly right."""
    message = pb.ModelInferRequest(model_name=draw(mostly(MODEL, "", "other")))
    raw = draw(st.booleans())
    for _ in range(draw(mostly(1, 0, 2, 3))):
        shape = draw(shapes(DIMENSIONS))
        datatype = draw(
            mostly("FP32", "FP64", "FP16", "INT64", "INT8", "UINT64", "BOOL", "BYTES", "", "FLOAT")
        )
        tensor = message.inputs.add(name=draw(mostly("X", "Y", "")), datatype=datatype, shape=shape)
        count = math.prod(shape) if all(d >= 0 for d in shape) else -1
        if raw:
            right = count * 4 if 0 <= count <= 256 else 0
            size = draw(mostly(right, right + 1, 0, 7))
            message.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
        else:
            field = draw(mostly("fp32_contents", *sorted(TYPED)))
            length = draw(mostly(count if 0 <= count <= 256 else 0, 63, 3))
            getattr(tensor.contents, field).extend(
                draw(st.lists(TYPED[field], min_size=length, max_size=length))
            )
    for name in draw(st.lists(st.sampled_from(["label", "probabilities", "nope"]), max_size=3)):
        message.outputs.add(name=name)
    encoded = message.SerializeToString()
    if draw(mostly(False, True)):  # and bytes that are not quite a message
        cut = draw(st.integers(0, len(encoded)))
        encoded = encoded[:cut] + draw(st.binary(max_size=4)) + encoded[cut + 1 :]
    return encoded


@settings(max_examples=300)
@given(payload=messages())
def test_no_message_is_a_server_error(
    infer: Callable[[bytes], bytes], local_server: LocalServer, payload: bytes
) -> None:
    failures = local_server.metric("quantship_requests_total", code="500")
    try:
        infer(payload)
    except grpc.RpcError as exc:
        assert exc.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, exc.details()
    assert local_server.metric("quantship_requests_total", code="500") == failures
