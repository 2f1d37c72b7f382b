"""Bad input gets the right status and a message naming the problem, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import MODEL, LocalServer, mostly, settings_for, shapes

from quantship import artifact
from quantship.server import create_app

INFER = f"/v2/models/{MODEL}/infer"
ROW = [0.0] * 64


def infer_json(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "X", "shape": [1, 64], "datatype": "FP32", "data": ROW, **changes}
    return {"inputs": [tensor]}


def binary(header: dict[str, Any], payload: bytes, *, length: int | None = None) -> dict[str, Any]:
    encoded = json.dumps(header).encode()
    header_length = str(len(encoded) if length is None else length)
    return {"content": encoded + payload, "headers": {"Inference-Header-Content-Length": header_length}}


def sized(size: int, shape: list[int] | None = None) -> dict[str, Any]:
    parameters = {"binary_data_size": size}
    return {
        "inputs": [{"name": "X", "shape": shape or [1, 64], "datatype": "FP32", "parameters": parameters}]
    }


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    message: str
    method: str = "POST"
    path: str = INFER
    request: dict[str, Any] = field(default_factory=dict)


CLASSIFY = {"classification": 2}  # Triton's top-k extension
ONE_ROW = np.zeros((1, 64), dtype=np.float32).tobytes()
CATALOGUE = [
    Case("malformed JSON", 400, "not valid JSON", request={"content": b'{"inputs": [}'}),
    Case("empty body", 400, "the request body is empty", request={"content": b""}),
    Case("JSON but not an object", 400, "must be a JSON object, got list", request={"json": [1, 2]}),
    Case("no inputs", 400, "has no inputs", request={"json": {"inputs": []}}),
    Case("wrong input name", 400, "unknown input 'image'; the model takes X (FP32 [-1, 64])",
         request={"json": infer_json(name="image")}),
    Case("id not a string", 400, "id must be a string, got 7", request={"json": infer_json() | {"id": 7}}),
    Case("wrong rank", 400, "has shape [64] (1 dimensions); the model expects [-1, 64] (2 dimensions)",
         request={"json": infer_json(shape=[64])}),
    Case("wrong width", 400, "dimension 1 must be 64",
         request={"json": infer_json(shape=[1, 63], data=ROW[:63])}),
    Case("wrong dtype", 400, "input 'X' is FP64; the model expects FP32",
         request={"json": infer_json(datatype="FP64")}),
    Case("unknown content encoding", 415, "Content-Encoding 'br' is not supported",
         request={"json": infer_json(), "headers": {"Content-Encoding": "br"}}),
    Case("not gzip", 400, "the body is not valid gzip data",
         request={"content": b'{"inputs": []}', "headers": {"Content-Encoding": "gzip"}}),
    Case("truncated gzip", 400, "the body ends inside its gzip data",
         request={"content": gzip.compress(json.dumps(infer_json()).encode())[:-12],
                  "headers": {"Content-Encoding": "gzip"}}),
    Case("gzip bomb", 413, "inflates to over 1048576 bytes",
         request={"content": gzip.compress(bytes(2 << 20)), "headers": {"Content-Encoding": "gzip"}}),
    Case("gzip bomb in members", 413, "inflates to over 1048576 bytes",
         request={"content": gzip.compress(bytes(600_000)) * 2, "headers": {"Content-Encoding": "gzip"}}),
    Case("bytes after gzip", 400, "the body has 2 bytes after its gzip data",
         request={"content": gzip.compress(json.dumps(infer_json()).encode()) + b"\n\n",
                  "headers": {"Content-Encoding": "gzip"}}),
    Case("datatype not a string", 400, "input 'X' has datatype [\"FP32\"]; known: BOOL",
         request={"json": infer_json(datatype=["FP32"])}),
    Case("number past FP32", 400, "input 'X' holds values outside the FP32 range",
         request={"json": infer_json(data=[1e300, *ROW[1:]])}),
    Case("element count", 400, "input 'X' has 63 values; shape [1, 64] needs 64",
         request={"json": infer_json(data=ROW[:63])}),
    Case("strings for floats", 400, "is FP32, but its data holds strings",
         request={"json": infer_json(data=["a"] * 64)}),
    Case("ragged data", 400, "not a regular array",
         request={"json": infer_json(data=[[0.0] * 32, [0.0] * 31])}),
    Case("unknown datatype", 400, 'has datatype "FLOAT"', request={"json": infer_json(datatype="FLOAT")}),
    Case("negative shape", 400, "expected a list of integers >= 0",
         request={"json": infer_json(shape=[-1, 64])}),
    Case("no rows", 400, "has no rows", request={"json": infer_json(shape=[0, 64], data=[])}),
    Case("duplicate input", 400, "input 'X' appears twice",
         request={"json": {"inputs": infer_json()["inputs"] * 2}}),
    Case("unknown output", 400, "unknown output 'scores'; the model gives label, probabilities",
         request={"json": infer_json() | {"outputs": [{"name": "scores"}]}}),
    Case("an output twice", 400, "output 'label' is requested twice",
         request={"json": infer_json() | {"outputs": [{"name": "label"}, {"name": "label"}]}}),
    Case("a shape past any array", 400,
         "input 'X' has shape [1099511627776, 1099511627776, 0]: larger than any array can be",
         request={"json": infer_json(shape=[2**40, 2**40, 0], data=[])}),
    Case("classification extension", 400, "classification extension is not supported",
         request={"json": infer_json() | {"outputs": [{"name": "label", "parameters": CLASSIFY}]}}),
    Case("binary too short", 400, "declares 256 bytes of binary data, but only 128 remain",
         request=binary(sized(256), ONE_ROW[:128])),
    Case("binary too long", 400, "4 bytes of binary data that no input declares",
         request=binary(sized(256), ONE_ROW + b"\0" * 4)),
    Case("binary size against shape", 400, "has 256 bytes of binary data; FP32 [2, 64] needs 512",
         request=binary(sized(256, [2, 64]), ONE_ROW)),
    Case("header length past the body", 400, "says the JSON header is 99999 bytes",
         request=binary(sized(256), ONE_ROW, length=99999)),
    Case("header length 0 before a body", 400, "Inference-Header-Content-Length is 0, but the body begins",
         request=binary(sized(256), ONE_ROW, length=0)),
    Case("header length not a number", 400, "must be a byte count, got 'ten'",
         request={"content": b"{}", "headers": {"Inference-Header-Content-Length": "ten"}}),
    Case("header length a superscript digit", 400, "must be a byte count, got '²'",
         request={"content": b"{}", "headers": {"Inference-Header-Content-Length": b"\xb2"}}),
    Case("binary without its header", 400, "no Inference-Header-Content-Length header",
         request={"json": sized(256)}),
    Case("data and binary both", 400, "has both 'data' and parameters.binary_data_size",
         request={"json": infer_json(parameters={"binary_data_size": 256})}),
    Case("unknown model", 404, "unknown model 'mnist'; this server serves 'digits'",
         path="/v2/models/mnist/infer", request={"json": infer_json()}),
    Case("unknown version", 404, "has no version 'v9'", path=f"/v2/models/{MODEL}/versions/v9/infer",
         request={"json": infer_json()}),
    Case("unknown model metadata", 404, "unknown model 'mnist'", method="GET", path="/v2/models/mnist"),
    Case("oversized body", 413, "the body is 1048577 bytes; this server takes at most 1048576",
         request={"content": b" " * (1 << 20 | 1)}),
    Case("oversized chunked body", 413, "the body is over 1048576 bytes",
         request={"content": iter([b" " * (1 << 19)] * 3)}),
    Case("wrong method", 405, "GET is not allowed here", method="GET"),
    Case("unknown route", 404, "no route /v2/nothing", method="GET", path="/v2/nothing"),
    Case("feedback for an unknown id", 404, "no recent request with id 'never-seen'",
         path=f"/v2/models/{MODEL}/feedback", request={"json": {"id": "never-seen", "label": 3}}),
    Case("feedback with NaN", 400, "the request holds NaN, which is not JSON",
         path=f"/v2/models/{MODEL}/feedback", request={"content": b'{"id": "x", "label": 1, "p": NaN}'}),
    Case("empty feedback", 400, "the request body is empty: expected feedback, {\"id\"",
         path=f"/v2/models/{MODEL}/feedback", request={"content": b""}),
    Case("feedback gzip bomb", 413, "inflates to over 1048576 bytes", path=f"/v2/models/{MODEL}/feedback",
         request={"content": gzip.compress(bytes(2 << 20)), "headers": {"Content-Encoding": "gzip"}}),
    Case("feedback in an unknown coding", 415, "Content-Encoding 'br' is not supported",
         path=f"/v2/models/{MODEL}/feedback",
         request={"json": {"id": "x", "label": 1}, "headers": {"Content-Encoding": "br"}}),
    Case("feedback without a label", 400, 'feedback must be {"id": "<request id>"',
         path=f"/v2/models/{MODEL}/feedback", request={"json": {"id": "x"}}),
]  # fmt: skip


@pytest.fixture(scope="module")
def http(local_server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_server.url, timeout=30) as client:
        yield client


def assert_still_serving(http: httpx.Client) -> None:
    answer = http.post(INFER, json=infer_json())
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["name"] == "label"


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_bad_input_gets_its_status_and_a_message_naming_the_problem(
    case: Case, http: httpx.Client, local_server: LocalServer
) -> None:
    counted = local_server.metric("quantship_requests_total", code=str(case.status))
    answer = http.request(case.method, case.path, **case.request)
    assert answer.status_code == case.status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert case.message in answer.json()["error"]
    if case.path.endswith("/infer") and case.method == "POST":
        assert local_server.metric("quantship_requests_total", code=str(case.status)) == counted + 1
    assert_still_serving(http)


def test_the_catalogue_covers_at_least_twenty_kinds_of_bad_input() -> None:
    assert len({case.id for case in CATALOGUE}) >= 20


def test_feedback_must_give_one_label_per_row(http: httpx.Client) -> None:
    body = infer_json(shape=[2, 64], data=ROW * 2) | {"id": "two-rows"}
    assert http.post(INFER, json=body).status_code == 200
    for label, message in (
        (3, "had 2 rows: give 2 labels, not 1"),
        ([1, True], "must be a class id"),
        ([1, -5], "label -5 is not a class id"),  # it would count as a wrong answer of both models
    ):
        answer = http.post(f"/v2/models/{MODEL}/feedback", json={"id": "two-rows", "label": label})
        assert answer.status_code == 400 and message in answer.json()["error"]
    labelled = http.post(f"/v2/models/{MODEL}/feedback", json={"id": "two-rows", "label": [1, 2]})
    assert labelled.status_code == 200


def test_gzip_bodies_of_several_members_and_compressed_feedback_are_read(http: httpx.Client) -> None:
    """RFC 1952 lets a gzip body be members one after another (gzip -d, Go and Python read them all);
    feedback is inflated as inference is."""
    body = json.dumps(infer_json() | {"id": "in-members"}).encode()
    half = len(body) // 2
    members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    answer = http.post(INFER, content=members, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    plain = http.post(INFER, content=body)
    assert answer.json() == plain.json()
    feedback = gzip.compress(json.dumps({"id": "in-members", "label": 0}).encode())
    counted = http.post(
        f"/v2/models/{MODEL}/feedback", content=feedback, headers={"Content-Encoding": "gzip"}
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["id"] == "in-members" and counted.json()["rows"] == 1


async def test_requests_while_the_model_loads_get_503_and_say_so(good_artifact: artifact.Artifact) -> None:
    app = create_app(settings_for(good_artifact, "loading"))  # lifespan not started: the loader has not run
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        for method, path in (("GET", "/v2/health/ready"), ("GET", f"/v2/models/{MODEL}"), ("POST", INFER)):
            answer = await client.request(method, path, json=infer_json())
            assert answer.status_code == 503
            assert answer.json()["error"] == f"model '{MODEL}' is still loading"
            assert answer.headers["retry-after"] == "1"
        assert "quantship_model_load_seconds" in (await client.get("/metrics")).text


def test_large_json_bodies_decoded_in_a_thread_answer_and_refuse_alike(http: httpx.Client) -> None:
    rows = 400  # ~100 KiB of JSON: past the size decoded on the event loop
    body = infer_json(shape=[rows, 64], data=[ROW] * rows)
    assert len(json.dumps(body)) > 64 * 1024
    answer = http.post(INFER, json=body)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [rows]
    broken = http.post(INFER, content=json.dumps(body).encode()[:-3])
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]


# -- whatever a client sends: 200 or 400, never a server error ------------------------------------------

DIMENSIONS = st.one_of(st.sampled_from([0, 1, 64, -1, 2**32, 2**63 - 1, 2**64]), st.integers(0, 9))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Requests near the model's (X, FP32 [-1, 64]), JSON or binary, each field mostly right."""
    inputs, binary = [], b""
    for _ in range(draw(mostly(1, 0, 2, 3))):
        datatype = draw(mostly("FP32", "FP64", "INT64", "BOOL", "BYTES", "FLOAT", None))
        shape = draw(shapes(DIMENSIONS))
        tensor: dict[str, Any] = {"name": draw(mostly("X", "Y", "", 5)), "datatype": datatype, "shape": shape}
        count = math.prod(shape) if all(d >= 0 for d in shape) else -1
        if draw(st.booleans()):
            right = count * 4 if 0 <= count <= 256 else 0
            size = draw(mostly(right, right + 1, 7, -1, 2**64))
            tensor["parameters"] = {"binary_data_size": size}
            binary += draw(st.binary(min_size=size, max_size=size)) if 0 <= size <= 2048 else b""
        else:
            length = draw(mostly(count if 0 <= count <= 256 else 0, 63, 3))
            values = st.floats(-1e6, 1e6) | st.integers(-(2**70), 2**70) | st.booleans() | st.text(max_size=2)
            elements = st.floats(-1e6, 1e6) if draw(mostly(True, False)) else values
            tensor["data"] = draw(st.lists(elements, min_size=length, max_size=length))
        inputs.append(tensor)
    document: dict[str, Any] = {"inputs": inputs}
    names = draw(st.lists(st.sampled_from(["label", "probabilities", "nope"]), max_size=3))
    if names:
        document["outputs"] = [
            {"name": name, "parameters": {"binary_data": draw(st.booleans())}} for name in names
        ]
    header = json.dumps(document).encode()
    length = draw(mostly(str(len(header)) if binary else None, "0", "-1", "+5", "1e3", str(2**70)))
    return header + binary, {} if length is None else {"Inference-Header-Content-Length": length}


@settings(max_examples=300)
@given(request=bodies())
def test_no_request_body_is_a_server_error(http: httpx.Client, request: tuple[bytes, dict[str, str]]) -> None:
    body, headers = request
    answer = http.post(INFER, content=body, headers=headers)
    assert answer.status_code in (200, 400), answer.text
