"""Open Inference Protocol v2 on the wire: JSON tensors and the binary tensor extension, both ways."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from quantship.server import protocol
from quantship.server.byte_budget import ByteBudget
from quantship.server.errors import InvalidInput
from quantship.server.grpc_server import encodes_inline
from quantship.server.infer_route import INLINE_ENCODE_BINARY_BYTES, encode
from quantship.server.protocol import InferRequest, InferResponse, RequestedOutput


def binary_body(header: dict[str, object], *tensors: bytes) -> tuple[bytes, str]:
    encoded = json.dumps(header).encode()
    return encoded + b"".join(tensors), str(len(encoded))


def test_json_tensors_decode_into_arrays_of_the_declared_dtype_and_shape() -> None:
    body = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "X", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]},
                {"name": "n", "shape": [2], "datatype": "INT64", "data": [7, -8]},
                {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [True]},
                {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "é"]},
            ],
        }
    ).encode()
    request = protocol.decode_request(body)
    assert request.id == "r1"
    assert request.inputs["X"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["X"], [[1, 2.5], [3, 4]])
    assert request.inputs["n"].dtype == np.int64 and list(request.inputs["n"]) == [7, -8]
    assert request.inputs["flag"].dtype == np.bool_
    assert list(request.inputs["text"]) == ["a", "é"]
    assert request.outputs == () and not request.binary_outputs


def test_binary_tensors_are_read_in_input_order_from_after_the_header() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    n = np.array([1, 2], dtype=np.int32)
    body, length = binary_body(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                },
                {
                    "name": "n",
                    "shape": [2],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": n.nbytes},
                },
            ],
            "outputs": [{"name": "Y", "parameters": {"binary_data": True}}, {"name": "Z"}],
        },
        x.tobytes(),
        n.tobytes(),
    )
    request = protocol.decode_request(body, length)
    np.testing.assert_array_equal(request.inputs["X"], x)
    np.testing.assert_array_equal(request.inputs["n"], n)
    assert request.outputs == (RequestedOutput("Y", True), RequestedOutput("Z", None))


def test_a_utf8_byte_order_mark_is_let_pass() -> None:
    body = (
        b"\xef\xbb\xbf"
        + json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode()
    )
    assert protocol.decode_request(body).inputs["X"].tolist() == [1.0]


def test_binary_bytes_elements_carry_their_length_prefix() -> None:
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"hi", b"", b"there"))
    body, length = binary_body(
        {
            "inputs": [
                {"name": "t", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
            ]
        },
        raw,
    )
    assert list(protocol.decode_request(body, length).inputs["t"]) == ["hi", "", "there"]


def test_binary_data_without_its_header_length_is_named_as_such() -> None:
    """curl --data-binary of a tritonclient-style body, forgetting Inference-Header-Content-Length,
    was told only 'not valid JSON: it is not UTF-8 text' (all-MiniLM-L6-v2's int64 token ids)."""
    ids = np.array([[101, 2065, 102]], dtype=np.int64).tobytes()
    header = {
        "inputs": [
            {"name": "ids", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}}
        ]
    }
    body, _ = binary_body(header, ids + b"\xe5")  # a byte no UTF-8 text has there
    with pytest.raises(
        InvalidInput,
        match=r"^the request is not valid JSON: .*; its inputs declare binary_data_size: "
        r"binary tensor data after the JSON needs the Inference-Header-Content-Length header",
    ):
        protocol.decode_request(body, None)


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{", None, "not valid JSON"),
        (b"\xef\xbb\xbf \n", None, "the request body is empty"),  # a BOM alone is no request
        ('{"inputs": []}'.encode("utf-16"), None, "not valid JSON: it is not UTF-8 text"),
        (b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', None, "holds NaN"),
        (
            b'{"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1, -Infinity]}]}',
            None,
            "holds -Infinity, which is not JSON",
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP64", "data": [1e400]}]}',
            None,
            "a number past the FP64 range at character 69",
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": "INT64", "data": [99999999999999999999]}]}',
            None,
            "outside the INT64 range",
        ),
        (b'{"inputs": [{"name": "X", "shape": [1], "datatype": "INT64", "data": [7.0]}]}', None, "fraction"),
        (b"[]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "has no inputs"),
        (b'{"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1]}]}', None, "has 1 values"),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": ["1"]}]}',
            None,
            "holds strings",
        ),
        (b'{"inputs": [{"name": "X", "shape": [1], "datatype": "INT8", "data": [1.5]}]}', None, "fractional"),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": "UINT8", "data": [300]}]}',
            None,
            "outside the UINT8",
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP8", "data": [1]}]}',
            None,
            'datatype "FP8"',
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": ["FP32"], "data": [1]}]}',
            None,
            'datatype \\["FP32"\\]; known',
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1, 1e300]}]}',
            None,
            "outside the FP32 range",
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP16", "data": [70000]}]}',
            None,
            "outside the FP16 range",
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [-1], "datatype": "FP32", "data": [1]}]}',
            None,
            "integers >= 0",
        ),
        (b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32"}]}', None, "has no data"),
        (
            b'{"id": 5, "inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            None,
            "id must",
        ),
        (
            b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            "x",
            "must be a byte count",
        ),
        (b'{"inputs": []}', "999", "the body has only 14"),
    ],
)
def test_malformed_requests_are_refused_with_the_problem_named(
    body: bytes, header_length: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        protocol.decode_request(body, header_length)


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("FP32", [True, 0.5]),  # read as [1.0, 0.5]: np.asarray promoted the true
        ("FP32", [[0.5, 0.25], [2.0, False]]),
        ("INT64", [3, True]),
        ("UINT8", [[1, 2], [False, 4]]),
    ],
)
def test_booleans_among_numbers_are_refused_as_all_booleans_are(datatype: str, data: list[Any]) -> None:
    shape = list(np.shape(data))
    body = json.dumps({"inputs": [{"name": "X", "shape": shape, "datatype": datatype, "data": data}]})
    with pytest.raises(InvalidInput, match=f"input 'X' is {datatype}, but its data holds booleans"):
        protocol.decode_request(body.encode())


