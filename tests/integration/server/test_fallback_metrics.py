"""Fallback ops: an S8S8 artifact (int8 activations), whose Add and Softmax onnxruntime cannot fuse into int8
kernels on this CPU, exports them as `quantship_fallback_ops{op_type}` at load."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import LocalServer, settings_for

from quantship import zoo
from quantship.quantize import Precision, QuantizeConfig, run


@pytest.fixture(scope="module")
def s8s8_server(sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory) -> LocalServer:
    out = tmp_path_factory.mktemp("s8s8") / "digits-s8s8"
    config = QuantizeConfig(activation_type=Precision.INT8, max_trials=0)
    loaded = run(
        sample.model, out, config, calibration=sample.calibration, evaluation=sample.evaluation
    ).artifact
    server = LocalServer(settings_for(loaded, "s8s8")).start()
    yield server
    server.stop()


def test_unfused_ops_are_exported_by_op_type(s8s8_server: LocalServer) -> None:
    text = httpx.get(f"{s8s8_server.url}/metrics").text
    fallback = {
        sample.labels["op_type"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "quantship_fallback_ops"
        for sample in family.samples
        if sample.labels["revision"] == "s8s8"
    }
    assert fallback["Add"] >= 1, fallback
    assert fallback["MatMul"] == 0  # int8 MatMul fuses with int8 activations too
    served = s8s8_server.service.ready_model().opened.artifact.manifest["fallback_ops"]
    assert {op: count for op, count in fallback.items() if count} == served  # the quantizer saw the same


def test_the_load_warning_names_only_the_op_types_that_fell_back(
    s8s8_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The metric keeps a 0 for each op type that fused; the log says what did not, and no more."""
    artifact = s8s8_server.service.ready_model().opened.artifact
    with caplog.at_level("WARNING", logger="quantship.server"):
        again = LocalServer(settings_for(artifact, "s8s8-again")).start()
        again.stop()
    (warning,) = [r.getMessage() for r in caplog.records if "instead of int8" in r.getMessage()]
    assert "'Add'" in warning
    assert "'MatMul'" not in warning, warning
