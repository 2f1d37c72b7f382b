"""Capture end to end: `quantship serve --capture-dir` under tritonclient traffic keeps a reservoir of the
rows it served, writes it at shutdown, and `quantship quantize --calibration DIR/capture.npz` calibrates
from it: the recalibration loop with the real commands on the digits sample."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton
from click.testing import CliRunner
from server_harness import MODEL, LocalServer, build_token_model, settings_for, wait_until

from quantship import artifact, zoo
from quantship.cli import main
from quantship.local.processes import ServerProcess
from quantship.server.capture import CAPTURE_FILE
from quantship.server.settings import QualitySettings
from quantship.slo import DropReason

CAPACITY = 150


async def test_serve_captures_production_rows_that_quantize_calibrates_from(
    good_artifact: artifact.Artifact, sample: zoo.SampleModel, tmp_path: Path
) -> None:
    images = np.load(sample.requests)[zoo.INPUT_NAME]
    capture_dir = tmp_path / "capture"
    server = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision="capturing",
        extra_args=["--capture-dir", str(capture_dir), "--capture-max-samples", str(CAPACITY)],
        log_path=tmp_path / "serve.log",
    )
    server.start()
    try:
        await server.wait_ready()
        client = triton.InferenceServerClient(server.address)
        # 397 rows in 49 requests of 8: fewer picks than the lane's queue holds, so none can be dropped
        # as "behind" however little CPU the worker gets while the client runs (in requests of 4, the
        # lane's SCHED_IDLE worker, before it had its own thread, dropped one of ~90 picks on CI)
        requests = np.array_split(images, len(images) // 8)
        assert len(requests) <= QualitySettings().background_queue_size
        for batch in requests:
            tensor = triton.InferInput(zoo.INPUT_NAME, list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            client.infer(MODEL, [tensor])
        client.close()
        dropped = [
            line
            for line in httpx.get(f"{server.url}/metrics").text.splitlines()
            if line.startswith("quantship_samples_dropped_total") and 'kind="capture"' in line
        ]
        assert len(dropped) == len(DropReason) and all(
            line.endswith(" 0.0") for line in dropped
        )  # one a reason
    finally:
        assert server.stop(timeout=30) == -signal.SIGTERM, server.log_tail()  # uvicorn re-raises it

    assert sorted(p.name for p in capture_dir.iterdir()) == [CAPTURE_FILE]
    captured = np.load(capture_dir / CAPTURE_FILE)[zoo.INPUT_NAME]
    assert captured.shape == (CAPACITY, images.shape[1]) and captured.dtype == np.float32
    served = {row.tobytes() for row in images}
    assert all(row.tobytes() in served for row in captured)  # rows as served, none invented
    assert len({row.tobytes() for row in captured}) > CAPACITY * 0.9

    out = tmp_path / "recalibrated"
    result = CliRunner().invoke(
        main,
        ["quantize", str(sample.model), "-o", str(out), "--calibration", str(capture_dir / CAPTURE_FILE),
         "--evaluation", str(sample.evaluation), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / artifact.MANIFEST_FILE).read_text())
    assert manifest["calibration"]["samples"] == CAPACITY
    assert manifest["validation"]["gate"] == "passed"


def test_rows_of_another_sequence_length_are_dropped_and_counted(tmp_path: Path) -> None:
    model = build_token_model(tmp_path / "tokens.onnx")
    written = artifact.write_artifact(
        tmp_path / "tokens",
        {artifact.MODEL_FILE: model},
        {"quantization": {"precision": "fp32", "mode": "none"}},
    )
    capture_dir = tmp_path / "capture"
    server = LocalServer(settings_for(written, "tokens", capture_dir=capture_dir)).start()
    try:

        def infer(length: int) -> int:
            ids = np.ones((2, length), dtype=np.int64)
            body = {
                "inputs": [
                    {"name": name, "datatype": "INT64", "shape": [2, length], "data": ids.ravel().tolist()}
                    for name in ("input_ids", "attention_mask")
                ]
            }
            return httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body).status_code

        assert infer(5) == 200
        assert infer(7) == 200  # answered; only its capture is dropped
        assert server.metric("quantship_samples_dropped_total", kind="capture", reason="shape") == 1
        server.idle()
    finally:
        server.stop()
    wait_until(lambda: (capture_dir / CAPTURE_FILE).exists(), what="the capture written at shutdown")
    data = np.load(capture_dir / CAPTURE_FILE)
    assert data["input_ids"].shape == data["attention_mask"].shape == (2, 5)


def test_an_unwritable_capture_dir_refuses_the_load(good_artifact: artifact.Artifact, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = LocalServer(settings_for(good_artifact, "nowhere", capture_dir=blocker / "capture")).start(
        ready=False
    )
    try:
        wait_until(lambda: server.metric("quantship_model_load_failures_total", reason="io") == 1)
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        assert "--capture-dir" in server.service.problem
    finally:
        server.stop()


def test_captured_rows_reach_the_file_within_the_flush_period_without_more_traffic(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """The lane wrote only as a hand-off came: rows captured before traffic stopped stayed out of the
    file until the next request or shutdown. They are written within a period or two; the test polls
    the file with the server running and no request after them."""
    capture_dir, flush_s = tmp_path / "capture", 3.0
    server = LocalServer(
        settings_for(good_artifact, "flushing", capture_dir=capture_dir, capture_flush_s=flush_s)
    ).start()
    rows = np.arange(5 * 64, dtype=np.float32).reshape(5, 64)
    body = {"inputs": [{"name": "X", "shape": [5, 64], "datatype": "FP32", "data": rows.ravel().tolist()}]}
    try:
        assert httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body).status_code == 200
        server.idle()  # the capture lane has the rows; nothing else will come

        def written() -> int:
            path = capture_dir / CAPTURE_FILE
            return np.load(path)["X"].shape[0] if path.exists() else 0

        wait_until(lambda: written() == 5, timeout=10 * flush_s, what="the captured rows in the file")
        assert sorted(map(tuple, np.load(capture_dir / CAPTURE_FILE)["X"])) == sorted(map(tuple, rows))
    finally:
        server.stop()


def test_every_row_is_kept_while_other_processes_keep_the_host_busy(
    good_artifact: artifact.Artifact, sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """The capture lane ran on the SLI thread, at SCHED_IDLE: with the host's cores busy with other
    work it got almost no CPU, and picks past its queue were dropped as "behind" (MiniLM INT8, 200
    one-row requests at load ~3.6 on two cores: 115 dropped). Storing a row costs microseconds; with
    the host as busy, more rows than the lane's queue holds, one a request, all reach the reservoir."""
    images = np.load(sample.requests)[zoo.INPUT_NAME]
    rows = 3 * QualitySettings().background_queue_size
    assert len(images) >= rows
    capture_dir = tmp_path / "capture"
    server = LocalServer(settings_for(good_artifact, "busy-host", capture_dir=capture_dir)).start()
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)
    ]
    try:
        client = triton.InferenceServerClient(server.address)
        for row in images[:rows]:
            tensor = triton.InferInput(zoo.INPUT_NAME, [1, len(row)], "FP32")
            tensor.set_data_from_numpy(row[None])
            client.infer(MODEL, [tensor])
        client.close()
        server.idle()
        assert server.metric("quantship_samples_dropped_total", kind="capture", reason="behind") == 0
        assert server.metric("quantship_samples_processed_total", kind="capture") == rows
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        server.stop()
    captured = np.load(capture_dir / CAPTURE_FILE)[zoo.INPUT_NAME]
    assert sorted(map(bytes, captured)) == sorted(map(bytes, images[:rows]))
