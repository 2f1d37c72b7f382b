"""What a person or the garbage collector removes or edits, the operator puts back, whatever the
phase: a Deployment the rollout needs (the first revision, the stable mid-canary), the model's
Services, and the children of a model deleted and created again at once. Real kopf runtime
against kmock; kmock collects no garbage, so `collect_garbage` does what the collector would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
from test_operator_lifecycle import FIRST, SECOND, V1, V2, condition, phase_is, posted, serving
from test_relist import SLOW_STEPS, canary_at_step_1

STABLE, CANARY = f"digits-{FIRST}", f"digits-{SECOND}"


def status(kubectl: Kubectl) -> dict[str, Any]:
    return dict((kubectl.get() or {}).get("status") or {})


async def test_the_first_revisions_deployment_deleted_while_pending_is_made_again(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """It stayed Pending for ever, then "not ready after 8 s", Degraded, with nothing to wait for."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await kubectl.apply(
        spec_of(V1, rollout={"steps": [25, 100], "stepInterval": "1s", "progressDeadline": "3s"})
    )
    first = await eventually(lambda: kubectl.deployment(STABLE), what="the first Deployment")

    await kubectl.apps.delete_namespaced_deployment(STABLE, NAMESPACE)

    again = await eventually(
        lambda: (
            (found := kubectl.deployment(STABLE))
            and found["metadata"]["uid"] != first["metadata"]["uid"]
            and found
        ),
        what="the first revision's Deployment made again",
    )
    assert again["spec"]["replicas"] == 2 and again["metadata"]["labels"]["track"] == "stable"
    [event] = await posted(kubectl, "Restored")
    assert event["message"] == f"Deployment {STABLE}: stable {FIRST} was gone, made again"
    assert status(kubectl)["phase"] == "Pending"
    await kubectl.make_ready(STABLE, 2)
    await phase_is(kubectl, "Promoted")


