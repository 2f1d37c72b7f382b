"""`quantship serve` as a process: refused artifacts, saturation, and SIGTERM with requests in flight."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from server_harness import MODEL, LocalServer, error_answer, settings_for, wait_until
from tritonclient.utils import InferenceServerException

from quantship import artifact, artifact_keys
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import free_port

INFER = f"/v2/models/{MODEL}/infer"


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_value(url: str, name: str, **labels: str) -> float | None:
    return sample_in(scrape(url), name, **labels)


def sample_in(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    for (found, found_labels), value in samples.items():
        if found == name and set(labels.items()) <= found_labels:
            return value
    return None


def binary_request(images: np.ndarray) -> dict[str, object]:
    header = json.dumps(
        {
            "inputs": [
                {"name": "X", "shape": list(images.shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": images.nbytes}}
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    return {
        "content": header + images.tobytes(),
        "headers": {"Inference-Header-Content-Length": str(len(header))},
    }


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll `condition` (a scrape, a probe: blocking) in a thread: run on the event loop, it held up
    the uploads it waited for (two scrapes a poll took most of the loop's time at load 8)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_tampered_artifact_keeps_the_process_up_and_unready(artifact_copy: Path, tmp_path: Path) -> None:
    with (artifact_copy / artifact.MODEL_FILE).open("ab") as model:
        model.write(b"\0")
    server = ServerProcess(artifact_copy, model=MODEL, revision="tampered", log_path=tmp_path / "serve.log")
    server.start()
    try:
        wait_until(lambda: _answers(f"{server.url}/v2/health/live"), timeout=60, what="the server to listen")
        wait_until(lambda: "cannot serve artifact" in server.log_tail(), what="the refusal in the log")
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503
        assert "model.onnx is" in ready.json()["error"] and "tampered?" in ready.json()["error"]
        infer = httpx.post(f"{server.url}{INFER}", json={"inputs": []})
        assert infer.status_code == 503 and "is not served" in infer.json()["error"]
        assert sample_value(server.url, "quantship_model_load_failures_total", reason="hash_mismatch") == 1.0
        assert sample_value(server.url, "quantship_model_info") is None  # nothing loaded
        assert "reason: hash_mismatch" in server.log_tail()
        assert server.running()  # no crash loop: it stays up, answering probes
    finally:
        assert server.stop() == -signal.SIGTERM


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(
    ("option", "transport"),
    [("--grpc-port", "gRPC"), ("--port", "HTTP")],
    ids=["gRPC", "HTTP"],
)
def test_a_taken_port_is_one_line_and_leaves_no_unpacked_artifact(
    good_artifact: artifact.Artifact, tmp_path: Path, option: str, transport: str
) -> None:
    """gRPC: grpcio raises where it used to return 0: the start failed inside uvicorn's startup, with
    its traceback, after the .tar.gz had begun to unpack, and that copy stayed in the temp dir. HTTP:
    uvicorn binds once the app has started, so the artifact unpacked and the model loaded first, and
    its error came among eight lines of startup and drain ("drained: every accepted request
    answered")."""
    tarball = tmp_path / "digits.tar.gz"
    artifact.pack(good_artifact.root, tarball)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--grpc-port": str(free_port()), option: str(port)}
        run = subprocess.run(
            [sys.executable, "-m", "quantship", "serve", str(tarball), "--model-name", MODEL,
             "--revision", "r1", *(word for pair in ports.items() for word in pair)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(scratch)},
        )  # fmt: skip
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: cannot listen for {transport} on 127.0.0.1:{port}: Address already in use"
    ]
    assert list(scratch.iterdir()) == []


