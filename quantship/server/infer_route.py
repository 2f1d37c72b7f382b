"""The inference endpoint as bare ASGI, answered before FastAPI sees the request.

`POST /v2/models/{model}[/versions/{version}]/infer` is nearly all of a server's traffic. FastAPI's
layers around an endpoint (a telemetry check, four middlewares, the router, a Request, a Response
and its headers) cost a tiny model's request about as much CPU as everything else it does, so the
app (app.py) hands this path to `InferRoute` straight from the ASGI scope; FastAPI still documents
the route and answers everything else. Errors are the same `{"error": ...}` bodies and codes as
FastAPI's handlers give, and a bug of ours is a logged 500, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from quantship.server import content_encoding, protocol
from quantship.server.batcher import Gone
from quantship.server.byte_budget import ByteBudget
from quantship.server.connections import BODY_ARRIVAL, CLIENT_GONE
from quantship.server.errors import (
    ClientClosedRequest,
    NotReady,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    error_json,
)
from quantship.server.metrics import ServerMetrics
from quantship.server.service import ModelService
from quantship.server.throttled_log import Later

log = logging.getLogger("quantship.server")


_HEADER_LENGTH = protocol.HEADER_LENGTH.lower().encode()

INLINE_DECODE_BYTES = 64 * 1024
"""JSON up to this size decodes on the event loop (tens of microseconds); more, a JSON batch of
images say, decodes in a thread so that it does not stall every other request for milliseconds.
Binary tensors are never parsed (views of the body), so only the JSON header counts."""

INLINE_ENCODE_JSON_BYTES = 4 * 1024
"""Outputs of up to this many bytes written as JSON encode on the event loop (1024 float32 values:
~90 µs here); more, in a thread, as decoding does (`encode`). Writing float32 values as JSON takes
~22 µs a KiB on this host: the answer of 1024 rows of gpt2-lm (33.5 MB of logits, 158 MB of JSON)
held the loop for 2 s, and a health probe waited as long."""
INLINE_ENCODE_BINARY_BYTES = 1024 * 1024
"""Outputs of up to this many bytes written as binary data encode on the event loop (a copy: 1 MiB
in ~180 µs here); more, in a thread."""
INLINE_ENCODE_STRINGS = 1024
"""BYTES elements, over the outputs an answer writes, up to which it may encode on the event loop
(within the byte bounds above); more, in a thread. A BYTES output is written a string at a time, in
Python: 200,000 one-byte strings as binary data (1 MB, under INLINE_ENCODE_BINARY_BYTES) held the
loop 67 ms, and counting their bytes 5 ms more (~0.35 µs a string in all). 1024 strings: ~0.35 ms,
about what the byte bounds allow a number output (1024 float32 values as JSON: ~90 µs)."""
_INLINE_BYTES = (INLINE_ENCODE_JSON_BYTES, INLINE_ENCODE_BINARY_BYTES)


@dataclass(frozen=True)
class BodyLimits:
    """What a request body may cost the server: bytes (--max-body-bytes) and seconds (--body-timeout-s)."""

    max_bytes: int
    timeout_s: float


_NO_DEADLINE = contextlib.nullcontext()

MATCHED_PATHS = 64
"""POST paths whose match against the inference routes is remembered (`InferRoute.match`): a server's
clients use one or two (with a version and without), and the regular expressions cost ~0.4 µs a
request; more paths than this (a scan) only fall back to matching."""


def cut_by_shutdown(scope: Scope) -> bool:
    """Whether shutdown closed the connection while the body was arriving (connections.BODY_ARRIVAL)."""
    arrival = scope.get("extensions", {}).get(BODY_ARRIVAL)
    return arrival is not None and arrival.get("cut") is True


def arrived(scope: Scope) -> bool:
    """Whether the server says the request's whole body is already here (connections.BODY_ARRIVAL)."""
    arrival = scope.get("extensions", {}).get(BODY_ARRIVAL)
    return arrival is not None and arrival.get("complete") is True


def client_gone(scope: Scope) -> Gone | None:
    """What says whether the request's client has gone (connections.CLIENT_GONE); None under a server
    without quantship's protocol, which does not say it for the request running."""
    gone = scope.get("extensions", {}).get(CLIENT_GONE)
    return None if gone is None else gone["client"]


def _never() -> bool:
    return False


