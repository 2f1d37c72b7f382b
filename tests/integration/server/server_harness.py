"""Real model servers on loopback ports for the server's integration tests: `create_app` under uvicorn in a
thread of the test process (to read its registry and state). Tests where the process itself is
under test use quantship.local.processes.ServerProcess instead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from quantship import artifact
from quantship.local.prometheus import free_port
from quantship.server import ServerSettings, Track, connections, create_app
from quantship.server.metrics import ServerMetrics
from quantship.server.service import ModelService

MODEL = "digits"
ServiceFactory = Callable[[ServerSettings, ServerMetrics], ModelService]


def wait_until(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; generous deadlines for a loaded 2-core box."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def error_answer(answer: bytes, status: int) -> str:
    """The message of an error answer read off a socket up to its close (status line, headers,
    body), checked to be what tritonclient reads: `{"error": "..."}` as JSON, of the length it
    says, the connection closed after it."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith(f"HTTP/1.1 {status} "), answer[:200]
    fields = (line.partition(":") for line in lines)
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    assert headers.get("content-type") == "application/json", headers
    assert headers.get("connection") == "close", headers
    assert headers.get("content-length") == str(len(body)), (headers, body)
    document = json.loads(body)
    assert list(document) == ["error"] and isinstance(document["error"], str), document
    return str(document["error"])


@contextlib.contextmanager
def protocol_serving(app: Any, loop: str, idle_timeout_s: float) -> Iterator[tuple[uvicorn.Server, int]]:
    """A bare ASGI `app` behind uvicorn with quantship's HTTP protocol (connections.HttpProtocol), on
    `loop` (uvloop or asyncio), in a thread of this process: the server, and its port on 127.0.0.1."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, loop=loop, lifespan="off", log_level="warning",
        **connections.uvicorn_options(idle_timeout_s, ServerSettings.max_header_bytes),
    )  # fmt: skip
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    wait_until(lambda: runner.started, what="uvicorn to start")
    try:
        yield runner, port
    finally:
        runner.should_exit = True
        thread.join(timeout=10)


class LocalServer:
    """`create_app(settings)` served by a real uvicorn on 127.0.0.1, in a thread of this process."""

    def __init__(
        self, settings: ServerSettings, service: ServiceFactory = ModelService, *, our_protocol: bool = False
    ) -> None:
        """`service` builds the model service (a subclass, to put a fault where no input can).
        `our_protocol`: connections as `quantship serve` has them (connections.HttpProtocol), not
        uvicorn's own."""
        self.settings = settings
        self.registry = CollectorRegistry()
        metrics = ServerMetrics(
            self.registry, settings.labels, max_batch_size=settings.batching.max_batch_size,
            per_tensor=settings.quality.per_tensor_metrics,
        )  # fmt: skip
        self.app = create_app(settings, registry=self.registry, service=service(settings, metrics))
        options = connections.uvicorn_options(settings.idle_timeout_s, settings.max_header_bytes)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=settings.port, log_level="warning", loop="asyncio",
            lifespan="on", **(options if our_protocol else {}),
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn:{settings.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def service(self) -> ModelService:
        service = self.app.state.service
        assert isinstance(service, ModelService)
        return service

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {**self.settings.labels, **labels})
        return 0.0 if value is None else value

    def start(self, *, ready: bool = True) -> LocalServer:
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")
        if ready:
            wait_until(
                lambda: httpx.get(f"{self.url}/v2/health/ready").status_code == 200, what="model to load"
            )
        return self

    def idle(self) -> None:
        """Until the sampled background work so far is done (shadow and clip lanes)."""
        model = self.service.ready_model()
        loop = self.service.loop
        assert loop is not None
        asyncio.run_coroutine_threadsafe(model.idle(), loop).result(timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def settings_for(loaded: artifact.Artifact | Path, revision: str, **changes: Any) -> ServerSettings:
    root = loaded.root if isinstance(loaded, artifact.Artifact) else loaded
    settings = ServerSettings(
        artifact=root, model_name=MODEL, revision=revision, track=Track.CANARY, port=free_port()
    )
    return replace(settings, **changes)


def fp32_artifact(model: Path, out: Path) -> Path:
    """`model` served as it is (precision fp32): the root of an artifact written to `out`."""
    manifest = {"quantization": {"precision": "fp32", "mode": "none"}}
    return artifact.write_artifact(out, {artifact.MODEL_FILE: model}, manifest).root


def build_token_model(path: Path, vocabulary: int = 100, width: int = 4) -> Path:
    """A MiniLM-shaped toy: int64 `input_ids` and `attention_mask` of shape [batch, seq] (named dims)
    into embeddings masked by the attention mask. Out-of-vocabulary ids fail in Gather, as they do in
    a real transformer."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dims = ["batch", "seq"]
    table = np.arange(vocabulary * width, dtype=np.float32).reshape(vocabulary, width)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
            helper.make_node("Mul", ["embedded", "mask3"], ["hidden"]),
        ],
        "tokens",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [*dims, width])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([2]), "last")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def build_divide_by_input(path: Path, *, offset: int = 0) -> Path:
    """Q = 12 // (D * (D - offset)), on int64: onnxruntime refuses a divisor of 0 ("Integer division by
    zero"), so offset 0 fails on zeros only and offset 1 on zeros and ones."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = helper.make_tensor_value_info("D", TensorProto.INT64, ["N", 2])
    q = helper.make_tensor_value_info("Q", TensorProto.INT64, ["N", 2])
    constants = [
        numpy_helper.from_array(np.array(12, dtype=np.int64), "twelve"),
        numpy_helper.from_array(np.array(offset, dtype=np.int64), "offset"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["D", "offset"], ["shifted"]),
            helper.make_node("Mul", ["D", "shifted"], ["divisor"]),
            helper.make_node("Div", ["twelve", "divisor"], ["Q"]),
        ],
        "divide_by_input",
        [d],
        [q],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def build_picking_model(path: Path) -> Path:
    """FP32 `values` [batch, width], int64 `positions` [batch, picks] and `shifts` [batch, moves]:
    picked = GatherElements(values, positions + shifts, axis=1). Its dimensions are named apart, so no
    check before the call can tell a bad request: an index past `width` or shifts of another length
    than positions fail inside onnxruntime, with FAIL rather than INVALID_ARGUMENT."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["positions", "shifts"], ["moved"]),
            helper.make_node("GatherElements", ["values", "moved"], ["picked"], axis=1),
        ],
        "picking",
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("positions", TensorProto.INT64, ["batch", "picks"]),
            helper.make_tensor_value_info("shifts", TensorProto.INT64, ["batch", "moves"]),
        ],
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["batch", "picks"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def mostly(right: Any, *wrong: Any) -> st.SearchStrategy[Any]:
    """For fuzzing: `right` 8 times in 9, else one of `wrong`, so that most requests get past the early
    checks to the later ones."""
    return st.sampled_from([right] * 8 * len(wrong) + list(wrong))


def shapes(dimensions: st.SearchStrategy[int]) -> st.SearchStrategy[list[int]]:
    """For fuzzing: the digits model's shapes ([rows, 64]) or any of up to four `dimensions`."""
    return st.one_of(st.sampled_from([[1, 64], [2, 64]]), st.lists(dimensions, max_size=4))