def test_numbers_that_are_0_and_1_in_a_body_with_booleans_elsewhere_are_numbers() -> None:
    """A `false` in the outputs' parameters (tritonclient's JSON mode) makes 0 and 1 no booleans."""
    body = json.dumps(
        {
            "inputs": [{"name": "X", "shape": [2, 2], "datatype": "FP32", "data": [[0, 1.0], [0.5, 1]]}],
            "outputs": [{"name": "Y", "parameters": {"binary_data": False}}],
        }
    )
    decoded = protocol.decode_request(body.encode()).inputs["X"]
    np.testing.assert_array_equal(decoded, np.array([[0, 1], [0.5, 1]], dtype=np.float32))


def test_binary_sizes_that_do_not_add_up_are_refused() -> None:
    declared = {
        "inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]
    }
    short, length = binary_body(declared, b"\0" * 4)
    with pytest.raises(InvalidInput, match="declares 8 bytes of binary data, but only 4 remain"):
        protocol.decode_request(short, length)
    extra, length = binary_body(declared, b"\0" * 12)
    with pytest.raises(InvalidInput, match="4 bytes of binary data that no input declares"):
        protocol.decode_request(extra, length)
    wrong = {
        "inputs": [{"name": "X", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]
    }
    body, length = binary_body(wrong, b"\0" * 8)
    with pytest.raises(InvalidInput, match="FP32 \\[3\\] needs 12"):
        protocol.decode_request(body, length)


def test_binary_bool_bytes_other_than_0_and_1_are_refused() -> None:
    declared = {
        "inputs": [{"name": "M", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}]
    }
    body, length = binary_body(declared, b"\x01\x00\x01")
    np.testing.assert_array_equal(protocol.decode_request(body, length).inputs["M"], [True, False, True])
    body, length = binary_body(declared, b"\x01\x02\x00")
    with pytest.raises(InvalidInput, match="input 'M' is BOOL: every byte must be 0 or 1"):
        protocol.decode_request(body, length)


def response(binary_default: bool, *requested: RequestedOutput) -> tuple[protocol.Encoded, InferResponse]:
    outputs = {"label": np.array([3, 1], dtype=np.int64), "scores": np.eye(2, dtype=np.float32)}
    answer = InferResponse("digits", "r1", "req-9", outputs)
    return protocol.encode_response(answer, InferRequest("req-9", {}, requested, binary_default)), answer


def test_json_responses_carry_data_and_the_request_id() -> None:
    encoded, _ = response(False)
    assert encoded.content_type == "application/json" and encoded.header_length is None
    document = json.loads(encoded.body)
    assert document["id"] == "req-9" and document["model_version"] == "r1"
    assert document["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, 1]},
        {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 0.0, 0.0, 1.0]},
    ]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_are_written_as_triton_writes_them_and_others_as_plain_numbers(
    value: float,
) -> None:
    scores = np.array([[0.1, value]], dtype=np.float32)
    encoded = protocol.encode_response(
        InferResponse("m", "r", "x", {"scores": scores}), InferRequest("x", {}, (), False)
    )
    assert encoded.body.count(b"null") == 0  # NaN and Infinity as Python and Triton write them
    [output] = json.loads(encoded.body)["outputs"]
    np.testing.assert_array_equal(np.asarray(output["data"], dtype=np.float32), scores.ravel())
    finite = protocol.encode_response(
        InferResponse("m", "r", "x", {"scores": np.nan_to_num(scores)}), InferRequest("x", {}, (), False)
    )
    data = json.loads(finite.body)["outputs"][0]["data"]
    np.testing.assert_array_equal(np.asarray(data, dtype=np.float32), np.nan_to_num(scores).ravel())