async def receive_body(
    receive: Receive,
    declared: str,
    limits: BodyLimits,
    where: Callable[[], str],
    log_line: Callable[..., None],
    *,
    here: bool = False,
    cut: Callable[[], bool] = _never,
) -> bytes:
    """The body from ASGI `receive`, refused with 413 as soon as it is known to exceed
    `limits.max_bytes`, with 408 when it has not all arrived within `limits.timeout_s`, and with 499
    when the client hangs up before the end. `declared` is the Content-Length header ("" if none);
    `where()` names the request in the log (built only for a line written: a string a request costs
    CPU, and a throttled log holds most lines back), whose lines go to `log_line` (the service's
    `client_log`, at most so many a second). `here`: the server has said the whole body arrived
    (`arrived`), so reading it cannot wait, and no deadline is armed. `cut()`: whether a disconnect
    is shutdown's (`cut_by_shutdown`), which logged it and answered 503 (counted so by InferRoute):
    then this logs nothing."""
    if declared.isdecimal() and int(declared) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; this server takes at most {limits.max_bytes} (--max-body-bytes)"
        )
    chunks: list[bytes] = []
    size, more = 0, True
    try:
        async with _NO_DEADLINE if here else asyncio.timeout(limits.timeout_s):
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if cut():
                        raise ClientClosedRequest("shutdown closed the connection before the whole body came")
                    log_line("%s: client disconnected after %d of %s body bytes; counted as 499",
                             Later(where), size, declared or "?")  # fmt: skip
                    raise ClientClosedRequest("the client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limits.max_bytes:
                    raise PayloadTooLarge(
                        f"the body is over {limits.max_bytes} bytes, the most this server takes "
                        "(--max-body-bytes)"
                    )
                chunks.append(chunk)
                more = message.get("more_body", False)
    except TimeoutError:
        log_line("%s: body not received within %g s (%d of %s bytes); answered 408",
                 Later(where), limits.timeout_s, size, declared or "?")  # fmt: skip
        raise RequestTimeout(
            f"the body did not arrive within {limits.timeout_s:g} s ({size} of {declared or '?'} bytes "
            "received; --body-timeout-s)"
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def decode(body: bytes, header_length: str | None, budget: ByteBudget) -> protocol.InferRequest:
    """The request, decoded on the event loop when its JSON is small, else in a thread within `budget`
    (bytes of JSON decoded at once: JSON costs 11-17x its size in memory while it decodes)."""
    json_bytes = len(body) if header_length is None or not header_length.isdecimal() else int(header_length)
    if json_bytes <= INLINE_DECODE_BYTES:
        return protocol.decode_request(body, header_length)
    json_bytes = min(json_bytes, len(body))  # a header length past the body is the decoder's 400
    async with budget.hold(json_bytes):
        return await asyncio.to_thread(protocol.decode_request, body, header_length)


def encodes_inline(response: protocol.InferResponse, request: protocol.InferRequest) -> bool:
    """Whether the answer is small enough to encode on the event loop: few bytes, and few strings."""
    return protocol.within(response, request, _INLINE_BYTES, INLINE_ENCODE_STRINGS)


async def encode(
    response: protocol.InferResponse, request: protocol.InferRequest, budget: ByteBudget
) -> protocol.Encoded:
    """The answer, encoded on the event loop when it is small (`encodes_inline`), else in a thread; its
    JSON outputs' bytes held in `budget` meanwhile (as a float and a list slot a value, then its text,
    a float32 output costs ~13x its bytes while it is written as JSON)."""
    if encodes_inline(response, request):
        return protocol.encode_response(response, request)
    if protocol.writes_strings_as_json(response, request):  # counted a string at a time: off the loop
        json_bytes = await asyncio.to_thread(protocol.json_output_bytes, response, request)
    else:
        json_bytes = protocol.json_output_bytes(response, request)  # numbers: their arrays' sizes
    async with budget.hold(json_bytes) if json_bytes else contextlib.nullcontext():
        return await asyncio.to_thread(protocol.encode_response, response, request)


class InferRoute:
    """ASGI for the inference path; `match` says whether a request is one."""

    def __init__(
        self,
        service: ModelService,
        metrics: ServerMetrics,
        limits: BodyLimits,
        paths: Sequence[str],
        json_budget: ByteBudget,
    ) -> None:
        """`paths`: the app's route templates this answers (`/v2/models/{model_name}/infer`, ...),
        compiled as Starlette compiles them, so that the path is spelled once, in the route table.
        `json_budget`: bytes of JSON decoded, or of outputs encoded as JSON, at once
        (--json-decode-budget-bytes)."""
        self.service = service
        self.metrics = metrics
        self.limits = limits
        self.json_budget = json_budget
        self.patterns = [compile_path(path)[0] for path in paths]
        self._params = functools.lru_cache(maxsize=MATCHED_PATHS)(self._params_of)

    def match(self, scope: Scope) -> Mapping[str, str] | None:
        """The path parameters of an inference request (`model_name`, maybe `model_version`), or None."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        return self._params(scope["path"])

    def _params_of(self, path: str) -> Mapping[str, str] | None:
        for pattern in self.patterns:
            found = pattern.match(path)
            if found is not None:
                return MappingProxyType(found.groupdict())  # read-only: shared by every request of the path
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, params: Mapping[str, str]) -> None:
        await self._infer(scope, receive, send, params["model_name"], params.get("model_version"))

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        started = time.perf_counter()
        self.metrics.request_started()
        try:
            encoded, started = await self._answer(scope, receive, model, version, started)
            length = encoded.header_length
            answer = _Answer(200, encoded.body, encoded.content_type,
                             [] if length is None else [(_HEADER_LENGTH, str(length).encode())])  # fmt: skip
        except ServerError as exc:
            if isinstance(exc, ClientClosedRequest) and cut_by_shutdown(scope):
                exc = NotReady(exc.message)  # gone because shutdown cut its upload (logged there): 503
            headers = [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
            answer = _Answer(exc.status, error_json(exc.message), protocol.JSON_TYPE, headers)
        except asyncio.CancelledError:
            if not self.service.draining:
                raise
            answer = self._cut(scope)
        except Exception:
            log.exception("%s: failed", _where(scope))
            answer = _Answer(500, error_json("internal server error"), protocol.JSON_TYPE, [])
        finally:
            self.metrics.request_left()
        # counted before the answer leaves: a client that then reads /metrics sees it
        self.metrics.request_done(answer.status, time.perf_counter() - started)
        await answer.send(send)

    def _cut(self, scope: Scope) -> _Answer:
        """uvicorn cancels what is unanswered when shutdown's share for connections ends (its graceful
        timeout, app.DRAIN_RESERVE): a retryable 503 that closes the connection, counted, and no
        traceback."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled: the answer is ours to send
        self.service.request_cut()
        log.info("%s: unanswered when the drain's share for connections ended; answered 503", _where(scope))
        return _Answer(503, _CUT_ERROR, protocol.JSON_TYPE, _CUT_HEADERS)

    async def _answer(
        self, scope: Scope, receive: Receive, model: str, version: str | None, started: float
    ) -> tuple[protocol.Encoded, float]:
        """The answer, and when its latency began: at `started` (the headers) for a body that came with
        its headers, else once the body is whole, as gRPC's (grpc core hands over whole messages) and
        Triton's: a client's upload is its own time, and a slow one must not read as a slow server
        to the latency SLI (a body sent over 2 s was recorded as a 2 s request)."""
        self.service.check_model(model, version)
        self.service.ready_model()  # 503 before reading a body we could not use
        declared, header_length, coding = "", None, ""
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value.decode("latin-1")
            elif name == _HEADER_LENGTH:
                header_length = value.decode("latin-1")
            elif name == b"content-encoding":
                coding = value.decode("latin-1")
        here = arrived(scope)
        body = await receive_body(
            receive,
            declared,
            self.limits,
            lambda: _where(scope),
            self.service.client_log.log,
            here=here,
            cut=lambda: cut_by_shutdown(scope),
        )
        if not here:
            started = time.perf_counter()
        if coding:  # inflating may take milliseconds: off the event loop
            body = await asyncio.to_thread(content_encoding.decoded, body, coding, self.limits.max_bytes)
        request = await decode(body, header_length, self.json_budget)
        # the batcher drops a request whose client has gone while it was queued, and stops the calls
        # of one split into calls once it is
        try:
            answer = await self.service.infer(request, client_gone(scope))
        except ClientClosedRequest as exc:  # queued or running: the batcher saw the client go
            self.service.client_went(Later(lambda: _where(scope)), exc.message)
            raise
        return await encode(answer, request, self.json_budget), started


_CUT_ERROR = error_json("the server is shutting down and its drain ended before the answer; retry")
_CUT_HEADERS = [(b"retry-after", b"1"), (b"connection", b"close")]


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[bytes, bytes]]

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", self.content_type.encode()), (b"content-length", b"%d" % len(self.body))]
        await send({"type": "http.response.start", "status": self.status, "headers": headers + self.headers})
        await send({"type": "http.response.body", "body": self.body})


def _where(scope: Scope) -> str:
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else "a client"
    return f"{peer} {scope['method']} {scope['path']}"
