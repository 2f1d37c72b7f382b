"""Bad input to an int64 (token) model, and JSON that is not JSON: the client's mistakes are 400 with
the model's own message, whether validation or onnxruntime finds them, and a bad request never fails
the good ones batched with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import (
    MODEL,
    LocalServer,
    build_picking_model,
    build_token_model,
    fp32_artifact,
    mostly,
    settings_for,
)
from tritonclient.utils import InferenceServerException

from quantship import artifact
from quantship.local.prometheus import free_port
from quantship.server.errors import InvalidInput
from quantship.server.protocol import datatype_of
from quantship.server.runner import Runner

INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def token_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokens")
    return fp32_artifact(build_token_model(out / "tokens.onnx"), out / "artifact")


@pytest.fixture(scope="module")
def token_server(token_artifact: Path) -> Iterator[LocalServer]:
    server = LocalServer(settings_for(token_artifact, "tokens", grpc_port=free_port())).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_http(token_server: LocalServer) -> Iterator[httpx.Client]:
    """One client for many requests (a client a request would cost each ~20 ms: its TLS context)."""
    with httpx.Client(base_url=token_server.url, timeout=30) as client:
        yield client


def tokens(ids: list[int], mask: list[int] | None = None) -> dict[str, Any]:
    mask = [1] * len(ids) if mask is None else mask
    return {
        "inputs": [
            {"name": "input_ids", "shape": [1, len(ids)], "datatype": "INT64", "data": ids},
            {"name": "attention_mask", "shape": [1, len(mask)], "datatype": "INT64", "data": mask},
        ]
    }


FRACTIONAL = {"inputs": [{**tokens([1])["inputs"][0], "data": [1.5]}, tokens([1])["inputs"][1]]}
CASES = [
    # onnxruntime refused it anyway, saying the ids must be within [-100,99]: refused before the call
    ("token id past the vocabulary", tokens([1, 999999, 2]),
     "input 'input_ids' holds 999999: its values index a table of 100 rows, 0 to 99"),
    # ONNX's Gather reads -1 as the table's last row: a tokenizer's -1 was answered, wrongly, 200
    ("negative token id", tokens([1, -1, 2]),
     "input 'input_ids' holds -1: its values index a table of 100 rows, 0 to 99"),
    ("inputs disagree on seq", tokens([1, 2, 3], [1, 1, 1, 1]),
     "inputs disagree on dimension 'seq': 'attention_mask' has 4 (axis 1), 'input_ids' has 3"),
    ("fractional token ids", FRACTIONAL, "is INT64, but its data holds fractional numbers"),
    ("id beyond int64", tokens([2**70]), "input 'input_ids'"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_input_the_token_model_cannot_take_is_400_with_the_reason(
    token_server: LocalServer, body: dict[str, Any], message: str
) -> None:
    counted = token_server.metric("quantship_requests_total", code="400")
    answer = httpx.post(f"{token_server.url}{INFER}", json=body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert token_server.metric("quantship_requests_total", code="400") == counted + 1
    good = httpx.post(f"{token_server.url}{INFER}", json=tokens([1, 2, 3]))
    assert good.status_code == 200 and good.json()["outputs"][0]["shape"] == [1, 3, 4]


OVER_GRPC = [
    case
    for case in CASES
    if case[0] in ("token id past the vocabulary", "negative token id", "inputs disagree on seq")
]


@pytest.mark.parametrize(
    ("body", "message"), [case[1:] for case in OVER_GRPC], ids=[case[0] for case in OVER_GRPC]
)
def test_over_grpc_the_same_input_is_invalid_argument_with_the_same_reason(
    token_server: LocalServer, body: dict[str, Any], message: str
) -> None:
    counted = token_server.metric("quantship_requests_total", code="400")
    inputs = []
    for tensor in body["inputs"]:
        inputs.append(triton.InferInput(tensor["name"], tensor["shape"], tensor["datatype"]))
        inputs[-1].set_data_from_numpy(np.array(tensor["data"], dtype=np.int64).reshape(tensor["shape"]))
    address = f"127.0.0.1:{token_server.settings.grpc_port}"
    with triton.InferenceServerClient(address) as client, pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, inputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in raised.value.message()
    assert token_server.metric("quantship_requests_total", code="400") == counted + 1


def test_a_sequence_of_length_0_is_answered(token_server: LocalServer) -> None:
    """Its rows hold no elements, so no class id to remember for feedback (was a 500: IndexError)."""
    answer = httpx.post(f"{token_server.url}{INFER}", json=tokens([]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [1, 0, 4]


def test_a_negative_id_the_attention_mask_hides_is_answered(token_server: LocalServer) -> None:
    """Position ids built as mask.cumsum(-1) - 1 hold -1 at left padding, which the mask hides: the
    model answers them (zeros there), so they are no client's mistake."""
    answer = httpx.post(f"{token_server.url}{INFER}", json=tokens([-1, -1, 5], [0, 0, 1]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"][-4:] == [20.0, 21.0, 22.0, 23.0]  # row 5, unmasked


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_literals_are_400(token_server: LocalServer, literal: str) -> None:
    body = '{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [LITERAL]}]}'
    body = body.replace("LITERAL", literal)
    answer = httpx.post(f"{token_server.url}{INFER}", content=body.encode())
    assert answer.status_code == 400
    assert answer.json()["error"] == f"the request holds {literal}, which is not JSON: send finite numbers"


def test_one_bad_request_in_a_merged_batch_fails_alone(token_artifact: Path) -> None:
    runner = Runner.load(token_artifact / artifact.MODEL_FILE, threads=1)
    good = {"input_ids": np.array([[1, 2]]), "attention_mask": np.array([[1, 0]])}
    bad = {"input_ids": np.array([[5, 100]]), "attention_mask": np.array([[1, 1]])}
    outcomes = runner.run_batch([good, bad, good], [1, 1, 1])
    assert isinstance(outcomes[1], InvalidInput) and "idx=100" in outcomes[1].message
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome, dict)
        np.testing.assert_array_equal(outcome["hidden"], runner.run(good)["hidden"])


# -- failures onnxruntime reports as FAIL: the input's fault when ones of its shapes run -----------------


@pytest.fixture(scope="module")
def picking_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("picking")
    return fp32_artifact(build_picking_model(out / "picking.onnx"), out / "artifact")


def picks(positions: list[int], shifts: list[int] | None = None) -> dict[str, np.ndarray]:
    shifts = [0] * len(positions) if shifts is None else shifts
    return {
        "values": np.array([[10.0, 11.0, 12.0, 13.0]], dtype=np.float32),
        "positions": np.array([positions], dtype=np.int64),
        "shifts": np.array([shifts], dtype=np.int64),
    }


PICKING_CASES = [
    # ones of the same shapes run: the values are at fault, the client's to change
    ("index past the gathered axis", picks([1, 9]), "GatherElements", 400),
    # ones of the same shapes fail too: the shapes do not suit the model, or the model is broken at
    # them (a canary so broken must count as failing): the model's message, as a 500
    ("shifts of another length than positions", picks([1, 2], [0, 0, 0]),
     "Attempting to broadcast an axis by a dimension other than 1. 2 by 3", 500),
]  # fmt: skip
GRPC_CODES = {400: "StatusCode.INVALID_ARGUMENT", 500: "StatusCode.INTERNAL"}


@pytest.mark.parametrize(
    ("inputs", "message", "status"),
    [case[1:] for case in PICKING_CASES],
    ids=[case[0] for case in PICKING_CASES],
)
def test_input_a_kernel_fails_on_is_judged_by_ones_of_its_shapes_and_the_server_keeps_serving(
    picking_artifact: Path, inputs: dict[str, np.ndarray], message: str, status: int
) -> None:
    server = LocalServer(settings_for(picking_artifact, "picking", grpc_port=free_port())).start()
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{server.settings.grpc_port}") as grpc_client:
            with pytest.raises(InferenceServerException) as raised:
                grpc_client.infer(MODEL, _triton_inputs(inputs))
            assert raised.value.status() == GRPC_CODES[status]
            assert message in raised.value.message()
            assert ".h:" not in raised.value.message() and "onnxruntime_src" not in raised.value.message()
            answer = httpx.post(f"{server.url}{INFER}", json=_json_body(inputs))
            assert answer.status_code == status and message in answer.json()["error"], answer.text
            good = grpc_client.infer(MODEL, _triton_inputs(picks([3, 0])))
            np.testing.assert_array_equal(good.as_numpy("picked"), [[13.0, 10.0]])
        assert server.metric("quantship_requests_total", code=str(status)) == 2
    finally:
        server.stop()


def test_a_request_a_kernel_fails_on_fails_alone_in_a_merged_batch(picking_artifact: Path) -> None:
    runner = Runner.load(picking_artifact / artifact.MODEL_FILE, threads=1)
    good, bad = picks([3, 0]), picks([1, 9])
    outcomes = runner.run_batch([good, bad, good], [1, 1, 1])
    assert isinstance(outcomes[1], InvalidInput) and "GatherElements" in outcomes[1].message
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome, dict)
        np.testing.assert_array_equal(outcome["picked"], [[13.0, 10.0]])


