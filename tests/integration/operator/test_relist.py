"""A watch that comes back with 410 Gone: kopf lists again but computes no deletions (its indexes
are not client-go informers), so what was deleted while the watch was away stays in them. A
deleted stable, or Service, must still be made again, settled or mid-canary; a canary deleted
mid-step must still be rolled back, never given more traffic, and its ghost never trusted again;
and a model deleted meanwhile must stop ticking. Real kopf runtime against kmock, whose watches
this file can hold back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import attrs
import kmock
import pytest
from kmock_cluster import QM, Cluster
from kubernetes.aio import client
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
from test_operator_faults import GATEWAY, SLOW_STEPS, weights
from test_operator_lifecycle import FIRST, SECOND, V1, V2, condition, phase_is, posted, serving

from quantship.operator import crd, resources
from quantship.operator.kube import Kube
from quantship.operator.spec import ModelSpec
from quantship.operator.workloads import KubeWorkloads
from quantship.rollout import Track
from quantship.slo import Metric

DEPLOYMENTS, SERVICES = "apps/v1/deployments", "v1/services"
GONE = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
STABLE, CANARY = f"digits-{FIRST}", f"digits-{SECOND}"
ROUTERS = ("replicas", "gateway-api")
STEPS = {"steps": [25, 50, 100], "stepInterval": "2s"}
"""Long enough that no judgement comes due before the deletion, short enough for its next step."""


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


async def deleted_while_the_watch_was_away(cluster: Partition, kubectl: Kubectl, deployment: str) -> None:
    cluster.cut(DEPLOYMENTS)
    await kubectl.apps.delete_namespaced_deployment(deployment, NAMESPACE)
    await asyncio.sleep(0.5)
    await cluster.heal(DEPLOYMENTS)


async def service_deleted_while_the_watch_was_away(
    cluster: Partition, api: client.ApiClient, service: str
) -> None:
    cluster.cut(SERVICES)
    await client.CoreV1Api(api).delete_namespaced_service(service, NAMESPACE)
    await asyncio.sleep(0.5)
    await cluster.heal(SERVICES)


async def canary_at_step_1(kubectl: Kubectl, router: str, rollout: dict[str, Any]) -> None:
    if router == "gateway-api":
        await kubectl.create_route(rules=[{"backendRefs": [{"name": "digits", "port": 8080}]}])
    traffic = {"traffic": GATEWAY} if router == "gateway-api" else {}
    await serving(kubectl, spec_of(V1, rollout=rollout, **traffic))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(CANARY), what="the canary")
    await kubectl.make_ready(CANARY, 2)
    await eventually(lambda: status_of(kubectl).get("step") == 0, what="step 1")


async def made_again(
    kubectl: Kubectl, name: str, before: dict[str, Any], *, kind: str = "Deployment", timeout: float = 20.0
) -> None:
    find = kubectl.service if kind == "Service" else kubectl.deployment
    await eventually(
        lambda: (found := find(name)) and found["metadata"]["uid"] != before["metadata"]["uid"],
        what=f"{kind} {name} made again although kopf's index still holds it",
        timeout=timeout,
    )


def status_of(kubectl: Kubectl) -> dict[str, Any]:
    return (kubectl.get() or {}).get("status") or {}


def serves_the_stable_alone(kubectl: Kubectl, router: str) -> bool:
    if router == "gateway-api":
        return weights(kubectl) == {STABLE: 100}
    return (kubectl.deployment(STABLE) or {}).get("spec", {}).get("replicas") == 2


def operator_requests(cluster: Cluster, since: int) -> list[str]:
    return [
        f"{code} {request.method.name} {request.url.path}"
        for request, code in cluster.answers[since:]
        if request.headers.get("User-Agent") != TESTS_USER_AGENT
    ]


async def test_a_stable_deleted_while_the_watch_was_away_is_made_again(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    before = kubectl.deployment(STABLE)
    assert before is not None

    await deleted_while_the_watch_was_away(cluster, kubectl, STABLE)

    await made_again(kubectl, STABLE, before)


@pytest.mark.parametrize("router", ROUTERS)
async def test_a_canary_deleted_while_the_watch_was_away_is_rolled_back_at_its_next_step(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator, router: str
) -> None:
    """README: a canary gone mid-step is rolled back as one not ready. Its next step finds out (the
    replicas router's scale of it is answered 404, the gateway's read before its weight finds
    none) and the tick decides again on the API's Deployments. The index's canary passed every step:
    every scale answered 404 (replicas), or the route gave 100% to a Service with no Deployment."""
    await start_operator(ScriptedMetrics())
    await canary_at_step_1(kubectl, router, STEPS)

    await deleted_while_the_watch_was_away(cluster, kubectl, CANARY)

    status = await phase_is(kubectl, "RolledBack")
    assert status["message"].startswith(f"canary not ready: {SECOND} has no ready server at step 1 of 3")
    assert [entry["action"] for entry in status["history"]][-2:] == ["SetWeight", "RollBack"], "no step more"
    assert condition(status, "Degraded")["status"] == "False", "a 404 to decide again on, not an error"
    assert serves_the_stable_alone(kubectl, router)


@pytest.mark.parametrize("router", ROUTERS)
async def test_a_stable_deleted_while_the_watch_was_away_is_made_again_before_the_rollback(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator, router: str
) -> None:
    """README: the stable, also mid-canary, is made again when deleted, and the judgement waits for
    it to be ready. The rollback of a bad canary finds out (the scale of the stable is answered 404,
    or the gateway's read before its weight finds none). It failed on that 404 every tick, its
    stable never made again, the bad canary serving (replicas: alone) and Ready saying True."""
    metrics = ScriptedMetrics()
    await start_operator(metrics)
    await canary_at_step_1(kubectl, router, STEPS)
    before = kubectl.deployment(STABLE)
    assert before is not None

    await deleted_while_the_watch_was_away(cluster, kubectl, STABLE)
    metrics.bad.add(SECOND)

    await made_again(kubectl, STABLE, before)
    (restored,) = await posted(kubectl, "Restored")
    assert restored["message"] == f"Deployment {STABLE}: stable {FIRST} was gone, made again"
    ready = await eventually(
        lambda: (found := condition(status_of(kubectl), "Ready"))["status"] == "False" and found,
        what="Ready False",
    )
    assert ready["reason"] == "StableNotReady"
    await asyncio.sleep(4)  # two judgements would have come due meanwhile
    held = status_of(kubectl)
    assert held["phase"] == "Progressing", "no judgement against a stable with no server (not the index's)"
    assert condition(held, "Ready")["status"] == "False"

    await kubectl.make_ready(STABLE, 2)  # the kubelet: its pods pass readiness

    status = await phase_is(kubectl, "RolledBack")
    assert status["message"].startswith("clip_rate burn rate above 1")
    assert serves_the_stable_alone(kubectl, router)


async def test_a_canary_deleted_while_the_watch_was_away_loses_its_traffic_within_a_resync_interval(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """No step comes due to find out (a gateway's step writes no Deployment, and this one is 10 min
    long): an in-flight model reads its Deployments from the API every resync interval, as a
    settled model's resync reads its stable. Its weight went to a Service with no pod until then."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await canary_at_step_1(kubectl, "gateway-api", SLOW_STEPS)

    await deleted_while_the_watch_was_away(cluster, kubectl, CANARY)

    status = await phase_is(kubectl, "RolledBack", timeout=10)
    assert status["message"].startswith(f"canary not ready: {SECOND} has no ready server at step 1 of 3")
    assert weights(kubectl) == {STABLE: 100}


async def test_an_in_flight_model_reads_its_deployments_and_services_once_a_resync_interval(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """The price of reading the API mid-canary: one GET of each Deployment and each Service (the
    two revisions' and the shared one) per resync interval (60 s by default), nothing at the ticks
    between (0.2 s here)."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await canary_at_step_1(kubectl, "replicas", SLOW_STEPS)
    await asyncio.sleep(1)
    since = len(cluster.answers)

    await asyncio.sleep(2)  # four resync intervals, ten ticks

    during = operator_requests(cluster, since)
    deployments = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
    services = f"/api/v1/namespaces/{NAMESPACE}/services"
    reads = {f"200 GET {deployments}/{name}" for name in (STABLE, CANARY)}
    reads |= {f"200 GET {services}/{name}" for name in (STABLE, CANARY, "digits")}
    assert set(during) == reads, during
    assert len(during) <= 5 * (2 / 0.5 + 1), "one of each per resync interval"


async def test_a_gateway_step_reads_each_deployment_once_on_a_tick_that_read_them_from_the_api(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """A gateway's step reads each revision it routes from the API before giving it a weight; a
    tick reading the API anyway (here every one: its resync interval is shorter than its ticks')
    read each twice, its own read and the router's."""
    await start_operator(ScriptedMetrics(), resync_interval=0.1)
    since = len(cluster.answers)
    await canary_at_step_1(kubectl, "gateway-api", {"steps": [25, 50, 100], "stepInterval": "1s"})
    await eventually(lambda: status_of(kubectl).get("step") == 1, what="step 2, routed")

    requests = [r for r in operator_requests(cluster, since) if "/events" not in r]
    deployments = f"200 GET /apis/apps/v1/namespaces/{NAMESPACE}/deployments/"
    routes = [i for i, r in enumerate(requests) if r.startswith("200 GET") and "/httproutes/" in r]
    for at in routes:
        first = at
        while first > 0 and requests[first - 1].startswith(deployments):
            first -= 1
        read = requests[first:at]  # the routing tick's reads of the revisions it routes
        assert len(read) == len(set(read)), read
    assert len(routes) >= 3, "the first revision's, step 1's and step 2's"


async def test_a_tick_that_read_a_deployment_from_the_api_asks_it_nothing_more_for_all_ready(
    cluster: Partition, kubectl: Kubectl
) -> None:
    """`all_ready` takes only the API's word for a yes (it lets a revision be removed): a tick
    reading the API anyway (`fresh`) read the Deployment a second time for it."""
    spec = ModelSpec.from_resource(
        {"metadata": {"name": "digits", "namespace": NAMESPACE}, "spec": spec_of(V1)}
    )
    owner = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "digits", "uid": "1"}}
    body = resources.deployment(spec, FIRST, Track.STABLE, 2, owner)
    await kubectl.apps.create_namespaced_deployment(NAMESPACE, body)
    await kubectl.make_ready(STABLE, 2)
    since = len(cluster.answers)

    async with client.ApiClient(client.Configuration(host=str(cluster.url).rstrip("/"))) as api:
        workloads = KubeWorkloads(Kube(api), spec, owner, fresh=True)
        assert await workloads.ready(FIRST) and await workloads.all_ready(FIRST)

    reads = operator_requests(cluster, since)
    assert reads == [f"200 GET /apis/apps/v1/namespaces/{NAMESPACE}/deployments/{STABLE}"], reads


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


@pytest.mark.parametrize("service", ["digits", STABLE])
async def test_a_service_deleted_while_the_watch_was_away_is_made_again_by_the_resync(
    cluster: Partition, kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator, service: str
) -> None:
    """README: the model's Services are made again if deleted. The resync read only the stable
    Deployment from the API: the index's Service matched, no request was sent, and the shared one
    (the replicas router's only way in) stayed gone until the operator restarted."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    before = kubectl.service(service)
    assert before is not None

    await service_deleted_while_the_watch_was_away(cluster, api, service)

    await made_again(kubectl, service, before, kind="Service", timeout=10)


@pytest.mark.parametrize("service", ["digits", CANARY])
async def test_a_service_deleted_while_the_watch_was_away_is_made_again_mid_canary(
    cluster: Partition, kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator, service: str
) -> None:
    """An in-flight model's ticks read its Services from the API once per resync interval, with
    its Deployments: with no step coming due (10 min), the one gone stayed gone."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await canary_at_step_1(kubectl, "replicas", SLOW_STEPS)
    before = kubectl.service(service)
    assert before is not None

    await service_deleted_while_the_watch_was_away(cluster, api, service)

    await made_again(kubectl, service, before, kind="Service", timeout=10)
    assert status_of(kubectl)["phase"] == "Progressing"


async def test_a_canary_the_api_proved_gone_is_not_trusted_again_from_the_index(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """A canary deleted while the watch was away is rolled back, and kopf's index keeps it (ready,
    2 pods). Its revision retried while the watch lags again, the new canary's Deployment is not in
    the index yet: the ghost's readyReplicas made it ready, and it got its first step (its traffic
    share: the gateway's to a Service with no ready pod) though it never had a server."""
    await start_operator(ScriptedMetrics())
    await canary_at_step_1(kubectl, "replicas", STEPS)
    await deleted_while_the_watch_was_away(cluster, kubectl, CANARY)
    await phase_is(kubectl, "RolledBack")

    cluster.cut(DEPLOYMENTS)  # the watch lags again: the new canary's ADDED is late
    await kubectl.patch({"metadata": {"annotations": {crd.RETRY_ANNOTATION: "now"}}})
    await phase_is(kubectl, "Progressing")
    await asyncio.sleep(1)  # five ticks, each asking whether the canary is ready

    history = [entry["action"] for entry in status_of(kubectl)["history"]]
    assert history[-1] == "StartCanary", f"the retried canary, never ready, was given a step: {history}"

    await cluster.heal(DEPLOYMENTS)
    await kubectl.make_ready(CANARY, 2)  # now it is
    await eventually(lambda: status_of(kubectl).get("step") == 0, what="its first step, once ready")
