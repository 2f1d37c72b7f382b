"""The least a Python server can do for the peers suite's requests: a floor, not a product.

A bare ASGI function on uvicorn as quantship runs it (httptools, uvloop, quantship's HTTP protocol
that sends a response in one write: server/connections.py): read the body, parse the v2 JSON with
orjson, one onnxruntime session.run on the event loop, write the outputs as v2 JSON. No
validation, errors, metrics, batching or SLIs. It answers what any Python server on this stack could
at best, so the peers table shows how much of a cell is the server and how much is onnxruntime and
HTTP. At c=1, where batching has nothing to merge, a server on uvicorn does no less than this: where
the floor is under 2x a peer there, none reaches 2x. With concurrency, batching can beat it.

`python -m benchmarks.floor_server MODEL PORT` (one intra-op thread, like every server in the suite).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn

from quantship import runtime
from quantship.server import connections, protocol


def app_for(session: ort.InferenceSession) -> Any:
    names = [output.name for output in session.get_outputs()]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        feed = {
            tensor["name"]: np.asarray(tensor["data"], dtype=protocol.DATATYPES[tensor["datatype"]]).reshape(
                tensor["shape"]
            )
            for tensor in orjson.loads(body)["inputs"]
        }
        outputs = [
            {"name": name, "shape": list(value.shape), "datatype": protocol.datatype_of(value.dtype),
             "data": value.ravel().tolist()}
            for name, value in zip(names, session.run(names, feed), strict=True)
        ]  # fmt: skip
        answer = orjson.dumps({"model_name": "m", "outputs": outputs})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def main(model: str, port: int) -> None:
    session = runtime.create_session(Path(model), threads=1)  # quantship's session options
    uvicorn.run(app_for(session), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http=connections.HttpProtocol)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
