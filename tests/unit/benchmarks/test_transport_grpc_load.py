"""The transport suite's gRPC load (h2load) counts only the calls quantship answered with grpc-status OK:
h2load reads HTTP statuses, and a failed gRPC call is HTTP 200 with its error in the trailers
(benchmarks/transport.py against a real `quantship serve`, run from the repository root as the suites
run: `benchmarks` is not an installed package)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from quantship import artifact

ROOT = Path(__file__).resolve().parents[3]

LOAD_BOTH = """
import asyncio, json, sys
from pathlib import Path
from benchmarks import transport
from quantship import zoo
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import free_port
from quantship.server.grpc_v2 import inference_pb2 as pb
h2load, root, workdir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
grpc_port = free_port()
server = ServerProcess(root, model="m", revision="r", log_path=workdir / "server.log",
                       extra_args=["--threads", "1", "--grpc-port", str(grpc_port), "--log-level", "warning"])
server.start()
try:
    asyncio.run(server.wait_ready())
    found = {}
    for model in ("m", "nope"):
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=zoo.INPUT_NAME, datatype="FP32", shape=[1, 64])
        request.raw_input_contents.append(bytes(4 * 64))
        frame = transport.grpc_frame(request.SerializeToString(), workdir / f"{model}.grpc")
        try:
            found[model] = transport.grpc_load(h2load, grpc_port, frame, server.url)(2, 1).requests
        except RuntimeError as refused:
            found[model] = str(refused)
    print(json.dumps(found))
finally:
    server.stop()
"""


def test_calls_answered_with_a_grpc_error_are_not_counted_as_answered(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    h2load = shutil.which("h2load")
    assert h2load is not None, "h2load is not installed (TOOLING.md: apt-get install nghttp2-client)"
    done = subprocess.run(
        [sys.executable, "-c", LOAD_BOTH, h2load, str(good_artifact.root), str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(found["m"], int) and found["m"] > 0
    assert isinstance(found["nope"], str)
    assert "with grpc-status OK" in found["nope"]
    assert "the server 0 " in found["nope"]