@pytest.mark.parametrize(("dtype", "first"), [(np.float32, b"0.1,"), (np.float16, b"0.099975586,")])
def test_float_outputs_are_written_as_the_shortest_text_that_reads_back_the_same(
    dtype: type, first: bytes
) -> None:
    """Written from the array (no Python float of each): 0.1 as FP32 is `0.1`, not the 19 digits of
    its float64 (0.10000000149011612), and every value reads back bit for bit."""
    values = np.array([[0.1, 1 / 3, -2.5e-3, 6e4, 0.0]], dtype=dtype)
    encoded = protocol.encode_response(
        InferResponse("m", "r", "x", {"scores": values}), InferRequest("x", {}, (), False)
    )
    assert b'"data":[' + first in encoded.body
    [output] = json.loads(encoded.body)["outputs"]
    np.testing.assert_array_equal(np.asarray(output["data"], dtype=dtype), values.ravel())


@pytest.mark.parametrize(
    "values",
    [
        np.array([0.1, np.nan, -np.inf, 1 / 3, np.inf], dtype=np.float32),  # nulls from orjson, put back
        np.array([0.1, 1 / 3, 2.5], dtype=">f4"),  # not native byte order: orjson refuses it as it is
    ],
    ids=["non-finite", "big-endian"],
)
def test_float_outputs_keep_their_shortest_text_on_the_rarer_paths(values: np.ndarray) -> None:
    """A NaN or infinity among the values, or an array in the other byte order, still writes each
    float32 as its shortest text (`0.1`), where they went through float64 (`0.10000000149011612`)."""
    encoded = protocol.encode_response(
        InferResponse("m", "r", "x", {"scores": values}), InferRequest("x", {}, (), False)
    )
    data = encoded.body.split(b'"data":[', 1)[1].split(b"]", 1)[0].split(b",")
    assert data[0] == b"0.1"
    assert data[1:3] == ([b"NaN", b"-Infinity"] if np.isnan(values[1]) else [b"0.33333334", b"2.5"])
    [output] = json.loads(encoded.body)["outputs"]
    np.testing.assert_array_equal(np.asarray(output["data"], dtype=np.float32), values.astype(np.float32))


