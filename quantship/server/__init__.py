"""The model server: Open Inference Protocol v2 over FastAPI + onnxruntime, with the quantization SLIs.

What other parts use: `create_app` (the ASGI app, for tests and embedding), `serve` (the
`quantship serve` command), and the settings dataclasses. Modules inside, each with one job:
protocol (wire format), runner (onnxruntime session and input validation), batcher (dynamic
batching), shadow / clipping / feedback (the SLIs), background (their worker lanes), metrics,
service (the transport-neutral core), schema (OpenAPI), errors, app (composition root, routes).
"""

from quantship.server.app import create_app, serve
from quantship.server.settings import BatchSettings, QualitySettings, ServerSettings, Track

__all__ = ["BatchSettings", "QualitySettings", "ServerSettings", "Track", "create_app", "serve"]
