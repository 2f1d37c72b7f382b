"""Server CPU a request on the binary paths, beside the floor of each transport.

Issue 11 asks for <= 100 µs of server CPU a request on the binary/gRPC path for a tiny model. What
a Python server can reach is bounded by its transport before any model runs, so each quantship
figure stands beside the same transport answering a constant from an empty handler:

    bare uvicorn         a raw ASGI app under uvicorn (httptools, uvloop, quantship's one-write HTTP
                         protocol): reads the body, answers 40 bytes
    bare grpc.aio        a generic grpc.aio handler returning 40 bytes (the server quantship runs)
    quantship HTTP bin   POST /v2/models/m/infer with the binary tensor extension, one row in and out
    quantship gRPC       ModelInfer with raw_input_contents, one row

on digits INT8 (a 64-input MLP; onnxruntime alone runs one row in ~15 µs), default SLIs, one
onnxruntime thread. Each server runs in its own process pinned to core 1; the load comes from this
process on core 0 (aiohttp / grpc.aio clients, `c` callers in a closed loop), and CPU is the
server process's (/proc/PID/stat) over the measured seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.peers import LOAD_CORE, SERVER_CORE, PinnedServer
from benchmarks.process_cpu import cpu_seconds
from quantship import zoo
from quantship.local.prometheus import free_port
from quantship.quantize import QuantizeConfig
from quantship.quantize import run as quantize
from quantship.server import connections
from quantship.server.grpc_v2 import inference_pb2 as pb

CONCURRENCY = (1, 8, 32)
SECONDS = float(os.environ.get("TRANSPORT_SECONDS", 4))
WARMUP_S = 1.0
CLIENT_CORE, SERVER_CORE_ID = int(LOAD_CORE), int(SERVER_CORE)  # the peers suite's cores
INFER = "/inference.GRPCInferenceService/ModelInfer"
ANSWER = b"x" * 40

Load = Callable[[int, float], Coroutine[Any, Any, int]]
"""(concurrency, seconds) -> requests answered."""


# -- the floors: the transports with nothing behind them ----------------------------------------------


async def _bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": ANSWER})


def _serve_bare_http(port: int) -> None:
    import uvicorn

    os.sched_setaffinity(0, {SERVER_CORE_ID})
    uvicorn.run(_bare_asgi, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                http=connections.HttpProtocol)  # fmt: skip


def _serve_bare_grpc(port: int) -> None:
    os.sched_setaffinity(0, {SERVER_CORE_ID})

    async def answer(request: bytes, context: Any) -> bytes:
        return ANSWER

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(answer)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


@contextmanager
def bare(target: Callable[[int], None]) -> Iterator[tuple[int, int]]:
    """(pid, port) of a floor server in its own process."""
    port = free_port()
    process = get_context("spawn").Process(target=target, args=(port,), daemon=True)
    process.start()
    try:
        time.sleep(2.0)  # imports and bind; the warm-up round absorbs the rest
        assert process.pid is not None
        yield process.pid, port
    finally:
        process.kill()
        process.join(5)


# -- load ---------------------------------------------------------------------------------------------


def http_load(url: str, body: bytes, headers: dict[str, str]) -> Load:
    async def run(concurrency: int, seconds: float) -> int:
        done, stop = 0, time.perf_counter() + seconds
        async with aiohttp.ClientSession() as session:

            async def caller() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    async with session.post(url, data=body, headers=headers) as answer:
                        if answer.status != 200:
                            raise RuntimeError(f"{url} answered {answer.status}: {await answer.text()}")
                        await answer.read()
                    done += 1

            await asyncio.gather(*(caller() for _ in range(concurrency)))
        return done

    return run


def grpc_load(port: int, payload: bytes) -> Load:
    async def run(concurrency: int, seconds: float) -> int:
        done, stop = 0, time.perf_counter() + seconds
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(INFER)

            async def caller() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    await call(payload)
                    done += 1

            await asyncio.gather(*(caller() for _ in range(concurrency)))
        return done

    return run


def cpu_us_per_request(pid: int, load: Load, concurrency: int) -> tuple[float, float]:
    """(requests a second, server CPU µs a request)."""
    asyncio.run(load(concurrency, WARMUP_S))
    before, started = cpu_seconds(pid), time.perf_counter()
    answered = asyncio.run(load(concurrency, SECONDS))
    elapsed, used = time.perf_counter() - started, cpu_seconds(pid) - before
    return answered / elapsed, used / answered * 1e6


# -- the run -----------------------------------------------------------------------------------------


def run(workdir: Path) -> None:
    console = Console(width=200)
    sample = zoo.build_digits(workdir / "transport-zoo")
    built = quantize(
        sample.model, workdir / "transport-digits-int8", QuantizeConfig(), calibration=sample.calibration
    )
    row = np.load(sample.requests)[zoo.INPUT_NAME][:1].astype(np.float32)
    header = json.dumps({
        "inputs": [{"name": zoo.INPUT_NAME, "shape": [1, row.shape[1]], "datatype": "FP32",
                    "parameters": {"binary_data_size": row.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    binary_headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name=zoo.INPUT_NAME, datatype="FP32", shape=[1, row.shape[1]])
    request.raw_input_contents.append(row.tobytes())
    payload = request.SerializeToString()

    os.sched_setaffinity(0, {CLIENT_CORE})
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    loads: list[float] = []
    with bare(_serve_bare_http) as (pid, port):
        load = http_load(f"http://127.0.0.1:{port}/v2/models/m/infer", header + row.tobytes(), binary_headers)
        rows["bare uvicorn (floor)"] = {c: cpu_us_per_request(pid, load, c) for c in CONCURRENCY}
    with bare(_serve_bare_grpc) as (pid, port):
        rows["bare grpc.aio (floor)"] = {
            c: cpu_us_per_request(pid, grpc_load(port, payload), c) for c in CONCURRENCY
        }
    loads.append(os.getloadavg()[0])
    grpc_port = free_port()
    server = PinnedServer(  # on SERVER_CORE from the start: its batch policy reads the CPUs it may use
        built.artifact.root, model="m", revision="bench",
        extra_args=["--threads", "1", "--grpc-port", str(grpc_port), "--log-level", "warning"],
        log_path=workdir / "transport-quantship.log",
    )  # fmt: skip
    server.start()
    try:
        asyncio.run(server.wait_ready())
        assert server.pid is not None
        load = http_load(f"{server.url}/v2/models/m/infer", header + row.tobytes(), binary_headers)
        rows["quantship HTTP binary"] = {c: cpu_us_per_request(server.pid, load, c) for c in CONCURRENCY}
        load = grpc_load(grpc_port, payload)
        rows["quantship gRPC"] = {c: cpu_us_per_request(server.pid, load, c) for c in CONCURRENCY}
    finally:
        server.stop()
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    loads.append(os.getloadavg()[0])

    table = Table(
        title="server CPU µs a request (req/s), digits INT8, one row a request; floors answer a constant"
    )
    table.add_column("server, transport")
    for c in CONCURRENCY:
        table.add_column(f"c={c}", justify="right")
    for name, cells in rows.items():
        table.add_row(name, *(f"{cpu:.0f} µs ({per_s:,.0f}/s)" for per_s, cpu in cells.values()))
    console.print(table)
    console.print(f"1-minute load average: {min(loads):.2f}-{max(loads):.2f} (2 cores)")
