"""The server's errors: one base carrying its HTTP status, and the one place they become responses.

The core (protocol, runner, batcher, service) raises these and never sees HTTP; `install_handlers`
turns them, and FastAPI's and Starlette's own errors (unknown route, wrong method, validation), into
`{"error": "..."}` with KServe's codes, because tritonclient reads exactly that body.
"""

from __future__ import annotations

import json
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ServerError(Exception):
    """An answer other than success. `status` is the HTTP status; the message names the problem."""

    status: ClassVar[int] = 500
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServerError):
    """The request is malformed or does not fit the model: the client must change it."""

    status = 400


class NotFound(ServerError):
    status = 404


class ModelNotFound(NotFound):
    """No model (or version) of that name here."""


class UnknownRequest(NotFound):
    """Feedback names a request id that this server never answered, or has forgotten."""


class FeedbackConflict(ServerError):
    """Feedback for a request that already got it: counting it twice would skew the SLI."""

    status = 409


class RequestTimeout(ServerError):
    """The body did not arrive within the body timeout: a slow (or stalled) client must not hold a
    connection and a request slot forever. The connection is closed after the answer."""

    status = 408
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class PayloadTooLarge(ServerError):
    """Answered as soon as the body is known to be too large, often before the client sent it all:
    the connection is closed after the answer, or the rest of the body would be read as a request
    (a stray 408 "the request headers did not arrive" followed the 413)."""

    status = 413
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class UnsupportedMediaType(ServerError):
    """A body in a Content-Encoding this server does not read."""

    status = 415


class Overloaded(ServerError):
    """The queue is full. Retry later, or elsewhere: nothing was done."""

    status = 429
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class ClientClosedRequest(ServerError):
    """The client went away before its answer: before sending its whole body, or while its request
    of more rows than a batch ran split into calls (an HTTP hang-up, a gRPC deadline or
    cancellation; batcher.Batcher), which then stop: nginx's 499. The client's doing, never a 5xx
    (that would feed the error-rate SLI); nobody is left to read the answer."""

    status = 499


class InferenceFailed(ServerError):
    """onnxruntime failed on input that passed validation: a server-side problem."""

    status = 500


class NotReady(ServerError):
    """The model is loading, was refused, or the server is shutting down."""

    status = 503
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


def error_json(message: str) -> bytes:
    """`error_body` encoded, for answers written below FastAPI (infer_route, connections)."""
    return json.dumps(error_body(message)).encode()


def statuses() -> tuple[int, ...]:
    """Every HTTP status an error of ours answers with (those of ServerError's subclasses)."""
    found, pending = {ServerError.status}, list(ServerError.__subclasses__())
    while pending:
        kind = pending.pop()
        found.add(kind.status)
        pending += kind.__subclasses__()
    return tuple(sorted(found))


def install_handlers(app: FastAPI) -> None:
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerError)
        return JSONResponse(error_body(exc.message), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own 404 (no such route) and 405 (method): keep its headers (Allow), reword the body.
        assert isinstance(exc, StarletteHTTPException)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed here"}
        return JSONResponse(
            error_body(message.get(exc.status_code, str(exc.detail))),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
            for error in exc.errors()
        )
        return JSONResponse(error_body(f"invalid request: {problems}"), status_code=400)

    app.add_exception_handler(ServerError, server_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
