"""The baseline of benchmarks/server.py: the FastAPI endpoint one writes first, one session.run per request.

It speaks the same JSON request and response as quantship serve (Open Inference Protocol v2, one
input), so one client measures both. Two flavours: `app` calls session.run on the event loop (an
`async def` route), `threadpool_app` in Starlette's thread pool (a plain `def` route, as FastAPI's
docs advise for blocking calls). The session is built like quantship's (`runtime.create_session`),
from NAIVE_MODEL with NAIVE_THREADS intra-op threads. Run: `uvicorn benchmarks.naive_server:app`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request

from quantship import runtime

session = runtime.create_session(
    Path(os.environ["NAIVE_MODEL"]), threads=int(os.environ.get("NAIVE_THREADS", "1"))
)
outputs = [output.name for output in session.get_outputs()]
app = FastAPI()
threadpool_app = FastAPI()


def answer(name: str, body: dict[str, Any]) -> dict[str, Any]:
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    values = session.run(outputs, {tensor["name"]: x})
    return {
        "model_name": name,
        "outputs": [
            {"name": n, "datatype": "FP32" if v.dtype == np.float32 else "INT64", "shape": list(v.shape),
             "data": v.ravel().tolist()}
            for n, v in zip(outputs, values, strict=True)
        ],
    }  # fmt: skip


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> dict[str, Any]:
    return answer(name, await request.json())


@threadpool_app.post("/v2/models/{name}/infer")
def infer_in_threadpool(name: str, body: dict[str, Any]) -> dict[str, Any]:
    return answer(name, body)
