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
onnxruntime thread. Each server runs in its own process pinned to core 1; the load comes from C
clients pinned to core 0, `c` requests in flight in a closed loop: wrk (HTTP/1.1, `c` connections,
as in the peers suite) and h2load (nghttp2's, one HTTP/2 connection with `c` streams, as a gRPC
channel carries its calls). CPU is the server process's (/proc/PID/stat) over the measured seconds.
Every server is up at once, and each cell is measured in ROUNDS rounds, the servers' order flipping
from one to the next; the table shows each cell's median and range.
The suite used Python clients (aiohttp, grpc.aio) until 2026-12-04; on a 2-core host they could
not keep the bare uvicorn floor busy: it answered 2,919 / 7,558 / 8,637 req/s at c = 1 / 8 / 32
under aiohttp and 7,042 / 20,701 / 24,300 under wrk, in the same hour.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks import goals, peers, peers_heavy
from benchmarks.peers import LOAD_CORE, SERVER_CORE, PinnedServer
from benchmarks.process_cpu import cpu_seconds
from benchmarks.server import scrape_sums
from quantship import zoo
from quantship.local.prometheus import free_port
from quantship.quantize import QuantizeConfig
from quantship.quantize import run as quantize
from quantship.server import connections
from quantship.server.grpc_v2 import inference_pb2 as pb
from quantship.slo import Metric

CONCURRENCY = (1, 8, 32)
SECONDS = int(os.environ.get("TRANSPORT_SECONDS", 4))
ROUNDS = int(os.environ.get("TRANSPORT_ROUNDS", 3))
"""Rounds of every cell, the servers' order flipping from round to round, as the peers suite's: a
cell shows the median and the range. On a shared 2-core VM one 4 s round of a cell read up to 1.7x
another a minute apart (2026-12-06), enough to turn the 100 µs verdict either way."""
WARMUP_S = 1
SERVER_CORE_ID = int(SERVER_CORE)  # the peers suite's cores: servers on SERVER_CORE, load on LOAD_CORE
INFER = "/inference.GRPCInferenceService/ModelInfer"
START_TIMEOUT_S = 60.0
"""How long a floor server may take to listen: imports and bind, on a host others may be loading."""
ANSWER = b"x" * 40

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
        wait_listening(port, process.is_alive)
        assert process.pid is not None
        yield process.pid, port
    finally:
        process.kill()
        process.join(5)


