"""A served model's onnxruntime threads sleep while nothing needs them: onnxruntime's own default keeps
them spinning after every call, burning the CPU the event loop, the SLIs and the next request need."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact, runtime
from quantship.local.processes import ServerProcess

WIDTHS = (256, 1024, 1024, 10)
"""MatMuls big enough that onnxruntime splits them across two threads (a 1-row call: ~0.1 ms here)."""
REQUESTS = 10
GAP_S = 0.1


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process `pid` so far, as benchmarks/process_cpu.py reads them
    (`benchmarks` is not an installed package: the tests do not import it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mlp_artifact(out: Path) -> Path:
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "X"
    for index, (rows, columns) in enumerate(itertools.pairwise(WIDTHS)):
        weight = rng.standard_normal((rows, columns)).astype(np.float32) / 30
        weights.append(numpy_helper.from_array(weight, f"w{index}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [f"h{index}"]))
        previous = f"h{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", WIDTHS[0]])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", WIDTHS[-1]])],
        weights,
    )
    model = out.with_suffix(".onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    manifest = {"quantization": {"precision": "fp32", "mode": "none"}}
    return artifact.write_artifact(out, {artifact.MODEL_FILE: model}, manifest).root


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_artifact(tmp_path_factory.mktemp("spinning") / "mlp")


@pytest.fixture
def two_thread_server(mlp: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(mlp, model=MODEL, revision="r1", extra_args=["--threads", "2"],
                           log_path=tmp_path / "server.log")  # fmt: skip
    server.start()
    try:
        asyncio.run(server.wait_ready())
        yield server
    finally:
        server.stop()


def test_a_served_models_threads_use_no_cpu_between_requests(two_thread_server: ServerProcess) -> None:
    """Spinning (onnxruntime's default), these requests cost the server 0.39-0.46 CPU seconds here:
    its two threads go on spinning after each call. Asleep, a request costs about a millisecond."""
    body = {"inputs": [{"name": "X", "shape": [1, WIDTHS[0]], "datatype": "FP32", "data": [0.5] * WIDTHS[0]}]}
    assert two_thread_server.pid is not None
    with httpx.Client() as client:
        client.post(f"{two_thread_server.url}/v2/models/{MODEL}/infer", json=body)  # connected, warm
        before = cpu_seconds(two_thread_server.pid)
        for _ in range(REQUESTS):
            assert (
                client.post(f"{two_thread_server.url}/v2/models/{MODEL}/infer", json=body).status_code == 200
            )
            time.sleep(GAP_S)
    used = cpu_seconds(two_thread_server.pid) - before
    assert used < 0.1, f"{used:.2f} CPU seconds for {REQUESTS} requests {GAP_S:g} s apart"


@pytest.mark.parametrize("spinning", [False, True])
def test_the_serving_session_spins_only_when_told(mlp: Path, spinning: bool) -> None:
    server = LocalServer(settings_for(mlp, "r1", threads=2, onnxruntime_spinning=spinning)).start()
    try:
        options = server.service.ready_model().runner.session.get_session_options()
        assert options.get_session_config_entry(runtime.ALLOW_SPINNING) == str(int(spinning))
    finally:
        server.stop()
