"""A settled model's stable Deployment follows its spec: `replicas` and `resources` (which start no
canary: the revision leaves them out) are applied, and a Deployment deleted or scaled down by hand is
made again or scaled back by the resync daemon. Real kopf runtime against kmock."""

from __future__ import annotations

import asyncio
from typing import Any

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
    spec_of,
)
from test_operator_faults import GATEWAY, weights
from test_operator_lifecycle import FIRST, SECOND, V1, V2, serving

STABLE = f"digits-{FIRST}"


def ready(kubectl: Kubectl) -> dict[str, Any]:
    conditions = ((kubectl.get() or {}).get("status") or {}).get("conditions") or []
    return dict(next(c for c in conditions if c["type"] == "Ready"))


def server(deployment: dict[str, Any] | None) -> dict[str, Any]:
    assert deployment is not None
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server")


def fetch(deployment: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "fetch")


async def test_replicas_and_resources_changed_on_a_settled_model_reach_its_deployment(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    limits = {"limits": {"cpu": "2", "memory": "2Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}

    await kubectl.patch({"spec": {"replicas": 5, "resources": limits}})

    deployment = await eventually(
        lambda: (found := kubectl.deployment(STABLE)) and found["spec"]["replicas"] == 5 and found,
        what="the stable at 5 replicas",
    )
    assert server(deployment)["resources"] == limits
    assert fetch(deployment)["resources"] == limits, "a compute quota counts the init container too"
    deployments = [
        key[2]
        for key, obj in kubectl.cluster.objects.items()
        if key[0].plural == "deployments" and not obj.deleted
    ]
    assert deployments == [STABLE], "no canary: the same revision"
    assert (kubectl.get() or {})["status"]["stableRevision"] == FIRST


async def test_the_servers_listen_where_the_operator_is_told(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """An IPv6 single-stack cluster: the pod has no IPv4 address for 0.0.0.0 to reach."""
    await start_operator(ScriptedMetrics(), server_bind_address="::")
    await serving(kubectl, spec_of(V1))

    args = server(kubectl.deployment(STABLE))["args"]
    assert args[args.index("--host") + 1] == "::"


async def test_a_stable_deployment_deleted_or_scaled_down_by_hand_is_restored(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    replicas = kubectl.deployment(STABLE)["spec"]["replicas"]  # type: ignore[index]

    await kubectl.apps.patch_namespaced_deployment(STABLE, NAMESPACE, {"spec": {"replicas": 0}})
    await eventually(
        lambda: (kubectl.deployment(STABLE) or {}).get("spec", {}).get("replicas") == replicas,
        what="scaled back",
    )
    await kubectl.apps.delete_namespaced_deployment(STABLE, NAMESPACE)
    await eventually(lambda: kubectl.deployment(STABLE) is None, what="deleted")

    restored = await eventually(lambda: kubectl.deployment(STABLE), what="made again")
    assert restored["spec"]["replicas"] == replicas and restored["metadata"]["labels"]["track"] == "stable"


async def test_a_model_settled_again_after_a_rollout_is_resynced_again(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """kopf stops the resync daemon when a rollout starts (its `when`, settled, no longer holds) and
    starts one again when the model settles: a daemon that ended on its own instead would never be
    started again for that model (kopf's rule), and the new stable, deleted by hand, would stay gone."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}", 2)
    await eventually(
        lambda: ((kubectl.get() or {}).get("status") or {}).get("stableRevision") == SECOND,
        timeout=30,
        what="the second revision promoted",
    )
    await eventually(lambda: kubectl.deployment(STABLE) is None, what="the first stable removed")

    await kubectl.apps.delete_namespaced_deployment(f"digits-{SECOND}", NAMESPACE)
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="deleted")

    restored = await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="made again")
    assert restored["metadata"]["labels"]["track"] == "stable"


async def test_ready_is_false_while_the_stable_has_no_ready_server_and_true_again_after(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """`kubectl wait --for=condition=Ready` means the model serves: it said True, "serves 100% of
    traffic", with no ready server at all, for as long as that lasted."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))

    await kubectl.make_ready(STABLE, 0)
    down = await eventually(
        lambda: ready(kubectl)["status"] == "False" and ready(kubectl), what="Ready False"
    )
    assert down["reason"] == "StableNotReady" and down["message"] == f"{FIRST} has no ready server"

    await kubectl.make_ready(STABLE, 2)
    up = await eventually(
        lambda: ready(kubectl)["status"] == "True" and ready(kubectl), what="Ready True again"
    )
    assert up["reason"] == "StableServing"


async def test_replicas_changed_mid_canary_rescale_both_tracks_to_the_same_weight_at_once(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Scaled up for load mid-canary, the model got no server more until the next step (an hour
    here), or ever while a canary was held; Argo Rollouts rescales both ReplicaSets at once."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 100], "stepInterval": "1h"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    canary = f"digits-{SECOND}"
    await eventually(lambda: kubectl.deployment(canary), what="the canary Deployment")
    await kubectl.make_ready(canary)
    await eventually(lambda: ((kubectl.get() or {}).get("status") or {}).get("step") == 0, what="step 1")

    await kubectl.patch({"spec": {"replicas": 8}})

    def replicas() -> tuple[int, int]:
        return tuple((kubectl.deployment(name) or {})["spec"]["replicas"] for name in (canary, STABLE))  # type: ignore[return-value]

    await eventually(lambda: replicas() == (2, 6), what="8 servers, 2 of them canaries (25%)")
    status = await eventually(
        lambda: (found := (kubectl.get() or {})["status"])["achievedWeight"] == 25.0 and found,
        what="the achieved weight",
    )
    assert status["step"] == 0 and status["phase"] == "Progressing"


async def test_replicas_changed_mid_canary_behind_a_gateway_rescale_both_tracks_at_once(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Both revisions run spec.replicas behind a gateway: the stable followed a change only once
    settled, the canary not at all until promoted (an hour of steps here, or never while held)."""
    await kubectl.create_route(rules=[{"backendRefs": [{"name": "digits", "port": 8080}]}])
    await start_operator(ScriptedMetrics())
    rollout = {"steps": [25, 100], "stepInterval": "1h"}
    await serving(kubectl, spec_of(V1, traffic=GATEWAY, rollout=rollout))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    canary = f"digits-{SECOND}"
    await eventually(lambda: kubectl.deployment(canary), what="the canary Deployment")
    await kubectl.make_ready(canary, 2)
    await eventually(lambda: ((kubectl.get() or {}).get("status") or {}).get("step") == 0, what="step 1")

    await kubectl.patch({"spec": {"replicas": 5}})

    def replicas() -> tuple[int, int]:
        return tuple((kubectl.deployment(name) or {})["spec"]["replicas"] for name in (canary, STABLE))  # type: ignore[return-value]

    await eventually(lambda: replicas() == (5, 5), what="5 servers in each track")
    assert weights(kubectl) == {STABLE: 75, canary: 25}, "the weights are the gateway's, as they were"
    status = (kubectl.get() or {})["status"]
    assert status["step"] == 0 and status["phase"] == "Progressing" and status["achievedWeight"] == 25.0


def operator_requests(cluster: Cluster) -> list[kmock.Request]:
    return [request for request in cluster if request.headers.get("User-Agent") != TESTS_USER_AGENT]


@pytest.mark.parametrize("stable_ready", [True, False], ids=["stable ready", "stable not ready"])
async def test_a_settled_models_resync_sends_one_read_of_its_stable_and_its_services_and_nothing_else(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, stable_ready: bool
) -> None:
    """The resync reads the index for everything but the stable Deployment and the model's Services
    (the stable's, and the shared one of the replicas router), one GET each per resync. kopf's
    indexes are not informers: after a watch's 410 kopf lists again and keeps what was deleted
    meanwhile, so a stable or Service deleted then would be trusted for ever (test_relist.py).
    Three GETs per settled model per resync interval (60 s by default) is the price; no write,
    ever, while nothing changed: with hundreds of settled models, writes would be the API server's
    load."""
    await start_operator(ScriptedMetrics(), resync_interval=0.3)
    await serving(kubectl, spec_of(V1))
    if not stable_ready:
        await kubectl.make_ready(STABLE, 0)
        await eventually(lambda: ready(kubectl)["status"] == "False", what="Ready False")
    await asyncio.sleep(1)
    before = len(operator_requests(cluster))

    await asyncio.sleep(2)  # several resyncs

    during = [f"{request.method.name} {request.url.path}" for request in operator_requests(cluster)[before:]]
    services = f"/api/v1/namespaces/{NAMESPACE}/services"
    reads = {f"GET /apis/apps/v1/namespaces/{NAMESPACE}/deployments/{STABLE}"}
    reads |= {f"GET {services}/{STABLE}", f"GET {services}/digits"}
    assert set(during) == reads, during
    assert len(during) <= 3 * (2 / 0.3 + 1), "one of each per resync"


async def test_ready_stays_false_when_a_tick_cannot_read_the_stable_or_fails(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """A spec that cannot work (here resources the API admits and the operator refuses) writes its
    condition without reading the stable: Ready went back to True, serving 100%, with no server."""
    await start_operator(ScriptedMetrics(), resync_interval=0.3)
    await serving(kubectl, spec_of(V1))
    await kubectl.make_ready(STABLE, 0)
    await eventually(lambda: ready(kubectl)["status"] == "False", what="Ready False")

    bad = {"limits": {"example.com/gpu": "1"}, "requests": {"example.com/gpu": "2"}}
    await kubectl.patch({"spec": {"resources": bad}})

    await eventually(
        lambda: any(
            c["type"] == "Degraded" and c["reason"] == "InvalidSpec"
            for c in (kubectl.get() or {})["status"]["conditions"]
        ),
        what="Degraded InvalidSpec",
    )
    assert ready(kubectl)["status"] == "False" and ready(kubectl)["reason"] == "StableNotReady"