def wait_listening(port: int, alive: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
    """Until something accepts connections on `port`, while `alive()`; a fixed sleep was too short on
    a busy host, and the suite crashed on the first request."""
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    if not alive():
        raise RuntimeError(f"the floor server for port {port} exited before it listened")
    raise RuntimeError(f"the floor server did not listen on port {port} within {timeout:g} s")


# -- load ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answered:
    requests: int
    per_s: float


Load = Callable[[int, int], Answered]
"""(concurrency, seconds) -> what a C load generator on the client core had answered."""


def http_load(wrk: str, base_url: str, script: Path) -> Load:
    """wrk as the peers suite runs it (peers.wrk_command: one thread on the load core, `concurrency`
    connections), each posting the script's body to `base_url`/v2/models/m/infer."""

    def run(concurrency: int, seconds: int) -> Answered:
        out = _report(peers.wrk_command(wrk, base_url, script, concurrency, seconds))
        cell = peers.parse_wrk(out, None, seconds)
        if cell.errors:
            raise RuntimeError(f"{base_url}: {cell.errors} requests not answered 200:\n{out}")
        return Answered(int(_find(r"(\d+) requests in", out)), cell.per_s)

    return run


def grpc_load(h2load: str, port: int, frame: Path, metrics_url: str | None = None) -> Load:
    """h2load (nghttp2's C client) on one HTTP/2 connection, as a gRPC channel multiplexes its calls:
    `concurrency` streams, each posting the length-prefixed ModelInferRequest in `frame`. h2load
    reads HTTP statuses, not grpc-status trailers (an error is HTTP 200 to it): `check_grpc_answers`
    proves the payload first, and for a quantship server (`metrics_url`) each run is refused unless
    its requests_total{code="200"} grew by at least what h2load counted as succeeded."""

    def run(concurrency: int, seconds: int) -> Answered:
        ok_before = _answered_ok(metrics_url) if metrics_url else 0.0
        out = _report([
            "taskset", "-c", LOAD_CORE, h2load, "-c1", f"-m{concurrency}", f"-D{seconds}", "-d", str(frame),
            "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://127.0.0.1:{port}{INFER}",
        ])  # fmt: skip
        done, succeeded = (int(n) for n in re.findall(r"(\d+) (?:done|succeeded)", out)[:2])
        if succeeded != done:
            raise RuntimeError(f"gRPC port {port}: {done - succeeded} of {done} requests failed:\n{out}")
        if metrics_url and (ok := _answered_ok(metrics_url) - ok_before) < succeeded:
            raise RuntimeError(
                f"gRPC port {port}: h2load counted {succeeded} requests answered, the server {ok:.0f} "
                "with grpc-status OK (the rest failed in their trailers, which h2load does not read)"
            )
        return Answered(succeeded, float(_find(r"finished in [\d.]+s, ([\d.]+) req/s", out)))

    return run


def _answered_ok(metrics_url: str) -> float:
    """A quantship server's requests answered OK so far (requests_total{code="200"}, gRPC's and HTTP's:
    the suite loads one transport at a time). Not equality with h2load's count: requests still in flight
    when h2load's time ends are answered by the server but not counted by h2load."""
    (ok,) = scrape_sums(metrics_url, Metric.REQUESTS_TOTAL.value, code="200")
    return ok


def grpc_frame(payload: bytes, path: Path) -> Path:
    """gRPC's length-prefixed message: a 0 byte (not compressed), the length in 4 bytes, the message."""
    path.write_bytes(b"\0" + len(payload).to_bytes(4, "big") + payload)
    return path


def check_grpc_answers(port: int, payload: bytes) -> None:
    """One call through grpcio: raises unless the server answers the payload with status OK."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        channel.unary_unary(INFER)(payload, timeout=30, wait_for_ready=True)


def _report(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"no {pattern!r} in the load generator's report:\n{text}")
    return found.group(1)


def _cell(per_s: float, cpu: float, found: list[tuple[float, float]]) -> str:
    spread = [u for _, u in found]
    return f"{cpu:.0f} µs [{min(spread):.0f}-{max(spread):.0f}] ({per_s:,.0f}/s)"


def cpu_us_per_request(pid: int, load: Load, concurrency: int) -> tuple[float, float]:
    """(requests a second, server CPU µs a request)."""
    load(concurrency, WARMUP_S)
    before = cpu_seconds(pid)
    answered = load(concurrency, SECONDS)
    return answered.per_s, (cpu_seconds(pid) - before) / answered.requests * 1e6


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
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name=zoo.INPUT_NAME, datatype="FP32", shape=[1, row.shape[1]])
    request.raw_input_contents.append(row.tobytes())
    payload = request.SerializeToString()

    wrk, h2load = peers.ensure_wrk(), peers.ensure_tool("h2load", "nghttp2-client")
    script = peers_heavy.binary_script(workdir / "transport-binary", header, row.tobytes())
    frame = grpc_frame(payload, workdir / "transport-request.grpc")

    loads = [os.getloadavg()[0]]
    grpc_port = free_port()
    server = PinnedServer(  # on SERVER_CORE from the start: its batch policy reads the CPUs it may use
        built.artifact.root, model="m", revision="bench",
        extra_args=["--threads", "1", "--grpc-port", str(grpc_port), "--log-level", "warning"],
        log_path=workdir / "transport-quantship.log",
    )  # fmt: skip
    with ExitStack() as running:
        http_pid, http_port = running.enter_context(bare(_serve_bare_http))
        grpc_pid, bare_grpc_port = running.enter_context(bare(_serve_bare_grpc))
        server.start()
        running.callback(server.stop)
        asyncio.run(server.wait_ready())
        assert server.pid is not None
        check_grpc_answers(bare_grpc_port, payload)
        check_grpc_answers(grpc_port, payload)
        measured = {
            "bare uvicorn (floor)": (http_pid, http_load(wrk, f"http://127.0.0.1:{http_port}", script)),
            "bare grpc.aio (floor)": (grpc_pid, grpc_load(h2load, bare_grpc_port, frame)),
            "quantship HTTP binary": (server.pid, http_load(wrk, server.url, script)),
            "quantship gRPC": (server.pid, grpc_load(h2load, grpc_port, frame, server.url)),
        }
        rounds: dict[str, dict[int, list[tuple[float, float]]]] = {
            name: {c: [] for c in CONCURRENCY} for name in measured
        }
        for turn in range(ROUNDS):
            order = list(measured) if turn % 2 == 0 else list(reversed(measured))
            for name in order:
                pid, load = measured[name]
                for c in CONCURRENCY:
                    rounds[name][c].append(cpu_us_per_request(pid, load, c))
            loads.append(os.getloadavg()[0])
    rows = {
        name: {c: (statistics.median(r for r, _ in found), statistics.median(u for _, u in found))
               for c, found in cells.items()}
        for name, cells in rounds.items()
    }  # fmt: skip

    table = Table(
        title="server CPU µs a request (req/s), digits INT8, one row a request; floors answer a constant; "
        f"the median of {ROUNDS} rounds, their range in brackets"
    )
    table.add_column("server, transport")
    for c in CONCURRENCY:
        table.add_column(f"c={c}", justify="right")
    for name, cells in rows.items():
        table.add_row(name, *(_cell(per_s, cpu, rounds[name][c]) for c, (per_s, cpu) in cells.items()))
    console.print(table)
    console.print(f"1-minute load average: {min(loads):.2f}-{max(loads):.2f} (2 cores)")
    cpu_us = {name: {c: cpu for c, (_, cpu) in cells.items()} for name, cells in rows.items()}
    goals.show(console, [goals.tiny_cpu_verdict(
        {"HTTP binary": cpu_us["quantship HTTP binary"], "gRPC": cpu_us["quantship gRPC"]},
        {"HTTP binary": cpu_us["bare uvicorn (floor)"], "gRPC": cpu_us["bare grpc.aio (floor)"]},
    )])  # fmt: skip
