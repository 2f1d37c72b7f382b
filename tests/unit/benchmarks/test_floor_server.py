"""The peers suite's floor server does the work it stands for: its answers are onnxruntime's, over
JSON, the binary tensor extension and gRPC, so the floor it sets in the tables is an honest one
(benchmarks/floor_server.py, run as the suite runs it; tritonclient as the binary and gRPC client)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from quantship import runtime, zoo
from quantship.local.prometheus import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_the_floor_answers_what_onnxruntime_computes(sample: zoo.SampleModel) -> None:
    rows = np.load(sample.requests)[zoo.INPUT_NAME][:3].astype(np.float32)
    request = {"inputs": [{"name": zoo.INPUT_NAME, "shape": list(rows.shape), "datatype": "FP32",
                           "data": rows.ravel().tolist()}]}  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.floor_server", str(sample.model), str(port)], cwd=ROOT
    )
    try:
        answer = _first_answer(f"http://127.0.0.1:{port}/v2/models/m/infer", request, server)
    finally:
        server.terminate()
        server.wait(30)
    assert answer.status_code == 200, answer.text
    session = runtime.create_session(sample.model, threads=1)
    names = [output.name for output in session.get_outputs()]
    expected = dict(zip(names, session.run(names, {zoo.INPUT_NAME: rows}), strict=True))
    outputs = {output["name"]: output for output in answer.json()["outputs"]}
    assert set(outputs) == set(expected)
    for name, value in expected.items():
        assert outputs[name]["shape"] == list(value.shape)
        np.testing.assert_allclose(np.asarray(outputs[name]["data"]).reshape(value.shape), value, rtol=1e-6)


def _first_answer(url: str, request: dict[str, object], server: subprocess.Popen[bytes]) -> httpx.Response:
    deadline = time.monotonic() + 60
    while server.poll() is None and time.monotonic() < deadline:
        try:
            return httpx.post(url, json=request, timeout=10)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"the floor server never answered (exit code {server.poll()})")


def test_the_floor_answers_binary_and_grpc_requests_with_what_onnxruntime_computes(
    sample: zoo.SampleModel,
) -> None:
    rows = np.load(sample.requests)[zoo.INPUT_NAME][:3].astype(np.float32)
    request = {"inputs": [{"name": zoo.INPUT_NAME, "shape": list(rows.shape), "datatype": "FP32",
                           "data": rows.ravel().tolist()}]}  # fmt: skip
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "benchmarks.floor_server", str(sample.model), str(port),
               "--threads", "2", "--grpc-port", str(grpc_port)]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        assert _first_answer(f"http://127.0.0.1:{port}/v2/models/m/infer", request, server).status_code == 200
        binary = triton_http.InferInput(zoo.INPUT_NAME, list(rows.shape), "FP32")
        binary.set_data_from_numpy(rows, binary_data=True)
        http_client = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
        over_http = http_client.infer("m", [binary])
        http_client.close()
        tensor = triton_grpc.InferInput(zoo.INPUT_NAME, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        over_grpc = grpc_client.infer("m", [tensor])
        grpc_client.close()
    finally:
        server.terminate()
        server.wait(30)
    session = runtime.create_session(sample.model, threads=1)
    names = [output.name for output in session.get_outputs()]
    for name, value in zip(names, session.run(names, {zoo.INPUT_NAME: rows}), strict=True):
        for answer in (over_http, over_grpc):
            np.testing.assert_allclose(answer.as_numpy(name), value, rtol=1e-5)