def _triton_inputs(inputs: dict[str, np.ndarray]) -> list[triton.InferInput]:
    made = []
    for name, array in inputs.items():
        made.append(triton.InferInput(name, list(array.shape), datatype_of(array.dtype)))
        made[-1].set_data_from_numpy(array)
    return made


def _json_body(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array.dtype),
                "data": array.ravel().tolist(),
            }
            for name, array in inputs.items()
        ]
    }


# -- whatever a client sends: 200 or 400, never a server error ------------------------------------------

VOCABULARY = st.integers(-100, 99)  # the token model's 100 ids, counted from either end
OUT_OF_IT = st.sampled_from([100, -101, 2**63 - 1, -(2**63)])


@st.composite
def token_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Token requests, each field mostly right: ids in and out of the vocabulary, sequences of any
    length down to 0, inputs whose batch or sequence disagree, missing, twice, or of another type."""
    rows, seq = draw(mostly(1, 2, 0)), draw(st.integers(0, 5))
    names = draw(mostly(["input_ids", "attention_mask"], ["input_ids"], ["input_ids", "input_ids"]))
    inputs = []
    for name in names:
        its_rows, its_seq = draw(mostly(rows, rows + 1, 0)), draw(mostly(seq, seq + 1, 0))
        values = (
            (VOCABULARY if draw(mostly(True, False)) else OUT_OF_IT)
            if name == "input_ids"
            else st.integers(0, 1)
        )
        data = draw(st.lists(values, min_size=its_rows * its_seq, max_size=its_rows * its_seq))
        shape = draw(mostly([its_rows, its_seq], [its_rows * its_seq], [its_rows, its_seq, 1]))
        inputs.append(
            {"name": name, "shape": shape, "datatype": draw(mostly("INT64", "INT32", "FP32")), "data": data}
        )
    return {"inputs": inputs}


@settings(max_examples=300)
@given(body=token_bodies())
def test_no_token_request_is_a_server_error(token_http: httpx.Client, body: dict[str, Any]) -> None:
    answer = token_http.post(INFER, json=body)
    assert answer.status_code in (200, 400), answer.text
