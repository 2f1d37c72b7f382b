"""The compute-heavy cell of the peer benchmark: EfficientNet-Lite0 INT8, one request at a time.

One 224x224 image is 602 KB of float32. In JSON that is 1.5 MB of text whose parsing would be the
measurement, so each server gets the binary path it has: gRPC v2 with `raw_input_contents` for all
three (one Python grpcio client on core 0, one call at a time), and for quantship also the HTTP
binary tensor extension (wrk, a Lua script that sends the same bytes). The artifact is what the
tuner ships for this model (`quantize` with its defaults on the zoo's calibration and evaluation
data: U8S8 per-channel QDQ on a VNNI CPU); peers serve its model.onnx. Every server and raw
onnxruntime run 2 intra-op threads on both cores, the setting of issue 11's measurement; quantship
keeps its default SLIs (shadow and clip at 5%, within --sli-cpu-budget). Raw onnxruntime is
session.run on the same row in a loop, the better of its threads spinning (onnxruntime's default, the
peers') and asleep (quantship's and the floor's): the ceiling. The figure that matters is the share of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from benchmarks.floor_server import MAX_MESSAGE
from benchmarks.percentile import nearest_rank
from benchmarks.process_cpu import cpu_seconds
from quantship import artifact, zoo
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import free_port
from quantship.quantize import QuantizeConfig
from quantship.quantize import run as quantize
from quantship.server.grpc_v2 import inference_pb2 as pb

ZOO = Path(__file__).resolve().parents[1] / "build" / "zoo"
"""The zoo `make real-models` builds, at the repository root whatever the working directory."""
MODEL = "efficientnet-lite0"
THREADS = 2
SECONDS = int(float(os.environ.get("PEERS_HEAVY_SECONDS", 10)))
"""Whole seconds: wrk takes only those, and a cell's CPU a request divides by per_s * SECONDS."""
WARMUP_CALLS = 10
CLIENT_CORE = 0
INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class HeavyCell:
    per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float | None
    load: float


def build(workdir: Path) -> tuple[Path, np.ndarray]:
    """The tuned INT8 artifact of EfficientNet-Lite0 and one request row (the zoo builds the model)."""
    subprocess.run(
        [sys.executable, "-m", "quantship", "zoo", "build", str(ZOO), "--model", MODEL], check=True
    )
    sample = zoo.SampleModel(ZOO / MODEL)
    root = workdir / "peers-effnet-int8"
    if not (root / artifact.MANIFEST_FILE).exists():  # one tuning per `make bench`: suites share workdir
        quantize(
            sample.model, root, QuantizeConfig(), calibration=sample.calibration, evaluation=sample.evaluation
        )
    with np.load(sample.requests) as requests:
        row = np.ascontiguousarray(requests[requests.files[0]][:1], dtype=np.float32)
    return root, row


def grpc_request(model: str, name: str, row: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=list(row.shape))
    request.raw_input_contents.append(row.tobytes())
    return request.SerializeToString()


def grpc_caller(port: int, payload: bytes) -> tuple[Callable[[], None], Callable[[], None]]:
    """A call that sends the request and checks the answer, and a close; raw bytes, so the client
    costs the same for every server."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
    call = channel.unary_unary(INFER)

    def infer() -> None:
        answer = pb.ModelInferResponse.FromString(call(payload, timeout=60))
        if not answer.outputs:
            raise RuntimeError("a ModelInfer answer without outputs")

    return infer, channel.close


def measure(call: Callable[[], None], pid: int) -> HeavyCell:
    for _ in range(WARMUP_CALLS):
        call()
    before, latencies = cpu_seconds(pid), []
    started = time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        sent = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - sent)
    elapsed, used = time.perf_counter() - started, cpu_seconds(pid) - before
    ordered = sorted(latencies)
    return HeavyCell(
        len(latencies) / elapsed,
        statistics.median(ordered) * 1e3,
        nearest_rank(ordered, 0.99) * 1e3,
        used / len(latencies) * 1e3,
        os.getloadavg()[0],
    )


def binary_script(stem: Path, header: bytes, tensors: bytes) -> Path:
    """A wrk script (stem.lua) that POSTs a binary-extension request: the JSON header, then the
    tensors' bytes (kept in stem.body, which the script reads)."""
    body, script = stem.with_suffix(".body"), stem.with_suffix(".lua")
    body.write_bytes(header + tensors)
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"\n'
        f'local file = io.open("{body}", "rb")\nwrk.body = file:read("*all")\nfile:close()\n'
    )
    return script


def wrk_binary(wrk: str, url: str, model: str, name: str, row: np.ndarray, workdir: Path) -> str:
    """wrk's output for one connection sending the binary-extension request for SECONDS."""
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(row.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": row.nbytes}}],
    }).encode()  # fmt: skip
    script = binary_script(workdir / "effnet-binary", header, row.tobytes())
    command = ["taskset", "-c", str(CLIENT_CORE), wrk, "-t1", "-c1", f"-d{SECONDS}s", "--latency",
               "-s", str(script), f"{url}/v2/models/{model}/infer"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


SLIS_OFF = ("--shadow-rate", "0", "--clip-sample-rate", "0")
"""`quantship serve` flags that sample nothing for the SLIs: what their default costs is measured against."""


@contextmanager
def quantship_server(
    artifact: Path, workdir: Path, *flags: str, log_name: str = "quantship-heavy"
) -> Iterator[tuple[ServerProcess, int]]:
    grpc_port = free_port()
    server = ServerProcess(
        artifact, model="m", revision="bench",
        extra_args=["--threads", str(THREADS), "--grpc-port", str(grpc_port), "--log-level", "warning",
                    *flags],
        log_path=workdir / f"{log_name}.log",
    )  # fmt: skip
    server.start()
    try:
        asyncio.run(server.wait_ready())
        yield server, grpc_port
    finally:
        server.stop()


@contextmanager
def pinned_client() -> Iterator[None]:
    """This thread on the client's core while it measures, and only then: a process started from a
    pinned thread inherits its affinity, and servers started that way ran both of their onnxruntime
    threads on the client's one core (every server read 11-45% of raw onnxruntime)."""
    with pinned_to(CLIENT_CORE):
        yield


@contextmanager
def pinned_to(core: int) -> Iterator[None]:
    """This thread on `core` for the block, its affinity restored after."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)
