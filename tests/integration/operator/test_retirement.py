"""Revisions a decision retires are removed only once the status naming their successor is saved,
and kept in it (`status.retiringRevisions`) until they are gone: a promotion whose status write the
API server refused used to resume at a stable revision already deleted (held for ever; an abort then
left nothing serving). Real kopf runtime against kmock; the refusals are the API server's 500s."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import kmock
import pytest
from kmock_cluster import Cluster
from operator_harness import TESTS_USER_AGENT, Kubectl, ScriptedMetrics, StartOperator, eventually, spec_of
from test_operator_faults import ticks
from test_operator_lifecycle import FIRST, SECOND, V1, V2, phase_is, posted, serving
from test_relist import DEPLOYMENTS, Partition

from quantship.rollout.state import from_timestamp

ETCD_TIMEOUT = kmock.KubernetesError(
    status=500, reason="InternalError", message="etcdserver: request timed out"
)
QUICK = {"steps": [50, 100], "stepInterval": "1s"}


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": Partition}  # its watches can be held back


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

    def promoted() -> dict[str, Any] | None:  # not V1's Promoted, which the canary's first write ends
        status = (kubectl.get() or {}).get("status") or {}
        return status if (status.get("phase"), status.get("stableRevision")) == ("Promoted", SECOND) else None

    status: dict[str, Any] = await eventually(promoted, what=f"{SECOND} promoted", timeout=60)
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


def ready_servers(kubectl: Kubectl, revision: str) -> int | None:
    """The revision's ready pods as its Deployment says; None when the Deployment is gone."""
    found = kubectl.deployment(f"digits-{revision}")
    return None if found is None else int((found.get("status") or {}).get("readyReplicas") or 0)


def replicas(kubectl: Kubectl, revision: str) -> int:
    return int((kubectl.deployment(f"digits-{revision}") or {})["spec"]["replicas"])


async def kept_for_ticks(caplog: pytest.LogCaptureFixture, kubectl: Kubectl, revision: str) -> int | None:
    """The revision's ready servers once 3 more ticks have passed, or None once it is removed."""
    before = ticks(caplog)
    await eventually(
        lambda: ticks(caplog) >= before + 3 or ready_servers(kubectl, revision) is None,
        what=f"3 ticks, or {revision} removed",
    )
    return ready_servers(kubectl, revision)


async def four_replicas_at_the_last_step(
    kubectl: Kubectl, start_operator: StartOperator, metrics: ScriptedMetrics, steps: list[int]
) -> None:
    """V1 serving on 4 replicas, then V2 rolled out (replicas router) to its last step, where the
    kubelet has brought each Deployment's pods to what its split asks."""
    await start_operator(metrics)
    await kubectl.apply(spec_of(V1, replicas=4, rollout={"steps": steps, "stepInterval": "2s"}))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 4)
    await phase_is(kubectl, "Promoted")
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}")

    def at_the_last_step() -> bool:
        return ((kubectl.get() or {}).get("status") or {}).get("step") == len(steps) - 1

    await eventually(at_the_last_step, what="the last step", timeout=30)
    for revision in (SECOND, FIRST):
        await kubectl.make_ready(f"digits-{revision}", replicas(kubectl, revision))


async def test_a_rollback_from_100_percent_keeps_the_canarys_servers_until_the_stable_has_all_of_its(
    kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """At 100% the replicas router runs 4 canaries and 1 stable. The rollback removed the 4 canaries
    as soon as that 1 stable server was ready: it took all the traffic, mid-incident, until 3 more
    had fetched the artifact and loaded it."""
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    metrics = ScriptedMetrics()
    await four_replicas_at_the_last_step(kubectl, start_operator, metrics, [50, 100])
    assert (ready_servers(kubectl, SECOND), ready_servers(kubectl, FIRST)) == (4, 1)

    metrics.bad.add(SECOND)
    await phase_is(kubectl, "RolledBack")
    await eventually(lambda: replicas(kubectl, FIRST) == 4, what="the stable scaled up")
    await kubectl.make_ready(f"digits-{FIRST}", 3)

    assert await kept_for_ticks(caplog, kubectl, SECOND) == 4, "kept while the stable has 3 servers of 4"
    assert (kubectl.get() or {})["status"]["retiringRevisions"] == [SECOND]
    await kubectl.make_ready(f"digits-{FIRST}", 4)
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="the canary removed")
    await eventually(
        lambda: "retiringSince" not in ((kubectl.get() or {}).get("status") or {}), what="retiringSince gone"
    )


async def test_the_stables_servers_are_counted_by_the_api_not_by_a_watch_that_lags(
    cluster: Partition, kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's index of its Deployments need not hold its own scale-up yet: at a rollback from
    100% it can still read the stable's 1 ready pod of the 1 it asked for."""
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    metrics = ScriptedMetrics()
    await four_replicas_at_the_last_step(kubectl, start_operator, metrics, [50, 100])
    cluster.cut(DEPLOYMENTS)  # from here the index holds the stable as 1 asked, or 4 of 4 ready

    metrics.bad.add(SECOND)
    await phase_is(kubectl, "RolledBack")

    assert await kept_for_ticks(caplog, kubectl, SECOND) == 4, "kept while the stable has 1 server of 4"
    await kubectl.make_ready(f"digits-{FIRST}", 4)
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="the canary removed")


async def test_a_promotion_keeps_the_old_stable_until_the_new_one_has_all_its_servers(
    kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """Promoted from a 50% step (2 canaries, 2 stables), the new stable is scaled to 4 and its pods
    roll (relabelled stable): the old stable's 2 servers went while 2 of the 4 were ready."""
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    await four_replicas_at_the_last_step(kubectl, start_operator, ScriptedMetrics(), [25, 50])
    await phase_is(kubectl, "Promoted", timeout=30)
    await eventually(lambda: replicas(kubectl, SECOND) == 4, what="the new stable scaled up")

    assert await kept_for_ticks(caplog, kubectl, FIRST) == 2, "kept while the new stable has 2 servers of 4"
    await kubectl.make_ready(f"digits-{SECOND}", 4)
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}") is None, what="the old stable removed")
    await posted(kubectl, "Promote")


async def test_a_stable_that_never_gets_all_its_servers_lets_the_old_one_go_after_the_progress_deadline(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """A quota that admits 3 pods of 4 must not keep the rolled-back canary's servers for ever."""
    metrics = ScriptedMetrics()
    await four_replicas_at_the_last_step(kubectl, start_operator, metrics, [50, 100])
    await kubectl.patch({"spec": {"rollout": {"progressDeadline": "3s"}}})

    metrics.bad.add(SECOND)
    rolled_back = await phase_is(kubectl, "RolledBack")
    await kubectl.make_ready(f"digits-{FIRST}", 3)
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="the canary removed")

    removed_after = time.time() - from_timestamp(rolled_back["retiringSince"])  # type: ignore[operator]
    assert removed_after >= 3, "not before the progress deadline"
