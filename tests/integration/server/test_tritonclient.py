"""An unmodified tritonclient (sync and asyncio, binary and JSON tensors) against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from server_harness import MODEL, LocalServer, build_token_model, fp32_artifact, settings_for, wait_until
from tritonclient.utils import InferenceServerException

from quantship import artifact
from quantship.runtime import create_session


@pytest.fixture
def client(local_server: LocalServer) -> Any:
    client = triton.InferenceServerClient(local_server.address)
    yield client
    client.close()


def request(
    images: np.ndarray, *, binary: bool
) -> tuple[list[triton.InferInput], list[triton.InferRequestedOutput]]:
    tensor = triton.InferInput("X", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    return [tensor], outputs


def test_tritonclient_sees_a_live_ready_server_and_its_model(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version="good")
    assert not client.is_model_ready("mnist")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["versions"] == ["good"]
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    batching = metadata["batching"]  # the policy measured at load, capped by --max-batch-size
    assert 1 <= batching["max_batch_size"] <= 32 and batching["reason"].startswith("measured")
    assert "1" in batching["microseconds_per_row"]


@pytest.mark.parametrize(
    ("binary", "compression"),
    [(True, None), (False, None), (True, "gzip"), (False, "deflate")],
    ids=["binary", "json", "binary gzip", "json deflate"],
)
def test_inference_answers_what_onnxruntime_answers(
    client: Any,
    good_artifact: artifact.Artifact,
    traffic: tuple[np.ndarray, np.ndarray],
    binary: bool,
    compression: str | None,
) -> None:
    """Compressed too: tritonclient's request_compression_algorithm, as Triton takes it."""
    images = traffic[0][:5]
    inputs, outputs = request(images, binary=binary)
    result = client.infer(
        MODEL,
        inputs,
        outputs=outputs,
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    expected_label, expected_probabilities = create_session(good_artifact.model_path).run(None, {"X": images})
    np.testing.assert_array_equal(result.as_numpy("label"), expected_label)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected_probabilities, rtol=1e-5, atol=1e-6)


def test_the_default_request_asks_for_every_output_in_binary(
    client: Any, traffic: tuple[np.ndarray, ...]
) -> None:
    tensor = triton.InferInput("X", [1, 64], "FP32")
    tensor.set_data_from_numpy(traffic[0][:1])
    result = client.infer(MODEL, [tensor])  # tritonclient's defaults: binary in, binary_data_output
    assert result.as_numpy("label").shape == (1,)
    assert result.as_numpy("probabilities").shape == (1, 10)
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 40


def test_the_request_id_comes_back_and_one_is_made_when_absent(
    client: Any, traffic: tuple[np.ndarray, ...]
) -> None:
    inputs, outputs = request(traffic[0][:1], binary=True)
    assert client.infer(MODEL, inputs, outputs=outputs, request_id="mine-1").get_response()["id"] == "mine-1"
    made = {client.infer(MODEL, inputs, outputs=outputs).get_response()["id"] for _ in range(3)}
    assert len(made) == 3 and all(made)


