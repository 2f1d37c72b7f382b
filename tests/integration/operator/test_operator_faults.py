"""The operator with the real kopf runtime against kmock, when something goes wrong under it: a
canary that dies mid-step, an API server that refuses a write with its reason, and a namespace
deleted with the operator down (no finalizer where no HTTPRoute needs releasing), and canary
pods no node can take (spec.placement.matchGateHardware)."""

from __future__ import annotations

import asyncio
import json
import logging
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
    revision,
    spec_of,
)
from test_operator_gateway_and_rbac import permission_of
from test_operator_lifecycle import condition, events, phase_is, posted, serving
from test_operator_quantize_job import PRODUCED, finish, quantizing

from quantship.operator import crd, handlers, permissions, placement
from quantship.operator.kube import MERGE_PATCH
from quantship.operator.quantize_job import Verdict

V1 = "https://models.example.com/digits-v1.tar.gz"
V2 = "https://models.example.com/digits-v2.tar.gz"
FIRST, SECOND = revision(V1), revision(V2)
GATEWAY = {"router": "gateway-api", "httpRoute": "digits"}
SLOW_STEPS = {"steps": [25, 50, 100], "stepInterval": "10m"}
"""No judgement can come due within a test: whatever happens at a step happens without one."""


def weights(kubectl: Kubectl) -> dict[str, int]:
    """Our backendRefs in the route's first rule, by Service name: their weights."""
    refs = (kubectl.route() or {})["spec"]["rules"][0]["backendRefs"]
    return {ref["name"]: ref.get("weight", 1) for ref in refs if ref["name"].startswith("digits")}


# -- a dead canary (issue 15, item 3) -----------------------------------------------------------------


async def test_a_canary_that_dies_mid_step_is_rolled_back_at_once_and_loses_all_traffic(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await kubectl.create_route(rules=[{"backendRefs": [{"name": "digits", "port": 8080}]}])
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, traffic=GATEWAY, rollout=SLOW_STEPS))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}", 2)
    await eventually(
        lambda: weights(kubectl) == {f"digits-{FIRST}": 75, f"digits-{SECOND}": 25}, what="the canary at 25%"
    )

    await kubectl.make_ready(f"digits-{SECOND}", 0)  # its servers were killed: none passes readiness

    status = await phase_is(kubectl, "RolledBack", timeout=10)
    assert status["message"].startswith(f"canary not ready: {SECOND} has no ready server at step 1 of 3")
    assert status["inconclusive"] == 0 and status["failures"] == 0, "no judgement was waited for"
    assert weights(kubectl) == {f"digits-{FIRST}": 100}, "nothing routed to the dead canary"
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="the canary removed")
    (event,) = await posted(kubectl, "RollBack")
    assert event["type"] == "Warning" and event["message"].startswith("canary not ready:")


