"""The drift SLI end to end: a `quantship serve` process, scraped every second by a real Prometheus
that evaluates the generated rules, under real tritonclient traffic.

Calibration-like traffic (the zoo's held-out digits) keeps `quantship_activation_drift{tensor="all"}`
near 0 as Prometheus stores it; the same images darker (x0.5: inside the calibrated ranges, so the
clip rate cannot see it) raise it, the generated recording rule follows, and the generated alert
`QuantshipActivationDrift` turns pending: its expression holds on real series, evidence gate
included. (Its 30-minute `for` is promtool's to test: tests/integration/oncall/test_alert_rules_promtool.py.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from quantship import artifact, zoo
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import PrometheusProcess
from quantship.oncall import rules
from quantship.server.metrics import DRIFT_OVERALL

pytestmark = pytest.mark.prometheus

MODEL, REVISION = "digits", "drifting"
WINDOW = 32
SERVER_FLAGS = [
    "--shadow-rate", "0", "--clip-sample-rate", "1.0", "--sli-cpu-budget", "4",  # every request binned
    "--drift-window", str(WINDOW),
]  # fmt: skip
DRIFT = f'quantship_activation_drift{{tensor="{DRIFT_OVERALL}", revision="{REVISION}"}}'


@pytest.fixture(scope="module")
def server(
    good_artifact: artifact.Artifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        good_artifact.root,
        model=MODEL,
        revision=REVISION,
        extra_args=SERVER_FLAGS,
        log_path=tmp_path_factory.mktemp("drift-server") / "server.log",
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def prometheus(server: ServerProcess, tmp_path: Path) -> AsyncIterator[PrometheusProcess]:
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(rules.render_rule_file())
    (tmp_path / "prometheus").mkdir()
    process = PrometheusProcess(tmp_path / "prometheus", rule_files=[rule_file])
    process.set_targets([(server.address, {})])
    process.start()
    try:
        await asyncio.gather(process.wait_ready(), server.wait_ready())
        yield process
    finally:
        process.stop()


def send(server: ServerProcess, rows: np.ndarray, stop: threading.Event | None = None) -> None:
    """One row a request through tritonclient; over and over until `stop` is set, if given."""
    client = triton.InferenceServerClient(server.address)
    try:
        while True:
            for row in rows:
                tensor = triton.InferInput(zoo.INPUT_NAME, [1, row.size], "FP32")
                tensor.set_data_from_numpy(row[None, :].astype(np.float32))
                client.infer(MODEL, [tensor])
                if stop is not None and stop.is_set():
                    return
            if stop is None:
                return
    finally:
        client.close()


async def value(prometheus: PrometheusProcess, promql: str) -> float | None:
    result = await prometheus.query(promql)
    return float(result[0]["value"][1]) if result else None


async def wait_for(
    prometheus: PrometheusProcess, promql: str, holds: Callable[[float], bool], timeout: float = 90
) -> float:
    """The query's value once `holds` is true of it."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen = None
    while asyncio.get_running_loop().time() < deadline:
        seen = await value(prometheus, promql)
        if seen is not None and holds(seen):
            return seen
        await asyncio.sleep(0.5)
    raise AssertionError(f"{promql} never held (last value: {seen})")


def positive(v: float) -> bool:
    return v > 0


async def test_prometheus_sees_drift_near_zero_then_rising_and_the_generated_alert_turns_pending(
    server: ServerProcess, prometheus: PrometheusProcess, sample: zoo.SampleModel
) -> None:
    images = np.load(sample.requests)[zoo.INPUT_NAME][: 4 * WINDOW]
    await asyncio.to_thread(send, server, images)  # calibration-like: the held-out digits
    values = f'quantship_activation_drift_values_total{{revision="{REVISION}"}}'
    await wait_for(prometheus, values, positive)
    calm = await wait_for(prometheus, DRIFT, positive)
    assert calm < 0.03, f"drift on held-out traffic, as Prometheus stored it: {calm}"

    stop = threading.Event()
    shifting = asyncio.create_task(asyncio.to_thread(send, server, images * 0.5, stop))
    try:
        await wait_for(prometheus, DRIFT, lambda v: v > 0.06)
        pending = await wait_for(
            prometheus,
            f'ALERTS{{alertname="QuantshipActivationDrift", alertstate="pending", revision="{REVISION}"}}',
            lambda v: v == 1,
        )
        # read once the alert is pending, with the window full of shifted traffic: the first value
        # past 0.06 is still rising. Settled, it reads 0.076-0.084 here, and calm 0.010-0.021 (a window
        # of 32 samples is noisy): 4x calm once failed, so 3x
        shifted = await value(prometheus, DRIFT)
        recorded = await value(prometheus, f'{rules.drift_rule()}{{revision="{REVISION}"}}')
        clipped = await value(prometheus, f'quantship_activations_clipped_total{{revision="{REVISION}"}}')
        observed = await value(prometheus, f'quantship_activations_observed_total{{revision="{REVISION}"}}')
    finally:
        stop.set()
        await shifting
    print(f"drift in Prometheus: calm {calm}, shifted {shifted}, recorded hourly average {recorded}")
    assert shifted is not None and shifted > 3 * calm, f"calm {calm}, shifted {shifted}"
    assert recorded is not None and rules.DRIFT_THRESHOLD < recorded <= shifted  # spans both phases
    assert pending == 1
    assert observed and clipped is not None and clipped / observed < 0.001  # the clip SLI barely moved
