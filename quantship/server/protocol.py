"""Open Inference Protocol v2 (KServe / Triton) on the wire: decoded once at the edge into numpy
arrays, encoded once on the way out. The routes call `decode_request` and `encode_response`;
nothing past them sees JSON or bytes.

Request grammar (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):

    $inference_request = { "id": $string #optional, "parameters": $parameters #optional,
                           "inputs": [ $request_input, ... ], "outputs": [ $request_output, ... ] #optional }
    $request_input     = { "name": $string, "shape": [ $number, ... ], "datatype": $string,
                           "parameters": $parameters #optional, "data": $tensor_data }
    $request_output    = { "name": $string, "parameters": $parameters #optional }

Binary tensor extension (Triton): the body is a JSON header of `Inference-Header-Content-Length`
bytes followed by raw little-endian tensors, in input order; an input declares its share with
`parameters.binary_data_size` instead of `data`. Outputs come back binary when requested per output
(`parameters.binary_data`) or for all (`parameters.binary_data_output`); BYTES elements are each
prefixed by a 4-byte little-endian length.
"""

from __future__ import annotations

import codecs
import json
import math
import struct
import sys
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from quantship.server.errors import InvalidInput

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
MAX_RANK = 32  # numpy's limit on dimensions
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max  # numpy's limit on an array's size, zero-length or not

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
# What np.asarray makes of JSON values, by dtype kind, and which datatypes accept it.
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "fractional numbers", "U": "strings"}
_ACCEPTED_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}  # other numbers: "iu"


def _finite_bound(dtype: np.dtype[Any]) -> float:
    """The greatest float64 that a cast to the float `dtype` rounds to a finite number: past its max by
    up to half a step (3.4028235e38, float32's max as shortest text and as this server writes it, is
    3.40282350e38 as a float64, above float32's 3.40282347e38, and rounds to it)."""
    info = np.finfo(dtype)
    if info.maxexp >= np.finfo(np.float64).maxexp:  # FP64: JSON's numbers are float64 already
        return float(info.max)
    overflows = 2.0**info.maxexp * (1 - 2.0 ** -(info.nmant + 2))  # halfway to the next power: inf
    return float(np.nextafter(overflows, 0))


def _range(dtype: np.dtype[Any]) -> tuple[float, float]:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.min, info.max
    bound = _finite_bound(dtype)
    return -bound, bound


_RANGES = {name: _range(dtype) for name, dtype in DATATYPES.items() if dtype.kind in "iuf"}
"""Each number datatype's least and greatest value that it holds, after a cast's rounding for floats;
looked up once (np.iinfo costs ~1 µs a request)."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """Send this output as binary data; None follows the request's `binary_data_output`."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    """Outputs asked for, in order; empty asks for every output of the model."""
    binary_outputs: bool = False


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Encoded:
    body: bytes
    content_type: str
    header_length: int | None
    """Set for a binary response: the byte length of its JSON header."""


