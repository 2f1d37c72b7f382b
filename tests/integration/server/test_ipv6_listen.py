"""A model server started with the operator's own arguments for an IPv6 cluster
(`--server-bind-address ::`) answers HTTP and gRPC on an IPv6 address (loopback here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import tritonclient.grpc as grpcclient
from server_harness import wait_until

from quantship import artifact
from quantship.local.prometheus import free_port
from quantship.operator import resources
from quantship.operator.spec import ModelSpec
from quantship.rollout import Track

SPEC = ModelSpec.from_resource(
    {"metadata": {"name": "digits", "namespace": "ml"}, "spec": {"artifact": {"uri": "https://x/a.tar.gz"}}}
)


def operator_args(model: Path, host: str, port: int, grpc_port: int) -> list[str]:
    """`quantship serve` as the operator runs it, with this machine's model path and free ports."""
    args = resources.serve_args(SPEC, SPEC.revision, Track.STABLE, host)
    args[args.index(resources.MODEL_DIR)] = str(model)
    args[args.index("--port") + 1] = str(port)
    args[args.index("--grpc-port") + 1] = str(grpc_port)
    return args


def ready_over_http(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_a_server_told_to_listen_on_ipv6_answers_http_and_grpc_on_ipv6_loopback(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    port, grpc_port = free_port(), free_port()
    args = operator_args(good_artifact.root, "::", port, grpc_port)
    assert args[args.index("--host") + 1] == "::"
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "quantship", *args], stdout=log, stderr=log)
    try:
        ready = f"http://[::1]:{port}/v2/health/ready"
        wait_until(lambda: ready_over_http(ready) or process.poll() is not None, timeout=60, what="ready")
        assert ready_over_http(ready), (tmp_path / "serve.log").read_text()[-2000:]
        rpc = grpcclient.InferenceServerClient(f"[::1]:{grpc_port}")
        assert rpc.is_server_ready(client_timeout=5)
        rpc.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
