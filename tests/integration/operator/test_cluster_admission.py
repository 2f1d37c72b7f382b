"""The tests' API server (`kmock_cluster.Cluster`) writes QuantizedModels as a real one does:
the status subresource's split, pruning, defaults, the schema and CEL rules, and ratcheting on
update. Every operator test leans on it (its teardown fails on anything the operator wrote that was
refused or pruned), so it is checked here against what the Kubernetes documentation says a real
API server does, through the official client as the operator calls it."""

from __future__ import annotations

from typing import Any

import pytest
from kmock_cluster import Cluster
from kubernetes.aio import client
from operator_harness import NAMESPACE, Kubectl, spec_of

from quantship.operator import crd
from quantship.operator.kube import MERGE_PATCH

JSON_PATCH = "application/json-patch+json"


async def patch_status(kubectl: Kubectl, body: Any, content_type: str = MERGE_PATCH) -> None:
    await kubectl.custom.patch_namespaced_custom_object_status(
        crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, "digits", body, _content_type=content_type
    )


async def refused(write: Any) -> str:
    with pytest.raises(client.ApiException) as answer:
        await write
    assert answer.value.status == 422
    return str(answer.value.body)


async def test_a_create_drops_the_status_prunes_unknown_fields_and_fills_defaults(kubectl: Kubectl) -> None:
    body = {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": "digits"},
        "spec": {**spec_of(), "replica": 3},
        "status": {"phase": "Promoted"},
    }
    await kubectl.custom.create_namespaced_custom_object(crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, body)
    stored = kubectl.get() or {}
    assert "status" not in stored and "replica" not in stored["spec"]
    assert stored["spec"]["image"] == crd.spec_schema()["properties"]["image"]["default"]


async def test_a_status_write_changes_the_status_only_and_loses_the_fields_the_crd_does_not_know(
    cluster: Cluster, kubectl: Kubectl
) -> None:
    await kubectl.apply(spec_of())
    await patch_status(kubectl, {"spec": {"replicas": 7}, "status": {"phase": "Pending", "typo": 1}})
    stored = kubectl.get() or {}
    assert stored["status"] == {"phase": "Pending"} and stored["spec"]["replicas"] == 2
    assert [fields for _, fields in cluster.pruned] == [["spec (sent to /status)", "status.typo"]]
    # a JSON patch is split and pruned the same way
    await patch_status(kubectl, [{"op": "add", "path": "/status/step", "value": 1}], JSON_PATCH)
    assert (kubectl.get() or {})["status"] == {"phase": "Pending", "step": 1}


async def test_a_write_of_the_object_leaves_its_status_alone(kubectl: Kubectl) -> None:
    await kubectl.apply(spec_of())
    await patch_status(kubectl, {"status": {"phase": "Pending"}})
    await kubectl.patch({"spec": {"replicas": 3}, "status": {"phase": "Promoted"}})
    stored = kubectl.get() or {}
    assert stored["spec"]["replicas"] == 3 and stored["status"] == {"phase": "Pending"}


async def test_a_status_or_spec_the_rules_refuse_is_422_and_nothing_changes(
    cluster: Cluster, kubectl: Kubectl
) -> None:
    await kubectl.apply(spec_of())
    before = kubectl.get()
    assert "'two' is not of type 'integer'" in await refused(
        patch_status(kubectl, {"status": {"step": "two"}})
    )
    assert "must be longer than" in await refused(
        kubectl.patch({"spec": {"analysis": {"shortWindow": "1h"}}})
    )
    assert "is not one of" in await refused(patch_status(kubectl, {"status": {"phase": "Winning"}}))
    assert kubectl.get() == before
    assert len(cluster.invalid) == 3


async def test_an_update_ratchets_a_value_stored_before_the_rule_that_refuses_it(
    cluster: Cluster, kubectl: Kubectl
) -> None:
    await kubectl.apply(spec_of())
    with cluster.older_crd():
        await kubectl.patch({"spec": {"analysis": {"shortWindow": "1h"}}})
    await patch_status(kubectl, {"status": {"phase": "Pending"}})  # the spec is unchanged: admitted
    await kubectl.patch({"spec": {"replicas": 3}})  # so is another field of it
    assert "must be longer than" in await refused(
        kubectl.patch({"spec": {"analysis": {"longWindow": "30m"}}})
    )
    stored = kubectl.get() or {}
    assert stored["status"]["phase"] == "Pending" and stored["spec"]["replicas"] == 3
    assert stored["spec"]["analysis"]["longWindow"] == "5m"


async def test_the_objects_the_operator_writes_beside_are_checked_too(kubectl: Kubectl) -> None:
    """A Deployment by apimachinery's and core/v1's rules; an HTTPRoute by the Gateway API's CRD
    (its schema, CEL rules and defaults), as the operator's weights patch it."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "digits", "labels": {"model": "digits-"}},
        "spec": {"selector": {"matchLabels": {"app": "digits"}}, "template": {}},
    }
    body = await refused(kubectl.apps.create_namespaced_deployment(NAMESPACE, deployment))
    assert "label model='digits-'" in body
    await kubectl.create_route(rules=[{"backendRefs": [{"name": "digits", "port": 8080}]}])
    assert (kubectl.route() or {})["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1  # defaulted
    weights = [{"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": -1}]
    body = await refused(
        kubectl.custom.patch_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", NAMESPACE, "httproutes", "digits", weights,
            _content_type=JSON_PATCH,
        )
    )  # fmt: skip
    assert "less than the minimum of 0" in body