async def test_a_stable_that_dies_mid_step_holds_the_judgement_and_says_so(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={**SLOW_STEPS, "stepInterval": "1s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await eventually(lambda: ((kubectl.get() or {}).get("status") or {}).get("step") == 0, what="step 1")

    await kubectl.make_ready(f"digits-{FIRST}", 0)

    def degraded() -> dict[str, Any] | None:
        found = condition((kubectl.get() or {}).get("status") or {}, "Degraded")
        return found if found["status"] == "True" else None

    trouble = await eventually(degraded, what="a Degraded condition")
    assert trouble["message"].startswith(f"stable not ready: {FIRST} has no ready server")
    held = (kubectl.get() or {})["status"]["step"]
    await asyncio.sleep(3)  # three judgements would have come due meanwhile
    status = (kubectl.get() or {})["status"]
    assert status["phase"] == "Progressing" and status["step"] == held, "no step judged against a dead stable"

    await kubectl.make_ready(f"digits-{FIRST}", 2)
    await phase_is(kubectl, "Promoted", timeout=30)


# -- the API server's own words (issue 15, item 10) -------------------------------------------------

RANGE_FULL = "failed to allocate a serviceIP: range is full"


def creating_services(request: kmock.Request) -> bool:
    return (
        request.method == "POST"
        and request.resource is not None
        and request.resource.plural == "services"
        and request.headers.get("User-Agent") != TESTS_USER_AGENT
    )


async def test_an_api_error_keeps_the_reason_the_api_server_gave(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    cluster.refuse(
        creating_services, kmock.KubernetesError(status=500, reason="InternalError", message=RANGE_FULL)
    )
    await start_operator(ScriptedMetrics())
    await kubectl.apply(spec_of(V1))

    def degraded() -> dict[str, Any] | None:
        found = [
            c
            for c in ((kubectl.get() or {}).get("status") or {}).get("conditions", [])
            if c["type"] == "Degraded"
        ]
        return found[0] if found and found[0]["status"] == "True" else None

    trouble = await eventually(degraded, what="a Degraded condition")
    assert trouble["reason"] == "KubernetesAPIError"
    assert trouble["message"] == (
        f"creating Service digits-{FIRST}: Kubernetes API answered 500 Internal Server Error "
        f"(InternalError: {RANGE_FULL})"
    )
    (event,) = await posted(kubectl, "KubernetesAPIError")
    assert event["type"] == "Warning" and RANGE_FULL in event["message"]


async def test_a_rollout_sends_no_request_the_api_server_must_refuse(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """No read before a create (404) and no create of what exists (409): every answer the
    operator gets from the first reconcile through a promotion is a success."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [50, 100], "stepInterval": "1s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}", 2)
    await phase_is(kubectl, "Promoted", timeout=30)

    ours = [
        (request, code)
        for request, code in cluster.answers
        if request.headers.get("User-Agent") != TESTS_USER_AGENT
    ]
    refused = [f"{code} {request.method} {request.url.path}" for request, code in ours if code in (404, 409)]
    assert refused == []
    created = [request.url.path for request, code in ours if request.method == "POST" and code < 300]
    assert any(path.endswith("/services") for path in created), "the operator's creates were recorded"


# -- the finalizer, only while an HTTPRoute must be released (issue 15, item 11) -----------------------


def finalizers(kubectl: Kubectl) -> list[str]:
    return list(((kubectl.get() or {}).get("metadata") or {}).get("finalizers") or [])


def ticks(caplog: pytest.LogCaptureFixture) -> int:
    """Ticks of the daemons so far (each logs handlers.TICK_DONE at debug): the analysis daemon's here,
    as no resync falls due within a test at the default resync interval (60 s)."""
    return sum(record.getMessage() == handlers.TICK_DONE for record in caplog.records)


async def test_a_model_mid_rollout_carries_no_finalizer_and_goes_with_the_operator_down(
    kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    operator = await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout=SLOW_STEPS))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await eventually(lambda: ((kubectl.get() or {}).get("status") or {}).get("step") == 0, what="step 1")
    before = ticks(caplog)
    await eventually(lambda: ticks(caplog) > before + 3, what="the analysis ticking")
    assert finalizers(kubectl) == [], "replicas mode mid-rollout: nothing to release, no finalizer"

    await operator.shutdown()
    await kubectl.delete()  # what deleting its namespace does to it

    assert kubectl.get() is None, "gone at once, with nobody to remove a finalizer"


async def test_the_analysis_ends_when_its_model_is_deleted_mid_rollout(
    kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout=SLOW_STEPS))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")

    await kubectl.delete()
    assert kubectl.get() is None
    await asyncio.sleep(1)  # the tick that finds it gone (0.2 s ticks)
    after = ticks(caplog)
    await asyncio.sleep(1)

    assert ticks(caplog) == after, "no ticks of a model that is gone"


async def test_gateway_mode_holds_the_finalizer_only_once_the_route_is_ours_to_release(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await kubectl.apply(spec_of(V1, traffic=GATEWAY))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 2)
    await posted(kubectl, "HTTPRouteNotFound")  # no route yet: nothing of the user's was touched
    assert finalizers(kubectl) == []

    await kubectl.create_route(rules=[{"backendRefs": [{"name": "digits", "port": 8080}]}])
    await phase_is(kubectl, "Promoted")
    assert await eventually(lambda: finalizers(kubectl), what="the finalizer") == [
        "serving.quantship.io/finalizer"
    ]
    assert weights(kubectl) == {f"digits-{FIRST}": 100}

    await kubectl.delete()
    await eventually(lambda: kubectl.get() is None, what="the model gone once the route is released")
    assert weights(kubectl) == {"digits": 100}, "the route points at the model's Service name again"


# -- canaries pinned to nodes like the gate's (issue 13, item 4) ---------------------------------------

GATE_FLAGS = ("avx2", "avx512f", "avx512_vnni")


def gate_hardware(kubectl: Kubectl) -> dict[str, Any] | None:
    found = [
        c
        for c in ((kubectl.get() or {}).get("status") or {}).get("conditions") or []
        if c["type"] == placement.MATCHED
    ]
    return found[0] if found else None


async def scheduled(api: client.ApiClient, revision_id: str, *, node: str | None, why: str = "") -> None:
    """The scheduler's word on a pod of the revision: placed on `node`, or unschedulable (`why`)."""
    name = f"digits-{revision_id}-5d8f9-abcde"
    deployment = await client.AppsV1Api(api).read_namespaced_deployment(f"digits-{revision_id}", NAMESPACE)
    labels = deployment.spec.template.metadata.labels  # as its ReplicaSet labels its pods
    core = client.CoreV1Api(api)
    if not any(pod.metadata.name == name for pod in (await core.list_namespaced_pod(NAMESPACE)).items):
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "server", "image": "quantship"}]},
        }
        await core.create_namespaced_pod(NAMESPACE, body)
    if node is None:
        state = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}
        await core.patch_namespaced_pod_status(
            name,
            NAMESPACE,
            {"status": {"phase": "Pending", "conditions": [state]}},
            _content_type=MERGE_PATCH,
        )
    else:
        await core.patch_namespaced_pod(
            name, NAMESPACE, {"spec": {"nodeName": node}}, _content_type=MERGE_PATCH
        )
        state = {"type": "PodScheduled", "status": "True"}
        await core.patch_namespaced_pod_status(
            name,
            NAMESPACE,
            {"status": {"phase": "Running", "conditions": [state]}},
            _content_type=MERGE_PATCH,
        )


