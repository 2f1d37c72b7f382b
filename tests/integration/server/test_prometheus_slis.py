"""A real Prometheus scraping real `quantship serve` processes: the SLIs read back through /api/v1/query,
with the PromQL of quantship/slo.py, after real traffic (the zoo's held-out requests)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from server_harness import MODEL, wait_until

from quantship import artifact, slo
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import PrometheusProcess, find_binary

pytestmark = pytest.mark.prometheus

SLI_FLAGS = [
    "--shadow-rate",
    "1.0",
    "--clip-sample-rate",
    "1.0",
    "--sli-cpu-budget",
    "4",
]  # every sample, no budget
ROW_VALUES = 64 + 2 * 512 + 2 * 256 + 4 * 10  # activation values the digits MLP quantizes per row


@dataclass
class Observed:
    prometheus: PrometheusProcess
    servers: dict[str, ServerProcess]
    requests: int

    def query(self, promql: str) -> list[dict[str, object]]:
        return asyncio.run(self.prometheus.query(promql))

    def value(self, promql: str) -> float:
        result = self.query(promql)
        assert len(result) == 1, f"{promql} -> {result}"
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])

    def ratio(self, objective: slo.Objective, revision: str) -> float:
        return self.value(slo.ratio(objective, "5m", {"model": MODEL, "revision": revision}))


async def drive(url: str, images: np.ndarray, labels: np.ndarray, revision: str) -> None:
    """One request per image, 8 at a time, then the true label of each as feedback."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with gate:
                body = {
                    "id": f"{revision}-{i}",
                    "inputs": [
                        {"name": "X", "shape": [1, 64], "datatype": "FP32", "data": images[i].tolist()}
                    ],
                }
                answer = await client.post(f"/v2/models/{MODEL}/infer", json=body)
                assert answer.status_code == 200, answer.text
                label = {"id": f"{revision}-{i}", "label": int(labels[i])}
                feedback = await client.post(f"/v2/models/{MODEL}/feedback", json=label)
                assert feedback.status_code == 200, feedback.text

        await asyncio.gather(*(one(i) for i in range(len(images))))


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory,
    good_artifact: artifact.Artifact,
    skewed_artifact: artifact.Artifact,
    traffic: tuple[np.ndarray, np.ndarray],
) -> Iterator[Observed]:
    if find_binary("prometheus") is None:
        pytest.fail("prometheus is not installed: run scripts/install-tools (make setup)")
    workdir = tmp_path_factory.mktemp("slis")
    skewed_tarball = workdir / "digits-skewed.tar.gz"  # served from a tarball, as from an object store
    artifact.pack(skewed_artifact.root, skewed_tarball)
    tampered = workdir / "digits-tampered"
    shutil.copytree(good_artifact.root, tampered)
    (tampered / artifact.REFERENCE_FILE).write_bytes(b"not the reference any more")
    servers = {
        "good": ServerProcess(good_artifact.root, model=MODEL, revision="good", track="stable",
                              extra_args=SLI_FLAGS, log_path=workdir / "good.log"),
        "skewed": ServerProcess(skewed_tarball, model=MODEL, revision="skewed", track="canary",
                                extra_args=[*SLI_FLAGS, "--per-tensor-metrics"],
                                log_path=workdir / "skewed.log"),
        "tampered": ServerProcess(tampered, model=MODEL, revision="tampered", track="canary",
                                  log_path=workdir / "tampered.log"),
    }  # fmt: skip
    prometheus = PrometheusProcess(workdir / "prometheus")
    prometheus.start()
    prometheus.set_targets([(server.address, {}) for server in servers.values()])
    for server in servers.values():
        server.start()
    images, labels = traffic
    try:

        async def ready() -> None:
            await asyncio.gather(
                prometheus.wait_ready(), servers["good"].wait_ready(), servers["skewed"].wait_ready()
            )

        async def traffic_through(images: np.ndarray, labels: np.ndarray) -> None:
            await asyncio.gather(
                *(drive(servers[name].url, images, labels, name) for name in ("good", "skewed"))
            )

        result = Observed(prometheus, servers, len(images))
        asyncio.run(ready())
        # increase() needs a sample from before the traffic: the counters start at 0, scraped once first
        wait_until(
            lambda: (
                len(result.query('quantship_activations_observed_total{revision=~"good|skewed"} == 0')) == 2
            ),
            timeout=60,
            what="a first scrape of both servers",
        )
        asyncio.run(traffic_through(images, labels))
        for revision in ("good", "skewed"):
            # every sample's background work done or dropped (the lanes are lossy by design: a
            # SCHED_IDLE worker behind 8 concurrent clients on a busy 2-core box can fill its queue),
            # feedback counted, and all of it scraped
            selected = f'revision="{revision}"'
            shadowed = (
                f"sum(quantship_shadow_comparisons_total{{{selected}}})"
                f' + sum(quantship_samples_dropped_total{{{selected},kind="shadow"}})'
            )
            observed = (
                f"sum(quantship_activations_observed_total{{{selected}}})"
                f' + {ROW_VALUES} * sum(quantship_samples_dropped_total{{{selected},kind="clip"}})'
            )
            feedback = f'sum(quantship_feedback_total{{{selected},variant="reference"}})'
            wait_until(
                lambda shadowed=shadowed, observed=observed, feedback=feedback: result.query(
                    f"{shadowed} == {len(images)}"
                    f" and on() {observed} == {len(images) * ROW_VALUES}"
                    f" and on() {feedback} == {len(images)}"
                ),
                timeout=60,
                what=f"Prometheus to scrape the finished SLI counters of {revision}",
            )
        yield result
    finally:
        for server in servers.values():
            server.stop()
        prometheus.stop()


