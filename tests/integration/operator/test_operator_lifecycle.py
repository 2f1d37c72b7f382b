"""The operator with the real kopf runtime against kmock: a QuantizedModel from `kubectl apply`
through a canary to promotion or rollback, deletion, restarts, and resources that cannot work."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from kmock_cluster import Cluster
from operator_harness import (
    NAMESPACE,
    Kubectl,
    ScriptedMetrics,
    StartOperator,
    eventually,
    revision,
    spec_of,
)

from quantship import slo
from quantship.local.prometheus import free_port
from quantship.operator import resources
from quantship.operator import status as conditions

V1 = "https://models.example.com/digits-v1.tar.gz"
V2 = "https://models.example.com/digits-v2.tar.gz"
FIRST, SECOND = revision(V1), revision(V2)
DIGITS = {slo.NAMESPACE: NAMESPACE, "model": "digits"}
"""The labels of the model's series on the operator's /metrics."""


async def phase_is(kubectl: Kubectl, phase: str, *, timeout: float = 20.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = kubectl.get()
        status = (body or {}).get("status") or {}
        return status if status.get("phase") == phase else None

    return await eventually(check, timeout=timeout, what=f"phase {phase}")  # type: ignore[no-any-return]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def events(kubectl: Kubectl, reason: str) -> list[dict[str, Any]]:
    return [event for event in kubectl.events() if event.get("reason") == reason]


async def posted(kubectl: Kubectl, reason: str, count: int = 1) -> list[dict[str, Any]]:
    """Events with this reason, once `count` have arrived: kopf posts them in the background."""
    found: list[dict[str, Any]] = await eventually(
        lambda: len(events(kubectl, reason)) >= count and events(kubectl, reason),
        what=f"{count} {reason} events",
    )
    return found


async def serving(kubectl: Kubectl, spec: dict[str, Any]) -> None:
    """Apply `spec` and play the kubelet until its first revision serves."""
    await kubectl.apply(spec)
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 2)
    await phase_is(kubectl, "Promoted")


async def test_a_new_model_gets_its_owned_children_and_serves_once_ready(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator()
    await kubectl.apply(spec_of(V1))
    name = f"digits-{FIRST}"

    deployment = await eventually(lambda: kubectl.deployment(name), what="the stable Deployment")
    await eventually(lambda: kubectl.service(name), what="the stable Service")
    owner = kubectl.get()
    assert owner is not None
    assert (
        deployment["metadata"]["labels"] | {"model": "digits", "revision": FIRST, "track": "stable"}
        == (deployment["metadata"]["labels"])
    )
    reference = deployment["metadata"]["ownerReferences"][0]
    assert (reference["kind"], reference["uid"], reference["controller"]) == (
        "QuantizedModel",
        owner["metadata"]["uid"],
        True,
    )
    assert (await phase_is(kubectl, "Pending"))["stableRevision"] == FIRST

    await kubectl.make_ready(name, 2)
    status = await phase_is(kubectl, "Promoted")
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Progressing")["status"] == "False"
    assert kubectl.service("digits") is not None, "replicas mode: the model's shared Service"
    settled = kubectl.get()
    assert settled is not None
    await eventually(
        lambda: not (kubectl.get() or {})["metadata"].get("finalizers"), what="no finalizer when settled"
    )
    assert [e["message"] for e in await posted(kubectl, "Serve")] == [
        f"{FIRST} is ready and serves all traffic"
    ]


async def test_a_new_artifact_is_rolled_out_step_by_step_and_promoted(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    port = free_port()
    operator = await start_operator(ScriptedMetrics(), metrics_port=port)
    await serving(kubectl, spec_of(V1))

    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    canary = await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    assert canary["metadata"]["labels"]["track"] == "canary" and canary["spec"]["replicas"] == 1
    assert "--track" in (args := canary["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args[args.index("--track") + 1] == "canary"
    # Progressing from the start, as Argo Rollouts shows it; a condition says what it waits for
    waiting = await phase_is(kubectl, "Progressing")
    assert waiting["canaryRevision"] == SECOND and waiting["step"] == -1
    assert condition(waiting, "Progressing")["reason"] == conditions.WAITING_FOR_CANARY

    def waiting_message() -> dict[str, Any] | None:
        found = condition((kubectl.get() or {}).get("status") or {}, "Progressing")
        return found if f"waiting for canary {SECOND} to become ready" in found["message"] else None

    progressing = await eventually(waiting_message, what="the condition saying what it waits for")
    assert progressing["status"] == "True" and progressing["reason"] == conditions.WAITING_FOR_CANARY
    assert not (kubectl.get() or {})["metadata"].get("finalizers"), "replicas mode: nothing to release"

    await kubectl.make_ready(f"digits-{SECOND}")
    status = await phase_is(kubectl, "Promoted", timeout=30)

    assert status["stableRevision"] == SECOND and "canaryRevision" not in status
    await kubectl.make_ready(f"digits-{SECOND}", 2)  # the old stable goes once the new has all its servers
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}") is None, what="the old stable removed")
    promoted = kubectl.deployment(f"digits-{SECOND}")
    assert promoted is not None and promoted["metadata"]["labels"]["track"] == "stable"
    assert promoted["spec"]["replicas"] == 2
    steps = [e["message"] for e in await posted(kubectl, "SetWeight", 2)]
    assert len(steps) == 2 and "canary at 25% (step 1 of 2)" in steps[0]
    assert "(the router achieves 50.0%)" in steps[0], "2 replicas cannot split 25 %: status says so"
    first_step = next(entry for entry in status["history"] if entry["action"] == "SetWeight")
    assert first_step["reason"].endswith("(the router achieves 50.0%)")
    assert "passed all 2 steps" in (await posted(kubectl, "Promote"))[0]["message"]
    assert [entry["action"] for entry in status["history"]][-4:] == [
        "StartCanary",
        "SetWeight",
        "SetWeight",
        "Promote",
    ]
    metrics = operator.registry
    assert metrics.get_sample_value("quantship_rollouts_total", {**DIGITS, "result": "promoted"}) == 1
    assert metrics.get_sample_value("quantship_analysis_total", {**DIGITS, "result": "pass"}) == 2
    assert (
        metrics.get_sample_value("quantship_burn_rate", {**DIGITS, "slo": "clip_rate", "window": "1m"}) == 0
    )
    async with httpx.AsyncClient() as client:
        exposed = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    labels = f'model="digits",namespace="{NAMESPACE}"'
    assert f'quantship_rollouts_total{{{labels},result="promoted"}} 1.0' in exposed
    assert f'quantship_rollouts_total{{{labels},result="rolled_back"}} 0.0' in exposed, "exported from 0"
    assert f'quantship_analysis_total{{{labels},result="fail"}} 0.0' in exposed
    assert f"quantship_rollout_step{{{labels}}} 0.0" in exposed


async def test_a_canary_burning_its_clip_budget_is_rolled_back_and_the_stable_keeps_serving(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    operator = await start_operator(ScriptedMetrics(bad={SECOND}))
    await serving(kubectl, spec_of(V1))

    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    status = await phase_is(kubectl, "RolledBack")

    assert status["stableRevision"] == FIRST and status["rejectedRevision"] == SECOND
    # removed once the status saying so is saved (test_retirement.py)
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="the canary removed")
    assert kubectl.deployment(f"digits-{FIRST}")["spec"]["replicas"] == 2  # type: ignore[index]
    rollback = await posted(kubectl, "RollBack")
    assert rollback[0]["type"] == "Warning"
    assert "clip_rate burn rate above 1 on both windows: 10.00 on 1m" in rollback[0]["message"]
    clip = next(s for s in status["lastAnalysis"]["slos"] if s["slo"] == "clip_rate")
    assert [w["burnRate"] for w in clip["windows"]] == [10.0, 10.0] and clip["budget"] == 0.001
    assert (
        operator.registry.get_sample_value("quantship_rollouts_total", {**DIGITS, "result": "rolled_back"})
        == 1
    )
    assert (
        operator.registry.get_sample_value(
            "quantship_burn_rate", {**DIGITS, "slo": "clip_rate", "window": "5m"}
        )
        == 10
    )


async def test_the_abort_annotation_rolls_back_and_is_used_up(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 100], "stepInterval": "1h"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await phase_is(kubectl, "Progressing")

    await kubectl.patch({"metadata": {"annotations": {"serving.quantship.io/abort": "now"}}})
    status = await phase_is(kubectl, "RolledBack")

    assert "aborted by a person" in status["message"]
    await eventually(
        lambda: (
            "serving.quantship.io/abort" not in ((kubectl.get() or {})["metadata"].get("annotations") or {})
        ),
        what="the abort annotation removed",
    )


async def test_the_promote_annotation_skips_the_remaining_steps(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics(silent={SECOND}))  # no data would never pass on its own
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 100], "stepInterval": "1h"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await phase_is(kubectl, "Progressing")

    await kubectl.patch({"metadata": {"annotations": {"serving.quantship.io/promote": "yes"}}})
    status = await phase_is(kubectl, "Promoted")

    assert status["stableRevision"] == SECOND and "promoted by a person" in status["message"]


async def test_a_restarted_operator_resumes_the_rollout_from_the_status(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    first = await start_operator(ScriptedMetrics())
    # Steps long enough that the rollout is still under way when the first operator has stopped:
    # at 2 s a step, a slow CI machine saw it promoted before the shutdown returned.
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 50, 100], "stepInterval": "5s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await phase_is(kubectl, "Progressing")
    await first.shutdown()
    stored = (kubectl.get() or {})["status"]
    assert stored["phase"] == "Progressing" and stored["canaryRevision"] == SECOND

    await start_operator(ScriptedMetrics())
    status = await phase_is(kubectl, "Promoted", timeout=60)

    assert status["stableRevision"] == SECOND
    actions = [entry["action"] for entry in status["history"]]
    assert actions[-5:] == ["StartCanary", "SetWeight", "SetWeight", "SetWeight", "Promote"]
    await posted(kubectl, "Promote")
    assert len(events(kubectl, "StartCanary")) == 1, "the new operator did not start the canary again"


async def test_gateway_api_mode_sets_only_our_weights_and_gives_the_route_back_on_deletion(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    user_rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models/digits"}}],
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x", "value": "1"}]}}
        ],
        "backendRefs": [{"name": "digits", "port": 8080}, {"name": "legacy-digits", "port": 80, "weight": 0}],
    }
    other_rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/other"}}],
        "backendRefs": [{"name": "other", "port": 80}],
    }
    await kubectl.create_route(rules=[user_rule, other_rule])
    stored = (kubectl.route() or {})["spec"]["rules"]  # with the Gateway API's defaults filled in
    await start_operator(ScriptedMetrics())
    gateway = {"router": "gateway-api", "httpRoute": "digits"}
    await serving(kubectl, spec_of(V1, traffic=gateway, rollout={"steps": [25, 100], "stepInterval": "1s"}))

    def ours() -> list[tuple[str, int]]:
        route = kubectl.route() or {}
        refs = route["spec"]["rules"][0]["backendRefs"]
        return [(ref["name"], ref.get("weight", 1)) for ref in refs if ref["name"].startswith("digits")]

    assert ours() == [(f"digits-{FIRST}", 100)]
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    assert kubectl.deployment(f"digits-{SECOND}")["spec"]["replicas"] == 2  # type: ignore[index]
    await kubectl.make_ready(f"digits-{SECOND}", 2)
    await eventually(
        lambda: ours() == [(f"digits-{FIRST}", 75), (f"digits-{SECOND}", 25)], what="weights 75/25"
    )
    await phase_is(kubectl, "Promoted")
    assert ours() == [(f"digits-{SECOND}", 100)]
    route = kubectl.route() or {}
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == stored[0]["matches"] and rule["filters"] == stored[0]["filters"]
    assert stored[0]["backendRefs"][1] in rule["backendRefs"]  # legacy-digits, weight 0
    assert route["spec"]["rules"][1] == stored[1]
    assert kubectl.get()["metadata"].get("finalizers"), "gateway mode: the route needs handing back"  # type: ignore[index]

    await kubectl.delete()
    await eventually(lambda: kubectl.get() is None, what="the resource gone")
    refs = (kubectl.route() or {})["spec"]["rules"][0]["backendRefs"]
    assert [ref["name"] for ref in refs] == ["digits", "legacy-digits"]  # renamed in place


async def test_a_missing_httproute_degrades_the_model_until_it_appears(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await kubectl.apply(spec_of(V1, traffic={"router": "gateway-api", "httpRoute": "digits"}))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}")

    def degraded() -> dict[str, Any] | None:
        status = (kubectl.get() or {}).get("status") or {}
        found = [c for c in status.get("conditions", []) if c["type"] == "Degraded" and c["status"] == "True"]
        return found[0] if found else None

    trouble = await eventually(degraded, what="a Degraded condition")
    assert (
        trouble["reason"] == "HTTPRouteNotFound"
        and f"HTTPRoute {NAMESPACE}/digits not found" in trouble["message"]
    )
    assert (await posted(kubectl, "HTTPRouteNotFound"))[0]["type"] == "Warning"
    assert kubectl.deployment(f"digits-{FIRST}") is not None, "the stable keeps running"

    await kubectl.create_route(rules=[{"backendRefs": [{"name": "digits", "port": 8080}]}])
    status = await phase_is(kubectl, "Promoted")
    assert condition(status, "Degraded")["status"] == "False"


async def test_an_unreachable_prometheus_is_inconclusive_and_rolls_back_with_the_reason(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator()  # the real PrometheusSource, at a port where nothing listens
    analysis = {"prometheusUrl": "http://127.0.0.1:9", "inconclusiveLimit": 2, "minSamples": 10}
    await serving(kubectl, spec_of(V1, analysis=analysis))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")

    status = await phase_is(kubectl, "RolledBack", timeout=30)

    assert "2 inconclusive judgements in a row" in status["message"] and "unreachable" in status["message"]
    await posted(kubectl, "RollBack")
    assert [e["type"] for e in await posted(kubectl, "MetricsUnreachable")] == ["Warning"], (
        "once, not per tick"
    )
    assert kubectl.deployment(f"digits-{FIRST}") is not None


@pytest.mark.parametrize(
    ("analysis", "reason"),
    [
        ({"shortWindow": "10m"}, "windows must satisfy 0 < short < long"),
        ({"labels": {"k8s-namespace": "prod"}}, "'k8s-namespace' is not a Prometheus label name"),
    ],
)
async def test_a_spec_that_cannot_work_is_refused_with_a_condition_and_the_stable_keeps_serving(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, analysis: dict[str, Any], reason: str
) -> None:
    """The windows' order is a CEL rule of the CRD today: a resource stored before it said so is
    still read, and its status written (the API server ratchets what a write leaves unchanged).
    Label names are the operator's own check."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))

    with cluster.older_crd():
        await kubectl.patch({"spec": {"artifact": {"uri": V2}, "analysis": analysis}})

    def invalid() -> dict[str, Any] | None:
        status = (kubectl.get() or {}).get("status") or {}
        found = [
            c
            for c in status.get("conditions", [])
            if c["type"] == "Degraded" and c["reason"] == "InvalidSpec"
        ]
        return found[0] if found else None

    trouble = await eventually(invalid, what="an InvalidSpec condition")
    assert reason in trouble["message"]
    assert (kubectl.get() or {})["status"]["phase"] == "Promoted"
    assert (
        kubectl.deployment(f"digits-{SECOND}") is None and kubectl.deployment(f"digits-{FIRST}") is not None
    )