async def test_match_gate_hardware_pins_the_canary_and_says_when_no_node_matches(
    cluster: Cluster, kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, placement={"matchGateHardware": True}))
    unknown = await eventually(lambda: gate_hardware(kubectl), what="GateHardwareMatched")
    assert (unknown["status"], unknown["reason"]) == ("Unknown", "GateHardwareUnknown")
    assert "affinity" not in kubectl.deployment(f"digits-{FIRST}")["spec"]["template"]["spec"]  # type: ignore[index]

    job = await quantizing(kubectl)
    verdict = Verdict(True, "top1_agreement", 1.0, 0.99, PRODUCED, int8_flags=GATE_FLAGS)
    await finish(api, job["metadata"]["name"], exit_code=0, message=json.dumps(verdict.to_json()))
    progressing = await phase_is(kubectl, "Progressing")
    canary = progressing["canaryRevision"]
    assert progressing["quantizedArtifact"]["int8Flags"] == list(GATE_FLAGS)
    deployment = await eventually(
        lambda: kubectl.deployment(f"digits-{canary}"), what="the canary Deployment"
    )
    required = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    (term,) = required["nodeSelectorTerms"]
    expressions = {e["key"]: (e["operator"], e.get("values")) for e in term["matchExpressions"]}
    cpuid = "feature.node.kubernetes.io/cpu-cpuid."
    assert expressions[f"{cpuid}AVX512VNNI"] == ("In", ["true"])
    assert expressions[f"{cpuid}AVX2"] == ("In", ["true"])
    assert expressions[f"{cpuid}AMXINT8"] == ("DoesNotExist", None), "exactly the gate's kernels"

    why = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    await scheduled(api, canary, node=None, why=why)
    unmatched = await eventually(
        lambda: (found := gate_hardware(kubectl)) and found["status"] == "False" and found, what="False"
    )
    assert unmatched["reason"] == "NoMatchingNode"
    assert unmatched["message"] == (
        f"no node can take {canary}'s pods with the gate's int8 CPU features "
        f"(avx2, avx512f, avx512_vnni; node-feature-discovery labels): {why}"
    )
    (event,) = await posted(kubectl, "NoMatchingNode")
    assert event["type"] == "Warning"

    await scheduled(api, canary, node="vnni-node-1")  # a node with the labels joined
    matched = await eventually(
        lambda: (found := gate_hardware(kubectl)) and found["status"] == "True" and found, what="True"
    )
    assert (
        matched["message"]
        == f"{canary} runs on nodes with the gate's int8 CPU features (avx2, avx512f, avx512_vnni)"
    )

    # the pod reads are calls the chart's role grants
    requests = [r for r in cluster if r.headers.get("User-Agent") != TESTS_USER_AGENT]
    used = {found[1] for request in requests if (found := permission_of(request)) is not None}
    in_namespaces, cluster_scope = permissions.needed(clusterwide=True, peering=False)
    assert permissions.PLACEMENT <= used <= in_namespaces | cluster_scope