def test_an_unsigned_artifact_is_refused_when_a_public_key_is_required(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    private, public = tmp_path / "key.pem", tmp_path / "key.pub"
    artifact_keys.generate_keypair(private, public)
    server = LocalServer(settings_for(good_artifact, "unsigned", public_key=public)).start(ready=False)
    try:
        wait_until(lambda: server.metric("quantship_model_load_failures_total", reason="signature") == 1)
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503 and "unsigned, but a public key is required" in ready.json()["error"]
    finally:
        server.stop()


def test_at_saturation_the_server_answers_only_200_or_429_in_flat_memory(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """48 clients against a queue of 4: the surplus gets 429 at once, and memory stops growing."""
    server = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="saturated",
        extra_args=["--max-queue-size", "4", "--max-batch-size", "16", "--feedback-max-bytes", str(1 << 20)],
        log_path=tmp_path / "serve.log",
    )
    server.start()
    # 256 rows a request: the model takes a while on each, so the queue really fills.
    request = binary_request(np.random.default_rng(0).random((256, 64), dtype=np.float32))

    async def hammer(count: int) -> collections.Counter[int]:
        codes: collections.Counter[int] = collections.Counter()
        left = count
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    codes[(await client.post(INFER, **request)).status_code] += 1  # type: ignore[arg-type]

            await asyncio.gather(*(worker() for _ in range(48)))
        return codes

    try:
        asyncio.run(server.wait_ready())
        assert server.pid is not None
        # Warm-up: allocator pools, the feedback store and the SLI lanes fill to their bounds. With the
        # SLIs on, at 256 rows a request, RSS climbs in steps for thousands of requests, then stays
        # flat: +25 MiB, flat from ~4,600-5,000 requests on in runs of 5,800 and 9,800 (flat from the
        # start with the SLIs off); what the SLI thread frees stays in its malloc arena.
        codes = asyncio.run(hammer(600))
        for _ in range(12):
            codes += asyncio.run(hammer(400))
        warm = rss_mib(server.pid)
        for _ in range(2):
            codes += asyncio.run(hammer(400))
        grown = rss_mib(server.pid) - warm
        assert set(codes) == {200, 429}, codes
        # 800 more requests of 64 KiB: a leak of 20 KiB a request would show as 16 MiB
        assert grown < 16, f"RSS grew {grown:.1f} MiB after warm-up ({warm:.0f} MiB)"
        assert sample_value(server.url, "quantship_requests_total", code="429") == codes[429]
        assert httpx.post(f"{server.url}{INFER}", **request).status_code == 200  # type: ignore[arg-type]
    finally:
        server.stop()


def test_sigterm_stops_accepting_and_answers_every_request_in_flight_within_one_budget(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    # A queue delay far past the drain budget holds the requests in the batcher while the signal
    # arrives: shutdown must run them at once, not wait for batch-mates, or they outlive the budget.
    server = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="draining",
        extra_args=["--max-queue-delay-ms", "600000", "--max-batch-size", "64", "--drain-timeout-s", "20"],
        log_path=tmp_path / "serve.log",
    )
    server.start()
    request = binary_request(np.zeros((1, 64), dtype=np.float32))

    async def scenario() -> list[int]:
        await server.wait_ready()
        # fewer rows than the measured cap, or the batch is full and runs at once (a start beside busy
        # processes once measured 2 rows: batch_policy.LOOKAHEAD)
        cap = httpx.get(f"{server.url}/v2/models/{MODEL}").json()["batching"]["max_batch_size"]
        assert cap > 1, "the model is batched: a request can wait for batch-mates"
        held = min(8, cap - 1)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            in_flight = [asyncio.create_task(client.post(INFER, **request)) for _ in range(held)]  # type: ignore[arg-type]
            await until(lambda: sample_value(server.url, "quantship_requests_in_flight") == held)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGTERM)
            await until(lambda: not _answers(f"{server.url}/v2/health/live"))  # the listener is closed
            return [(await task).status_code for task in in_flight]  # the client gives up after 60 s

    try:
        answered = asyncio.run(scenario())
        assert answered == [200] * len(answered)  # before the 600 s delay: shutdown flushed them
        assert server.stop(timeout=20) == -signal.SIGTERM  # uvicorn re-raises the signal after draining
        assert "drained: every accepted request answered" in server.log_tail()
    finally:
        server.stop()