@pytest.mark.parametrize(("dtype", "datatype"), [(np.float32, "FP32"), (np.float16, "FP16")])
def test_a_float_outputs_extremes_as_written_are_taken_back_as_inputs(dtype: type, datatype: str) -> None:
    """The shortest text of FP32's max, 3.4028235e+38, is above it as a float64 (3.40282350e38 >
    3.40282347e38) and a cast rounds it back: a client sending an output back as an input (or
    numpy's own str of the max, a common mask value) is answered, not told it is out of range."""
    extremes = np.array([np.finfo(dtype).max, np.finfo(dtype).min], dtype=dtype)
    encoded = protocol.encode_response(
        InferResponse("m", "r", "x", {"scores": extremes}), InferRequest("x", {}, (), False)
    )
    [output] = json.loads(encoded.body)["outputs"]
    body = {"inputs": [{"name": "X", "shape": [2], "datatype": datatype, "data": output["data"]}]}
    decoded = protocol.decode_request(json.dumps(body).encode()).inputs["X"]
    np.testing.assert_array_equal(decoded, extremes)


@pytest.mark.parametrize(("datatype", "value"), [("FP32", "3.4028235677973366e38"), ("FP16", "65520")])
def test_a_number_a_float_datatype_would_round_to_infinity_is_refused(datatype: str, value: str) -> None:
    body = f'{{"inputs": [{{"name": "X", "shape": [1], "datatype": "{datatype}", "data": [{value}]}}]}}'
    with pytest.raises(InvalidInput, match=f"outside the {datatype} range"):
        protocol.decode_request(body.encode())


def test_a_null_of_ours_takes_the_slow_encoder_and_reads_the_same() -> None:
    """Non-finite floats are found by the null orjson writes for them; a "null" in an id (or any
    string) takes the same slower path, and must come out as the fast one would have written it."""
    scores = np.array([[0.25, 0.75]], dtype=np.float32)
    request = InferRequest("null", {}, (), False)
    encoded = protocol.encode_response(InferResponse("m", "r", "null", {"scores": scores}), request)
    document = json.loads(encoded.body)
    assert document["id"] == "null"
    assert document["outputs"][0]["data"] == scores.ravel().tolist()


def test_binary_outputs_follow_the_header_in_the_order_requested() -> None:
    encoded, answer = response(False, RequestedOutput("scores", True), RequestedOutput("label", False))
    assert encoded.content_type == "application/octet-stream"
    assert encoded.header_length is not None
    header = json.loads(encoded.body[: encoded.header_length])
    scores, label = header["outputs"]
    assert scores["parameters"] == {"binary_data_size": 16} and "data" not in scores
    assert label["data"] == [3, 1]
    raw = encoded.body[encoded.header_length :]
    np.testing.assert_array_equal(
        np.frombuffer(raw, dtype=np.float32).reshape(2, 2), answer.outputs["scores"]
    )


def test_a_bytes_outputs_size_is_its_strings_not_its_pointers() -> None:
    """What decides whether an answer encodes in a thread: 50 MB of strings read as 400 bytes."""
    strings = np.array(["x" * 1000] * 50, dtype=object)
    response = protocol.InferResponse("m", "1", "r", {"text": strings})
    request = protocol.InferRequest(None, {}, ())
    assert protocol.output_bytes(response, request) == (50 * (1000 + protocol.BYTES_PREFIX), 0)


def test_a_bytes_outputs_size_counts_a_length_for_each_string() -> None:
    """Half a million empty strings are 2 MB on the wire, and as many lengths to write: not an answer
    for the event loop, over HTTP or gRPC."""
    empty = {"text": np.array([""] * 500_000, dtype=object)}
    response = protocol.InferResponse("m", "1", "r", empty)
    request = protocol.InferRequest(None, {}, (), binary_outputs=True)
    assert protocol.output_bytes(response, request) == (0, 500_000 * protocol.BYTES_PREFIX)
    assert not encodes_inline(empty)
    assert encodes_inline({"text": np.array([""] * 1000, dtype=object)})


