"""Revisions a decision retires are removed only once the status naming their successor is saved,
and kept in it (`status.retiringRevisions`) until they are gone: a promotion whose status write the
API server refused used to resume at a stable revision already deleted (held for ever; an abort then
left nothing serving). Real kopf runtime against kmock; the refusals are the API server's 500s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kmock
from kmock_cluster import Cluster
from operator_harness import TESTS_USER_AGENT, Kubectl, ScriptedMetrics, StartOperator, eventually, spec_of
from test_operator_lifecycle import FIRST, SECOND, V1, V2, phase_is, serving

ETCD_TIMEOUT = kmock.KubernetesError(
    status=500, reason="InternalError", message="etcdserver: request timed out"
)
QUICK = {"steps": [50, 100], "stepInterval": "1s"}


def ours(request: kmock.Request) -> bool:
    return request.headers.get("User-Agent") != TESTS_USER_AGENT


async def promoted_with_refusals(
    cluster: Cluster,
    kubectl: Kubectl,
    start_operator: StartOperator,
    refused: Callable[[kmock.Request], bool],
) -> dict[str, Any]:
    """V1 serving, then V2 rolled out while the API server answers `refused` requests with 500: the
    status once V2 is promoted, V1 removed and nothing left retiring."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout=QUICK))
    cluster.refuse(refused, ETCD_TIMEOUT)
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await phase_is(kubectl, "Progressing")  # its status is written after it: V1's still says Promoted
    await kubectl.make_ready(f"digits-{SECOND}", 2)
    status = await phase_is(kubectl, "Promoted", timeout=60)
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}") is None, what="the old stable removed")
    await eventually(
        lambda: not (kubectl.get() or {}).get("status", {}).get("retiringRevisions"),
        what="retiringRevisions emptied",
    )
    return status


async def test_a_refused_promotion_write_removes_nothing_and_the_promotion_completes(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    refused: list[bool] = []  # per refusal: whether the old stable's Deployment still stood

    def promotion_write(request: kmock.Request) -> bool:
        status = (request.data or {}).get("status") or {} if isinstance(request.data, dict) else {}
        hit = (
            ours(request)
            and request.method == "PATCH"
            and request.subresource == "status"
            and status.get("phase") == "Promoted"
            and status.get("stableRevision") == SECOND
            and len(refused) < 3
        )
        if hit:
            refused.append(kubectl.deployment(f"digits-{FIRST}") is not None)
        return hit

    status = await promoted_with_refusals(cluster, kubectl, start_operator, promotion_write)

    assert refused == [True, True, True], "the old stable stood through every refused write"
    assert status["stableRevision"] == SECOND and kubectl.deployment(f"digits-{SECOND}") is not None


async def test_a_refused_removal_stays_in_the_status_until_it_is_done(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    refusals: list[str] = []

    def removal(request: kmock.Request) -> bool:
        hit = ours(request) and request.method == "DELETE" and request.name == f"digits-{FIRST}"
        hit = hit and len(refusals) < 2
        if hit:
            refusals.append(str(((kubectl.get() or {}).get("status") or {}).get("retiringRevisions")))
        return hit

    await promoted_with_refusals(cluster, kubectl, start_operator, removal)

    assert refusals == [str([FIRST])] * 2, "each refused removal was on record in the status"
    # the promotion was announced although its removal failed: the next tick has nothing to announce
    await eventually(
        lambda: any(event.get("reason") == "Promote" for event in kubectl.events()), what="the Promote event"
    )


async def test_at_100_percent_the_replicas_router_keeps_one_stable_server_until_promotion(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Scaled to 0, the stable left the last step waiting for it to be ready (never promoted) and a
    rollback from there with no server at all."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, rollout={"steps": [100], "stepInterval": "1h"}))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}", 2)

    def at_full_weight() -> dict[str, Any] | None:
        status = (kubectl.get() or {}).get("status") or {}
        return status if status.get("weight") == 100 else None

    status = await eventually(at_full_weight, what="the canary at 100%")
    stable, canary = (kubectl.deployment(f"digits-{name}") for name in (FIRST, SECOND))
    assert stable is not None and canary is not None
    assert (canary["spec"]["replicas"], stable["spec"]["replicas"]) == (2, 1)
    assert status["achievedWeight"] == 100 * 2 / 3
