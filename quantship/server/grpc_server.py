"""Open Inference Protocol v2 over gRPC: `inference.GRPCInferenceService` on its own port.

The same ModelService (and so the same batcher, SLIs and metrics) as the REST routes; this module
only converts: protobuf messages to InferRequest and back, ServerErrors to gRPC status codes that
mirror the HTTP map. `start_grpc` runs it on the event loop the app's lifespan runs on. The RPCs
are registered by their protocol names with a generic handler (see grpc_v2/inference.proto for why
the messages live in a package of their own).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from quantship.server import protocol
from quantship.server.errors import (
    ClientClosedRequest,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
)
from quantship.server.grpc_v2 import inference_pb2 as pb
from quantship.server.infer_route import INLINE_ENCODE_BINARY_BYTES, INLINE_ENCODE_STRINGS
from quantship.server.metrics import ServerMetrics
from quantship.server.protocol import InferRequest, RequestedOutput
from quantship.server.service import ModelService
from quantship.server.throttled_log import Later

log = logging.getLogger("quantship.server")
SERVICE = "inference.GRPCInferenceService"

MAX_MESSAGE_CHARS = 512
"""The longest error message a gRPC status carries (see `_brief`): at most 6 KiB once UTF-8 and
percent-encoded, as grpc-message is."""

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The HTTP statuses of errors.py as gRPC codes: google.rpc.Code's HTTP mapping, for 413 what grpc
core answers a message over its limit, and for 408 (a request message slower than --body-timeout-s)
the code of a call out of time, which google.rpc.Code has no HTTP status for. Not all Triton's: for a
full queue (429) Triton answers UNAVAILABLE ("Exceeds maximum queue size"), we RESOURCE_EXHAUSTED, as
the README's "Errors" says. The request counter keeps the HTTP status for both transports, so the error
SLI reads one label."""

# The typed `contents` field that carries each datatype, for clients that send no raw contents.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    **dict.fromkeys(("INT8", "INT16", "INT32"), "int_contents"),
    "INT64": "int64_contents",
    **dict.fromkeys(("UINT8", "UINT16", "UINT32"), "uint_contents"),
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


PING_TIMEOUT_ARG = "grpc.http2.ping_timeout_ms"
"""How long grpc core waits for a ping's acknowledgement before it closes the connection: a channel
argument of its chttp2 transport (internal.h), not of grpc's public headers (test_unread_grpc_answers
checks it still acts)."""

PING_FLOOR_MS = 1000
"""The shortest keepalive interval and ping timeout `ping_options` derives from --idle-timeout-s: half
of a 50 ms timeout pinged every 25 ms while calls ran and cut any client whose acknowledgement took
longer, as one across a real network, or one its runtime paused a moment, would. 1 s is grpc-go's floor
for a server's pings (keepalive.ServerParameters.Time: less is raised to 1 s) and far below gRPC's
default ping timeout (20 s, as Triton's --grpc-keepalive-timeout): below 2 s of --idle-timeout-s, a
gRPC client that takes none of its answer is cut after 2 s."""

M = TypeVar("M", bound=Message)


def parse(message: type[M], raw: bytes) -> M:
    """The RPC's request message from its bytes; a malformed one is the client's error (InvalidInput),
    where grpcio, left to parse it, would log a traceback and answer UNKNOWN."""
    try:
        return message.FromString(raw)
    except DecodeError:
        raise InvalidInput(f"the request is not a valid {message.DESCRIPTOR.name} message") from None


