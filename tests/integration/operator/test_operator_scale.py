"""What lets one operator serve many canaries (issue 15): a tick that changes nothing sends the API
nothing (it reads kopf's watches of the resource and of our Deployments), every judgement goes
over one Prometheus client the operator keeps for its lifetime, and how late each judgement ran is
on the operator's /metrics. The cost at scale is measured by `python -m benchmarks operator_scale`."""

from __future__ import annotations

import asyncio
import logging
import urllib.request

import httpx
import kmock
import pytest
from kmock_cluster import Cluster
from operator_harness import (
    NAMESPACE,
    TESTS_USER_AGENT,
    Kubectl,
    ScriptedMetrics,
    StartOperator,
    eventually,
    revision,
)
from operator_harness import spec_of as base_spec
from test_operator_lifecycle import phase_is, serving

from quantship.local.prometheus import PrometheusProcess, free_port
from quantship.operator import handlers
from quantship.slo import NAMESPACE as NAMESPACE_LABEL
from quantship.slo import Metric

V1 = "https://models.example.com/digits-v1.tar.gz"
V2 = "https://models.example.com/digits-v2.tar.gz"
FIRST, SECOND = revision(V1), revision(V2)
TICK = 0.2


def operator_requests(cluster: Cluster) -> list[kmock.Request]:
    return [r for r in cluster if r.headers.get("User-Agent") != TESTS_USER_AGENT]


def daemon_ticks(caplog: pytest.LogCaptureFixture) -> int:
    return sum(record.getMessage() == handlers.TICK_DONE for record in caplog.records)


async def test_a_tick_after_the_watches_are_warm_sends_no_request(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    await start_operator(ScriptedMetrics(), tick_interval=TICK)
    await serving(kubectl, base_spec(V1))
    # a canary that is never ready: the analysis ticks, each tick looks at its Deployment, nothing changes
    await kubectl.patch({"spec": {"artifact": {"uri": V2}, "rollout": {"progressDeadline": "10m"}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await phase_is(kubectl, "Progressing")
    # settled: kopf's bookkeeping patches are in, and the status says what it waits for
    await eventually(lambda: "Updating is processed" in caplog.text, what="kopf done with the update")
    await eventually(lambda: daemon_ticks(caplog) >= 3, what="the analysis ticking")
    before, runs_before = len(operator_requests(cluster)), daemon_ticks(caplog)

    await asyncio.sleep(12 * TICK)

    during = operator_requests(cluster)[before:]
    ticks = daemon_ticks(caplog) - runs_before
    assert ticks >= 5, f"only {ticks} ticks ran"
    deployment_gets = [
        r
        for r in during
        if r.action == kmock.action.FETCH and r.resource is not None and r.resource.plural == "deployments"
    ]
    assert not deployment_gets, f"{len(deployment_gets)} GETs of the canary's Deployment in {ticks} ticks"
    assert not during, [f"{r.method} {r.url} {r.data} {r.headers.get('User-Agent')}" for r in during]

    # and the watch, not a GET, brings the canary's readiness to the next tick
    await kubectl.make_ready(f"digits-{SECOND}")
    await phase_is(kubectl, "Promoted", timeout=30)
    gets = [r for r in operator_requests(cluster)[before:] if r.action == kmock.action.FETCH]
    assert not gets, [f"{r.method} {r.url}" for r in gets]


def conntrack(url: str) -> dict[str, float]:
    """Prometheus's own count of the HTTP connections it accepted and closed (this read's included)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("net_conntrack_listener_conn_") and 'listener_name="http"' in line:
            kind = line.split("{", 1)[0].removeprefix("net_conntrack_listener_conn_").removesuffix("_total")
            counts[kind] = float(line.rsplit(" ", 1)[1])
    return counts


def judgements(operator_registry: object) -> float:
    get = operator_registry.get_sample_value  # type: ignore[attr-defined]
    return sum(
        get(Metric.ANALYSIS_TOTAL.value, {NAMESPACE_LABEL: NAMESPACE, "model": "digits", "result": result})
        or 0.0
        for result in ("pass", "fail", "inconclusive")
    )


def still_open(counts: dict[str, float]) -> float:
    return counts["accepted"] - counts["closed"]


@pytest.mark.prometheus
async def test_every_judgement_goes_over_one_prometheus_client_closed_at_shutdown(
    kubectl: Kubectl, start_operator: StartOperator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prometheus = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), scrape_interval="1s")
    prometheus.start()
    try:
        await prometheus.wait_ready()
        idle = await asyncio.to_thread(conntrack, prometheus.url)
        operator = await start_operator(tick_interval=TICK)  # the real PrometheusSource
        # nothing is scraped for the model: every judgement is inconclusive (no data), and held
        analysis = {"prometheusUrl": prometheus.url, "inconclusiveLimit": 50, "minSamples": 10}
        await serving(kubectl, base_spec(V1, analysis=analysis))
        await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
        await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
        await kubectl.make_ready(f"digits-{SECOND}")
        await eventually(lambda: judgements(operator.registry) >= 1, what="a first judgement")
        first = await asyncio.to_thread(conntrack, prometheus.url)
        await eventually(lambda: judgements(operator.registry) >= 5, what="4 more judgements", timeout=30)
        later = await asyncio.to_thread(conntrack, prometheus.url)
        await operator.shutdown()

        # a judgement sends 17 queries at once: a client per judgement would connect anew each time
        opened = later["accepted"] - first["accepted"] - 1  # less that read's own connection
        assert opened <= 3, f"{opened:.0f} new connections to Prometheus for 4 judgements"
        assert still_open(first) > still_open(idle), "the client keeps its connections between ticks"
        await eventually(
            lambda: still_open(conntrack(prometheus.url)) <= still_open(idle),
            what="the operator's connections closed at shutdown",
        )
    finally:
        prometheus.stop()


async def test_how_late_each_judgement_ran_is_on_the_operators_metrics(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    port = free_port()
    operator = await start_operator(ScriptedMetrics(), tick_interval=TICK, metrics_port=port)
    await serving(kubectl, base_spec(V1))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await phase_is(kubectl, "Promoted", timeout=30)

    # The operator records a judgement on its metrics after the status write it waits on: the test
    # can see Promoted first (it did, on a loaded 2-core machine).
    def observed() -> float:
        return operator.registry.get_sample_value(Metric.ANALYSIS_LAG_SECONDS.observations) or 0.0

    await eventually(lambda: observed() >= 2, what="both judgements on the operator's metrics")
    async with httpx.AsyncClient() as client:
        exposed = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert observed() == 2, "one observation per judgement: two steps judged"
    assert f"{Metric.ANALYSIS_LAG_SECONDS.observations} 2.0" in exposed
    assert f'{Metric.ANALYSIS_LAG_SECONDS.buckets}{{le="+Inf"}} 2.0' in exposed
