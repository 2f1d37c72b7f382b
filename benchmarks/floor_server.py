"""The least a Python server can do for the peers suite's requests: a floor, not a product.

A bare ASGI function on uvicorn as quantship runs it (httptools, uvloop, quantship's HTTP protocol
that sends a response in one write: server/connections.py): read the body, parse the v2 JSON with
orjson (or, for the binary tensor extension, its JSON header and the raw bytes after it), one
onnxruntime session.run on the event loop, write the outputs as v2 JSON. With --grpc-port, also a
bare grpc.aio ModelInfer on the same loop: raw_input_contents in, one session.run, raw_output_contents
out. No validation, errors, metrics, batching or SLIs. It answers what any Python server on this
stack could at best, so the peers table shows how much of a cell is the server and how much is
onnxruntime and the transport. At c=1, where batching has nothing to merge, a server on uvicorn or
grpcio does no less than this: where the floor is under 2x a peer, or under 90% of raw
onnxruntime, there none reaches it. With concurrency, batching can beat it.

`python -m benchmarks.floor_server MODEL PORT [--threads N] [--grpc-port PORT]` (one intra-op
thread unless told, like every server of the main table).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import orjson
import uvicorn

from quantship import runtime
from quantship.server import connections, protocol
from quantship.server.grpc_server import SERVICE
from quantship.server.grpc_v2 import inference_pb2 as pb
from quantship.server.settings import ServerSettings

BINARY_HEADER = protocol.HEADER_LENGTH.lower().encode()  # as ASGI gives header names
MAX_MESSAGE = 64 << 20
"""Bytes a gRPC message may have, each way (grpcio's default is 4 MiB; an image request is more)."""


def _json_feed(body: bytes) -> dict[str, np.ndarray]:
    return {
        tensor["name"]: np.asarray(tensor["data"], dtype=protocol.DATATYPES[tensor["datatype"]]).reshape(
            tensor["shape"]
        )
        for tensor in orjson.loads(body)["inputs"]
    }


def _binary_feed(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    """The binary tensor extension: a JSON header, then each input's bytes in the header's order."""
    feed, offset, data = {}, header_length, memoryview(body)
    for tensor in orjson.loads(data[:header_length])["inputs"]:
        size = tensor["parameters"]["binary_data_size"]
        dtype = protocol.DATATYPES[tensor["datatype"]]
        feed[tensor["name"]] = np.frombuffer(data[offset : offset + size], dtype=dtype).reshape(
            tensor["shape"]
        )
        offset += size
    return feed


def app_for(session: ort.InferenceSession, grpc_port: int | None = None) -> Any:
    names = [output.name for output in session.get_outputs()]
    grpc_server: grpc.aio.Server | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal grpc_server
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if grpc_port is not None:
                        grpc_server = await start_grpc(session, grpc_port)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if grpc_server is not None:
                        await grpc_server.stop(None)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        header_length = dict(scope["headers"]).get(BINARY_HEADER)
        feed = _binary_feed(body, int(header_length)) if header_length is not None else _json_feed(body)
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


async def start_grpc(session: ort.InferenceSession, port: int) -> grpc.aio.Server:
    """ModelInfer with raw contents only, on the running loop; the other RPCs are not needed to measure."""
    names = [output.name for output in session.get_outputs()]

    async def model_infer(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        feed = {
            spec.name: np.frombuffer(raw, dtype=protocol.DATATYPES[spec.datatype]).reshape(spec.shape)
            for spec, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        response = pb.ModelInferResponse(model_name="m")
        for name, value in zip(names, session.run(names, feed), strict=True):
            response.outputs.add(name=name, datatype=protocol.datatype_of(value.dtype), shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelInferResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen for gRPC on 127.0.0.1:{port}")
    await server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_server")
    parser.add_argument("model", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--grpc-port", type=int, help="also serve gRPC ModelInfer on this port")
    args = parser.parse_args()
    # quantship's serving session options: what a server adds is the floor's difference, not onnxruntime's
    spinning = ServerSettings.onnxruntime_spinning
    session = runtime.create_session(args.model, threads=args.threads, spinning=spinning)
    uvicorn.run(app_for(session, args.grpc_port), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, loop="uvloop", http=connections.HttpProtocol)  # fmt: skip


if __name__ == "__main__":
    main()