def decode_request(message: pb.ModelInferRequest) -> InferRequest:
    """The protobuf request as the service takes it. Raises InvalidInput."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"the request has {len(message.inputs)} inputs but {len(raw)} raw_input_contents: give one each"
        )
    if not message.inputs:
        raise InvalidInput("the request has no inputs")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name or f"inputs[{index}]"
        datatype, shape = protocol.checked_header(name, tensor.datatype, list(tensor.shape))
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice")
        protocol.refuse_shared_memory(f"input '{name}'", tensor.parameters)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input '{name}' has both contents and raw_input_contents: give one")
            inputs[name] = protocol.from_raw(name, datatype, shape, raw[index])
        else:
            inputs[name] = _from_contents(name, datatype, shape, tensor.contents)
    outputs = []
    for wanted in message.outputs:
        protocol.refuse_shared_memory(f"output '{wanted.name}'", wanted.parameters)
        if _parameter_value(
            wanted.parameters.get("classification")
        ):  # as over HTTP: 0 or false asks for none
            raise InvalidInput(f"output '{wanted.name}': the classification extension is not supported")
        outputs.append(RequestedOutput(wanted.name, True))
    protocol.check_unique_outputs(outputs)
    return InferRequest(message.id or None, inputs, tuple(outputs), binary_outputs=True)


def _parameter_value(parameter: pb.InferParameter | None) -> Any:
    """The value an InferParameter holds, whichever of its fields (None if it is absent or unset)."""
    choice = None if parameter is None else parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _from_contents(
    name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}' is {datatype}: send it in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{name}' has {len(values)} values in {field}; shape {shape} needs {count}")
    if datatype == "BYTES":
        return protocol.from_raw(name, datatype, shape, b"".join(_prefixed(value) for value in values))
    try:
        # straight from the repeated field, no list between: an image's 150,528 floats in 4.7 ms, not 6.4
        return np.fromiter(values, dtype=protocol.DATATYPES[datatype], count=count).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"input '{name}' holds values outside the {datatype} range") from None


def _prefixed(value: bytes) -> bytes:
    return len(value).to_bytes(4, "little") + value


def encode_response(
    request: InferRequest, outputs: dict[str, np.ndarray], model: str, version: str, request_id: str
) -> pb.ModelInferResponse:
    names = [wanted.name for wanted in request.outputs] or list(outputs)
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name in names:
        array = outputs[name]
        response.outputs.add(name=name, datatype=protocol.datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(protocol.to_raw(array))
    return response


def encodes_inline(outputs: Mapping[str, np.ndarray]) -> bool:
    """Whether an answer is small enough to encode on the event loop (INLINE_ENCODE_BINARY_BYTES and
    INLINE_ENCODE_STRINGS, as over HTTP); larger, it is copied into the message and serialized in a
    thread (`answer_bytes`): 33.5 MB of gpt2-lm logits, and a BYTES output's strings prefixed one by
    one, held the loop and every other client as long. Summed over every output the model gave, not
    only those asked for: protocol.output_bytes took 3 µs of a one-row answer's 6, this 0.2, and it
    errs only towards the thread."""
    if protocol.strings_written(outputs.values()) > INLINE_ENCODE_STRINGS:  # each prefixed in Python
        return False
    size = 0
    for array in outputs.values():  # a BYTES output's strings are counted only up to the bound
        size += (
            array.nbytes
            if array.dtype.kind != "O"
            else protocol.payload_bytes(array, INLINE_ENCODE_BINARY_BYTES - size)
        )
        if size > INLINE_ENCODE_BINARY_BYTES:
            return False
    return True


def answer_bytes(request: InferRequest, answer: protocol.InferResponse) -> bytes:
    """The answer's message, serialized (`_to_wire` passes the bytes on)."""
    response = encode_response(
        request, dict(answer.outputs), answer.model_name, answer.model_version, answer.id
    )
    return response.SerializeToString()


def _to_wire(response: Message | bytes) -> bytes:
    """An RPC's answer as gRPC sends it: a message serialized here, or bytes `answer_bytes` gave."""
    return response if isinstance(response, bytes) else response.SerializeToString()