def listing_pods(request: kmock.Request) -> bool:
    return (
        request.method == "GET"
        and request.resource is not None
        and request.resource.plural == "pods"
        and request.headers.get("User-Agent") != TESTS_USER_AGENT
    )


async def test_a_failed_pod_read_for_placement_never_costs_a_tick_its_status(
    cluster: Cluster, kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """The pods are read after the tick has acted (routes moved, Deployments relabelled): failing
    there must not leave the status behind what the cluster now is."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, placement={"matchGateHardware": True}))
    job = await quantizing(kubectl)
    verdict = Verdict(True, "top1_agreement", 1.0, 0.99, PRODUCED, int8_flags=GATE_FLAGS)
    await finish(api, job["metadata"]["name"], exit_code=0, message=json.dumps(verdict.to_json()))
    canary = (await phase_is(kubectl, "Progressing"))["canaryRevision"]
    cluster.refuse(
        listing_pods, kmock.KubernetesError(status=500, reason="InternalError", message="etcd down")
    )
    await kubectl.make_ready(f"digits-{canary}", 2)
    promoted = await phase_is(kubectl, "Promoted", timeout=60)
    assert promoted["stableRevision"] == canary


# -- a status a person wrote -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "written", "said"),
    [
        ("startedAt", "yesterday", "status.startedAt 'yesterday' is not an RFC 3339 time"),
        ("stepStartedAt", "2026-13-01T00:00:00Z", "status.stepStartedAt '2026-13-01T00:00:00Z' is not"),
        ("lastAnalysis", {"slos": "all fine"}, "status.lastAnalysis is not a judgement the operator wrote"),
    ],
)
async def test_a_status_field_a_person_wrote_that_cannot_be_read_is_said_once_and_put_right(
    kubectl: Kubectl,
    start_operator: StartOperator,
    caplog: pytest.LogCaptureFixture,
    field: str,
    written: object,
    said: str,
) -> None:
    """Written with the operator down (`kubectl patch --subresource=status`), which the restarted one
    resumes from: it failed every tick with a traceback, the rollout stuck where it stood."""
    caplog.set_level(logging.ERROR, logger="kopf.objects")
    first = await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 100], "stepInterval": "2s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await eventually(lambda: ((kubectl.get() or {}).get("status") or {}).get("step") == 0, what="step 1")
    await first.shutdown()
    await kubectl.custom.patch_namespaced_custom_object_status(
        crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, "digits", {"status": {field: written}},
        _content_type=MERGE_PATCH,
    )  # fmt: skip

    await start_operator(ScriptedMetrics())

    (event,) = await posted(kubectl, "UnreadableStatus")
    assert event["type"] == "Warning" and event["message"].startswith(said)
    await eventually(
        lambda: (kubectl.get() or {})["status"].get(field) != written, what="the field rewritten"
    )
    promoted = await phase_is(kubectl, "Promoted", timeout=30)
    assert promoted["stableRevision"] == SECOND
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert len(events(kubectl, "UnreadableStatus")) == 1, "said once: the tick's write put it right"


@pytest.mark.parametrize("lost", ["the whole status", "stableRevision"])
async def test_a_status_lost_mid_canary_resumes_from_the_stable_deployment_never_serves_the_canary_unjudged(
    kubectl: Kubectl, start_operator: StartOperator, lost: str
) -> None:
    """The status removed with the operator down (by hand, or a backup restored without it: a create
    drops the status): decided from nothing, the canary was deployed as a first revision and served
    all traffic unjudged, a bad one too, and the stable's Deployment left behind."""
    first = await start_operator(ScriptedMetrics(bad={SECOND}))
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 100], "stepInterval": "30s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await eventually(lambda: ((kubectl.get() or {}).get("status") or {}).get("step") == 0, what="step 1")
    await first.shutdown()
    status = (kubectl.get() or {})["status"]
    removed = dict.fromkeys(status) if lost == "the whole status" else {"stableRevision": None}
    await kubectl.custom.patch_namespaced_custom_object_status(
        crd.GROUP,
        crd.VERSION,
        NAMESPACE,
        crd.PLURAL,
        "digits",
        {"status": removed},
        _content_type=MERGE_PATCH,
    )
    await kubectl.patch({"spec": {"rollout": {"stepInterval": "1s"}}})  # judged soon after the restart

    await start_operator(ScriptedMetrics(bad={SECOND}))

    (event,) = await posted(kubectl, "StatusLost")
    assert event["type"] == "Warning" and event["message"].startswith(
        f"the status names no stable revision, but Deployment digits-{FIRST} serves as the stable: "
        f"resuming from {FIRST}, and rolling {SECOND} out as a canary"
    )
    rolled_back = await phase_is(kubectl, "RolledBack", timeout=30)
    assert rolled_back["stableRevision"] == FIRST and rolled_back["rejectedRevision"] == SECOND
    assert "clip_rate burn rate above 1 on both windows" in rolled_back["message"]
    served = [
        e for e in rolled_back["history"] if e["action"] in ("Serve", "Promote") and e["stable"] == SECOND
    ]
    assert served == [], "never served unjudged"
    assert (kubectl.deployment(f"digits-{FIRST}") or {})["metadata"]["labels"]["track"] == "stable"


