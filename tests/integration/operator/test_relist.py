"""A watch that comes back with 410 Gone: kopf lists again but computes no deletions (its indexes
are not client-go informers), so what was deleted while the watch was away stays in them. A
settled model's deleted stable must still be made again, and a model deleted meanwhile must stop
ticking. Real kopf runtime against kmock, whose watches this file can hold back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import attrs
import kmock
import pytest
from kmock_cluster import QM, Cluster
from operator_harness import (
    NAMESPACE,
    TESTS_USER_AGENT,
    Kubectl,
    ScriptedMetrics,
    StartOperator,
    eventually,
    spec_of,
)
from prometheus_client import CollectorRegistry, generate_latest
from test_operator_lifecycle import FIRST, SECOND, V1, V2, serving

from quantship.slo import Metric

DEPLOYMENTS = "apps/v1/deployments"
GONE = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}


@attrs.define(kw_only=True)
class Partition(Cluster):
    """A cluster whose watches of some kinds can be cut off, then come back with 410 Gone."""

    away: set[str] = attrs.field(factory=set)

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        plural = request.resource.plural
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and event.get("type") == "ERROR":
                yield event
                return
            if isinstance(event, dict) and plural in self.away:
                continue  # the watch is away: the operator never hears of it
            yield event

    def cut(self, resource: str) -> None:
        self.away.add(kmock.resource(resource).plural)

    async def heal(self, resource: str) -> None:
        """The watch comes back with a resourceVersion too old: 410 Gone, so kopf lists again."""
        self.away.discard(kmock.resource(resource).plural)
        await self._buses[kmock.resource(resource)].put({"type": "ERROR", "object": {**GONE, "metadata": {}}})


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": Partition}


def operator_requests(cluster: Cluster, since: int) -> list[str]:
    return [
        f"{code} {request.method} {request.url.path}"
        for request, code in cluster.answers[since:]
        if request.headers.get("User-Agent") != TESTS_USER_AGENT
    ]


async def test_a_stable_deleted_while_the_watch_was_away_is_made_again(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    stable = f"digits-{FIRST}"
    before = kubectl.deployment(stable)
    assert before is not None

    cluster.cut(DEPLOYMENTS)
    await kubectl.apps.delete_namespaced_deployment(stable, NAMESPACE)
    await asyncio.sleep(0.5)
    await cluster.heal(DEPLOYMENTS)

    again = await eventually(
        lambda: (
            (found := kubectl.deployment(stable)) and found["metadata"]["uid"] != before["metadata"]["uid"]
        ),
        what="the stable made again although kopf's index still holds it",
    )
    assert again


async def test_a_model_deleted_while_the_watch_was_away_stops_ticking_and_leaves_metrics(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Its analysis daemon ticked for ever: status PATCH answered 404 every tick, Prometheus
    queried, its gauges frozen mid-canary."""
    operator = await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 50, 100], "stepInterval": "10m"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary")
    await kubectl.make_ready(f"digits-{SECOND}", 1)
    await eventually(lambda: ((kubectl.get() or {}).get("status") or {}).get("step") == 0, what="step 1")

    assert gauges(operator.registry), "the canary's weight and step, before"

    cluster.cut(QM)
    await kubectl.delete()
    await asyncio.sleep(0.5)
    await cluster.heal(QM)
    await asyncio.sleep(1)  # five ticks' worth: the daemon meets the 404 and ends
    since = len(cluster.answers)

    await asyncio.sleep(1)

    assert not [r for r in operator_requests(cluster, since) if "quantizedmodels/digits" in r]
    assert not gauges(operator.registry)


def gauges(registry: CollectorRegistry) -> list[str]:
    """The model's rollout weight and step series."""
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if 'model="digits"' in line
        and not line.startswith("#")
        and line.split("{")[0] in (Metric.ROLLOUT_WEIGHT.declared, Metric.ROLLOUT_STEP.declared)
    ]
