"""The operator adopts only the children of a model of the same name (deleted and created again at
once): a Deployment or Service of a name it needs that another controls, or no one, is left as it
is, and said (Degraded, reason ChildNotOurs). Real kopf runtime against kmock."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest
from kmock_cluster import Cluster
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
from test_operator_lifecycle import FIRST, V1, events, phase_is, serving
from test_steady_state import operator_requests

from quantship.operator.kube import CHILD_NOT_OURS

NAMESAKE = f"digits-{FIRST}"
"""A model named like model digits' revision Service: its shared Service has that name too."""


def degraded_by(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    conditions = ((kubectl.get(name) or {}).get("status") or {}).get("conditions") or []
    found = next((c for c in conditions if c["type"] == "Degraded"), None)
    return found if found and found["reason"] == CHILD_NOT_OURS else None


def service_writes(cluster: Cluster, since: int) -> list[kmock.Request]:
    """The operator's patches and deletions of Services after the `since`-th request."""
    return [
        request
        for request in list(cluster)[since:]
        if request.headers.get("User-Agent") != TESTS_USER_AGENT
        and request.resource is not None
        and request.resource.plural == "services"
        and request.action in (kmock.action.UPDATE, kmock.action.DELETE)
    ]


async def test_a_model_named_like_anothers_revision_service_leaves_it_to_its_owner(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Both models adopted the Service in turn and patched its selector back, each tick: 21 writes
    in 3 s, its traffic flipping between the two models' pods."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    theirs = kubectl.service(NAMESAKE) or {}

    await kubectl.apply(spec_of(V1), name=NAMESAKE)
    await eventually(lambda: kubectl.deployment(f"{NAMESAKE}-{FIRST}"), what="the namesake's Deployment")
    await kubectl.make_ready(f"{NAMESAKE}-{FIRST}", 2)
    said = await eventually(lambda: degraded_by(kubectl, NAMESAKE), what="the namesake Degraded")
    assert f"Service {NAMESPACE}/{NAMESAKE} exists and is not this model's" in said["message"]
    assert "controlled by QuantizedModel digits" in said["message"]

    since = len(list(cluster))
    await asyncio.sleep(3)  # ticks and resyncs of both models
    assert service_writes(cluster, since) == []
    now = kubectl.service(NAMESAKE) or {}
    assert now["metadata"]["ownerReferences"] == theirs["metadata"]["ownerReferences"]
    assert now["spec"]["selector"] == theirs["spec"]["selector"]
    assert (await phase_is(kubectl, "Promoted"))["stableRevision"] == FIRST  # model digits unharmed


async def test_a_service_made_by_hand_under_the_models_name_is_not_patched(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """The repair put the model's selector and ports on a Service no one had given it."""
    mine = {"app": "mine"}
    await client.CoreV1Api(api).create_namespaced_service(
        NAMESPACE,
        {
            "metadata": {"name": "digits"},
            "spec": {"selector": mine, "ports": [{"name": "web", "port": 80}]},
        },
    )
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await kubectl.apply(spec_of(V1))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the first Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 2)
    said = await eventually(lambda: degraded_by(kubectl, "digits"), what="Degraded, ChildNotOurs")
    assert "no controller" in said["message"]

    since = len(list(cluster))
    await asyncio.sleep(2)
    found = kubectl.service("digits") or {}
    assert found["spec"]["selector"] == mine and not found["metadata"].get("ownerReferences")
    assert service_writes(cluster, since) == []


async def test_a_settled_models_service_replaced_by_hand_is_said_degraded_not_only_logged(
    kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """The Services were conformed after the status was written: a settled model's conflict was a
    retried log line, and Degraded stayed False, AsExpected, on every resync."""
    core = client.CoreV1Api(api)
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    await core.delete_namespaced_service("digits", NAMESPACE)
    mine = {"app": "mine"}
    service = {
        "metadata": {"name": "digits"},
        "spec": {"selector": mine, "ports": [{"name": "web", "port": 80}]},
    }
    await core.create_namespaced_service(NAMESPACE, service)
    said = await eventually(lambda: degraded_by(kubectl, "digits"), what="Degraded, ChildNotOurs")
    assert "no controller" in said["message"]
    assert (kubectl.service("digits") or {})["spec"]["selector"] == mine  # left to whoever made it


HAND_MADE_DEPLOYMENT = {
    "metadata": {"name": f"digits-{FIRST}"},
    "spec": {
        "selector": {"matchLabels": {"app": "mine"}},
        "template": {
            "metadata": {"labels": {"app": "mine"}},
            "spec": {"containers": [{"name": "mine", "image": "mine"}]},
        },
    },
}
HAND_MADE_SERVICE = {
    "metadata": {"name": "digits"},
    "spec": {"selector": {"app": "mine"}, "ports": [{"name": "web", "port": 80}]},
}


@pytest.mark.parametrize("plural", ["deployments", "services"])
async def test_a_child_in_conflict_is_read_at_each_retry_not_created_again_and_said_once(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient, plural: str
) -> None:
    """Each retry created the child again, answered 409, before reading it and refusing it: a write
    to the API server per tick while nothing changed (a first revision's Deployment, made by hand
    under its name; the shared Service of a model that has not served yet). Said once, read after,
    and made once its maker deletes it."""
    if plural == "deployments":
        await client.AppsV1Api(api).create_namespaced_deployment(NAMESPACE, HAND_MADE_DEPLOYMENT)
    else:
        await client.CoreV1Api(api).create_namespaced_service(NAMESPACE, HAND_MADE_SERVICE)
    name = f"digits-{FIRST}" if plural == "deployments" else "digits"
    await start_operator(ScriptedMetrics())
    await kubectl.apply(spec_of(V1))
    if plural == "services":
        await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the first Deployment")
        await kubectl.make_ready(f"digits-{FIRST}", 2)
    said = await eventually(lambda: degraded_by(kubectl, "digits"), what="Degraded, ChildNotOurs")
    assert f"{name} exists and is not this model's" in said["message"]
    since = len(operator_requests(cluster))

    def of_it(action: str) -> list[kmock.Request]:
        return [
            request
            for request in operator_requests(cluster)[since:]
            if request.resource is not None
            and request.resource.plural == plural
            and request.action == action
            and request.name in (name, None)  # a create names no object in its URL
        ]

    await eventually(lambda: len(of_it(kmock.action.FETCH)) >= 2, what="two more ticks reading it")
    assert of_it(kmock.action.CREATE) == [] and of_it(kmock.action.UPDATE) == []
    status_writes = [r for r in operator_requests(cluster)[since:] if r.subresource == "status"]
    assert status_writes == [], "the conflict is said once"
    assert len(events(kubectl, CHILD_NOT_OURS)) == 1

    if plural == "deployments":  # deleted by its maker: the model's own is made, read first
        await client.AppsV1Api(api).delete_namespaced_deployment(name, NAMESPACE)
    else:
        await client.CoreV1Api(api).delete_namespaced_service(name, NAMESPACE)
    ours = kubectl.deployment if plural == "deployments" else kubectl.service
    made = await eventually(
        lambda: (found := ours(name)) and found["metadata"].get("ownerReferences") and found,
        timeout=30,
        what="the model's own made",
    )
    assert made["metadata"]["ownerReferences"][0]["name"] == "digits"
