"""An unmodified tritonclient.grpc (sync and asyncio) against the server's gRPC port: the same service,
batcher, metrics and error semantics as REST, with gRPC status codes mirroring the HTTP statuses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from server_harness import MODEL, LocalServer, build_token_model, fp32_artifact, settings_for, wait_until
from tritonclient.utils import InferenceServerException

from quantship import artifact
from quantship.local.prometheus import free_port
from quantship.runtime import create_session


@pytest.fixture(scope="module")
def client(local_server: LocalServer) -> Iterator[Any]:
    client = triton.InferenceServerClient(f"127.0.0.1:{local_server.settings.grpc_port}")
    yield client
    client.close()


def tensor(images: np.ndarray, name: str = "X", datatype: str = "FP32") -> triton.InferInput:
    made = triton.InferInput(name, list(images.shape), datatype)
    made.set_data_from_numpy(images)
    return made


def test_health_and_metadata_over_grpc(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, model_version="good")
    assert client.get_server_metadata(as_json=True)["name"] == "quantship"
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["versions"] == ["good"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert [output["name"] for output in metadata["outputs"]] == ["label", "probabilities"]


def test_inference_over_grpc_answers_what_onnxruntime_answers_and_is_counted(
    client: Any, local_server: LocalServer, good_artifact: artifact.Artifact, traffic: tuple[np.ndarray, ...]
) -> None:
    images = traffic[0][:5]
    answered = local_server.metric("quantship_requests_total", code="200")
    outputs = [triton.InferRequestedOutput("probabilities")]
    result = client.infer(MODEL, [tensor(images)], outputs=outputs, request_id="grpc-1")
    assert result.get_response().id == "grpc-1"
    expected = create_session(good_artifact.model_path).run(["probabilities"], {"X": images})[0]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
    assert result.as_numpy("label") is None  # only what was asked for
    assert local_server.metric("quantship_requests_total", code="200") == answered + 1
    assert local_server.metric("quantship_requests_in_flight") == 0


INVALID = "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("make", "code", "http", "message"),
    [
        (lambda x: ("mnist", [tensor(x)]), "StatusCode.NOT_FOUND", "404", "unknown model 'mnist'"),
        (lambda x: (MODEL, [tensor(x, "image")]), INVALID, "400", "unknown input 'image'"),
        (lambda x: (MODEL, [tensor(x.astype(np.float64), datatype="FP64")]), INVALID, "400",
         "input 'X' is FP64; the model expects FP32"),
        (lambda x: (MODEL, [tensor(x[:, :63])]), INVALID, "400", "dimension 1 must be 64"),
    ],
    ids=["unknown model", "unknown input", "wrong dtype", "wrong width"],
)  # fmt: skip
def test_bad_input_over_grpc_gets_the_mirrored_status_and_the_same_message(
    client: Any, local_server: LocalServer, traffic: tuple[np.ndarray, ...],
    make: Any, code: str, http: str, message: str,
) -> None:  # fmt: skip
    counted = local_server.metric("quantship_requests_total", code=http)
    model, inputs = make(traffic[0][:1])
    with pytest.raises(InferenceServerException, match=message) as raised:
        client.infer(model, inputs)
    assert raised.value.status() == code
    assert local_server.metric("quantship_requests_total", code=http) == counted + 1
    assert client.infer(MODEL, [tensor(traffic[0][:1])]).as_numpy("label").shape == (1,)  # still serving


def test_a_message_over_the_body_limit_is_refused_by_grpc_core_and_counted_as_http_counts_a_413(
    client: Any, local_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server takes 1 MiB bodies; grpc core refuses a larger message from its length prefix, before
    any of our code has it. It was counted nowhere and logged nothing: a client sending too much
    showed only on the client."""
    caplog.set_level(logging.INFO, logger="quantship.server")
    codes = ("200", "400", "413", "499", "500", "503")
    before = {code: local_server.metric("quantship_requests_total", code=code) for code in codes}
    rows = np.zeros((4200, 64), dtype=np.float32)  # 1,075,200 bytes of raw contents
    with pytest.raises(
        InferenceServerException, match=r"Received message larger than max \(\d+ vs\. 1048576\)"
    ) as raised:
        client.infer(MODEL, [tensor(rows)])
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    wait_until(  # the client has its answer from core; the server counts when its read ends
        lambda: local_server.metric("quantship_requests_total", code="413") > before["413"],
        timeout=10, what="the refusal to be counted",
    )  # fmt: skip
    counted = {code: local_server.metric("quantship_requests_total", code=code) for code in codes}
    assert counted == {**before, "413": before["413"] + 1}
    assert local_server.metric("quantship_requests_in_flight") == 0
    lines = [r.getMessage() for r in caplog.records if "no request message came" in r.getMessage()]
    assert len(lines) == 1 and "--max-body-bytes (1048576 bytes)" in lines[0], lines
    assert lines[0].startswith("ipv4:127.0.0.1:") and lines[0].endswith("counted as 413")  # the client
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # grpcio's too
    assert client.infer(MODEL, [tensor(rows[:1])]).as_numpy("label").shape == (1,)  # still serving


