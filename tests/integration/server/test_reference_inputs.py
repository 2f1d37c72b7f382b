"""A reference that cannot take what the served model takes: refused at load where its declared shapes
say so (the artifact's reference.onnx or --reference FILE), and where only running it tells, every
shadow sample it fails is counted as dropped (`failed`) and logged one line at a time at most, never
a traceback per request. Real sessions, a real server on loopback, real digits traffic."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact, zoo
from quantship.artifact import MODEL_FILE, REFERENCE_FILE
from quantship.cli import ExitCode, main
from quantship.server import QualitySettings
from quantship.server.metrics import ServerMetrics
from quantship.server.service import ModelService, Phase
from quantship.slo import DropReason, Metric, SampleKind


def build_reference(path: Path, columns: int | None, *, shaped: bool = True, width: int = 32) -> Path:
    """Digits-shaped outputs (`label`, `probabilities`) from X float[N, columns] (None: left open;
    `shaped=False`: no shape declared at all) through a [width, 10] MatMul: it runs on `width`
    columns only, whatever it declares."""
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((width, 10)).astype(np.float32), "W"
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "reference",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", columns] if shaped else None)],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
        ],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def with_reference(good: artifact.Artifact, reference: Path, out: Path) -> artifact.Artifact:
    manifest: dict[str, Any] = {
        k: v for k, v in good.manifest.items() if k not in ("files", "format_version")
    }
    return artifact.write_artifact(out, {MODEL_FILE: good.model_path, REFERENCE_FILE: reference}, manifest)


@pytest.mark.parametrize("given_as", ["reference.onnx", "--reference"])
async def test_a_reference_declaring_other_input_shapes_is_refused_at_load(
    good_artifact: artifact.Artifact, tmp_path: Path, given_as: str
) -> None:
    narrow = build_reference(tmp_path / "narrow.onnx", 32)
    if given_as == "reference.onnx":
        settings = settings_for(with_reference(good_artifact, narrow, tmp_path / "artifact"), "narrow")
    else:
        settings = settings_for(good_artifact, "narrow", reference=narrow)
    registry = CollectorRegistry()
    service = ModelService(settings, ServerMetrics(registry, settings.labels))
    await service.load()
    try:
        assert service.phase is Phase.REFUSED
        assert "takes X (FP32 [-1, 32]), the served model X (FP32 [-1, 64])" in service.problem
        refusal = service.problem.split(" is not served: ", 1)[1]
        failures = registry.get_sample_value(
            "quantship_model_load_failures_total", {**settings.labels, "reason": "reference"}
        )
        assert failures == 1
    finally:
        await service.close(1)
    verify = ["verify", str(settings.artifact)]  # verify said ok of the artifact's: its hashes match
    if given_as == "--reference":  # the artifact's own reference is fine: verify checks the one given
        assert CliRunner().invoke(main, verify).exit_code == ExitCode.OK
        verify += ["--reference", str(narrow)]
    verified = CliRunner().invoke(main, verify)
    assert verified.exit_code == ExitCode.REFUSED, verified.output
    assert verified.output == f"error: {settings.artifact}: a server refuses to load it: {refusal}\n"


async def test_a_reference_declaring_no_input_shape_takes_any_and_is_served(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """onnxruntime lists an input without a declared shape as [], a scalar's: it was refused by rank."""
    unshaped = build_reference(tmp_path / "unshaped.onnx", None, shaped=False, width=64)
    settings = settings_for(good_artifact, "unshaped", reference=unshaped)
    service = ModelService(settings, ServerMetrics(CollectorRegistry(), settings.labels))
    await service.load()
    try:
        assert service.phase is Phase.READY, service.problem
        assert service.ready_model().opened.reference is not None
    finally:
        await service.close(1)


def test_a_reference_failing_at_run_time_counts_each_shadow_sample_and_logs_no_traceback(
    good_artifact: artifact.Artifact,
    sample: zoo.SampleModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Declaring its columns open, the reference passes the load checks; every canary request's
    shadow sample then fails (onnxruntime: 64 columns into a [32, 10] MatMul)."""
    open_columns = build_reference(tmp_path / "open.onnx", None)
    everything = QualitySettings(shadow_rate=1.0, clip_sample_rate=0.0, sli_cpu_budget=64.0)
    settings = settings_for(
        with_reference(good_artifact, open_columns, tmp_path / "artifact"), "open", quality=everything
    )
    images = np.load(sample.requests)[zoo.INPUT_NAME][:20]
    with caplog.at_level(logging.INFO, logger="quantship"):
        server = LocalServer(settings).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for row in images:
                    body = {"inputs": [{"name": zoo.INPUT_NAME, "shape": [1, row.size], "datatype": "FP32",
                                        "data": row.tolist()}]}  # fmt: skip
                    assert client.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 200
            server.idle()
            shadow = SampleKind.SHADOW.value
            failed = server.metric(Metric.SAMPLES_DROPPED_TOTAL, kind=shadow, reason=DropReason.FAILED.value)
            dropped = sum(
                server.metric(Metric.SAMPLES_DROPPED_TOTAL, kind=shadow, reason=reason.value)
                for reason in DropReason
            )
            # every sample accounted for: lost to the failure, or dropped before it ran (behind, while
            # the lane priced its first hand-off)
            assert dropped == len(images) and failed >= len(images) // 2
            assert server.metric(Metric.SHADOW_COMPARISONS_TOTAL) == 0
        finally:
            server.stop()
    lane_lines = [
        r for r in caplog.records if r.name == "quantship.server.background" and r.levelno >= logging.ERROR
    ]
    assert len(lane_lines) == 1, [r.getMessage() for r in lane_lines]  # throttled: one line for all of them
    assert lane_lines[0].getMessage().startswith("shadow: 1 sampled requests lost, their processing failed")
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("quantship"))