async def test_deleting_a_settled_model_needs_no_finalizer(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    await eventually(lambda: not (kubectl.get() or {})["metadata"].get("finalizers"), what="no finalizer")

    await kubectl.delete()

    assert kubectl.get() is None


async def test_a_spec_that_fails_every_tick_is_logged_once_as_a_warning(
    cluster: Cluster,
    kubectl: Kubectl,
    start_operator: StartOperator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Steps that do not increase (stored before the CRD's rule refused them) fail every tick of the
    new model: the log says it once, not every tick interval until someone changes the spec."""
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    await start_operator(ScriptedMetrics())
    with cluster.older_crd():
        await kubectl.apply(spec_of(V1, rollout={"steps": [50, 20], "stepInterval": "1s"}))

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("tick failed")]

    await eventually(lambda: len(failures()) >= 3, what="three failed ticks")
    warned = [r for r in failures() if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "step weights must increase" in warned[0].getMessage()


async def test_the_retry_annotation_rolls_a_rejected_revision_out_again_and_is_used_up(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """The same artifact, after what failed it was fixed (here: its metrics), without a new revision."""
    metrics = ScriptedMetrics(bad={SECOND})
    await start_operator(metrics)
    await serving(kubectl, spec_of(V1, rollout={"steps": [50, 100], "stepInterval": "1s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    await phase_is(kubectl, "RolledBack")
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="the canary removed")

    metrics.bad.clear()
    await kubectl.patch({"metadata": {"annotations": {"serving.quantship.io/retry": "now"}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary again")
    await kubectl.make_ready(f"digits-{SECOND}", 2)
    status = await phase_is(kubectl, "Promoted", timeout=30)

    assert status["stableRevision"] == SECOND and "rejectedRevision" not in status
    annotations = (kubectl.get() or {})["metadata"].get("annotations") or {}
    assert "serving.quantship.io/retry" not in annotations
    started = await posted(kubectl, "StartCanary", 2)
    assert started[-1]["message"].startswith("retried by a person")


@pytest.mark.parametrize("request_", ["promote", "abort"])
async def test_a_promote_or_abort_given_while_no_canary_runs_is_dropped_not_kept_for_the_next(
    kubectl: Kubectl, start_operator: StartOperator, request_: str
) -> None:
    """A person's promote (or abort) that arrived a moment after the decision: kept, it promoted the
    next canary unjudged (or rolled it back) once ready. With no canary to act on it is used up at
    once, as `kubectl argo rollouts promote` of a settled rollout changes nothing."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [50, 100], "stepInterval": "1h"}))
    key = f"serving.quantship.io/{request_}"

    await kubectl.patch({"metadata": {"annotations": {key: "now"}}})

    await eventually(
        lambda: key not in ((kubectl.get() or {})["metadata"].get("annotations") or {}),
        what=f"the {request_} annotation used up",
    )
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    status = await phase_is(kubectl, "Progressing")
    await posted(kubectl, "SetWeight")
    assert status["canaryRevision"] == SECOND and status["stableRevision"] == FIRST
    assert [entry["action"] for entry in status["history"]][-1:] == ["StartCanary"]


@pytest.mark.parametrize("request_", ["promote", "abort"])
async def test_a_promote_or_abort_on_the_tick_that_starts_a_canary_is_not_acted_on(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, request_: str
) -> None:
    """The annotation and the new artifact in one write (or the annotation before the operator saw
    it): it was given while no canary ran, so it is not for this one. The tick that starts the
    canary uses it up; the spec's update handler ticks next on the same watch event, and read the
    body our status write had returned, which still held it: the canary was promoted unjudged as
    soon as it was ready (here at once), or rolled back and rejected."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [50, 100], "stepInterval": "1h"}))
    cluster.pods_ready_at_once = True  # the canary is ready by the update handler's tick
    key = f"serving.quantship.io/{request_}"

    await kubectl.patch({"metadata": {"annotations": {key: "now"}}, "spec": {"artifact": {"uri": V2}}})

    def actions() -> list[str]:
        return [entry["action"] for entry in ((kubectl.get() or {})["status"].get("history") or [])]

    decided = await eventually(lambda: actions()[-2:-1] == ["StartCanary"] and actions(), what="a decision")
    assert decided[-1] == "SetWeight", "the canary's first step, not a person's request"
    status = (kubectl.get() or {})["status"]
    assert status["canaryRevision"] == SECOND and status["stableRevision"] == FIRST
    assert key not in ((kubectl.get() or {})["metadata"].get("annotations") or {})
    assert not events(kubectl, "Promote") and not events(kubectl, "RollBack")


async def test_degraded_stays_true_between_judgements_while_prometheus_is_unreachable(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Each tick between two inconclusive judgements wrote Degraded False, and the next judgement
    True again with a new Warning: `kubectl wait --for=condition=Degraded` and alerts on the
    condition flapped for as long as Prometheus was down."""
    await start_operator()  # the real PrometheusSource, at a port where nothing listens
    analysis = {"prometheusUrl": "http://127.0.0.1:9", "inconclusiveLimit": 4, "minSamples": 10}
    rollout = {"steps": [50, 100], "stepInterval": "1s"}
    await serving(kubectl, spec_of(V1, analysis=analysis, rollout=rollout))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")

    await phase_is(kubectl, "RolledBack", timeout=60)

    writes = [
        request.data["status"]
        for request, _ in cluster.answers
        if request.subresource == "status" and isinstance(request.data, dict)
    ]
    phases = [write.get("phase") for write in writes]
    until_rolled_back = writes[: phases.index("RolledBack")]  # a status write holds what changed
    degraded = [
        (condition["status"], condition["reason"])
        for write in until_rolled_back
        for condition in write.get("conditions") or []
        if condition["type"] == "Degraded"
    ]
    first = degraded.index(("True", "MetricsUnreachable"))
    assert set(degraded[first:]) == {("True", "MetricsUnreachable")}, degraded  # no NotReady in between
    await posted(kubectl, "RollBack")
    assert len(events(kubectl, "MetricsUnreachable")) == 1, "once, not per judgement"


async def test_a_held_canary_is_announced_once_and_its_judgements_keep_the_history(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Held for no data (onInconclusive: hold), each judgement posted a Warning Judged Event, one per
    step interval for as long as the data stayed away (13 in 15 s), and a history entry of its own:
    StartCanary and SetWeight were pushed out of the status's 10."""
    metrics = ScriptedMetrics(silent={SECOND})  # Prometheus has no series of the canary's
    await start_operator(metrics)
    analysis = {"minSamples": 10, "inconclusiveLimit": 2, "onInconclusive": "hold"}
    await serving(kubectl, spec_of(V1, analysis=analysis, rollout={"steps": [25, 100], "stepInterval": "1s"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")

    def held_a_while() -> dict[str, Any] | None:
        status = (kubectl.get() or {}).get("status") or {}
        return status if status.get("inconclusive", 0) >= 6 else None

    status = await eventually(held_a_while, what="six inconclusive judgements", timeout=30)

    assert status["phase"] == "Progressing" and status["message"].startswith("holding: ")
    actions = [entry["action"] for entry in status["history"]]
    assert actions == ["Deploy", "Serve", "StartCanary", "SetWeight", "Judged", "Judged"]
    held = status["history"][-1]
    assert held["count"] == status["inconclusive"] - 1, "every judgement of the hold, in one entry"
    assert held["firstAt"] < held["at"] and held["reason"] == status["message"]
    judged = await posted(kubectl, "Judged", 2)
    assert len(judged) == 2, "the inconclusive judgement below the limit, then the hold: once"
    assert any("holding: 2 inconclusive judgements in a row" in event["message"] for event in judged)
    assert len(events(kubectl, "AnalysisInconclusive")) == 1


async def test_a_model_deleted_mid_canary_takes_its_gauges_off_metrics(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Frozen at 50% after the model was gone, the weight read as a rollout stuck for ever
    (QuantshipRolloutStuck fired an hour later and until the operator restarted)."""
    operator = await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [50, 100], "stepInterval": "1h"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")
    weight = DIGITS
    await eventually(
        lambda: operator.registry.get_sample_value("quantship_rollout_weight", weight) == 50, what="50%"
    )

    await kubectl.delete()

    await eventually(
        lambda: operator.registry.get_sample_value("quantship_rollout_weight", weight) is None,
        what="the weight gone",
    )
    assert operator.registry.get_sample_value("quantship_rollout_step", weight) is None
    assert operator.registry.get_sample_value("quantship_analysis_total", {**weight, "result": "pass"}) == 0


async def test_the_specs_slo_budgets_are_exported_and_go_with_the_model(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """What the burn alerts judge the model by: its own spec.slos, not the defaults."""
    operator = await start_operator(ScriptedMetrics())
    slos = {
        "maxErrorRate": 0.05,
        "maxClipRate": 0.0001,
        "latency": {"thresholdSeconds": 0.25, "objective": 0.95},
    }
    await serving(kubectl, spec_of(V1, slos=slos))

    def budget(sli: slo.SLI) -> float | None:
        return operator.registry.get_sample_value(slo.Metric.SLO_BUDGET.value, {**DIGITS, "slo": sli.value})

    assert budget(slo.SLI.ERRORS) == 0.05 and budget(slo.SLI.CLIP_RATE) == 0.0001
    assert budget(slo.SLI.LATENCY) == 0.05, "1 - the latency objective"
    assert budget(slo.SLI.ACCURACY_DELTA) == 0.005, "the CRD's default where the spec says nothing"

    await kubectl.patch({"spec": {"slos": {"maxErrorRate": 0.01}}})
    await eventually(lambda: budget(slo.SLI.ERRORS) == 0.01, what="the changed budget")

    await kubectl.delete()

    await eventually(lambda: all(budget(sli) is None for sli in slo.SLI), what="the budgets gone")


async def test_capture_and_per_tensor_metrics_turned_on_by_a_patch_reach_a_canarys_servers(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """The runbooks' `kubectl patch`: the drift alerts and recalibration need the servers'
    --per-tensor-metrics and --capture-dir, which the CRD pruned. Like any spec.server field, they
    make a new revision; each pod captures into its own directory of the claim ($(POD_NAME) in
    --capture-dir)."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    server = {"perTensorMetrics": True, "capture": {"claimName": "captures", "maxSamples": 200}}

    await kubectl.patch({"spec": {"server": server}})

    def canary() -> dict[str, Any] | None:
        revision = ((kubectl.get() or {}).get("status") or {}).get("canaryRevision")
        return kubectl.deployment(f"digits-{revision}") if revision else None

    pod = (await eventually(canary, what="the canary Deployment"))["spec"]["template"]["spec"]
    assert kubectl.get()["spec"]["server"] == server, "kept by the API server"  # type: ignore[index]
    args = pod["containers"][0]["args"]
    assert "--per-tensor-metrics" in args and args[args.index("--capture-max-samples") + 1] == "200"
    assert args[args.index("--capture-dir") + 1] == f"{resources.CAPTURE_ROOT}/$(POD_NAME)"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["capture"]["persistentVolumeClaim"] == {"claimName": "captures"}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "capture")
    assert mount == {"name": "capture", "mountPath": resources.CAPTURE_ROOT}, (
        "the root: the server makes its dir"
    )
    assert pod["containers"][0]["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
    ]
