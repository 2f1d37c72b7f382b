"""Every panel of the three dashboards shows data from real servers, scraped by a real Prometheus.

Four `quantship serve` processes: the good artifact as the stable revision of `digits` and again
as revision `good-2`, the skewed one as a canary, and an S8S8 artifact (int8 activations:
onnxruntime leaves some QDQ groups unfused, so it has fallback ops) as a second model. Prometheus
scrapes them every second and evaluates the generated rules; tritonclient sends real digits.

The operator's panels need the operator's metrics: the real rollout engine (`run_rollout`, judging
through the real `PrometheusSource`) rolls `skewed` out (its clipping burns the budget: rolled
back), then `good-2` (promoted), and the operator's own `OperatorMetrics` records each decision on
a registry served over HTTP and scraped like the operator's /metrics. The engine's two other ports
are small adapters over the servers already running (kopf and Kubernetes play no part in what a
dashboard reads).

Each query of each panel and annotation, with Grafana's variables substituted as Grafana would,
must return data: as a range query over the test's span for graphs and annotations, as an instant
query for stat and table targets. Panels that cannot have data here are in NO_DATA_HERE, with the
reason, and must stay empty (a stale entry fails).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http.aio as triton
from prometheus_client import CollectorRegistry, start_http_server

from quantship import artifact, generate, slo, zoo
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import PrometheusProcess, free_port
from quantship.oncall import dashboard_promql, rules
from quantship.operator.metrics import OperatorMetrics
from quantship.quantize import Precision, QuantizeConfig, run
from quantship.rollout import (
    AnalysisSpec,
    OnInconclusive,
    Phase,
    PrometheusSource,
    RolloutSpec,
    RolloutStatus,
    Track,
    run_rollout,
)

pytestmark = pytest.mark.prometheus

MODEL, S8_MODEL = "digits", "digits-s8"
SLI_FLAGS = [
    "--shadow-rate",
    "1.0",
    "--clip-sample-rate",
    "1.0",
    "--per-tensor-metrics",
    "--drift-window",
    "32",
]
"""Every request sampled; a drift window of 32 sampled requests exports drift within seconds."""
GRAFANA_VARIABLES = {
    # what Grafana puts in for a 5-minute view of a Prometheus scraping every second
    "$__rate_interval": "15s",
    "$__interval": "2s",
    "$__range": "5m",
    "$model": f"{MODEL}|{S8_MODEL}",
    "$namespace": ".*",  # All: these servers are scraped without a namespace label
}
NO_DATA_HERE: dict[str, str] = {}
"""Panel title (or "annotation: NAME") -> why it cannot have data in this test."""

# four servers on two loaded cores: judge correctness here, not this machine's speed
ROLLOUT_OBJECTIVES = slo.default_objectives(latency_threshold=2.5)


@pytest.fixture(scope="module")
def s8_artifact(sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory) -> artifact.Artifact:
    """INT8 activations (S8S8): onnxruntime on x86 leaves Add and Softmax groups unfused."""
    out = tmp_path_factory.mktemp("artifacts") / "digits-s8"
    config = QuantizeConfig(activation_type=Precision.INT8)
    built = run(sample.model, out, config, calibration=sample.calibration, evaluation=sample.evaluation)
    assert built.artifact.manifest["fallback_ops"], "expected an artifact with fallback ops"
    return built.artifact


@pytest.fixture(scope="module")
def servers(
    good_artifact: artifact.Artifact,
    skewed_artifact: artifact.Artifact,
    s8_artifact: artifact.Artifact,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, ServerProcess]]:
    logs = tmp_path_factory.mktemp("server-logs")
    started = {
        revision: ServerProcess(
            built.root,
            model=model,
            revision=revision,
            track=track,
            extra_args=SLI_FLAGS,
            log_path=logs / revision,
        )
        for built, model, revision, track in (
            (good_artifact, MODEL, "good", "stable"),
            (skewed_artifact, MODEL, "skewed", "canary"),
            (good_artifact, MODEL, "good-2", "canary"),
            (s8_artifact, S8_MODEL, "s8", "stable"),
        )
    }
    for server in started.values():
        server.start()
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def operator_metrics() -> Iterator[tuple[OperatorMetrics, str]]:
    """The operator's metrics on their own registry and /metrics endpoint, as `quantship operator`
    serves them."""
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, "127.0.0.1", registry=registry)
    try:
        yield OperatorMetrics(registry), f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def prometheus(
    servers: dict[str, ServerProcess], operator_metrics: tuple[OperatorMetrics, str], tmp_path: Path
) -> AsyncIterator[PrometheusProcess]:
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(rules.render_rule_file())
    (tmp_path / "prometheus").mkdir()
    process = PrometheusProcess(tmp_path / "prometheus", rule_files=[rule_file])
    targets = [server.address for server in servers.values()] + [operator_metrics[1]]
    process.set_targets([(address, {}) for address in targets])
    process.start()
    try:
        await asyncio.gather(process.wait_ready(), *(server.wait_ready() for server in servers.values()))
        yield process
    finally:
        process.stop()


async def drive_traffic(servers: list[ServerProcess], rows: np.ndarray, stop: asyncio.Event) -> None:
    """Batches of real digits to every server until told to stop, through tritonclient."""
    clients = [(triton.InferenceServerClient(server.address), server.model) for server in servers]
    try:
        for step in range(10**9):
            for client, model in clients:
                batch = rows[(step * 8) % (len(rows) - 8) :][:8]
                tensor = triton.InferInput(zoo.INPUT_NAME, list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                await client.infer(model, [tensor])
            if stop.is_set():
                return
            await asyncio.sleep(0.05)
    finally:
        for client, _ in clients:
            await client.close()


# -- the rollout engine's other two ports, over the servers this test runs -------------------------


@dataclass
class RunningServers:
    """Workloads: every revision already runs (the test owns the processes), so `run`, `scale`
    and `remove` only check the revision is one of them; `ready` asks the server."""

    servers: dict[str, ServerProcess]

    async def run(self, revision: str, track: Track) -> None:
        assert revision in self.servers

    async def ready(self, revision: str) -> bool:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(f"{self.servers[revision].url}/v2/health/ready")).status_code == 200

    async def all_ready(self, revision: str) -> bool:
        return await self.ready(revision)  # one server per revision

    async def scale(self, revision: str, replicas: int) -> None:
        assert revision in self.servers

    async def remove(self, revision: str) -> None:
        assert revision in self.servers


class RecordingRouter:
    """TrafficRouter that records the split: the load generator keeps every server busy anyway."""

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        return float(weight) if canary else 0.0


def rollout(revision: str) -> RolloutSpec:
    return RolloutSpec(
        model=MODEL,
        revision=revision,
        objectives=ROLLOUT_OBJECTIVES,
        steps=(50, 100),
        step_interval=2.0,
        progress_deadline=60.0,
        analysis=AnalysisSpec(
            short_window=5, long_window=10, min_samples=10, on_inconclusive=OnInconclusive.HOLD
        ),
    )


async def roll_out_skewed_then_good(
    prometheus: PrometheusProcess, servers: dict[str, ServerProcess], metrics: OperatorMetrics
) -> None:
    ports: dict[str, Any] = {
        "workloads": RunningServers(servers),
        "router": RecordingRouter(),
        "metrics": PrometheusSource(prometheus.url),
        "interval": 0.5,
        "on_decision": lambda decision: metrics.record(("default", MODEL), MODEL, decision),
    }
    status = RolloutStatus(phase=Phase.PROMOTED, stable="good")
    status = await run_rollout(rollout("skewed"), status, **ports)
    assert status.phase is Phase.ROLLED_BACK, status.message
    status = await run_rollout(rollout("good-2"), status, **ports)
    assert status.phase is Phase.PROMOTED and status.stable == "good-2", status.message
    await ports["metrics"].aclose()


# -- what the dashboards ask ---------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str
    instant: bool


def grafana_substitute(expr: str) -> str:
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def dashboard_queries() -> list[Query]:
    found = []
    for name in ("executive", "oncall", "debug"):
        board = json.loads((generate.ROOT / "dashboards" / f"{name}.json").read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append(
                    Query(f"{name} / {panel['title']}", target["expr"], target.get("instant", False))
                )
        for annotation in board["annotations"].get("list", []):
            found.append(Query(f"{name} / annotation: {annotation['name']}", annotation["expr"], False))
    return found


def runbook_queries() -> list[str]:
    text = (generate.ROOT / "docs" / "runbooks.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, re.DOTALL)
    return [
        line.replace('"MODEL"', f'"{MODEL}"')
        for block in blocks
        for line in block.splitlines()
        if line.strip()
    ]


async def has_data(client: httpx.AsyncClient, url: str, query: Query, since: float) -> bool:
    expr = grafana_substitute(query.expr)
    if query.instant:
        response = await client.get(f"{url}/api/v1/query", params={"query": expr})
    else:
        params = {"query": expr, "start": since, "end": time.time(), "step": 1}
        response = await client.get(f"{url}/api/v1/query_range", params=params)
    body = response.json()
    assert body["status"] == "success", f"{query.panel}: {body.get('error')}: {expr}"
    return bool(body["data"]["result"])


async def empty_panels(prometheus: PrometheusProcess, queries: list[Query], since: float) -> dict[str, str]:
    """Panels any of whose queries returns nothing, with that query."""
    empty: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=10.0) as client:
        for query in queries:
            if query.panel not in empty and not await has_data(client, prometheus.url, query, since):
                empty[query.panel] = query.expr
    return empty


def allowed(panel: str) -> bool:
    return panel.split(" / ", 1)[1] in NO_DATA_HERE


# -- the tests -----------------------------------------------------------------------------------


async def test_every_dashboard_panel_shows_data_from_real_servers_and_a_real_rollout(
    prometheus: PrometheusProcess,
    servers: dict[str, ServerProcess],
    operator_metrics: tuple[OperatorMetrics, str],
    sample: zoo.SampleModel,
) -> None:
    since = time.time()
    queries = dashboard_queries()
    rows = np.load(sample.requests)[zoo.INPUT_NAME].astype(np.float32)
    stop = asyncio.Event()
    traffic = asyncio.create_task(drive_traffic(list(servers.values()), rows, stop))
    try:
        await asyncio.wait_for(roll_out_skewed_then_good(prometheus, servers, operator_metrics[0]), 120)
        deadline = time.monotonic() + 60
        while True:
            empty = await empty_panels(prometheus, queries, since)
            missing = {panel: expr for panel, expr in empty.items() if not allowed(panel)}
            if not missing or time.monotonic() > deadline or traffic.done():
                break
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        await traffic  # re-raises a failed request
    assert not missing, "panels without data:\n" + "\n".join(f"{p}: {q}" for p, q in missing.items())
    stale = [title for title in NO_DATA_HERE if not any(panel.endswith(f" / {title}") for panel in empty)]
    assert not stale, f"these panels have data now: drop them from NO_DATA_HERE: {stale}"

    # The model variable's own query lists both models.
    async with httpx.AsyncClient(timeout=5.0) as client:
        answer = await client.get(
            f"{prometheus.url}/api/v1/label/model/values", params={"match[]": f"{slo.PREFIX}model_info"}
        )
    assert set(answer.json()["data"]) == {MODEL, S8_MODEL}

    # The panels tell revisions apart: the skewed canary clips more than the good stable revision.
    clip = next(query for query in queries if query.panel == "oncall / Clip rate: bad ratio")
    by_revision = {
        series["metric"]["revision"]: float(series["value"][1])
        for series in await prometheus.query(grafana_substitute(clip.expr))
    }
    assert by_revision["skewed"] > by_revision["good"], by_revision

    # The drift panel too: the canary calibrated on skewed data sees digits drift from its calibration.
    now = dashboard_promql.overall_drift()
    assert any(query.expr == now for query in queries if query.panel == "oncall / Activation drift")
    drift_by_revision = {
        series["metric"]["revision"]: float(series["value"][1])
        for series in await prometheus.query(grafana_substitute(now))
    }
    assert drift_by_revision["skewed"] > drift_by_revision["good"], drift_by_revision


async def test_every_runbook_query_is_valid_promql(prometheus: PrometheusProcess) -> None:
    queries = runbook_queries()
    assert len(queries) >= len(rules.alert_names())
    for query in queries:
        await prometheus.query(query)  # raises PrometheusError on a parse error