def test_the_skewed_artifact_clips_far_more_activations_than_the_good_one(observed: Observed) -> None:
    objective = slo.Objective(slo.SLI.CLIP_RATE, budget=0.001)
    good, skewed = observed.ratio(objective, "good"), observed.ratio(objective, "skewed")
    assert skewed > 0.002, skewed  # ~0.6% of real traffic's activations fall outside one digit's ranges
    assert skewed > 20 * good, (good, skewed)


def test_shadow_evaluation_finds_the_skewed_artifact_disagreeing_with_fp32(observed: Observed) -> None:
    objective = slo.Objective(slo.SLI.ACCURACY_DELTA, budget=0.005)
    assert observed.ratio(objective, "good") == 0.0
    assert 0 < observed.ratio(objective, "skewed") < 0.05


def test_errors_and_latency_slis_read_back_from_the_same_counters(observed: Observed) -> None:
    errors = slo.Objective(slo.SLI.ERRORS, budget=0.001)
    latency = slo.Objective(slo.SLI.LATENCY, budget=0.01, latency_threshold=2.5)
    for revision in ("good", "skewed"):
        assert observed.ratio(errors, revision) == 0.0
        assert observed.ratio(latency, revision) == 0.0  # none of these small requests took 2.5 s
    total = 'sum(quantship_requests_total{revision="good",code="200"})'
    assert observed.value(total) == observed.requests


