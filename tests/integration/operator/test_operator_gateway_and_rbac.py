"""The operator on kmock in namespaced mode with the gateway-api router, a whole canary through to
deletion: the HTTPRoute changes only by JSON patches of our refs' weight (and the name and copy a
new revision needs), keeps every filter and field the user wrote, and stays valid under the real
Gateway API v1 CRD (../shared/gateway-api/: structural schema, pruning, CEL rules); every request
the operator and kopf send is one the chart's namespaced RBAC grants, none cluster-wide."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import apiserver_rules as rules
import jsonpatch
import kmock
import pytest
import yaml
from kmock_cluster import QM, Cluster
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
from test_operator_lifecycle import phase_is, serving

from quantship.operator import crd, permissions
from quantship.operator.routers import weight_patch

V1 = "https://models.example.com/digits-v1.tar.gz"
V2 = "https://models.example.com/digits-v2.tar.gz"
FIRST, SECOND = revision(V1), revision(V2)
HEADER_FILTER = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {"set": [{"name": "x-model", "value": "digits"}]},
}
USER_RULE: dict[str, Any] = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models/digits"}}],
    "backendRefs": [
        {
            "group": "",
            "kind": "Service",
            "name": "digits",
            "port": 8080,
            "weight": 1,
            "filters": [HEADER_FILTER],
        },
        {"group": "", "kind": "Service", "name": "legacy-digits", "port": 80, "weight": 0},
    ],
}
OTHER_RULE: dict[str, Any] = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/other"}}],
    "backendRefs": [{"group": "", "kind": "Service", "name": "other", "port": 80, "weight": 1}],
}
ALLOWED_PATH = re.compile(r"^/spec/rules/\d+/backendRefs/(\d+|\d+/name|\d+/weight|-)$")


def gateway_route_schema() -> dict[str, Any]:
    if not rules.GATEWAY_API.is_dir():
        pytest.skip(f"no Gateway API CRDs at {rules.GATEWAY_API} (data outside the repository)")
    return rules.crd_schema(rules.load_gateway_api()["httproutes.gateway.networking.k8s.io"], "v1")


def assert_valid_route(schema: dict[str, Any], route: dict[str, Any]) -> None:
    body = {key: value for key, value in route.items() if key != "status"}
    assert rules.prune_resource(body, schema) == body, "fields the Gateway API schema would prune"
    _, errors = rules.admit(schema, body)
    assert errors == [], errors


# -- the patch, pure --------------------------------------------------------------------------------


def ours(ref: dict[str, Any]) -> bool:
    return re.fullmatch(r"digits(-[0-9a-f]{10})?", str(ref.get("name"))) is not None


def test_a_canary_copies_the_stable_ref_with_its_filters_and_only_names_and_weights_change() -> None:
    refs = [dict(ref) for ref in USER_RULE["backendRefs"]]
    steps = [
        [(f"digits-{FIRST}", 100)],  # the first revision serves
        [(f"digits-{FIRST}", 75), (f"digits-{SECOND}", 25)],  # a canary at 25 %
        [(f"digits-{SECOND}", 100)],  # promoted
        [("digits", None)],  # released on deletion
    ]
    route = {"spec": {"rules": [{**USER_RULE, "backendRefs": refs}]}}
    for wanted in steps:
        current = route["spec"]["rules"][0]["backendRefs"]
        ops = weight_patch("/spec/rules/0/backendRefs", current, wanted, ours)
        assert all(ALLOWED_PATH.match(op["path"]) for op in ops), ops
        for op in ops:
            if op["op"] == "add" and not op["path"].endswith("/-"):
                assert op["path"].rsplit("/", 1)[1] in ("name", "weight")
        route = jsonpatch.apply_patch(route, ops)
        mine = [ref for ref in route["spec"]["rules"][0]["backendRefs"] if ours(ref)]
        assert [(ref["name"], ref["weight"]) for ref in mine if wanted[0][1] is not None] == (
            wanted if wanted[0][1] is not None else []
        )
        assert all(ref["filters"] == [HEADER_FILTER] and ref["port"] == 8080 for ref in mine)
        assert route["spec"]["rules"][0]["backendRefs"][1]["name"] == "legacy-digits"
    # handed back as written, but for the weight last set (100: all of our share)
    handed_back = route["spec"]["rules"][0]
    assert handed_back["backendRefs"][0] == {**USER_RULE["backendRefs"][0], "weight": 100}
    assert handed_back == {**USER_RULE, "backendRefs": handed_back["backendRefs"]}


def test_a_patch_tests_each_ref_it_changes_so_a_concurrent_edit_fails_it() -> None:
    refs = [dict(ref) for ref in USER_RULE["backendRefs"]]
    ops = weight_patch("/spec/rules/0/backendRefs", refs, [(f"digits-{FIRST}", 100)], ours)
    edited = {"spec": {"rules": [{"backendRefs": [{**refs[0], "filters": []}, refs[1]]}]}}
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(edited, ops)


# -- the operator on kmock, namespaced, gateway-api -------------------------------------------------


def permission_of(request: kmock.Request) -> tuple[str | None, permissions.Permission] | None:
    """(namespace or None for cluster scope, (group, resource, verb)) of an API request; None
    for discovery, which every authenticated user may read."""
    if request.resource is None or request.resource.plural is None:
        return None
    verbs = {
        kmock.action.LIST: "list",
        kmock.action.WATCH: "watch",
        kmock.action.FETCH: "get",
        kmock.action.CREATE: "create",
        kmock.action.UPDATE: "patch",
        kmock.action.DELETE: "delete",
    }
    resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return request.namespace, (request.resource.group or "", resource, verbs[request.action])


async def test_namespaced_gateway_rollout_keeps_the_route_valid_and_stays_within_namespaced_rbac(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    schema = gateway_route_schema()
    route_body = {"parentRefs": [{"name": "public"}], "rules": [USER_RULE, OTHER_RULE]}
    await kubectl.create_route(rules=route_body["rules"])
    assert_valid_route(schema, kubectl.route() or {})
    operator = await start_operator(ScriptedMetrics(), namespaces=(NAMESPACE,))
    gateway = {"router": "gateway-api", "httpRoute": "digits"}
    await kubectl.apply(spec_of(V1, traffic=gateway, rollout={"steps": [25, 100], "stepInterval": "1s"}))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 2)
    await phase_is(kubectl, "Promoted")

    def refs() -> list[dict[str, Any]]:
        return list((kubectl.route() or {})["spec"]["rules"][0]["backendRefs"])

    seen = []

    def weights_are(expected: list[tuple[str, int]]) -> bool:
        current = refs()
        if [(ref["name"], ref["weight"]) for ref in current if ours(ref)] == expected:
            seen.append(kubectl.route())
            return True
        return False

    await eventually(lambda: weights_are([(f"digits-{FIRST}", 100)]), what="the stable at 100")
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}", 2)
    await eventually(
        lambda: weights_are([(f"digits-{FIRST}", 75), (f"digits-{SECOND}", 25)]), what="weights 75/25"
    )
    await phase_is(kubectl, "Promoted", timeout=30)
    await eventually(lambda: weights_are([(f"digits-{SECOND}", 100)]), what="the new stable at 100")
    await kubectl.delete()
    await eventually(lambda: kubectl.get() is None, what="the resource gone")
    await operator.shutdown()

    # every state of the route: the user's filter on our refs, the other refs and rules untouched,
    # and valid under the real HTTPRoute v1 schema and its CEL rules
    final = kubectl.route() or {}
    for state in [*seen, final]:
        assert_valid_route(schema, state)
        rule = state["spec"]["rules"][0]
        assert all(ref["filters"] == [HEADER_FILTER] for ref in rule["backendRefs"] if ours(ref))
        assert rule["backendRefs"][1] == USER_RULE["backendRefs"][1]
        assert rule["matches"] == USER_RULE["matches"] and state["spec"]["rules"][1] == OTHER_RULE
    assert final["spec"]["rules"][0]["backendRefs"][0] == {**USER_RULE["backendRefs"][0], "weight": 100}

    requests = [r for r in cluster if r.headers.get("User-Agent") != TESTS_USER_AGENT]  # the operator's
    patches = [r for r in requests if r.resource is not None and r.resource.plural == "httproutes" and r.data]
    patches = [r for r in patches if r.action == kmock.action.UPDATE]
    assert patches, "the operator never patched the route"
    for request in patches:
        assert isinstance(request.data, list), "a JSON patch, not a merge of whole lists"
        sent = [  # without kmock_cluster's own: resourceVersion, and the route as stored
            op for op in request.data if not op["path"].startswith("/metadata/") and op["path"] != ""
        ]
        assert sent and all(ALLOWED_PATH.match(op["path"]) for op in sent), sent

    in_namespaces, cluster_scope = permissions.needed(clusterwide=False, peering=False)
    used = {found for request in requests if (found := permission_of(request)) is not None}
    assert {scope for scope, _ in used} == {NAMESPACE}, "a request outside the served namespace"
    # both ways: nothing beyond what the chart grants, and nothing granted that this run never used
    # (but spec.quantize's Job, test_operator_quantize_job.py, spec.placement's pod reads,
    # test_operator_faults.py, which record those calls, the GETs of a cache miss, which warm
    # indexes may never need, and the owner references' grant, which no call uses)
    # (and the repairs, test_a_namespaced_operators_repairs_stay_within_namespaced_rbac)
    unused_here = permissions.QUANTIZE_JOB | permissions.PLACEMENT | permissions.OWNER_REFERENCES
    assert in_namespaces - unused_here - permissions.CACHE_MISS_READS - permissions.REPAIRS <= {
        permission for _, permission in used
    }
    assert {permission for _, permission in used} <= in_namespaces - unused_here
    assert not cluster_scope
    assert not [r for r in requests if r.resource is not None and r.resource.plural == "namespaces"]
    used_kinds = {permission for _, permission in used}
    assert (crd.GROUP, crd.PLURAL, "watch") in used_kinds and ("", "events", "create") in used_kinds


async def test_a_namespaced_operators_repairs_stay_within_namespaced_rbac(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, api: client.ApiClient
) -> None:
    """A Deployment deleted and made again, a Service edited and put back, a model created again at
    once adopting its children: each repair sent calls the chart did not grant (403 in a cluster,
    and the rollout Degraded for ever)."""
    await start_operator(ScriptedMetrics(), namespaces=(NAMESPACE,), resync_interval=0.5)
    stable = f"digits-{FIRST}"
    await serving(kubectl, spec_of(V1))
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)

    before = (kubectl.deployment(stable) or {})["metadata"]["uid"]
    await apps.delete_namespaced_deployment(stable, NAMESPACE)
    await eventually(
        lambda: (kubectl.deployment(stable) or {}).get("metadata", {}).get("uid") not in (None, before),
        what="the stable Deployment made again",
    )
    await kubectl.make_ready(stable, 2)
    shared = (kubectl.service("digits") or {})["spec"]["selector"]
    await core.patch_namespaced_service("digits", NAMESPACE, {"spec": {"selector": {"app": "other"}}})
    await eventually(
        lambda: (kubectl.service("digits") or {})["spec"]["selector"] == shared, what="the selector back"
    )
    await kubectl.delete()
    await kubectl.apply(spec_of(V1))
    uid = (kubectl.get() or {})["metadata"]["uid"]
    await phase_is(kubectl, "Promoted")
    await eventually(
        lambda: all(
            [r["uid"] for r in (child or {}).get("metadata", {}).get("ownerReferences") or []] == [uid]
            for child in (kubectl.deployment(stable), kubectl.service(stable), kubectl.service("digits"))
        ),
        what="the children adopted by the model created again",
    )

    in_namespaces, _ = permissions.needed(clusterwide=False, peering=False)
    requests = [r for r in cluster if r.headers.get("User-Agent") != TESTS_USER_AGENT]
    used = {found for request in requests if (found := permission_of(request)) is not None}
    assert {scope for scope, _ in used} == {NAMESPACE}, "a request outside the served namespace"
    assert {permission for _, permission in used} <= in_namespaces
    assert {permission for _, permission in used} >= permissions.REPAIRS, "every repair call was made"


async def test_a_namespaced_operator_started_before_its_crd_waits_for_it_then_serves(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """kopf scans the API's resources once when it may not watch CRDs: started first, the operator
    would never watch a QuantizedModel (a chart with crds.enabled=false, the CRD applied later)."""
    served = cluster.resources[QM]
    del cluster.resources[QM]
    operator = await start_operator(ScriptedMetrics(), namespaces=(NAMESPACE,), ready_within=0)
    discovery = f"/apis/{crd.GROUP}/{crd.VERSION}"
    asked = lambda: sum(1 for r in cluster if r.url.path == discovery) >= 2 or None  # noqa: E731
    await eventually(asked, what="the operator to ask twice whether QuantizedModels are served")
    assert not operator.ready.is_set()
    cluster.resources[QM] = served
    assert await asyncio.to_thread(operator.ready.wait, 30)
    await kubectl.apply(spec_of(V1))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")


async def test_cluster_wide_the_operator_and_kopf_send_only_what_the_cluster_role_grants(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    operator = await start_operator(ScriptedMetrics())
    await kubectl.apply(spec_of(V1))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 2)
    await phase_is(kubectl, "Promoted")
    await operator.shutdown()

    in_namespaces, cluster_scope = permissions.needed(clusterwide=True, peering=False)
    requests = [r for r in cluster if r.headers.get("User-Agent") != TESTS_USER_AGENT]
    used = {found for request in requests if (found := permission_of(request)) is not None}
    cluster_wide = {permission for scope, permission in used if scope is None}
    assert cluster_wide >= set(cluster_scope), "kopf follows the CRD cluster-wide"
    assert {permission for _, permission in used} <= in_namespaces | cluster_scope
    assert not [r for r in requests if r.resource is not None and r.resource.plural == "namespaces"]


def test_the_example_httproute_is_valid_under_the_real_gateway_api_schema() -> None:
    schema = gateway_route_schema()
    path = rules.REPOSITORY / "manifests" / "examples" / "digits-gateway.yaml"
    routes = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == "HTTPRoute"]
    assert len(routes) == 1
    assert_valid_route(schema, routes[0])
