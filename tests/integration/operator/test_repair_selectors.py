"""The Services the operator puts back select the pods that serve: spec.modelName (the pods'
`model` label) is part of the revision, and a Deployment's selector cannot change, so a stable made
before modelName changed keeps the old label while its canary carries the new one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from operator_harness import Kubectl, ScriptedMetrics, StartOperator, eventually, spec_of
from test_operator_lifecycle import FIRST, V1, V2, phase_is, serving

STABLE = f"digits-{FIRST}"
RENAMED = {"artifact": {"uri": V2}, "modelName": "digits-v2"}


def canary_name(kubectl: Kubectl) -> str | None:
    return (kubectl.get() or {}).get("status", {}).get("canaryRevision")


def pod_labels(kubectl: Kubectl, deployment: str) -> dict[str, str]:
    return dict((kubectl.deployment(deployment) or {})["spec"]["template"]["metadata"]["labels"])


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def selector_of(kubectl: Kubectl, service: str) -> dict[str, str]:
    found: dict[str, Any] = kubectl.service(service) or {}
    return dict(found.get("spec", {}).get("selector") or {})


async def renamed_canary(kubectl: Kubectl) -> str:
    """Change modelName with the artifact: a canary whose pods carry model=digits-v2."""
    await kubectl.patch({"spec": RENAMED})
    canary = await eventually(lambda: canary_name(kubectl), what="the canary's revision")
    name = f"digits-{canary}"
    await eventually(lambda: kubectl.deployment(name), what="the canary Deployment")
    await kubectl.make_ready(name, 1)
    await phase_is(kubectl, "Progressing")
    await asyncio.sleep(2)  # several ticks and resyncs: each one used to patch the selectors
    return name


async def test_a_modelname_change_leaves_the_stables_services_selecting_the_stables_pods(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Each tick patched the stable's Service and the shared one to model=digits-v2: the shared
    Service sent every request to the unjudged canary, the stable's Service selected nothing."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 50, 100], "stepInterval": "1h"}))
    stable_pods = pod_labels(kubectl, STABLE)
    assert stable_pods["model"] == "digits"

    canary = await renamed_canary(kubectl)
    canary_pods = pod_labels(kubectl, canary)

    assert canary_pods["model"] == "digits-v2"
    assert selects(selector_of(kubectl, STABLE), stable_pods)
    assert selects(selector_of(kubectl, canary), canary_pods)
    shared = selector_of(kubectl, "digits")
    assert selects(shared, stable_pods) and selects(shared, canary_pods), shared


async def test_after_a_modelname_change_is_rolled_back_the_stables_services_still_select_it(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """The spec still names digits-v2 after the rollback: the stable's Services selected no pod."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1, rollout={"steps": [25, 50, 100], "stepInterval": "1h"}))
    stable_pods = pod_labels(kubectl, STABLE)
    await renamed_canary(kubectl)

    await kubectl.patch({"metadata": {"annotations": {"serving.quantship.io/abort": "now"}}})
    await phase_is(kubectl, "RolledBack")
    await asyncio.sleep(2)  # resyncs of the settled model

    assert selects(selector_of(kubectl, STABLE), stable_pods), selector_of(kubectl, STABLE)
    assert selects(selector_of(kubectl, "digits"), stable_pods), selector_of(kubectl, "digits")