async def test_a_retiring_revision_a_person_wrote_never_deletes_what_is_not_the_models(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """status.retiringRevisions ["db"], written with the operator down: the restarted one deleted
    Deployment and Service digits-db, the user's, whoever made them."""
    caplog.set_level(logging.WARNING, logger="quantship.operator.workloads")
    first = await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    pods = {"matchLabels": {"app": "db"}}
    template = {
        "metadata": {"labels": {"app": "db"}},
        "spec": {"containers": [{"name": "db", "image": "postgres"}]},
    }
    theirs = {"name": "digits-db", "namespace": NAMESPACE}
    await kubectl.apps.create_namespaced_deployment(
        NAMESPACE, {"metadata": theirs, "spec": {"replicas": 1, "selector": pods, "template": template}}
    )
    await client.CoreV1Api(api).create_namespaced_service(
        NAMESPACE, {"metadata": theirs, "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]}}
    )
    await first.shutdown()
    await kubectl.custom.patch_namespaced_custom_object_status(
        crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, "digits", {"status": {"retiringRevisions": ["db"]}},
        _content_type=MERGE_PATCH,
    )  # fmt: skip

    await start_operator(ScriptedMetrics())

    await eventually(lambda: not (kubectl.get() or {})["status"].get("retiringRevisions"), what="retired")
    assert kubectl.deployment("digits-db") is not None and kubectl.service("digits-db") is not None
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not deleting")]
    assert said == [f"not deleting Deployment {NAMESPACE}/digits-db for a retiring revision: it is not this "
                    "model's (no controller)"]  # fmt: skip
    assert kubectl.deployment(f"digits-{FIRST}") is not None