def test_a_client_dribbling_its_body_leaves_the_drain_budget_to_grpc_and_the_capture(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """From the signal on, readiness is false on both protocols and gRPC takes no new call (its drain
    runs beside uvicorn's, not after it), and a share of the budget (app.DRAIN_RESERVE) is kept from
    connections: one upload stalled past the budget used to take all of it, so that gRPC calls in
    flight were cut and the capture was never written."""
    grpc_port = free_port()
    capture = tmp_path / "capture"
    server = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="dribbled",
        extra_args=[
            "--grpc-port", str(grpc_port), "--drain-timeout-s", "4", "--body-timeout-s", "60",
            "--capture-dir", str(capture), "--capture-flush-s", "3600",
        ],
        log_path=tmp_path / "serve.log",
    )  # fmt: skip
    server.start()
    try:
        asyncio.run(server.wait_ready())
        for _ in range(3):
            assert httpx.post(
                f"{server.url}{INFER}", **binary_request(np.ones((4, 64), np.float32))
            ).is_success  # type: ignore[arg-type]
        host, port = server.address.rsplit(":", 1)
        dribbling = socket.create_connection((host, int(port)))
        dribbling.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
        rpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert rpc.is_server_ready()
        signalled = time.monotonic()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGTERM)

        time.sleep(0.5)
        try:
            ready = rpc.is_server_ready(client_timeout=2)
        except InferenceServerException as exc:  # the listener is closed: no call is taken
            ready = False
            assert exc.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"), exc
        assert not ready
        assert server.stop(timeout=10) == -signal.SIGTERM
        assert time.monotonic() - signalled < 4 + 1
        assert (capture / "capture.npz").is_file(), "the last capture write got its share of the budget"
        assert "drained: every accepted request answered" in server.log_tail()
        dribbling.close()
    finally:
        server.stop()


IN_FLIGHT = 24
"""Large requests in flight when the drain's budget ends (below)."""


def test_requests_unanswered_when_the_drain_budget_ends_get_a_counted_503_not_a_500(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """With no drain budget, uvicorn cancels what is in flight 0.1 s after the signal: that was a 500
    with a CancelledError traceback, uncounted, and the log said every accepted request was answered.
    Large requests (a few tens of milliseconds of the model each, run one after another) keep most
    of them in flight then; each one answered must be 200 or a retryable 503, and the log counts the
    503s: accepted requests in the drain's last line, uploads still arriving one line each."""
    server = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="cut",
        extra_args=["--drain-timeout-s", "0", "--max-batch-size", "1", "--max-body-bytes", str(16 << 20)],
        log_path=tmp_path / "serve.log",
    )
    server.start()
    request = binary_request(np.ones((32 * 1024, 64), dtype=np.float32))

    async def scenario() -> list[httpx.Response | BaseException]:
        await server.wait_ready()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            # 24 of ~30 ms each, split into calls since 2026-12-06: ~0.7 s of work against the 0.4 s
            # before the cut (12 were all answered in time on a quiet host)
            sent = [0]

            async def streamed(body: bytes) -> AsyncIterator[bytes]:
                """The body a MiB at a time, counted once all of it is handed to the connection."""
                for start in range(0, len(body), 1 << 20):
                    yield body[start : start + (1 << 20)]
                sent[0] += 1

            body, header_length = request["content"], request["headers"]
            assert isinstance(body, bytes) and isinstance(header_length, dict)
            headers = {**header_length, "Content-Length": str(len(body))}  # not chunked, as tritonclient
            in_flight = [
                asyncio.create_task(client.post(INFER, content=streamed(body), headers=headers))  # type: ignore[arg-type]
                for _ in range(IN_FLIGHT)
            ]
            await until(lambda: sample_value(server.url, "quantship_requests_in_flight") == IN_FLIGHT)
            # the bodies arrive (an upload still arriving is cut, its client reset): 0.3 s once the
            # client has handed them all to its sockets; at CI's load, 0.3 s after their headers left
            # 23 of 24 uploads of 8 MB arriving, so nothing accepted was cut
            await until(lambda: sent[0] == IN_FLIGHT)
            await asyncio.sleep(0.3)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGTERM)
            return list(await asyncio.gather(*in_flight, return_exceptions=True))

    try:
        outcomes = asyncio.run(scenario())
        assert server.stop(timeout=20) == -signal.SIGTERM
        answers = [outcome for outcome in outcomes if isinstance(outcome, httpx.Response)]
        codes = collections.Counter(answer.status_code for answer in answers)
        assert set(codes) <= {200, 503}, codes
        assert all(
            answer.headers.get("connection") == "close" for answer in answers if answer.status_code == 503
        )
        assert server.log_path is not None
        log = server.log_path.read_text()
        accepted = re.search(
            r"drain's share for connections spent: (\d+) accepted requests cut unanswered", log
        )
        assert accepted is not None, f"the log says requests were cut: {codes}"
        assert int(accepted[1]) > 0
        uploads = log.count("body still arriving when the drain's share for connections ended")
        assert int(accepted[1]) + uploads == len(outcomes) - codes[200]
        assert "drained: every accepted request answered" not in log
        assert "Traceback" not in log
    finally:
        server.stop()


