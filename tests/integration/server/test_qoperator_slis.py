"""The clip and drift SLIs of a QOperator artifact on a real server: every QLinear op's output is
observed, not only the graph input that QuantizeLinear reads."""

from __future__ import annotations

import httpx
import numpy as np
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact, slo
from quantship.server import QualitySettings


def test_a_qoperator_server_observes_the_qlinear_outputs(
    qoperator_skewed_artifact: artifact.Artifact, traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    quality = QualitySettings(
        shadow_rate=0.0, clip_sample_rate=1.0, per_tensor_metrics=True, sli_cpu_budget=4.0
    )
    server = LocalServer(settings_for(qoperator_skewed_artifact, "qop", quality=quality)).start()
    images = traffic[0][:40]
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for row in images:
                body = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]}
                assert client.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 200
        server.idle()
        M = slo.Metric
        sampled = server.metric(M.TENSOR_ACTIVATIONS_OBSERVED_TOTAL, tensor="cast_input") / 64  # rows
        assert sampled > 0
        # 64 inputs, then 512 + 512, 256 + 256 and 3 x 10 values the QLinear ops requantize a row
        assert server.metric(M.ACTIVATIONS_OBSERVED_TOTAL) == sampled * (64 + 2 * 512 + 2 * 256 + 3 * 10)
        assert (
            server.metric(M.TENSOR_ACTIVATIONS_OBSERVED_TOTAL, tensor="mul_result1_quantized")
            == sampled * 256
        )
        assert server.metric(M.ACTIVATIONS_CLIPPED_TOTAL) > 0  # skewed: traffic saturates the QLinear ops
        assert server.metric(M.ACTIVATION_DRIFT_VALUES_TOTAL) == server.metric(M.ACTIVATIONS_OBSERVED_TOTAL)
    finally:
        server.stop()