async def encoded_and_loop_turns(
    encoding: Coroutine[Any, Any, protocol.Encoded],
) -> tuple[protocol.Encoded, int]:
    """The answer `encoding` gives, and the turns another task of the event loop took meanwhile: none
    if it never yielded the loop."""
    turns = 0

    async def spin() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    spinner = asyncio.create_task(spin())
    await asyncio.sleep(0)  # the spinner's first turn
    before = turns
    encoded = await encoding
    spinner.cancel()
    return encoded, turns - before


async def test_many_short_strings_encode_off_the_event_loop_though_their_bytes_are_few() -> None:
    """200,000 one-byte strings are 1 MB as binary data, under the byte bound, but are written a
    string at a time (67 ms here): encoded in a thread, the loop goes on meanwhile. A thousand
    encode on the loop, which runs nothing else until they are done."""
    many, few = (np.array(["a"] * count, dtype=object) for count in (200_000, 1000))
    request = InferRequest(None, {}, (), binary_outputs=True)
    budget = ByteBudget(1 << 30)

    for strings, on_the_loop in ((many, False), (few, True)):
        response = InferResponse("m", "1", "r", {"text": strings})
        assert protocol.output_bytes(response, request)[1] <= INLINE_ENCODE_BINARY_BYTES
        encoded, turns = await encoded_and_loop_turns(encode(response, request, budget))
        assert (turns == 0) is on_the_loop, f"{strings.size} strings: {turns} turns of the loop meanwhile"
        assert encoded.header_length is not None
        assert encoded.body[encoded.header_length :] == b"".join([b"\x01\0\0\0a"] * strings.size)
        assert encodes_inline({"text": strings}) is on_the_loop, "the same choice over gRPC"


def test_counting_a_bytes_outputs_size_stops_past_its_bound() -> None:
    """Strings are counted one by one (half a million: 112.6 ms on the event loop) only to learn
    whether the answer is past what encodes on the loop: counting stops there."""
    strings = np.array([str(i) for i in range(500_000)], dtype=object)
    whole = sum(len(text) + protocol.BYTES_PREFIX for text in strings)
    bound = protocol.BYTES_PREFIX * strings.size + 1000
    counted = protocol.payload_bytes(strings, bound)
    assert bound < counted < whole, "stopped once past the bound"
    assert counted - bound <= 7 * protocol.COUNT_PIECE, "within a piece of strings of at most 6 digits"
    assert protocol.payload_bytes(strings) == whole


class Holds(ByteBudget):
    """A byte budget that keeps the sizes held."""

    def __init__(self) -> None:
        super().__init__(1 << 40)
        self.held: list[int] = []

    def hold(self, size: int) -> Any:
        self.held.append(size)
        return super().hold(size)


async def test_an_answer_of_strings_as_json_holds_all_of_their_bytes_in_the_budget() -> None:
    """Counting stopped past what encodes on the loop; the budget still holds the whole answer's
    JSON bytes, counted in the thread."""
    strings = np.array(["x" * 100] * 20_000, dtype=object)
    response = protocol.InferResponse("m", "1", "r", {"text": strings})
    request = protocol.InferRequest(None, {}, ())
    budget = Holds()
    encoded = await encode(response, request, budget)
    assert budget.held == [20_000 * (100 + protocol.BYTES_PREFIX)]
    assert json.loads(encoded.body)["outputs"][0]["data"] == strings.tolist()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype=np.float32).reshape(1, 10),
        np.arange(6, dtype=">i8"),  # the other byte order: converted
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous (a transposed view)
        np.arange(6, dtype=">f4").reshape(2, 3).T,  # both
        np.array([True, False, True]),
    ],
    ids=["native", "big-endian", "transposed", "big-endian transposed", "bool"],
)
def test_raw_outputs_are_little_endian_in_row_major_order(array: np.ndarray) -> None:
    """Binary outputs (HTTP's binary extension, gRPC's raw contents) are the values little-endian, row
    after row, whatever the array's byte order or strides; an array already little-endian is written
    without a conversion, one in the other order converted."""
    expected = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    assert protocol.to_raw(array) == expected
    readback = np.frombuffer(protocol.to_raw(array), dtype=array.dtype.newbyteorder("<"))
    assert readback.reshape(array.shape).tolist() == array.tolist()