def test_an_empty_request_id_comes_back_as_given_and_takes_its_feedback(
    local_server: LocalServer, traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    """The OIP: an id specified must be returned. `"id": ""` came back as a generated id (tritonclient
    never sends one empty, so over HTTP as it is)."""
    images, labels = traffic
    tensor = {"name": "X", "shape": [1, 64], "datatype": "FP32", "data": images[0].tolist()}
    answer = httpx.post(f"{local_server.url}/v2/models/{MODEL}/infer", json={"id": "", "inputs": [tensor]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == ""
    feedback = httpx.post(
        f"{local_server.url}/v2/models/{MODEL}/feedback", json={"id": "", "label": labels[0].item()}
    )
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["id"] == "" and feedback.json()["rows"] == 1


def test_a_version_other_than_the_revision_is_not_found(client: Any, traffic: tuple[np.ndarray, ...]) -> None:
    inputs, outputs = request(traffic[0][:1], binary=True)
    assert client.infer(MODEL, inputs, outputs=outputs, model_version="good").as_numpy("label").shape == (1,)
    with pytest.raises(InferenceServerException, match="has no version 'v9'") as raised:
        client.infer(MODEL, inputs, outputs=outputs, model_version="v9")
    assert raised.value.status() == "404"


async def test_the_asyncio_client_works_too(
    local_server: LocalServer, traffic: tuple[np.ndarray, ...]
) -> None:
    client = triton_aio.InferenceServerClient(local_server.address)
    try:
        tensor = triton_aio.InferInput("X", [3, 64], "FP32")
        tensor.set_data_from_numpy(traffic[0][:3])
        result = await client.infer(MODEL, [tensor])
        assert result.as_numpy("label").shape == (3,)
        with pytest.raises(InferenceServerException, match="unknown input 'image'"):
            wrong = triton_aio.InferInput("image", [1, 64], "FP32")
            wrong.set_data_from_numpy(traffic[0][:1])
            await client.infer(MODEL, [wrong])
    finally:
        await client.close()


def test_feedback_counts_correct_answers_of_the_quantized_model_and_the_reference(
    client: Any, local_server: LocalServer, traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = traffic
    before = {
        (variant, correct): local_server.metric("quantship_feedback_total", variant=variant, correct=correct)
        for variant in ("quantized", "reference")
        for correct in ("true", "false")
    }
    inputs, outputs = request(images[:4], binary=True)
    answer = client.infer(MODEL, inputs, outputs=outputs, request_id="feedback-1").as_numpy("label")
    wrong = [int(labels[0]), int(labels[1]), int(labels[2]), (int(labels[3]) + 1) % 10]  # the last one lies
    reply = httpx.post(
        f"{local_server.url}/v2/models/{MODEL}/feedback", json={"id": "feedback-1", "label": wrong}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected_correct = int(np.count_nonzero(answer == np.array(wrong)))
    assert body == {
        "id": "feedback-1",
        "rows": 4,
        "quantized_correct": expected_correct,
        "reference_correct": body["reference_correct"],
    }
    assert body["reference_correct"] is not None
    after = lambda variant, correct: (  # noqa: E731
        local_server.metric("quantship_feedback_total", variant=variant, correct=correct)
        - before[variant, correct]
    )
    assert after("quantized", "true") == expected_correct
    assert after("quantized", "false") == 4 - expected_correct
    assert after("reference", "true") + after("reference", "false") == 4
    again = httpx.post(
        f"{local_server.url}/v2/models/{MODEL}/feedback", json={"id": "feedback-1", "label": wrong}
    )
    assert again.status_code == 409 and "already got its label" in again.json()["error"]


def test_every_answered_row_is_shadowed_and_clip_checked_in_the_background(
    client: Any, local_server: LocalServer, traffic: tuple[np.ndarray, ...]
) -> None:
    local_server.idle()
    compared = local_server.metric("quantship_shadow_comparisons_total")
    observed = local_server.metric("quantship_activations_observed_total")
    inputs, outputs = request(traffic[0][:7], binary=True)
    client.infer(MODEL, inputs, outputs=outputs)
    wait_until(
        lambda: local_server.metric("quantship_shadow_comparisons_total") == compared + 7,
        what="7 shadow comparisons",
    )
    local_server.idle()
    assert local_server.metric("quantship_activations_observed_total") == observed + 7 * 1640


@pytest.mark.parametrize("tensor", ["input", "output"])
def test_a_tensor_in_shared_memory_is_refused_as_unsupported(
    client: Any, traffic: tuple[np.ndarray, ...], tensor: str
) -> None:
    """The shared-memory extension is not offered: an output asked for in a region came back inline
    (200), an input read from one was called empty. Refused as Triton refuses a region it lacks."""
    inputs, outputs = request(traffic[0][:1], binary=True)
    if tensor == "input":
        inputs[0] = triton.InferInput("X", [1, 64], "FP32")
        inputs[0].set_shared_memory("region", 256)
    else:
        outputs[1].set_shared_memory("region", 40)
    with pytest.raises(InferenceServerException, match=r"shared memory .* is not supported") as raised:
        client.infer(MODEL, inputs, outputs=outputs)
    assert raised.value.status() == "400"
    assert f"{tensor} '" in raised.value.message()


def test_statistics_of_every_model_are_not_offered_as_for_one_model(client: Any) -> None:
    """`/v2/models/stats` was read as the metadata of a model named 'stats' (404 unknown model)."""
    answers = []
    for model in ("", MODEL):
        with pytest.raises(InferenceServerException) as raised:
            client.get_inference_statistics(model)
        answers.append((raised.value.status(), raised.value.message()))
    assert answers == [("404", "no route /v2/models/stats"), ("404", f"no route /v2/models/{MODEL}/stats")]


def test_a_model_named_stats_keeps_its_metadata(tmp_path: Path) -> None:
    model = build_token_model(tmp_path / "m.onnx")
    server = LocalServer(settings_for(fp32_artifact(model, tmp_path / "a"), "r1", model_name="stats")).start()
    try:
        client = triton.InferenceServerClient(server.address)
        assert client.get_model_metadata("stats")["name"] == "stats"
        client.close()
    finally:
        server.stop()
