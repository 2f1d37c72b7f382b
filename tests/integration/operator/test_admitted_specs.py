"""Whatever QuantizedModel a real API server admits, the operator can act on.

Resources are drawn from the CRD's own schema (`schema_values`) and kept when `apiserver_rules`
admits them (structural schema, defaults, CEL with cel-python, the name rule of any custom
resource). For each:
  - it reads into a ModelSpec, or is refused with InvalidSpec (a Degraded condition), never with
    another exception (kopf would retry it forever);
  - every object the operator then creates (each revision's Deployment and Service, the shared
    Service, the quantize Job) has a name and labels the API server admits (apimachinery's rules;
    kmock checks none of this);
  - every PromQL query of its analysis parses in a real Prometheus (a query it refuses would fail
    every canary of the model as misconfigured).
The same draws then go through the operator itself (the real kopf runtime) against the tests' API
server, which writes QuantizedModels by the CRD's rules: each admitted resource gets a status, no
write of the operator is refused or pruned, and what it created passes Kubernetes' rules.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import apiserver_rules
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kmock_cluster import Cluster
from kubernetes import client
from kubernetes.aio.client import ApiException
from operator_harness import Kubectl, ScriptedMetrics, StartOperator, eventually, lost_writes
from schema_values import values

from quantship.local.prometheus import PrometheusProcess
from quantship.operator import crd, crd_fields, kube, names, quantization, resources
from quantship.operator.spec import InvalidSpec, ModelSpec
from quantship.rollout import PrometheusSources, Track, judge, measure

ROOT = crd.schema()
OWNER = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "owner", "uid": "1234"}}
CANARY, STABLE = "0123456789", "abcdefabcd"

NAMES = (
    st.from_regex(names.DNS_1035_LABEL, fullmatch=True)
    | st.from_regex(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", fullmatch=True)  # any custom resource's: dots too
    | st.text(alphabet="abcxyz-", min_size=40, max_size=70)
)


def resource(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec}


TYPED = {"Deployment": client.V1Deployment, "Service": client.V1Service, "Job": client.V1Job}
"""The API client's models the operator builds each kind into before it sends it."""
SPEC = ROOT["properties"]["spec"]
QUANTITIES = st.dictionaries(
    st.sampled_from(["cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "example.com/gpu"])
    | st.text(max_size=8),
    values(crd_fields.QUANTITY),
    max_size=3,
)
RESOURCES = st.fixed_dictionaries({}, optional={"limits": QUANTITIES, "requests": QUANTITIES})
"""Container resources, mostly named as Kubernetes names them (the schema cannot say)."""


RICH_SPEC = {
    "artifact": {"uri": "oci://registry.example/ml/digits:v2"},
    "analysis": {"labels": {"env": "prod"}},
    "server": {"perTensorMetrics": True, "capture": {"claimName": "captures", "maxSamples": 100}},
}
RICH_EXTRA = {
    "resources": {"limits": {"cpu": 2, "memory": "1Gi", "nvidia.com/gpu": 1}, "requests": {"cpu": "500m"}},
    "quantize": {
        "model": "pvc://models/digits.onnx",
        "calibration": "https://data.example/calibration.npz",
        "target": {"uri": "oci://registry.example/ml/digits:int8", "pullSecret": "push"},
        "resources": {"limits": {"memory": "4Gi"}},
    },
}
"""A resource that reaches every check and every object the operator creates (Deployments,
Services, the quantize Job), whatever the draws do."""
GATEWAY = {"router": "gateway-api", "httpRoute": "digits"}


@pytest.fixture(scope="module", autouse=True)
def cel_compiled() -> None:
    """cel-python raises the interpreter's recursion limit when it first compiles a rule; hypothesis
    refuses to run a test during which that happens."""
    apiserver_rules.admit(ROOT, resource("warm-up", {"artifact": {"uri": "file:///warm-up"}}))


def children(spec: ModelSpec, quantize: quantization.QuantizeSpec | None) -> Iterator[dict[str, Any]]:
    """Every object the operator creates for `spec`, both revisions on both tracks."""
    for revision, track in ((STABLE, Track.STABLE), (CANARY, Track.CANARY)):
        yield resources.deployment(spec, revision, track, spec.replicas, OWNER)
        yield resources.service(spec, revision, OWNER)
    yield resources.service(spec, None, OWNER)
    if quantize is not None:
        body = quantization.job(quantize, name=spec.name, namespace="ml", image=spec.image, owner=OWNER)
        assert body["metadata"]["name"] == quantization.job_name(spec.name, quantize.hash)
        yield body


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    process = PrometheusProcess(tmp_path_factory.mktemp("prometheus"))
    process.start()
    try:
        asyncio.run(process.wait_ready())
        yield process
    finally:
        process.stop()


async def _refusal(spec: ModelSpec, url: str) -> str | None:
    """Why the analysis is misconfigured (Prometheus refused a query), or None. Over the operator's
    own client (PrometheusSources)."""
    sources = PrometheusSources()
    try:
        analysis = judge(await measure(sources(url), spec.rollout, CANARY, STABLE, now=0.0), spec.rollout)
    finally:
        await sources.aclose()
    return analysis.reason if analysis.misconfigured else None


@pytest.mark.prometheus
@example(name="digits", spec=RICH_SPEC, extra=RICH_EXTRA)  # reaches every check, whatever is drawn
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    name=NAMES,
    spec=values(SPEC),
    # the sections with the most to check, drawn more often than the whole spec's draw has them
    extra=st.fixed_dictionaries(
        {},
        optional={
            "resources": RESOURCES,
            "quantize": values(SPEC["properties"]["quantize"]),
            "analysis": values(SPEC["properties"]["analysis"]),
        },
    ),
)
def test_fuzz_an_admitted_resource_reads_or_is_refused_and_builds_only_what_kubernetes_admits(
    prometheus: PrometheusProcess, name: str, spec: dict[str, Any], extra: dict[str, Any]
) -> None:
    stored, problems = apiserver_rules.admit(ROOT, resource(name, {**spec, **extra}))
    if problems:
        return
    try:  # what a tick reads, in the order it reads it (reconcile._reconcile)
        quantize = quantization.QuantizeSpec.from_spec(stored["spec"])
        model = ModelSpec.from_resource(stored)
    except InvalidSpec as refused:
        assert str(refused)
        return
    for body in children(model, quantize):
        assert apiserver_rules.object_errors(body) == []
        kube.to_model(TYPED[body["kind"]], body)  # raises what the client refuses
    assert asyncio.run(_refusal(model, prometheus.url)) is None


# -- the same draws through the operator: the real kopf runtime against the tests' API server ------

RESOURCES_PER_RUN = 8
ACTED = 60.0
"""Seconds for the operator to act on every resource of a run (2 cores, other suites beside)."""
RUNS = itertools.count()


def acted_on(body: dict[str, Any] | None) -> bool:
    """The operator wrote a status: a phase, or a condition saying why it cannot."""
    status = (body or {}).get("status") or {}
    return bool(status.get("phase") or status.get("conditions"))


def settled(body: dict[str, Any] | None) -> bool:
    """Serving its first revision, or stopped by what a condition says (an invalid spec, no route)."""
    status = (body or {}).get("status") or {}
    degraded = any(c["type"] == "Degraded" and c["status"] == "True" for c in status.get("conditions") or [])
    return degraded or status.get("phase") not in (None, "Pending")


def observed(body: dict[str, Any] | None) -> bool:
    """The operator wrote a status for the spec's latest version."""
    status = (body or {}).get("status") or {}
    return status.get("observedGeneration") == (body or {}).get("metadata", {}).get("generation")


async def ready(kubectl: Kubectl, cluster: Cluster, prefix: str) -> None:
    """The kubelet's part: the pods of every Deployment named `prefix`... are ready."""
    for key, stored in list(cluster.objects.items()):
        if key[0].plural == "deployments" and key[2].startswith(prefix) and not stored.deleted:
            await kubectl.make_ready(key[2], stored.raw["spec"]["replicas"])


@example(drawn=[({**RICH_SPEC, "traffic": GATEWAY}, RICH_EXTRA), (RICH_SPEC, RICH_EXTRA)])
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    drawn=st.lists(
        st.tuples(
            values(SPEC),
            st.fixed_dictionaries(
                {},
                optional={
                    "resources": RESOURCES,
                    "quantize": values(SPEC["properties"]["quantize"]),
                    "analysis": values(SPEC["properties"]["analysis"]),
                },
            ),
        ),
        min_size=RESOURCES_PER_RUN,
        max_size=RESOURCES_PER_RUN,
    )
)
async def test_fuzz_the_operator_acts_on_every_admitted_resource_and_writes_only_what_the_api_server_takes(
    cluster: Cluster,
    kubectl: Kubectl,
    start_operator: StartOperator,
    drawn: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Each admitted resource gets a status (a phase, or a condition saying why not); once its pods
    are ready it serves (or a condition says why not); a new artifact is acted on (a canary, or a
    condition). Throughout, the API server refused or pruned no write of the operator: not of a
    QuantizedModel's status, nor of a Deployment, Service or Job it created (the tests' API server
    checks them by Kubernetes' rules). An operator per draw: hypothesis draws while nothing else
    runs."""
    prefix = f"fuzz-{next(RUNS)}-"
    admitted = []
    for index, (spec, extra) in enumerate(drawn):
        name = f"{prefix}{index}"
        try:
            await kubectl.apply({**spec, **extra}, name=name)
        except ApiException as refused:
            assert refused.status == 422
            continue
        admitted.append(name)
    operator = await start_operator(ScriptedMetrics(), tick_interval=0.5)
    try:
        await eventually(
            lambda: all(acted_on(kubectl.get(name)) for name in admitted),
            timeout=ACTED,
            what=f"a status on each of {admitted}",
        )
        await ready(kubectl, cluster, prefix)
        await eventually(
            lambda: all(settled(kubectl.get(name)) for name in admitted),
            timeout=ACTED,
            what=f"each of {admitted} serving, or saying why not",
        )
        for name in admitted:
            await kubectl.patch(
                {"spec": {"artifact": {"uri": f"https://models.example/{name}-v2.tar.gz"}}}, name
            )
        await eventually(
            lambda: all(observed(kubectl.get(name)) for name in admitted),
            timeout=ACTED,
            what=f"each of {admitted} acting on its new artifact",
        )
        for name in admitted:  # the next draw's operator has these to resume no more
            await kubectl.delete(name)
        await eventually(lambda: not any(kubectl.get(name) for name in admitted), what="the draws deleted")
    finally:
        await operator.shutdown()
    assert lost_writes(cluster) == []  # here, not only at teardown: hypothesis then shows the draw
    for stored in list(cluster.objects.values()):
        if not stored.deleted and stored.raw.get("kind") in TYPED:
            kube.to_model(TYPED[stored.raw["kind"]], stored.raw)  # raises what the client refuses
