"""The model server: Open Inference Protocol v2 over FastAPI + onnxruntime, with the quantization SLIs.

What other parts use: `create_app` (the ASGI app, for tests and embedding), `serve` (the
`quantship serve` command), and the settings dataclasses. Modules inside, each with one job:
protocol (wire format), runner (the onnxruntime session and its calls, over runner_layout,
runner_failures, runner_graph and runner_signature), batcher (dynamic batching), shadow / clipping /
drift / feedback (the SLIs), capture (production inputs for recalibration), hardware, probe and
load_checks (load-time checks), background (their worker lanes), metrics, throttled_log (a repeated
log line at most so often), service (the transport-neutral core), grpc_server (the gRPC transport),
schema (OpenAPI), errors, ports (the check that the ports are free, before anything loads), app
(composition root, routes).

`create_app` and `serve` load on first use: the CLI reads the settings' defaults for its options
without paying for FastAPI and onnxruntime on every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantship.server.settings import BatchSettings, QualitySettings, ServerSettings, Track

if TYPE_CHECKING:
    from quantship.server.app import create_app, serve

__all__ = ["BatchSettings", "QualitySettings", "ServerSettings", "Track", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from quantship.server import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
