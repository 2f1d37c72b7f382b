"""`create_app(settings)`: the one composition root of the model server, and its routes.

Builds the metrics registry, the model service and the FastAPI app; the lifespan starts loading
the artifact (the server answers /v2/health/live and /metrics meanwhile) and, on shutdown, after
uvicorn has stopped accepting and finished in-flight requests, drains the service. Routes sit in
one table and stay thin: check the model, read the body, decode, call the service, encode.
`serve(settings)` runs it under uvicorn (the `quantship serve` command).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import ClientDisconnect
from starlette.routing import Route as StarletteRoute

from quantship import __version__
from quantship.server import connections, grpc_server, protocol, schema
from quantship.server.errors import (
    ClientClosedRequest,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    install_handlers,
)
from quantship.server.metrics import ServerMetrics
from quantship.server.service import ModelService, Phase
from quantship.server.settings import ServerSettings

log = logging.getLogger("quantship.server")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    endpoint: Callable[..., Any]
    summary: str
    responses: dict[int | str, dict[str, Any]]
    openapi_extra: dict[str, Any] | None = None
    response_class: type[Response] = field(default=JSONResponse)
    hot: bool = False
    """Served as a plain Starlette route: the endpoint takes the Request and reads path parameters
    itself, skipping FastAPI's per-request dependency solving (measured ~100 µs of CPU a request,
    as much as the rest of the inference path for the digits model). Documented all the same."""


class Endpoints:
    """The handlers. Each one is a few lines over the service; errors are ServerErrors, mapped once."""

    def __init__(
        self,
        service: ModelService,
        metrics: ServerMetrics,
        registry: CollectorRegistry,
        body: BodyLimits,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.registry = registry
        self.body = body

    def routes(self) -> list[Route]:
        model_errors = schema.errors(404, 503)
        infer = {
            **schema.ok(schema.InferenceResponse, "The outputs.", binary=True),
            **schema.errors(400, 404, 408, 413, 429, 500, 503),
        }
        infer_body = schema.request_body(schema.INFERENCE_REQUEST, binary=True)
        metadata = {**schema.ok(schema.ModelMetadata, "Inputs and outputs."), **model_errors}
        ready = {**schema.ok(schema.ModelReady, "Serving."), **model_errors}
        feedback = {
            **schema.ok(schema.FeedbackResponse, "Counted."),
            **schema.errors(400, 404, 408, 409, 413, 503),
        }
        metrics: dict[int | str, dict[str, Any]] = {
            200: {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        }
        v2_model, v2_version = "/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"
        return [
            Route("GET", "/v2", self.server_metadata, "Server metadata",
                  schema.ok(schema.ServerMetadata, "Name, version, extensions.")),
            Route("GET", "/v2/health/live", self.live, "Liveness", schema.ok(schema.Live, "Up.")),
            Route("GET", "/v2/health/ready", self.ready, "Readiness",
                  {**schema.ok(schema.Ready, "Serving."), **schema.errors(503)}),
            Route("GET", v2_model, self.model_metadata, "Model metadata", metadata),
            Route("GET", v2_version, self.version_metadata, "Model version metadata", metadata),
            Route("GET", f"{v2_model}/ready", self.model_ready, "Model readiness", ready),
            Route("GET", f"{v2_version}/ready", self.version_ready, "Model version readiness", ready),
            Route("POST", f"{v2_model}/infer", self.infer, "Inference", infer, infer_body, Response,
                  hot=True),
            Route("POST", f"{v2_version}/infer", self.infer, "Inference on a version", infer, infer_body,
                  Response, hot=True),
            Route("POST", f"{v2_model}/feedback", self.feedback, "Ground-truth label feedback", feedback,
                  schema.request_body(schema.FEEDBACK_REQUEST)),
            Route("GET", "/metrics", self.prometheus, "Prometheus metrics", metrics,
                  response_class=PlainTextResponse),
        ]  # fmt: skip

    # -- health and metadata --------------------------------------------------------------------

    async def server_metadata(self) -> JSONResponse:
        return JSONResponse(self.service.server_metadata())

    async def live(self) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(self) -> JSONResponse:
        self.service.ready_model()
        return JSONResponse({"ready": True})

    async def model_metadata(self, model_name: str) -> JSONResponse:
        self.service.check_model(model_name)
        return JSONResponse(self.service.model_metadata())

    async def version_metadata(self, model_name: str, model_version: str) -> JSONResponse:
        self.service.check_model(model_name, model_version)
        return JSONResponse(self.service.model_metadata())

    async def model_ready(self, model_name: str) -> JSONResponse:
        return self._model_ready(model_name, None)

    async def version_ready(self, model_name: str, model_version: str) -> JSONResponse:
        return self._model_ready(model_name, model_version)

    def _model_ready(self, model_name: str, model_version: str | None) -> JSONResponse:
        self.service.check_model(model_name, model_version)
        self.service.ready_model()
        return JSONResponse({"name": model_name, "ready": True})

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    # -- inference and feedback -----------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        started, code = time.perf_counter(), 500
        self.metrics.requests_in_flight.inc()
        try:
            self.service.check_model(
                request.path_params["model_name"], request.path_params.get("model_version")
            )
            self.service.ready_model()  # 503 before reading a body we could not use
            body = await read_body(request, self.body)
            decoded = await decode(body, request.headers.get(protocol.HEADER_LENGTH))
            encoded = protocol.encode_response(await self.service.infer(decoded), decoded)
            code = 200
        except ServerError as exc:
            code = exc.status
            raise
        finally:
            self.metrics.requests_in_flight.dec()
            self.metrics.request_done(code, time.perf_counter() - started)
        headers = (
            None if encoded.header_length is None else {protocol.HEADER_LENGTH: str(encoded.header_length)}
        )
        return Response(encoded.body, media_type=encoded.content_type, headers=headers)

    async def feedback(self, request: Request, model_name: str) -> JSONResponse:
        self.service.check_model(model_name)
        self.service.ready_model()
        body = await read_body(request, self.body)
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidInput(f"feedback is not valid JSON: {exc}") from None
        if (
            not isinstance(document, dict)
            or not isinstance(document.get("id"), str)
            or "label" not in document
        ):
            raise InvalidInput('feedback must be {"id": "<request id>", "label": <class id or list of them>}')
        result = await self.service.feedback(document["id"], document["label"])
        return JSONResponse(
            {
                "id": result.id,
                "rows": result.rows,
                "quantized_correct": result.quantized_correct,
                "reference_correct": result.reference_correct,
            }
        )


INLINE_DECODE_BYTES = 64 * 1024
"""JSON up to this size decodes on the event loop (tens of microseconds); more, a JSON batch of
images say, decodes in a thread so that it does not stall every other request for milliseconds.
Binary tensors are never parsed (views of the body), so only the JSON header counts."""


async def decode(body: bytes, header_length: str | None) -> protocol.InferRequest:
    json_bytes = len(body) if header_length is None or not header_length.isdigit() else int(header_length)
    if json_bytes <= INLINE_DECODE_BYTES:
        return protocol.decode_request(body, header_length)
    return await asyncio.to_thread(protocol.decode_request, body, header_length)


@dataclass(frozen=True)
class BodyLimits:
    """What a request body may cost the server: bytes (--max-body-bytes) and seconds (--body-timeout-s)."""

    max_bytes: int
    timeout_s: float


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limits.max_bytes`, with 408 when it
    has not all arrived within `limits.timeout_s`, and with 499 when the client hangs up before the end
    (starlette's ClientDisconnect would otherwise surface as an unhandled error: a 500)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; this server takes at most {limits.max_bytes} (--max-body-bytes)"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise PayloadTooLarge(
                        f"the body is over {limits.max_bytes} bytes, the most this server takes "
                        "(--max-body-bytes)"
                    )
                chunks.append(chunk)
    except TimeoutError:
        log.info(
            "%s: body not received within %g s (%d of %s bytes); answered 408",
            _client(request), limits.timeout_s, size, declared or "?",
        )  # fmt: skip
        raise RequestTimeout(
            f"the body did not arrive within {limits.timeout_s:g} s ({size} of {declared or '?'} bytes "
            "received; --body-timeout-s)"
        ) from None
    except ClientDisconnect:
        log.info(
            "%s: client disconnected after %d of %s body bytes; counted as 499",
            _client(request), size, declared or "?",
        )  # fmt: skip
        raise ClientClosedRequest("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _client(request: Request) -> str:
    peer = request.client
    where = f"{peer.host}:{peer.port}" if peer else "a client"
    return f"{where} {request.method} {request.url.path}"


def create_app(
    settings: ServerSettings,
    *,
    registry: CollectorRegistry | None = None,
    service: ModelService | None = None,
) -> FastAPI:
    """The app: metrics, service, routes, error handlers, the OpenAPI document, and a lifespan that
    loads the model (and starts gRPC) on startup and drains within one budget on shutdown."""
    registry = registry if registry is not None else CollectorRegistry()
    if service is None:
        service = ModelService(settings, ServerMetrics(
            registry, settings.labels, max_batch_size=settings.batching.max_batch_size,
            per_tensor=settings.quality.per_tensor_metrics,
        ))  # fmt: skip
    budget = ShutdownBudget(settings.drain_timeout_s)
    app = FastAPI(
        title="quantship model server",
        version=__version__,
        description="Open Inference Protocol v2 (REST, with the binary tensor extension; gRPC on its own "
        "port), label feedback and Prometheus metrics with the quantization SLIs.",
        lifespan=_lifespan(settings, service, budget),
        redoc_url=None,
    )
    app.state.service, app.state.shutdown = service, budget
    body = BodyLimits(settings.max_body_bytes, settings.body_timeout_s)
    endpoints = Endpoints(service, service.metrics, registry, body)
    documented = _add_routes(app, endpoints.routes())
    install_handlers(app)
    app.openapi = _openapi(app, settings, service, documented)  # type: ignore[method-assign]
    return app


@dataclass
class ShutdownBudget:
    """One drain budget from the moment shutdown begins (the signal), shared by uvicorn's connection
    drain, gRPC's and the service's: each gets what the ones before it left."""

    seconds: float
    started: float | None = None

    def begin(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def left(self) -> float:
        if self.started is None:
            return self.seconds
        return max(0.0, self.seconds - (time.monotonic() - self.started))


def _lifespan(
    settings: ServerSettings, service: ModelService, budget: ShutdownBudget
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        rpc = None
        if settings.grpc_port is not None:
            rpc = await grpc_server.start_grpc(
                grpc_server.GrpcEndpoints(service, service.metrics),
                settings.host, settings.grpc_port, settings.max_body_bytes,
            )  # fmt: skip
        try:
            yield
        finally:
            budget.begin()
            if rpc is not None:
                await rpc.stop(budget.left())
            await service.close(budget.left())

    return lifespan


def _add_routes(app: FastAPI, routes: list[Route]) -> list[APIRoute]:
    """Add the routes; return the hot ones as FastAPI would describe them (for the OpenAPI document)."""
    documented: list[APIRoute] = []
    for route in routes:
        options: dict[str, Any] = {
            "methods": [route.method],
            "summary": route.summary,
            "responses": route.responses,
            "response_model": None,
            "response_class": route.response_class,
            "openapi_extra": route.openapi_extra,
        }
        if route.hot:  # matched first: Starlette tries routes in order, and this is the busy one
            app.router.routes.insert(
                len(documented), StarletteRoute(route.path, route.endpoint, methods=[route.method])
            )
            extra = {**(route.openapi_extra or {}), "parameters": schema.path_parameters(route.path)}
            documented.append(APIRoute(route.path, route.endpoint, **{**options, "openapi_extra": extra}))
        else:
            app.add_api_route(route.path, route.endpoint, **options)
    return documented


def _openapi(
    app: FastAPI, settings: ServerSettings, service: ModelService, documented: list[APIRoute]
) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        """FastAPI's document, amended; once the model is loaded, with an example request that fits it."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=[*app.routes, *documented],
        )
        document = schema.without_validation_errors(document)
        document = schema.pin_path_parameters(
            document, {"model_name": settings.model_name, "model_version": settings.revision}
        )
        if service.phase is Phase.LOADING:
            return document  # not cached: the example comes with the model
        if service.model is not None:
            example = schema.infer_example(service.model.runner.signature)
            if example is not None:
                document = schema.with_infer_example(document, example)
        app.openapi_schema = document
        return document

    return openapi


class _Server(uvicorn.Server):
    """uvicorn, starting the drain budget and flushing the batcher the moment shutdown begins, not
    after uvicorn has waited for connections whose requests sit in the batcher."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        budget: ShutdownBudget = self.app.state.shutdown
        budget.begin()
        self.app.state.service.hurry()
        self.config.timeout_graceful_shutdown = math.ceil(budget.left())
        await super().shutdown(sockets)


def serve(settings: ServerSettings, *, log_level: str = "info", access_log: bool = False) -> None:
    """Run the server in this process until SIGTERM or SIGINT, then drain within
    `settings.drain_timeout_s` in all and exit."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        **connections.uvicorn_options(settings.idle_timeout_s),
    )
    _Server(config, app).run()
