"""Helpers of the operator tests: what a person (kubectl) and the kubelet do, a running operator,
scripted metrics, and waiting on conditions. The fixtures that hand them out are in conftest.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kmock
from kmock_cluster import QM, ROUTES, Cluster
from kubernetes.aio import client
from prometheus_client import CollectorRegistry

from quantship import slo
from quantship.operator import crd
from quantship.operator.kube import MERGE_PATCH
from quantship.operator.spec import ModelSpec
from quantship.rollout import Counts, GaugeMeasurement, Measurement, NoData, Value

NAMESPACE = "ml"
TESTS_USER_AGENT = "quantship-tests/kubectl"
"""The User-Agent of the tests' own client (kubectl and the kubelet's part), never the operator's."""


def lost_writes(cluster: Cluster) -> list[tuple[str, str]]:
    """(the request, what was lost) for each write of the operator's (not the tests') that the API
    server refused, or stored without some of what it sent."""
    lost = [*cluster.invalid, *((request, ", ".join(fields)) for request, fields in cluster.pruned)]
    return [
        (f"{request.method.name} {request.url}", str(why))
        for request, why in lost
        if request.headers.get("User-Agent") != TESTS_USER_AGENT
    ]


# -- metrics: the engine's MetricsSource port, scripted per revision ------------------------------


@dataclass
class ScriptedMetrics:
    """Each revision's SLIs as the test says: `good` (within every budget) or `bad` (clips 1%).
    The Prometheus adapter itself is tested against a real Prometheus in tests/integration/rollout."""

    bad: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)

    async def counts(
        self, objective: slo.Objective, window_seconds: int, labels: Mapping[str, str]
    ) -> Measurement:
        revision = labels["revision"]
        if revision in self.silent:
            return NoData(f"no series for revision {revision}")
        clipping = objective.sli is slo.SLI.CLIP_RATE and revision in self.bad
        return Counts(bad=10_000.0 if clipping else 0.0, total=1_000_000.0)

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        return NoData("silent") if labels["revision"] in self.silent else Value(0)


# -- the operator ----------------------------------------------------------------------------------


@dataclass
class Operator:
    """A running operator (a thread with its own loop): its metrics, and how to stop it."""

    thread: threading.Thread
    stop: threading.Event
    registry: CollectorRegistry
    ready: threading.Event
    """Set once kopf's startup handlers have run and its watches begin."""

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 30)
        assert not self.thread.is_alive(), "the operator did not stop within 30 s"


StartOperator = Callable[..., Awaitable[Operator]]


# -- what a person (kubectl) and the cluster (kubelet) do ------------------------------------------


class Kubectl:
    def __init__(self, api: client.ApiClient, cluster: Cluster) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.cluster = cluster

    async def apply(self, spec: Mapping[str, Any], name: str = "digits") -> None:
        body = {
            "apiVersion": crd.API_VERSION,
            "kind": crd.KIND,
            "metadata": {"name": name},
            "spec": dict(spec),
        }
        await self.custom.create_namespaced_custom_object(crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, body)

    async def patch(self, patch: Mapping[str, Any], name: str = "digits") -> None:
        await self.custom.patch_namespaced_custom_object(
            crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, name, dict(patch), _content_type=MERGE_PATCH
        )

    async def delete(self, name: str = "digits") -> None:
        await self.custom.delete_namespaced_custom_object(crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, name)

    def get(self, name: str = "digits") -> dict[str, Any] | None:
        key = (QM, NAMESPACE, name)
        return self.object(key)

    def object(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        found = [obj for k, obj in self.cluster.objects.items() if (str(k[0]), k[1], k[2]) == _key(key)]
        return found[0].raw if found and not found[0].deleted else None

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.object(("apps/v1/deployments", NAMESPACE, name))

    def service(self, name: str) -> dict[str, Any] | None:
        return self.object(("v1/services", NAMESPACE, name))

    def route(self, name: str = "digits") -> dict[str, Any] | None:
        return self.object((ROUTES, NAMESPACE, name))

    def events(self) -> list[dict[str, Any]]:
        return [
            obj.raw
            for key, obj in self.cluster.objects.items()
            if key[0].plural == "events" and not obj.deleted
        ]

    async def make_ready(self, name: str, replicas: int = 1) -> None:
        """What the kubelet and the Deployment controller would do once the pods pass readiness."""
        await self.apps.patch_namespaced_deployment_status(
            name, NAMESPACE, {"status": {"readyReplicas": replicas}}, _content_type=MERGE_PATCH
        )

    async def create_route(self, name: str = "digits", rules: list[dict[str, Any]] | None = None) -> None:
        body = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"parentRefs": [{"name": "public"}], "rules": rules or []},
        }
        await self.custom.create_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", NAMESPACE, "httproutes", body
        )


def _key(key: tuple[str, str, str]) -> tuple[str, str, str]:
    resource, namespace, name = key
    return (str(kmock.resource(resource)), namespace, name)


async def eventually(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def spec_of(uri: str = "https://models.example.com/digits-v1.tar.gz", **extra: Any) -> dict[str, Any]:
    return {
        "artifact": {"uri": uri},
        "replicas": 2,
        "rollout": {"steps": [25, 100], "stepInterval": "1s", "progressDeadline": "30s"},
        "analysis": {"shortWindow": "1m", "longWindow": "5m", "minSamples": 10},
        **extra,
    }


def revision(uri: str) -> str:
    return ModelSpec.from_resource({"metadata": {"name": "digits"}, "spec": spec_of(uri)}).revision