@pytest.mark.parametrize("where", ["input", "output"])
def test_a_tensor_in_shared_memory_is_refused_as_unsupported_over_grpc(
    client: Any, traffic: tuple[np.ndarray, ...], where: str
) -> None:
    """As over HTTP: not answered inline (an output) nor called empty (an input)."""
    inputs, outputs = [tensor(traffic[0][:1])], [triton.InferRequestedOutput("probabilities")]
    if where == "input":
        inputs = [triton.InferInput("X", [1, 64], "FP32")]
        inputs[0].set_shared_memory("region", 256)
    else:
        outputs[0].set_shared_memory("region", 40)
    with pytest.raises(InferenceServerException, match=r"shared memory .* is not supported") as raised:
        client.infer(MODEL, inputs, outputs=outputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"{where} '" in raised.value.message()


def test_an_unknown_model_is_not_found_for_readiness_too(client: Any) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'mnist'") as raised:
        client.is_model_ready("mnist")
    assert raised.value.status() == "StatusCode.NOT_FOUND"


async def test_the_asyncio_grpc_client_works_too(
    local_server: LocalServer, traffic: tuple[np.ndarray, ...]
) -> None:
    async with triton_aio.InferenceServerClient(f"127.0.0.1:{local_server.settings.grpc_port}") as client:
        assert await client.is_model_ready(MODEL)
        made = triton_aio.InferInput("X", [3, 64], "FP32")
        made.set_data_from_numpy(traffic[0][:3])
        result = await client.infer(MODEL, [made])
        assert result.as_numpy("label").shape == (3,)
        assert result.as_numpy("probabilities").shape == (3, 10)


async def test_calls_the_client_gives_up_on_count_as_499_never_as_server_errors(
    local_server: LocalServer, traffic: tuple[np.ndarray, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """Big requests with deadlines shorter than their queueing: some are cancelled while the server
    holds them, which is the client's doing (was: counted 500, feeding the error-rate SLI), and logged
    (was: counted only) at INFO. (Their cap of 10 lines a second is test_throttled_log's: how many of
    these calls the server sees cancelled in a second is the scheduler's.)"""
    caplog.set_level(logging.INFO, logger="quantship.server")
    rows = np.tile(traffic[0], (2048 // len(traffic[0]) + 1, 1))[:2048]
    errors_before = local_server.metric("quantship_requests_total", code="500")
    async with triton_aio.InferenceServerClient(f"127.0.0.1:{local_server.settings.grpc_port}") as client:

        async def impatient(deadline_s: float) -> None:
            made = triton_aio.InferInput("X", list(rows.shape), "FP32")
            made.set_data_from_numpy(rows)
            try:
                await client.infer(MODEL, [made], client_timeout=deadline_s)
            except InferenceServerException as exc:
                assert "Deadline" in str(exc), exc

        for _ in range(20):  # until the server has seen a cancellation (the first round, as a rule)
            await asyncio.gather(*(impatient(0.01 + 0.005 * i) for i in range(40)))
            if local_server.metric("quantship_requests_total", code="499") > 0:
                break
    assert local_server.metric("quantship_requests_total", code="499") > 0
    assert local_server.metric("quantship_requests_total", code="500") == errors_before
    passed = [
        r
        for r in caplog.records
        if "ModelInfer: its deadline passed before the answer; counted as 499" in r.getMessage()
    ]
    assert passed and all(r.levelno == logging.INFO for r in passed)
    for _ in range(100):  # what the server still held when the clients left is answered or cancelled
        if local_server.metric("quantship_requests_in_flight") == 0:
            break
        await asyncio.sleep(0.05)
    assert local_server.metric("quantship_requests_in_flight") == 0


def test_server_metadata_lists_the_same_extensions_as_over_http(
    client: Any, local_server: LocalServer
) -> None:
    over_http = httpx.get(f"{local_server.url}/v2").json()
    assert client.get_server_metadata(as_json=True).get("extensions") == over_http["extensions"]


@pytest.mark.parametrize("any_port", [False, True], ids=["a port", "port 0"])
def test_the_log_says_where_grpc_listens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, any_port: bool
) -> None:
    """uvicorn logs the HTTP address; `serve --grpc-port` said nothing of the gRPC one. With port 0
    the system picks one: the log names that one, as uvicorn does."""
    model = fp32_artifact(build_token_model(tmp_path / "tokens.onnx"), tmp_path / "artifact")
    port = 0 if any_port else free_port()
    with caplog.at_level(logging.INFO, logger="quantship.server"):
        LocalServer(settings_for(model, "tokens", grpc_port=port)).start().stop()
    (said,) = [message for message in caplog.messages if message.startswith("gRPC ")]
    listening = int(said.removeprefix("gRPC (Open Inference Protocol v2) on 127.0.0.1:"))
    assert listening == port if port else listening > 0


def test_an_answer_larger_than_the_request_limit_is_sent_whole(tmp_path: Path) -> None:
    """--max-body-bytes bounds what clients send. An embedding is larger than its tokens: 64 tokens
    in (1 KiB) are 16 KiB out. gRPC refused to send it (RESOURCE_EXHAUSTED after the model ran, and
    counted 200), where HTTP answered it."""
    model = fp32_artifact(build_token_model(tmp_path / "tokens.onnx", width=64), tmp_path / "artifact")
    limit = 4096
    server = LocalServer(settings_for(model, "tokens", grpc_port=free_port(), max_body_bytes=limit)).start()
    client = triton.InferenceServerClient(f"127.0.0.1:{server.settings.grpc_port}")
    try:
        ids = np.arange(64, dtype=np.int64).reshape(1, 64) % 100
        inputs = [tensor(ids, "input_ids", "INT64"), tensor(np.ones_like(ids), "attention_mask", "INT64")]
        result = client.infer(MODEL, inputs)
        hidden = result.as_numpy("hidden")
        assert hidden.nbytes > limit
        np.testing.assert_array_equal(hidden[0, :, 0], np.arange(64) * 64)
    finally:
        client.close()
        server.stop()