def test_requests_running_past_the_connections_share_leave_the_rest_of_the_budget_to_the_capture(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """uvicorn waited for requests still running until the whole drain budget was spent, and the
    capture's last write, after it, got no time: capture.npz was never written. Requests still
    unanswered at the connections' share (app.DRAIN_RESERVE) get a counted 503 (uploads still arriving
    a raw one, logged one line each); the rest of the budget is the capture's. Large requests, run one
    at a time, outlast the budget."""
    capture = tmp_path / "capture"
    server = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="captured",
        extra_args=[
            "--drain-timeout-s", "4", "--max-batch-size", "1", "--max-body-bytes", str(16 << 20),
            "--capture-dir", str(capture), "--capture-flush-s", "3600",
            "--shadow-rate", "0", "--clip-sample-rate", "0",
        ],
        log_path=tmp_path / "serve.log",
    )  # fmt: skip
    server.start()
    request = binary_request(np.ones((32 * 1024, 64), dtype=np.float32))
    sent = 96

    def heads_in() -> bool:  # every request's headers are in: each is an accepted request
        samples = scrape(server.url)  # one scrape: a request answered between two was counted twice
        answered = sample_in(samples, "quantship_requests_total", code="200") or 0
        return (sample_in(samples, "quantship_requests_in_flight") or 0) + answered - 1 == sent

    async def scenario() -> list[httpx.Response | BaseException]:
        await server.wait_ready()
        limits = httpx.Limits(max_connections=sent)  # httpx's default 100: all at once, each accepted
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            small = binary_request(np.ones((4, 64), dtype=np.float32))
            assert (await client.post(INFER, **small)).is_success  # type: ignore[arg-type]  # a row to capture
            tasks = [asyncio.create_task(client.post(INFER, **request)) for _ in range(sent)]  # type: ignore[arg-type]
            await until(heads_in)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGTERM)
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        outcomes = asyncio.run(scenario())
        assert server.stop(timeout=20) == -signal.SIGTERM
        assert server.log_path is not None
        log = server.log_path.read_text()
        accepted = re.search(
            r"drain's share for connections spent: (\d+) accepted requests cut unanswered", log
        )
        assert accepted is not None, "requests were still running when the connections' share ended"
        uploads = log.count("body still arriving when the drain's share for connections ended")
        codes = collections.Counter(
            outcome.status_code if isinstance(outcome, httpx.Response) else "no answer"
            for outcome in outcomes
        )
        assert set(codes) <= {200, 503, "no answer"}, codes
        assert codes["no answer"] <= uploads, codes  # an upload cut may reset its client before the 503
        assert int(accepted[1]) + uploads == sent - codes[200], (codes, uploads)
        assert (capture / "capture.npz").is_file(), "the capture's last write got the budget's reserve"
    finally:
        server.stop()


def test_an_upload_cut_at_shutdown_is_logged_as_the_503_it_is_counted(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """Shutdown's cut of an upload still arriving (a 503, counted 503) was also logged by the body's
    reader as a client that hung up, "counted as 499"."""
    server = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="upload-cut",
        extra_args=["--drain-timeout-s", "1", "--body-timeout-s", "60"],
        log_path=tmp_path / "serve.log",
    )
    server.start()
    try:
        asyncio.run(server.wait_ready())
        host, port = server.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=20) as uploading:
            uploading.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
            asyncio.run(until(lambda: sample_value(server.url, "quantship_requests_in_flight") == 1))
            assert server.pid is not None
            os.kill(server.pid, signal.SIGTERM)
            answer = b"".join(iter(lambda: uploading.recv(65536), b""))  # until the server closes
        assert "retry elsewhere" in error_answer(answer, 503)  # JSON, as the app's errors: it was text
        assert b"\r\nretry-after: 1\r\n" in answer
        assert server.stop(timeout=10) == -signal.SIGTERM
        assert server.log_path is not None
        log = server.log_path.read_text()
        assert (
            log.count("body still arriving when the drain's share for connections ended; answered 503") == 1
        )
        assert "counted as 499" not in log
    finally:
        server.stop()
