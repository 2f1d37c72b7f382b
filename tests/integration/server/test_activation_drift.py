"""The activation drift SLI on a real server: tritonclient traffic like the calibration data keeps
`quantship_activation_drift` near 0; the same images shifted inside the calibrated ranges (darker: x0.5)
raise it, which the clipped-activation rate barely sees."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact
from quantship.server import QualitySettings
from quantship.server.metrics import DRIFT_OVERALL

WINDOW = 64  # sampled requests; every request is sampled here


@pytest.fixture
def drift_server(
    good_artifact: artifact.Artifact, traffic: tuple[np.ndarray, np.ndarray]
) -> Iterator[LocalServer]:
    # a queue that holds every sampled request of the test: no sample is dropped, so each window holds
    # exactly the traffic sent (dropping under load is the lane's right, tested elsewhere)
    quality = QualitySettings(
        shadow_rate=0.0,
        clip_sample_rate=1.0,
        per_tensor_metrics=True,
        drift_window=WINDOW,
        background_queue_size=8 * WINDOW,
        sli_cpu_budget=4.0,
    )
    server = LocalServer(settings_for(good_artifact, "drift", quality=quality)).start()
    # One sample first: until a lane knows a sample's price, it lets only a hand-off's worth wait
    send(server, traffic[0][:1], clients=1)
    yield server
    server.stop()


def send(server: LocalServer, images: np.ndarray, *, clients: int = 4) -> None:
    """One row a request, from `clients` concurrent tritonclient connections."""

    def run(part: np.ndarray) -> None:
        client = triton.InferenceServerClient(server.address)
        try:
            for row in part:
                tensor = triton.InferInput("X", [1, row.size], "FP32")
                tensor.set_data_from_numpy(row[None, :].astype(np.float32))
                client.infer(MODEL, [tensor])
        finally:
            client.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, np.array_split(images, clients)))
    server.idle()


def figures(server: LocalServer) -> tuple[float, float, dict[str, float]]:
    """(overall drift, clip rate, drift per tensor)."""
    per_tensor = {
        sample.labels["tensor"]: sample.value
        for family in server.registry.collect()
        if family.name == "quantship_activation_drift"
        for sample in family.samples
        if sample.labels["tensor"] != DRIFT_OVERALL
    }
    observed = server.metric("quantship_activations_observed_total")
    clipped = server.metric("quantship_activations_clipped_total")
    return server.metric("quantship_activation_drift", tensor=DRIFT_OVERALL), clipped / observed, per_tensor


def test_drift_stays_near_zero_on_calibration_like_traffic_and_rises_on_shifted_traffic(
    drift_server: LocalServer, traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    images = traffic[0]
    histograms = {h.tensor for h in drift_server.service.ready_model().opened.artifact.activation_histograms}

    send(drift_server, images[: 2 * WINDOW])
    calm, calm_clip, calm_tensors = figures(drift_server)
    values = drift_server.metric("quantship_activation_drift_values_total")

    send(drift_server, images[: 2 * WINDOW] * 0.5)  # a whole window of darker images
    shifted, shifted_clip, shifted_tensors = figures(drift_server)

    print(f"drift calm {calm:.4f} (clip {calm_clip:.4%}), shifted {shifted:.4f} (clip {shifted_clip:.4%})")
    print("per tensor calm", {t: round(d, 4) for t, d in calm_tensors.items()})
    print("per tensor shifted", {t: round(d, 4) for t, d in shifted_tensors.items()})
    assert set(calm_tensors) == histograms  # one series per tensor with a calibration histogram
    assert values > 0 and drift_server.metric("quantship_activation_drift_values_total") > values
    assert calm < 0.03
    assert shifted > 0.06 and shifted > 4 * calm
    assert max(shifted_tensors.values()) > max(calm_tensors.values())
    for reason in ("behind", "budget"):
        assert drift_server.metric("quantship_samples_dropped_total", kind="clip", reason=reason) == 0


def test_a_fresh_servers_drift_appears_once_its_window_holds_half_its_requests(
    drift_server: LocalServer, traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    """Over a few requests the histograms are sparse and read far from calibration on calm traffic:
    the gauge waits for the window's first half, its evidence counter does not."""
    images = traffic[0]
    send(drift_server, images[1 : WINDOW // 2 - 1])  # with the fixture's one: a request short of half
    registry, labels = drift_server.registry, {**drift_server.settings.labels, "tensor": DRIFT_OVERALL}
    assert registry.get_sample_value("quantship_activation_drift", labels) is None
    assert drift_server.metric("quantship_activation_drift_values_total") > 0
    send(drift_server, images[WINDOW // 2 - 1 : WINDOW // 2], clients=1)
    drift = registry.get_sample_value("quantship_activation_drift", labels)
    assert drift is not None and drift < 0.05