class GrpcEndpoints:
    """The RPCs, each a few lines over the service; ServerErrors become status codes in `_answer`."""

    def __init__(self, service: ModelService, metrics: ServerMetrics) -> None:
        self.service = service
        self.metrics = metrics

    def handler(self) -> grpc.GenericRpcHandler:
        """Each RPC takes its request's bytes (no request_deserializer): it parses them itself, so
        that a malformed message is answered INVALID_ARGUMENT, and counted as a 400 by ModelInfer.
        ModelInfer is served as a client stream, of the one message a unary call sends: grpcio calls a
        unary handler only once its message has come, so a call that ended without it went uncounted
        (`model_infer`). The wire is the same, so clients see a unary RPC."""
        rpcs: dict[str, OnBytes] = {
            "ServerLive": _on_bytes(self.server_live, pb.ServerLiveRequest),
            "ServerReady": _on_bytes(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": _on_bytes(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": _on_bytes(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": _on_bytes(self.model_metadata, pb.ModelMetadataRequest),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(_answer(call), response_serializer=_to_wire)
            for name, call in rpcs.items()
        }
        handlers["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
            _answer(self.model_infer), response_serializer=_to_wire
        )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        self.service.check_model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self._is_ready())

    def _is_ready(self) -> bool:
        try:
            self.service.check_ready()
        except ServerError:
            return False
        return True

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        described = self.service.server_metadata()
        return pb.ServerMetadataResponse(
            name=described["name"], version=described["version"], extensions=described["extensions"]
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        self.service.check_model(request.name, request.version or None)
        described = self.service.model_metadata()
        response = pb.ModelMetadataResponse(
            name=described["name"], versions=described["versions"], platform=described["platform"]
        )
        for spec in described["inputs"]:
            response.inputs.add(**spec)
        for spec in described["outputs"]:
            response.outputs.add(**spec)
        return response

    async def model_infer(
        self, requests: object, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse | bytes | None:
        """`requests` (grpcio's iterator of the stream) is left unused: `context.read()` takes the one
        message. In flight from the call's start, as an HTTP request from its headers; its latency
        counts from the whole message, as HTTP's from the whole body."""
        started, code = time.perf_counter(), 500
        self.metrics.request_started()
        peer = context.peer()  # "" once core has ended the call
        try:
            raw = await self._request_message(context, peer)
            if raw is None:
                code = await self._without_request(context, peer)
                return None  # the call has ended: its status is sent, or core sent one
            started = time.perf_counter()
            request = parse(pb.ModelInferRequest, raw)
            self.service.check_model(request.model_name, request.model_version or None)
            self.service.ready_model()
            decoded = decode_request(request)
            answer = await self.service.infer(decoded)
            encoded: pb.ModelInferResponse | bytes
            if encodes_inline(answer.outputs):
                encoded = encode_response(
                    decoded, dict(answer.outputs), answer.model_name, answer.model_version, answer.id
                )
            else:
                encoded = await asyncio.to_thread(answer_bytes, decoded, answer)
            code = 200
            return encoded
        except ServerError as exc:
            code = exc.status
            raise
        except asyncio.CancelledError:
            if self.service.connections_spent():  # shutdown's grace ended: the server cut it (UNAVAILABLE)
                code = NotReady.status
                self.service.request_cut()
            else:  # the client cancelled or its deadline passed: not our error
                code = ClientClosedRequest.status
                self.service.client_went(Later(lambda: f"{peer} ModelInfer"), _why_cancelled(context))
            raise
        finally:
            self.metrics.request_left()
            self.metrics.request_done(code, time.perf_counter() - started)

    async def _request_message(self, context: grpc.aio.ServicerContext, peer: str) -> bytes | None:
        """The call's message, or None if the stream ended without one; RequestTimeout if it is not
        whole within --body-timeout-s, as an HTTP body: a client that sent its call's headers and then
        trickled or stalled held its call, and what core had of the message, as long as it
        acknowledged pings."""
        limit = self.service.settings.body_timeout_s
        try:
            async with asyncio.timeout(limit):
                raw = await context.read()
            return None if raw is grpc.aio.EOF else raw
        except TimeoutError:
            self.service.client_log.log(
                "%s ModelInfer: request message not received within %g s; answered 408", peer, limit
            )
            raise RequestTimeout(
                f"the request message did not arrive within {limit:g} s (--body-timeout-s)"
            ) from None

    async def _without_request(self, context: grpc.aio.ServicerContext, peer: str) -> int:
        """The status of a ModelInfer call that ended before its request message came, as HTTP counts
        a body over --max-body-bytes (413), one cut by shutdown (503) or a client gone mid-body (499).

        grpcio shows a handler only that the stream ended with no message, whether grpc core refused
        one over the limit (from its length prefix: the client reads RESOURCE_EXHAUSTED "Received
        message larger than max", of a 256 MiB message the server took in 4 MiB) or the client
        cancelled while sending it; grpcio's Python API gives no hook that tells them apart (nor
        sees the refusal: a unary handler is not called). Counted as 413, the cause a client repeats
        (one caught mid-upload is rare), and logged naming both. The status sent here fails to send
        once core has ended the call; it reaches only a client that closed its side sending nothing,
        its own error (400)."""
        try:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended with no request message")
        except grpc.aio.AbortError:  # sent: grpcio ends the call when the handler returns
            return InvalidInput.status
        except grpc.aio.InternalError:  # core had ended the call (ExecuteBatchError)
            pass
        where = f"{peer} ModelInfer"
        if self.service.connections_spent():
            self.service.request_cut()
            return NotReady.status
        if _deadline_passed(context):
            self.service.client_went(where, "its deadline passed before its request message came")
            return ClientClosedRequest.status
        self.service.client_log.log(
            "%s: no request message came: one over --max-body-bytes (%d bytes), refused by grpc core "
            "(RESOURCE_EXHAUSTED), or the client cancelled while sending it; counted as 413",
            where, self.service.settings.max_body_bytes,
        )  # fmt: skip
        return PayloadTooLarge.status


def _why_cancelled(context: grpc.aio.ServicerContext) -> str:
    """What ended a call its client gave up: its deadline (none left) or a cancellation, the client's
    or its connection's."""
    if _deadline_passed(context):
        return "its deadline passed before the answer"
    return "the client cancelled the call, or its connection closed, before the answer"


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    left = context.time_remaining()
    return left is not None and left <= 0


Rpc = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
OnBytes = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


def _on_bytes(call: Callable[[M], Awaitable[Any]], message: type[M]) -> OnBytes:
    """`call`, taking its request's bytes."""

    @functools.wraps(call)  # its name, for the log of a failure
    async def rpc(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await call(parse(message, raw))

    return rpc


def _answer(call: Rpc) -> Rpc:
    """The RPC with its errors as status codes: ours with their message, anything else logged, INTERNAL."""

    async def rpc(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await call(request, context)
        except ServerError as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), _brief(exc.message))
        except Exception:
            log.exception("gRPC %s failed", getattr(call, "__name__", "call"))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error: see the server's log")

    return rpc


def _brief(message: str) -> str:
    """A message short enough for the trailers it travels in: one that echoes a client's 20 KB input
    name would pass the client's metadata limit (8 KiB by default), and the client would read
    RESOURCE_EXHAUSTED in place of the error."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"


def ping_options(idle_timeout_s: float) -> list[tuple[str, int]]:
    """The channel arguments that ping a client with calls under way: half of `idle_timeout_s`
    between pings and half to acknowledge one (`start_grpc`), each at least PING_FLOOR_MS."""
    half_ms = max(PING_FLOOR_MS, round(idle_timeout_s * 1000 / 2))
    return [
        ("grpc.keepalive_time_ms", half_ms),
        ("grpc.keepalive_timeout_ms", half_ms),
        # what closes the connection: keepalive_timeout alone did not, the default is a minute
        (PING_TIMEOUT_ARG, half_ms),
    ]


async def start_grpc(
    endpoints: GrpcEndpoints, host: str, port: int, max_message_bytes: int, idle_timeout_s: float
) -> grpc.aio.Server:
    """A started gRPC server on host:port, sharing the running event loop with uvicorn.

    `idle_timeout_s` (--idle-timeout-s) bounds how long an answer may wait for a client that takes
    none of it, as over HTTP: grpc core holds an answer the client grants no HTTP/2 window for until
    the call ends, and a call with no deadline ends only when a ping goes unanswered, by default at
    keepalive's first, after two hours (a 200 MB answer to a client that had answered core's bandwidth
    probe, then stopped: 430 MB of RSS, still held after 90 s). Pings find such a client: one that
    acknowledges none within half the timeout has its connection closed (GOAWAY "ping_timeout") and
    its answers dropped, and a keepalive ping goes out after the other half without one, while calls
    are under way (each half at least PING_FLOOR_MS: `ping_options`). A live client's transport
    acknowledges pings whatever its application reads, so a long call or a slow reader is never cut."""
    server = grpc.aio.server(
        options=[
            # --max-body-bytes bounds what a client sends; an answer is bounded by the model (an
            # embedding may be larger than its tokens), and HTTP answers it whole: as Triton, no cap.
            # Core refuses a larger message from its length prefix: ModelInfer's read ends with no
            # message, as when the client cancels mid-upload (GrpcEndpoints._without_request)
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
            *ping_options(idle_timeout_s),
        ]
    )
    server.add_generic_rpc_handlers((endpoints.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.60 raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address} (in use, or not an address of this host)")
    await server.start()
    bound_address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"  # port 0: the one taken
    log.info("gRPC (Open Inference Protocol v2) on %s", bound_address)  # uvicorn says where HTTP is
    return server
