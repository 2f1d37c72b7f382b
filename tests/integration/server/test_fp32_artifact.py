"""An FP32 artifact (the stable side of a first rollout) is served like any other, without int8 SLIs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import onnxruntime
import pytest
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact, zoo
from quantship.server import QualitySettings


@pytest.fixture(scope="module")
def fp32_server(sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    out = tmp_path_factory.mktemp("fp32") / "digits-fp32"
    manifest = {"quantization": {"precision": "fp32", "mode": "none"}}  # as `quantize` packages an FP32 model
    written = artifact.write_artifact(out, {artifact.MODEL_FILE: sample.model}, manifest)
    quality = QualitySettings(shadow_rate=1.0, clip_sample_rate=1.0, sli_cpu_budget=4.0)
    server = LocalServer(settings_for(written, "fp32", quality=quality)).start()
    yield server
    server.stop()


def test_an_fp32_artifact_serves_with_precision_fp32_and_no_int8_slis(fp32_server: LocalServer) -> None:
    body = {"id": "f1", "inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    assert httpx.post(f"{fp32_server.url}/v2/models/{MODEL}/infer", json=body).status_code == 200
    model = fp32_server.service.ready_model()
    assert model.shadow is None and model.clip is None  # no reference, no calibrated ranges
    assert fp32_server.metric(
        "quantship_model_info",
        precision="fp32", quant_mode="none", calibration_method="none", calibration_sha256="",
        runtime_version=onnxruntime.__version__,
    ) == 1  # fmt: skip
    assert fp32_server.metric("quantship_shadow_comparisons_total") == 0
    assert fp32_server.metric("quantship_model_size_bytes", variant="reference") == sample_size(fp32_server)
    quantized = {**fp32_server.settings.labels, "variant": "quantized"}
    assert fp32_server.registry.get_sample_value("quantship_model_size_bytes", quantized) is None
    feedback = httpx.post(f"{fp32_server.url}/v2/models/{MODEL}/feedback", json={"id": "f1", "label": 0})
    assert feedback.status_code == 200 and feedback.json()["reference_correct"] is None


def sample_size(server: LocalServer) -> int:
    return (Path(server.settings.artifact) / artifact.MODEL_FILE).stat().st_size


def test_the_artifact_directory_is_untouched_by_serving(fp32_server: LocalServer) -> None:
    root = Path(fp32_server.settings.artifact)
    assert sorted(p.name for p in root.iterdir()) == [artifact.MANIFEST_FILE, artifact.MODEL_FILE]