def datatype_of(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OUS":
        return "BYTES"
    name = _DATATYPE_OF.get(dtype)  # native byte order: found as it is, without building a dtype
    if name is None:
        name = _DATATYPE_OF.get(dtype.newbyteorder("="))
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


# -- decoding ----------------------------------------------------------------------------------


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse a request body (JSON, or JSON header plus binary tensors). Raises InvalidInput."""
    header, binary = _split(body, header_length)
    try:
        document = parse_json_object(header)
    except InvalidInput as exc:
        if header_length is None and b'"binary_data_size"' in body:  # searched only once refused
            raise InvalidInput(
                f"{exc}; its inputs declare binary_data_size: binary tensor data after the JSON needs the "
                f"{HEADER_LENGTH} header (the JSON's length in bytes)"
            ) from None
        raise
    parameters = _parameters(document, "the request")
    request_id = document.get("id")
    if "id" in document and not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, got {json.dumps(request_id)}")
    entries = document.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("the request has no inputs: 'inputs' must be a non-empty list")
    reader = _BinaryReader(binary, header_length is not None)
    # JSON writes a boolean as the word, outside strings: a text without either holds none
    booleans = b"true" in header or b"false" in header
    inputs: dict[str, np.ndarray] = {}
    for index, entry in enumerate(entries):
        name, array = _decode_input(entry, index, reader, booleans)
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice")
        inputs[name] = array
    reader.finish()
    binary_outputs = parameters.get("binary_data_output", False)
    if not isinstance(binary_outputs, bool):
        raise InvalidInput("parameters.binary_data_output must be true or false")
    return InferRequest(request_id, inputs, _requested_outputs(document), binary_outputs)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary section; the latter a view, so tensors are never copied here."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdecimal():  # what int() reads: "²" is a digit, not a decimal
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}")
    length = int(header_length)
    if length == 0 and body:  # "the request body is empty", said of the JSON header, misled
        raise InvalidInput(
            f"{HEADER_LENGTH} is 0, but the body begins with the JSON header that names the inputs: "
            "send that header's length in bytes"
        )
    if length > len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} says the JSON header is {length} bytes, but the body has only {len(body)}"
        )
    return body[:length], memoryview(body)[length:]


def parse_json_object(body: bytes, expected: str = "an inference request") -> dict[str, Any]:
    """A request's JSON object, read as RFC 8259 defines JSON (no NaN, UTF-8 only); InvalidInput,
    saying what was `expected`, for anything else."""
    body = body.removeprefix(codecs.BOM_UTF8)  # a BOM is let pass
    try:
        # orjson: UTF-8 only as RFC 8259 asks, no NaN or Infinity, ~8x faster than json on numbers
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # asked only of a body orjson refused: strip() copies the body
        if not body.strip():
            raise InvalidInput(f"the request body is empty: expected {expected} (JSON)") from None
        raise InvalidInput(_json_error(exc)) from None
    if not isinstance(document, dict):
        raise InvalidInput(
            f"the request must be a JSON object, got {type(document).__name__}: expected {expected}"
        )
    return document


def _json_error(exc: orjson.JSONDecodeError) -> str:
    """What is wrong with the request's JSON; non-finite numbers by name, since Python's json (and so
    many clients) writes them, and a model fed them answers garbage."""
    text, at = exc.doc, exc.pos
    for literal in ("NaN", "Infinity"):
        if text.startswith(literal, at):
            signed = "-" if literal == "Infinity" and text[at - 1 : at] == "-" else ""
            return f"the request holds {signed}{literal}, which is not JSON: send finite numbers"
    if exc.msg.startswith("str is not valid UTF-8"):
        return "the request is not valid JSON: it is not UTF-8 text"
    if exc.msg.startswith("number is infinity"):
        return f"the request holds a number past the FP64 range at character {at}: send finite numbers"
    return f"the request is not valid JSON: {exc}"


_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""Compact JSON for outputs that hold NaN or infinities, which orjson (used for all others, ~10 µs
faster a response) writes as null: Triton writes NaN, and Python clients read it. Found by the null
in orjson's output rather than by checking each float output first: np.isfinite and a reduction
take ~2 µs in a loop, but 14 µs a request measured in the server (digits INT8, paired rounds), run
from caches the model's call has just cooled."""

JSON_PIECE_VALUES = 1 << 16
"""Values of an output written as JSON by one orjson call (and one tolist). Each call holds the GIL
throughout, so an answer encoded in a thread (infer_route.encode) lets the event loop run only
between calls: one call for the 8.4 M values of 1024 rows of gpt2-lm held it up to 0.75 s; a piece
of float32 takes ~1.5 ms, and only its Python floats are in memory at once."""


def _parameters(container: dict[str, Any], where: str) -> dict[str, Any]:
    """The `parameters` object of a request, input or output: absent is empty, null is an error."""
    if "parameters" not in container:
        return {}
    value = container["parameters"]
    if not isinstance(value, dict):
        raise InvalidInput(f"parameters of {where} must be a JSON object")
    return value


class _BinaryReader:
    """Hands out the binary section in input order and checks that the sizes add up."""

    def __init__(self, data: memoryview, header_given: bool) -> None:
        self.data = data
        self.offset = 0
        self.header_given = header_given

    def take(self, name: str, size: int) -> memoryview:
        remaining = len(self.data) - self.offset
        if size > remaining:
            hint = "" if self.header_given else f" (no {HEADER_LENGTH} header: the body is all JSON)"
            raise InvalidInput(
                f"input '{name}' declares {size} bytes of binary data, but only {remaining} remain{hint}"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def finish(self) -> None:
        extra = len(self.data) - self.offset
        if extra:
            raise InvalidInput(f"the body has {extra} bytes of binary data that no input declares")


def _decode_input(entry: Any, index: int, reader: _BinaryReader, booleans: bool) -> tuple[str, np.ndarray]:
    """`booleans`: whether the request's JSON may hold a true or false anywhere (_from_json)."""
    if not isinstance(entry, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] has no name")
    datatype, shape = checked_header(name, entry.get("datatype"), entry.get("shape"))
    parameters = _parameters(entry, f"input '{name}'")
    refuse_shared_memory(f"input '{name}'", parameters)
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in entry:
            raise InvalidInput(f"input '{name}' has both 'data' and parameters.binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{name}' has binary_data_size {json.dumps(size)}: expected bytes >= 0")
        return name, _from_binary(name, datatype, shape, reader.take(name, size))
    if "data" not in entry:
        raise InvalidInput(f"input '{name}' has no data: give 'data' or parameters.binary_data_size")
    return name, _from_json(name, datatype, shape, entry["data"], booleans)


def checked_header(name: str, datatype: Any, shape: Any) -> tuple[str, list[int]]:
    """An input's datatype and shape as the protocol allows them (both transports), or InvalidInput."""
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(
            f"input '{name}' has datatype {json.dumps(datatype)}; known: {', '.join(DATATYPES)}"
        )
    if isinstance(shape, list) and len(shape) > MAX_RANK:  # before the shape is echoed in a message
        raise InvalidInput(f"input '{name}' has {len(shape)} dimensions; at most {MAX_RANK} are possible")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input '{name}' has shape {json.dumps(shape)}: expected a list of integers >= 0")
    # numpy's rule: the non-zero dimensions times the item size must fit its index type, even when a
    # zero dimension leaves no elements ([2**40, 2**40, 0]); without a zero, the byte count check
    # would refuse such a shape later, with no body big enough to match it
    if math.prod(d for d in shape if d) * DATATYPES[datatype].itemsize > _MAX_ARRAY_BYTES:
        raise InvalidInput(f"input '{name}' has shape {shape}: larger than any array can be")
    return datatype, shape


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw little-endian bytes (binary extension, gRPC raw contents); not copied."""
    return _from_binary(name, datatype, shape, memoryview(raw))


def to_raw(array: np.ndarray) -> bytes:
    """An output's raw little-endian bytes (BYTES elements length-prefixed), as both transports send them."""
    return _to_bytes(array, datatype_of(array.dtype))


def _from_binary(name: str, datatype: str, shape: list[int], chunk: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _unpack_bytes(name, chunk)
        if len(items) != count:
            raise InvalidInput(f"input '{name}' has {len(items)} BYTES elements; shape {shape} needs {count}")
        return np.array(items, dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}' has {len(chunk)} bytes of binary data; {datatype} {shape} needs "
            f"{count * dtype.itemsize}"
        )
    array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidInput(f"input '{name}' is BOOL: every byte must be 0 or 1")
    return array


def _unpack_bytes(name: str, chunk: memoryview) -> list[str]:
    items, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InvalidInput(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise InvalidInput(f"input '{name}': a BYTES element of {length} bytes runs past the data")
        items.append(_utf8(name, chunk[offset : offset + length]))
        offset += length
    return items


def _utf8(name: str, raw: memoryview) -> str:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': a BYTES element is not UTF-8 text") from None


def _from_json(name: str, datatype: str, shape: list[int], data: Any, booleans: bool) -> np.ndarray:
    """`booleans`: False where the request's text holds neither `true` nor `false`, so no boolean can
    sit among the numbers (_holds_booleans is then not asked: it costs 10-14 µs a digits request)."""
    count = math.prod(shape)
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': data must be a JSON array, got {type(data).__name__}")
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(item, str) for item in flat):
            raise InvalidInput(f"input '{name}' is BYTES: every element must be a string")
        if len(flat) != count:
            raise InvalidInput(f"input '{name}' has {len(flat)} values; shape {shape} needs {count}")
        return np.array(flat, dtype=object).reshape(shape)
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': data is not a regular array of numbers ({exc})") from None
    if array.size != count:
        raise InvalidInput(f"input '{name}' has {array.size} values; shape {shape} needs {count}")
    if array.size:
        accepted = _ACCEPTED_KINDS.get(datatype, "iu")
        if array.dtype.kind not in accepted:
            if (
                array.dtype.kind == "f"
                and DATATYPES[datatype].kind in "iu"
                and np.abs(array).max() >= 2.0**63
            ):
                # orjson reads integers past 64 bits as floats: name the range, not a fraction
                raise InvalidInput(f"input '{name}' holds values outside the {datatype} range")
            found = _KIND_NAMES.get(array.dtype.kind, "values of mixed or unknown types")
            raise InvalidInput(f"input '{name}' is {datatype}, but its data holds {found}")
        if booleans and datatype != "BOOL" and _holds_booleans(data, array):
            raise InvalidInput(f"input '{name}' is {datatype}, but its data holds booleans")
        dtype = DATATYPES[datatype]
        # JSON holds no infinity (parse_json_object refuses the literals), so past an integer's range,
        # or a narrower float's (1e300 as FP32: an infinity, and the model would answer garbage), is
        # a number the datatype cannot hold: refused before the cast, which would wrap or warn
        if dtype.kind in "iu" or dtype.itemsize < array.dtype.itemsize:
            least, greatest = _RANGES[datatype]
            if array.min() < least or array.max() > greatest:
                raise InvalidInput(f"input '{name}' holds values outside the {datatype} range")
        return array.astype(dtype, copy=False).reshape(shape)
    return np.zeros(shape, dtype=DATATYPES[datatype])


def _holds_booleans(data: list[Any], array: np.ndarray) -> bool:
    """Whether a true or false sits among `data`'s numbers, which np.asarray read as 1 or 0 (`[true,
    0.5]` as [1.0, 0.5]). Looked for only where `array` holds a 0 or a 1 (data without either, most
    floats, costs two vectorised comparisons), in `data` written back by orjson: numbers are written
    with no `t` or `f`, and it walks nested lists in C (a third of the time of a walk in Python)."""
    if not ((array == 0) | (array == 1)).any():
        return False
    written = orjson.dumps(data)
    return b"t" in written or b"f" in written


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _requested_outputs(document: dict[str, Any]) -> tuple[RequestedOutput, ...]:
    if "outputs" not in document:
        return ()
    value = document["outputs"]
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    outputs = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a name")
        name = entry["name"]
        parameters = _parameters(entry, f"output '{name}'")
        refuse_shared_memory(f"output '{name}'", parameters)
        if parameters.get("classification"):
            raise InvalidInput(f"output '{name}': the classification extension is not supported")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output '{name}': parameters.binary_data must be true or false")
        outputs.append(RequestedOutput(name, binary))
    check_unique_outputs(outputs)
    return tuple(outputs)


SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
"""Parameters of Triton's shared-memory extension, which this server does not offer (nor list in
`/v2`'s extensions): ignored, an output asked for in a region came back inline, and an input read
from one was called empty."""


def refuse_shared_memory(where: str, parameters: Container[str]) -> None:
    """Raises InvalidInput where `parameters` (of an input or output, either transport) name a
    shared-memory region, as Triton refuses a region it does not know."""
    for key in SHARED_MEMORY_PARAMETERS:
        if key in parameters:
            raise InvalidInput(f"{where}: shared memory (parameters.{key}) is not supported by this server")


def check_unique_outputs(outputs: Sequence[RequestedOutput]) -> None:
    """Raises InvalidInput for an output requested twice (both transports)."""
    seen = set()
    for output in outputs:
        if output.name in seen:
            raise InvalidInput(f"output '{output.name}' is requested twice")
        seen.add(output.name)


# -- encoding ----------------------------------------------------------------------------------


def _written(response: InferResponse, request: InferRequest) -> list[tuple[str, bool]]:
    """The outputs the answer holds, in order, and whether each is written as binary data."""
    if request.outputs:
        return [
            (wanted.name, wanted.binary if wanted.binary is not None else request.binary_outputs)
            for wanted in request.outputs
        ]
    return [(name, request.binary_outputs) for name in response.outputs]


BYTES_PREFIX = 4
"""Bytes of the length written before each element of a BYTES tensor as binary data (over HTTP, and
gRPC's raw outputs); JSON's quotes and comma are 3."""
COUNT_PIECE = 4096
"""Elements of a BYTES output counted at a time, between checks of whether the count is past its bound."""


def output_bytes(
    response: InferResponse, request: InferRequest, most: tuple[float, float] = (math.inf, math.inf)
) -> tuple[int, int]:
    """Bytes of the outputs the answer writes as JSON, and as binary data: what encoding it costs.
    Counting stops once one is past its bound in `most` (JSON's, binary's): the counts are then short
    of the whole (`payload_bytes`)."""
    counted = [0, 0]
    for name, binary in _written(response, request):
        if counted[0] > most[0] or counted[1] > most[1]:
            break
        counted[binary] += payload_bytes(response.outputs[name], most[binary] - counted[binary])
    return counted[0], counted[1]


def strings_written(arrays: Iterable[np.ndarray]) -> int:
    """Elements of the BYTES outputs among `arrays`: each is encoded on its own, in Python (~0.3 µs a
    one-byte string as binary data), where a number output's values are written at once. Counted
    from the arrays' shapes, without walking a string."""
    return sum(array.size for array in arrays if array.dtype.kind == "O")


def within(
    response: InferResponse, request: InferRequest, most: tuple[float, float], most_strings: int
) -> bool:
    """Whether the answer writes at most `most` bytes as JSON and as binary data (output_bytes's
    bounds), and at most `most_strings` BYTES elements (`strings_written`): what may encode on the
    event loop. In one pass over the outputs, strings counted only up to the byte bounds."""
    counted = [0, 0]
    strings = 0
    for name, binary in _written(response, request):
        array = response.outputs[name]
        if array.dtype.kind == "O":
            strings += array.size
            if strings > most_strings:
                return False
        counted[binary] += payload_bytes(array, most[binary] - counted[binary])
        if counted[binary] > most[binary]:
            return False
    return True


def json_output_bytes(response: InferResponse, request: InferRequest) -> int:
    """Bytes of all the outputs the answer writes as JSON, a BYTES output's strings counted one by one."""
    return sum(
        payload_bytes(response.outputs[name]) for name, binary in _written(response, request) if not binary
    )


def writes_strings_as_json(response: InferResponse, request: InferRequest) -> bool:
    """Whether a BYTES output is written as JSON: its bytes are counted a string at a time."""
    return any(
        not binary and response.outputs[name].dtype.kind == "O"
        for name, binary in _written(response, request)
    )


def payload_bytes(array: np.ndarray, most: float = math.inf) -> int:
    """An output's bytes to write: a BYTES output's are its strings' and a length each (BYTES_PREFIX),
    not its 8-byte pointers' (50 MB of strings read as 400 bytes, and encoded on the event loop for
    250 ms). Counting stops once past `most`, the count then short of the whole: strings are counted
    one by one (half a million took 112.6 ms, on the event loop, only to learn that the answer was to
    be encoded in a thread)."""
    if array.dtype.kind != "O":
        return array.nbytes
    flat = array.ravel()
    size = flat.size * BYTES_PREFIX
    for start in range(0, flat.size, COUNT_PIECE):
        if size > most:
            break
        size += _string_bytes(flat[start : start + COUNT_PIECE].tolist())
    return size


def _string_bytes(items: list[Any]) -> int:
    try:
        return sum(map(len, items))  # 4x faster than a test of each item's type
    except TypeError:  # not only strings: what else there is writes as its 8-byte pointer
        return sum(len(item) if isinstance(item, str | bytes) else 8 for item in items)


def encode_response(response: InferResponse, request: InferRequest) -> Encoded:
    entries, chunks = [], []
    for name, binary in _written(response, request):
        array = response.outputs[name]
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _to_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = orjson.Fragment(_json_data(array, datatype))
        entries.append(entry)
    document = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": entries,
    }
    header = orjson.dumps(document)  # no null of orjson's: the outputs' data was written already
    if chunks:
        return Encoded(header + b"".join(chunks), BINARY_TYPE, len(header))
    return Encoded(header, JSON_TYPE, None)


def _to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        if array.dtype.byteorder in _LITTLE_ENDIAN:  # tobytes writes C order whatever the strides
            return array.tobytes()
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    parts = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


_LITTLE_ENDIAN = ("<", "|") if sys.byteorder == "big" else ("<", "|", "=")
"""numpy's byte orders that are already the wire's (little-endian; "|" for one-byte types): such an
output's bytes are `tobytes()` without a conversion (~0.4 µs less an output)."""


def _json_data(array: np.ndarray, datatype: str) -> bytes:
    """The array's values as a flat JSON list, written JSON_PIECE_VALUES at a time."""
    flat = array.ravel()
    if flat.size <= JSON_PIECE_VALUES:
        return _json_values(flat, datatype)
    pieces = (
        _json_values(flat[start : start + JSON_PIECE_VALUES], datatype)[1:-1]
        for start in range(0, flat.size, JSON_PIECE_VALUES)
    )
    return b"[" + b",".join(pieces) + b"]"


def _json_values(flat: np.ndarray, datatype: str) -> bytes:
    """A flat array's values as JSON. Numbers are written by orjson from the array itself, with no
    Python float or int made of each (1000 FP32 logits: 23.6 µs, not 49.8), and a float32 as the
    shortest text that reads back as that float32 (0.1, not 0.10000000149011612: 45% fewer bytes)."""
    if datatype != "BYTES":
        if not flat.dtype.isnative:  # orjson takes native byte order only
            flat = flat.astype(flat.dtype.newbyteorder("="))
        written = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
        return written if b"null" not in written else _with_non_finite(flat, written)
    values = _strings(flat)
    written = orjson.dumps(values)
    if b"null" in written:  # a "null" string: rare, right either way
        return _ENCODER.encode(values).encode()
    return written


def _with_non_finite(flat: np.ndarray, written: bytes) -> bytes:
    """orjson's text of a float array with its nulls (NaN and infinities: rare) written as Triton
    writes them, `NaN`, `Infinity`, `-Infinity`; every other value keeps orjson's shortest text."""
    values = written[1:-1].split(b",")
    for index in np.flatnonzero(~np.isfinite(flat)):
        value = flat[index]
        values[index] = b"NaN" if np.isnan(value) else b"Infinity" if value > 0 else b"-Infinity"
    return b"[" + b",".join(values) + b"]"


def _strings(array: np.ndarray) -> list[str]:
    """A BYTES output's elements as JSON strings."""
    return [item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in array.ravel()]