def test_the_sampled_requests_each_lane_processed_are_counted_by_kind(observed: Observed) -> None:
    """What the sampled SLOs' alerts require a minimum of: here one-row requests, every one sampled,
    so the shadow lane's processed requests are its comparisons and the clip lane's its activation
    values over a row's; each sampled request is processed or dropped."""
    for revision in ("good", "skewed"):
        selected = f'revision="{revision}"'

        def processed(kind: slo.SampleKind, selected: str = selected) -> str:
            return f'sum({slo.Metric.SAMPLES_PROCESSED_TOTAL}{{{selected},kind="{kind}"}})'

        dropped = f"sum({slo.Metric.SAMPLES_DROPPED_TOTAL}{{{selected}}})"
        wait_until(
            lambda processed=processed, selected=selected, dropped=dropped: observed.query(
                f"{processed(slo.SampleKind.SHADOW)}"
                f" == sum({slo.Metric.SHADOW_COMPARISONS_TOTAL}{{{selected}}})"
                f" and on() {ROW_VALUES} * {processed(slo.SampleKind.CLIP)}"
                f" == sum({slo.Metric.ACTIVATIONS_OBSERVED_TOTAL}{{{selected}}})"
                f" and on() {processed(slo.SampleKind.SHADOW)} + {processed(slo.SampleKind.CLIP)}"
                f" + {dropped} == {2 * observed.requests}"
            ),
            timeout=30,
            what=f"the processed samples of {revision} to match its comparisons and activation values",
        )
        assert observed.value(processed(slo.SampleKind.SHADOW)) > 0


def test_label_feedback_is_counted_for_the_quantized_model_and_the_reference(observed: Observed) -> None:
    for revision in ("good", "skewed"):
        for variant in ("quantized", "reference"):
            counted = observed.value(
                f'sum(quantship_feedback_total{{revision="{revision}",variant="{variant}"}})'
            )
            correct = observed.value(
                f'sum(quantship_feedback_total{{revision="{revision}",variant="{variant}",correct="true"}})'
            )
            assert counted == observed.requests
            assert correct / counted > 0.9  # the digits MLP is ~98% accurate, int8 or not


def test_every_server_metric_of_the_design_is_scraped_with_model_revision_and_track(
    observed: Observed,
) -> None:
    design = {
        "quantship_requests_total", "quantship_request_duration_seconds_bucket",
        "quantship_batch_size_bucket", "quantship_queue_duration_seconds_bucket",
        "quantship_shadow_comparisons_total", "quantship_shadow_disagreements_total",
        "quantship_feedback_total", "quantship_activations_observed_total",
        "quantship_activations_clipped_total", "quantship_fallback_ops", "quantship_model_info",
        "quantship_model_load_seconds", "quantship_model_load_failures_total",
    }  # fmt: skip
    for revision, track in (("good", "stable"), ("skewed", "canary")):
        series = observed.query(f'{{__name__=~"quantship_.*", model="{MODEL}", revision="{revision}"}}')
        names = {str(s["metric"]["__name__"]) for s in series}  # type: ignore[index]
        assert design <= names, design - names
        assert {s["metric"]["track"] for s in series} == {track}  # type: ignore[index]
    info = observed.query('quantship_model_info{revision="skewed"}')[0]["metric"]
    assert info["precision"] == "int8" and info["quant_mode"] == "static"  # type: ignore[index]
    assert info["calibration_method"] == "minmax" and len(info["calibration_sha256"]) == 64  # type: ignore[index]
    assert observed.value('quantship_fallback_ops{revision="good",op_type="MatMul"}') == 0
    assert observed.value('quantship_model_load_seconds{revision="good"}') > 0
    files = artifact.load_artifact(observed.servers["good"].artifact).manifest["files"]
    for variant, name in (("quantized", "model.onnx"), ("reference", "reference.onnx")):
        size = observed.value(f'quantship_model_size_bytes{{revision="good",variant="{variant}"}}')
        assert size == files[name]["size"]
    per_tensor = observed.query('quantship_tensor_activations_clipped_total{revision="skewed"}')
    assert len(per_tensor) == 9


def test_a_refused_artifact_is_scraped_up_unready_and_counted_by_reason(observed: Observed) -> None:
    tampered = observed.servers["tampered"]
    assert observed.value(f'up{{instance="{tampered.address}"}}') == 1
    failures = 'quantship_model_load_failures_total{revision="tampered",reason="hash_mismatch"}'
    assert observed.value(failures) == 1
    assert observed.query('quantship_model_info{revision="tampered"}') == []
    assert httpx.get(f"{tampered.url}/v2/health/ready").status_code == 503
