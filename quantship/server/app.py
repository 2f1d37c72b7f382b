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
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route as StarletteRoute
from starlette.types import Receive, Scope, Send

from quantship import __version__
from quantship.server import connections, content_encoding, grpc_server, protocol, schema
from quantship.server.byte_budget import ByteBudget
from quantship.server.errors import InvalidInput, install_handlers
from quantship.server.infer_route import BodyLimits, InferRoute, arrived, cut_by_shutdown, receive_body
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
    """Answered by `InferRoute` before FastAPI sees the request (infer_route.py); the route stays,
    as a plain Starlette route first in the table, to be documented and to answer other methods 405."""
    documented: bool = True
    """In the OpenAPI document; False for a path routed only to be answered as one not served."""


FEEDBACK_FORM = '{"id": "<request id>", "label": <class id or list of them>}'
"""What a feedback body holds, as its error messages say."""


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
            **schema.errors(400, 404, 408, 413, 415, 429, 500, 503),
        }
        infer_body = schema.request_body(schema.INFERENCE_REQUEST, binary=True)
        metadata = {**schema.ok(schema.ModelMetadata, "Inputs and outputs."), **model_errors}
        ready = {**schema.ok(schema.ModelReady, "Serving."), **model_errors}
        feedback = {
            **schema.ok(schema.FeedbackResponse, "Counted."),
            **schema.errors(400, 404, 408, 409, 413, 415, 503),
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
            Route("GET", "/v2/models/stats", self.statistics, "Statistics (not offered)", schema.errors(404),
                  documented=False),
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
        self.service.check_ready()
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
        self.service.check_ready()
        return JSONResponse({"name": model_name, "ready": True})

    async def statistics(self) -> JSONResponse:
        """Triton's statistics extension is not offered: `/v2/models/stats` (every model's, what
        tritonclient asks for without a model name) is answered 404 "no route" as `/v2/models/{m}/stats`
        is, rather than matched by the metadata route as a model named 'stats' (unless that is the
        model served: its metadata, as for any other name)."""
        if self.service.settings.model_name == "stats":
            return await self.model_metadata("stats")
        raise StarletteHTTPException(404)

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    # -- inference and feedback -----------------------------------------------------------------

    @staticmethod
    async def infer(request: Request) -> Response:
        """Inference: `infer_route.InferRoute`, in front of the router, answers every POST to this
        path; the route is here to be documented and to give other methods their 405."""
        raise AssertionError("InferRoute answers inference requests before routing")

    async def feedback(self, request: Request, model_name: str) -> JSONResponse:
        self.service.check_model(model_name)
        self.service.ready_model()
        body = await receive_body(
            request.receive, request.headers.get("content-length", ""), self.body, lambda: _client(request),
            self.service.client_log.log,
            here=arrived(request.scope), cut=lambda: cut_by_shutdown(request.scope),
        )  # fmt: skip
        coding = request.headers.get("content-encoding", "")
        if coding:  # as for inference: inflated off the event loop, within --max-body-bytes
            body = await asyncio.to_thread(content_encoding.decoded, body, coding, self.body.max_bytes)
        document = protocol.parse_json_object(body, f"feedback, {FEEDBACK_FORM}")  # strict, as for inference
        if not isinstance(document.get("id"), str) or "label" not in document:
            raise InvalidInput(f"feedback must be {FEEDBACK_FORM}")
        result = await self.service.feedback(document["id"], document["label"])
        return JSONResponse(
            {
                "id": result.id,
                "rows": result.rows,
                "quantized_correct": result.quantized_correct,
                "reference_correct": result.reference_correct,
            }
        )


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
    body = BodyLimits(settings.max_body_bytes, settings.body_timeout_s)
    endpoints = Endpoints(service, service.metrics, registry, body)
    routes = endpoints.routes()
    app = ModelServerApp(
        InferRoute(
            service,
            service.metrics,
            body,
            [route.path for route in routes if route.hot],
            ByteBudget(settings.json_decode_budget_bytes),
        ),
        title="quantship model server",
        version=__version__,
        description="Open Inference Protocol v2 (REST, with the binary tensor extension; gRPC on its own "
        "port), label feedback and Prometheus metrics with the quantization SLIs.",
        lifespan=_lifespan(settings, service, budget),
        redoc_url=None,
    )
    app.state.service, app.state.shutdown = service, budget
    documented = _add_routes(app, routes)
    install_handlers(app)
    app.openapi = _openapi(app, settings, service, documented)  # type: ignore[method-assign]
    return app


class ModelServerApp(FastAPI):
    """FastAPI, with inference requests handed to `InferRoute` before any of FastAPI's layers."""

    def __init__(self, infer: InferRoute, **options: Any) -> None:
        super().__init__(**options)
        self.infer_route = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = self.infer_route.match(scope)
        if params is not None:
            await self.infer_route(scope, receive, send, params)
        else:
            await super().__call__(scope, receive, send)


DRAIN_RESERVE = 0.25
"""The share of the drain budget that connections (uvicorn's and gRPC's, drained side by side) may
not take: HTTP requests and gRPC calls still unanswered when the rest is spent get 503 (UNAVAILABLE),
and the reserve goes to the model call under way, the sampled work and the capture's last write.
Without it one client dribbling a body, or requests still running, held the whole budget, and the
capture was never written."""


@dataclass
class ShutdownBudget:
    """One drain budget from the moment shutdown begins (the signal), shared by uvicorn's connection
    drain and gRPC's, side by side, then the service's: each gets what the ones before it left."""

    seconds: float
    started: float | None = None
    grpc_stopped: asyncio.Future[None] | None = None
    """gRPC's drain, begun with uvicorn's: no new call is taken from the signal on."""

    def for_connections(self) -> float:
        return max(0.0, self.left() - DRAIN_RESERVE * self.seconds)

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
        rpc = None
        if settings.grpc_port is not None:  # first: a taken port then leaves no model loading behind
            rpc = await grpc_server.start_grpc(
                grpc_server.GrpcEndpoints(service, service.metrics),
                settings.host, settings.grpc_port, settings.max_body_bytes, settings.idle_timeout_s,
            )  # fmt: skip
        service.start()
        app.state.rpc = rpc
        try:
            yield
        finally:
            budget.begin()
            if rpc is not None:
                await (budget.grpc_stopped or rpc.stop(budget.for_connections()))
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
            "include_in_schema": route.documented,
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
            example = schema.infer_example(
                service.model.runner.signature, service.model.opened.artifact.row_shapes
            )
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
        rpc = getattr(self.app.state, "rpc", None)
        if rpc is not None and budget.grpc_stopped is None:
            budget.grpc_stopped = asyncio.ensure_future(rpc.stop(budget.for_connections()))
        # At the connections' deadline, uploads still arriving are cut (a raw 503) and uvicorn cancels
        # the requests still running (InferRoute answers them 503): the rest of the budget, the
        # reserve, is the queued model work's, the background work's and the capture's last write's.
        self.app.state.service.connections_deadline = time.monotonic() + budget.for_connections()
        cut = asyncio.get_running_loop().call_later(budget.for_connections(), self._cut_uploads)
        # a float: uvicorn hands it to asyncio.timeout (typed int; a floor cut requests at 0 under 1.3 s)
        self.config.timeout_graceful_shutdown = budget.for_connections()  # type: ignore[assignment]
        try:
            await super().shutdown(sockets)
        finally:
            cut.cancel()

    def _cut_uploads(self) -> None:
        for connection in list(self.server_state.connections):
            if isinstance(connection, connections.HttpProtocol):
                connection.cut_upload()


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
        **connections.uvicorn_options(settings.idle_timeout_s, settings.max_header_bytes),
    )
    _Server(config, app).run()