async def test_the_stable_deleted_mid_canary_is_made_again_as_it_was_and_judging_goes_on(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """It was held for ever ("stable not ready ... waits for it"), the shared Service sending 100%
    to the unjudged canary while the status said 25%."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 50, 100], "stepInterval": "1s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(CANARY), what="the canary")
    await kubectl.make_ready(CANARY, 1)
    await eventually(lambda: status(kubectl).get("step") == 0, what="step 1 at 25%")
    before = kubectl.deployment(STABLE)
    assert before is not None

    await kubectl.apps.delete_namespaced_deployment(STABLE, NAMESPACE)

    again = await eventually(
        lambda: (
            (found := kubectl.deployment(STABLE))
            and found["metadata"]["uid"] != before["metadata"]["uid"]
            and found
        ),
        what="the stable made again",
    )
    assert again["spec"]["template"] == before["spec"]["template"], "V1's servers, not the spec's V2"
    assert again["metadata"]["labels"]["track"] == "stable"
    assert again["metadata"]["ownerReferences"] == before["metadata"]["ownerReferences"]
    await eventually(
        lambda: (kubectl.deployment(STABLE) or {})["spec"]["replicas"] == 1,
        what="25% of 2 replicas: 1 stable",
    )
    held = await eventually(
        lambda: condition(status(kubectl), "Degraded")["status"] == "True" and status(kubectl), what="held"
    )
    assert held["message"] == (
        f"stable {FIRST} was gone, made again; judging canary {SECOND} waits for it to be ready"
    )
    await kubectl.make_ready(STABLE, 1)
    await eventually(lambda: status(kubectl).get("step", 0) >= 1, what="judging going on")


async def test_a_models_services_deleted_or_edited_by_hand_are_put_back(
    kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """They stayed deleted, or selecting nothing, while Ready said True."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    core = client.CoreV1Api(api)
    shared, revision = kubectl.service("digits"), kubectl.service(STABLE)
    assert shared is not None and revision is not None

    await core.delete_namespaced_service("digits", NAMESPACE)
    await core.delete_namespaced_service(STABLE, NAMESPACE)
    await eventually(lambda: kubectl.service("digits") and kubectl.service(STABLE), what="made again")
    assert kubectl.service("digits")["spec"] == shared["spec"]  # type: ignore[index]
    assert kubectl.service(STABLE)["spec"] == revision["spec"]  # type: ignore[index]

    await core.patch_namespaced_service(
        "digits", NAMESPACE, {"spec": {"selector": {"app": "other"}, "ports": [{"name": "x", "port": 1}]}}
    )
    await eventually(
        lambda: kubectl.service("digits")["spec"] == shared["spec"],  # type: ignore[index]
        what="the selector and ports put back",
    )


async def collect_garbage(kubectl: Kubectl, api: client.ApiClient, uid: str) -> list[str]:
    """What the garbage collector does once an owner is gone: delete what it still owns."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    gone = []
    for (resource, namespace, name), obj in list(kubectl.cluster.objects.items()):
        references = obj.raw.get("metadata", {}).get("ownerReferences") or []
        if obj.deleted or not any(reference.get("uid") == uid for reference in references):
            continue
        if resource.plural == "deployments":
            await apps.delete_namespaced_deployment(name, namespace)
        else:
            await core.delete_namespaced_service(name, namespace)
        gone.append(f"{resource.plural}/{name}")
    return gone


async def test_a_model_deleted_and_created_again_at_once_adopts_its_predecessors_children(
    kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """`kubectl replace --force`: the new model took the old one's children as they were, owned by
    the old uid, and the garbage collector then removed them under it."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    old = (kubectl.get() or {})["metadata"]["uid"]

    await kubectl.delete()
    await kubectl.apply(spec_of(V1))
    new = (kubectl.get() or {})["metadata"]["uid"]
    await phase_is(kubectl, "Promoted")

    def owners() -> dict[str, list[str]]:
        return {
            f"{resource.plural}/{name}": [
                reference["uid"] for reference in obj.raw["metadata"].get("ownerReferences") or []
            ]
            for (resource, _, name), obj in kubectl.cluster.objects.items()
            if resource.plural in ("deployments", "services") and not obj.deleted
        }

    expected = {f"deployments/{STABLE}": [new], f"services/{STABLE}": [new], "services/digits": [new]}
    await eventually(lambda: owners() == expected, what=f"every child owned by {new}, none by {old}")
    assert await collect_garbage(kubectl, api, old) == []
    await asyncio.sleep(1)
    assert kubectl.deployment(STABLE) and kubectl.service(STABLE) and kubectl.service("digits")


def the_operators_write(plural: str, name: str) -> Callable[[kmock.Request], bool]:
    def picks(request: kmock.Request) -> bool:
        return (
            request.headers.get("User-Agent") != TESTS_USER_AGENT
            and request.resource is not None
            and request.resource.plural == plural
            and request.name == name
            and request.action == kmock.action.UPDATE
        )

    return picks


def degraded_written(cluster: Cluster) -> list[str]:
    """The reasons of every Degraded condition the operator wrote True."""
    return [
        c["reason"]
        for request in cluster
        if request.subresource == "status" and isinstance(request.data, dict)
        for c in (request.data.get("status") or {}).get("conditions") or []
        if c.get("type") == "Degraded" and c.get("status") == "True"
    ]


@pytest.mark.parametrize("plural", ["deployments", "services"])
async def test_a_predecessors_child_collected_before_its_adoption_is_made_again_not_an_error(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, plural: str
) -> None:
    """The garbage collector removes the children of the model deleted (`kubectl replace
    --force`): one it took between the new model's read and its adoption patch was answered 404,
    and the tick failed on it, Degraded KubernetesAPIError with a warning, until retried."""
    find = kubectl.deployment if plural == "deployments" else kubectl.service
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    before = find(STABLE)
    assert before is not None

    await kubectl.delete()
    cluster.delete_before(the_operators_write(plural, STABLE))  # the adoption's patch
    await kubectl.apply(spec_of(V1))
    new = (kubectl.get() or {})["metadata"]["uid"]

    made = await eventually(
        lambda: (found := find(STABLE)) and found["metadata"]["uid"] != before["metadata"]["uid"] and found,
        what=f"{plural}/{STABLE} made again",
    )
    assert [reference["uid"] for reference in made["metadata"]["ownerReferences"]] == [new]
    await kubectl.make_ready(STABLE, 2)
    status = await phase_is(kubectl, "Promoted")
    assert condition(status, "Degraded")["status"] == "False"
    assert degraded_written(cluster) == [], "a child gone is made again, not an error"


async def test_a_service_gone_as_its_repair_is_written_is_made_again_in_that_tick_not_an_error(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """A Service edited by hand, then deleted before the repair of its selector arrives: the patch
    was answered 404, and the model said Degraded KubernetesAPIError (a Deployment's 404 makes the
    tick decide again on the API's reads)."""
    await start_operator(ScriptedMetrics())
    await canary_at_step_1(kubectl, "replicas", SLOW_STEPS)
    before = kubectl.service(CANARY)
    assert before is not None

    cluster.delete_before(the_operators_write("services", CANARY))
    await client.CoreV1Api(api).patch_namespaced_service(
        CANARY, NAMESPACE, {"spec": {"selector": {"app": "other"}}}
    )

    made = await eventually(
        lambda: (
            (found := kubectl.service(CANARY))
            and found["metadata"]["uid"] != before["metadata"]["uid"]
            and found
        ),
        what="the canary's Service made again",
    )
    assert made["spec"]["selector"] == before["spec"]["selector"]
    assert status(kubectl)["phase"] == "Progressing"
    assert degraded_written(cluster) == [], "a Service gone is made again, not an error"


async def test_all_a_predecessors_children_collected_before_their_adoption_are_made_again_not_an_error(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """`kubectl replace --force`: the garbage collector takes every child of the model deleted, not
    one. The tick decided again on fresh reads, whose new revision's Service (`may_exist=False`)
    was still kopf's copy: adopted, answered 404 again, and said Degraded ServiceGone."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    before = {name: (kubectl.service(name) or {})["metadata"]["uid"] for name in (STABLE, "digits")}
    deployment = (kubectl.deployment(STABLE) or {})["metadata"]["uid"]

    await kubectl.delete()
    for plural, name in (("deployments", STABLE), ("services", STABLE), ("services", "digits")):
        cluster.delete_before(the_operators_write(plural, name))  # each adoption's patch
    await kubectl.apply(spec_of(V1))

    await eventually(
        lambda: (found := kubectl.deployment(STABLE)) and found["metadata"]["uid"] != deployment,
        what="the Deployment made again",
    )
    await kubectl.make_ready(STABLE, 2)
    status = await phase_is(kubectl, "Promoted")
    await eventually(
        lambda: all(
            (kubectl.service(name) or {}).get("metadata", {}).get("uid") not in (None, uid)
            for name, uid in before.items()
        ),
        what="both Services made again",
    )
    assert condition(status, "Degraded")["status"] == "False"
    assert degraded_written(cluster) == [], "children gone are made again, not an error"


async def test_the_stable_made_again_as_its_service_repair_is_answered_404_is_said_restored(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """Mid-canary the stable's Deployment is deleted, and its Service (edited by hand) deleted as
    the repair arrives: `_restore` made the Deployment, the repair's 404 made the tick decide again,
    and that `_restore` found it there: no Restored Event, and the engine was told none."""
    await start_operator(ScriptedMetrics())
    await canary_at_step_1(kubectl, "replicas", SLOW_STEPS)
    before, service = kubectl.deployment(STABLE), kubectl.service(STABLE)
    assert before is not None and service is not None

    cluster.delete_before(the_operators_write("services", STABLE))
    await client.CoreV1Api(api).patch_namespaced_service(
        STABLE, NAMESPACE, {"spec": {"selector": {"app": "other"}}}
    )
    await client.AppsV1Api(api).delete_namespaced_deployment(STABLE, NAMESPACE)

    await eventually(
        lambda: (
            (found := kubectl.deployment(STABLE)) and found["metadata"]["uid"] != before["metadata"]["uid"]
        ),
        what="the stable made again",
    )
    made = await eventually(
        lambda: (
            (found := kubectl.service(STABLE))
            and found["metadata"]["uid"] != service["metadata"]["uid"]
            and found
        ),
        what="its Service made again",
    )
    assert made["spec"]["selector"] == service["spec"]["selector"]
    assert len(await posted(kubectl, "Restored")) == 1
    # the stable made again is not ready until its pods are, and a tick may say so (NotReady): true,
    # and no error; what the fix removed was KubernetesAPIError for the Service's 404
    assert set(degraded_written(cluster)) <= {"NotReady"}, "a Service gone is made again, not an error"


async def test_the_stable_made_again_is_said_restored_though_making_its_service_again_failed(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """Its Deployment and Service deleted by hand: `restore` made the Deployment, then the Service's
    creation was refused and the tick failed before its Restored Event; the retry found the
    Deployment there, and it was never said."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    before = kubectl.service(STABLE)
    assert before is not None
    refused: list[kmock.Request] = []

    def first_service_created(request: kmock.Request) -> bool:
        picked = (
            not refused
            and request.headers.get("User-Agent") != TESTS_USER_AGENT
            and request.resource is not None
            and request.resource.plural == "services"
            and request.action == kmock.action.CREATE
        )
        if picked:
            refused.append(request)
        return picked

    cluster.refuse(first_service_created, kmock.KubernetesError(status=500, reason="InternalError"))
    await kubectl.apps.delete_namespaced_deployment(STABLE, NAMESPACE)
    await client.CoreV1Api(api).delete_namespaced_service(STABLE, NAMESPACE)

    await eventually(
        lambda: (found := kubectl.service(STABLE)) and found["metadata"]["uid"] != before["metadata"]["uid"],
        what="its Service made again",
    )
    assert refused, "the Service's first creation was refused"
    assert len(await posted(kubectl, "Restored")) == 1
