"""The operator stops at once: no daemon of ours is left for kopf's wait for hung tasks (5 s, then
cancelled) at shutdown. Real kopf runtime against kmock.

kopf stops the daemons it knows when the operator exits; two kinds it does not know any more, or
not yet: those of a model deleted (no finalizer: kopf forgets its daemons at the watch's DELETED
without stopping them), and one spawned by an event the watches drain as the operator exits.
"""

from __future__ import annotations

import asyncio
import logging
import time

import kmock
import pytest
from kmock_cluster import Cluster
from operator_harness import (
    NAMESPACE,
    TESTS_USER_AGENT,
    Kubectl,
    Operator,
    ScriptedMetrics,
    StartOperator,
    eventually,
    revision,
    spec_of,
)

from quantship import slo
from quantship.operator import crd, handlers

V1 = "https://models.example.com/digits-v1.tar.gz"
V2 = "https://models.example.com/digits-v2.tar.gz"
STABLE = f"digits-{revision(V1)}"
KOPF_RUNNING = "kopf._core.reactor.running"
"""kopf's logger of the operator's tasks: it says (debug) whether hung tasks were left to stop."""
KOPF_OBJECTS = "kopf.objects"
"""kopf's logger of each resource: it says (debug) when a daemon ends, and why."""
STOPPED_WITHIN_S = 2.5
"""Well under kopf's 5 s wait for hung tasks, with room for a loaded machine."""


def hung_tasks_stopped(caplog: pytest.LogCaptureFixture) -> list[str]:
    """kopf's lines on the hung tasks it waited for and stopped; with none left it says it skipped."""
    lines = [r.getMessage() for r in caplog.records if r.name == KOPF_RUNNING]
    assert "Hung tasks stopping is skipped: no tasks given." in lines or any(
        line.startswith("Hung tasks are") for line in lines
    ), "kopf's shutdown log was not captured"
    return [line for line in lines if line.startswith("Hung tasks are")]


def said(caplog: pytest.LogCaptureFixture, line: str) -> bool:
    return any(r.name == KOPF_OBJECTS and r.getMessage().startswith(line) for r in caplog.records)


def ticks(caplog: pytest.LogCaptureFixture) -> int:
    """Ticks of the analysis and resync daemons done so far (handlers.TICK_DONE)."""
    return sum(r.name == KOPF_OBJECTS and r.getMessage() == handlers.TICK_DONE for r in caplog.records)


async def stopping(operator: Operator) -> float:
    """Seconds from the stop flag to the operator's thread ended."""
    began = time.monotonic()
    await operator.shutdown()
    return time.monotonic() - began


@pytest.fixture(autouse=True)
def asyncio_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's loop in asyncio's debug mode, where touching it from another thread raises:
    kopf runs a sync handler in a thread, and an Event our daemons waited on, set from there, woke
    them only when something else happened to wake the loop."""
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")


def the_operators(request: kmock.Request) -> bool:
    return request.headers.get("User-Agent") != TESTS_USER_AGENT


def the_resyncs_read_of_the_stable(request: kmock.Request) -> bool:
    """The operator's GET of the stable Deployment: a settled model's resync reads it every tick."""
    resource = request.resource
    return (
        the_operators(request)
        and resource is not None
        and resource.plural == "deployments"
        and request.name == STABLE
        and request.action == kmock.action.FETCH
    )


async def serving(kubectl: Kubectl) -> None:
    await kubectl.apply(spec_of(V1))
    await eventually(lambda: kubectl.deployment(STABLE), what="the stable Deployment")
    await kubectl.make_ready(STABLE, 2)
    await eventually(
        lambda: ((kubectl.get() or {}).get("status") or {}).get("phase") == "Promoted", what="Promoted"
    )


async def test_a_deleted_models_resync_ends_with_it_and_the_operator_stops_at_once(
    kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """The resync of a settled model deleted was never stopped: it woke every resync interval for
    as long as the operator ran, and at shutdown kopf waited 5 s for it before cancelling it."""
    caplog.set_level(logging.DEBUG, logger=KOPF_RUNNING)
    caplog.set_level(logging.DEBUG, logger=KOPF_OBJECTS)
    operator = await start_operator(ScriptedMetrics())  # a resync every 60 s: none runs here
    await serving(kubectl)
    # kopf spawns the resync and stops the analysis on one event, the rollout's settling
    settling = "Daemon 'analysis' has exited on request"
    await eventually(lambda: said(caplog, settling), what="the resync spawned")

    await kubectl.delete()

    ended = "Daemon 'resync' has exited on its own"
    await eventually(lambda: said(caplog, ended), timeout=5, what="the resync ended with the model")
    took = await stopping(operator)
    assert hung_tasks_stopped(caplog) == []
    assert took < STOPPED_WITHIN_S, f"the operator took {took:.1f} s to stop"


async def test_a_daemon_spawned_as_the_operator_stops_ends_with_it(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """A new artifact: the update handler's tick writes phase Progressing, and kopf's own write after
    it is slow, so the worker reads the watch's Progressing only once the operator is stopping: the
    analysis daemon it spawns starts after kopf stopped the daemons it knew, and ticked until kopf
    cancelled it 5 s later."""
    caplog.set_level(logging.DEBUG, logger=KOPF_RUNNING)
    operator = await start_operator(ScriptedMetrics())
    await serving(kubectl)

    def kopfs_write_after_the_tick(request: kmock.Request) -> bool:
        resource = request.resource
        return (
            the_operators(request)
            and resource is not None
            and resource.plural == crd.PLURAL
            and request.subresource is None
            and request.action == kmock.action.UPDATE
        )

    slow = cluster.hold(kopfs_write_after_the_tick)
    try:
        await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
        await asyncio.wait_for(slow.arrived.wait(), timeout=20)
        assert ((kubectl.get() or {}).get("status") or {}).get("phase") == "Progressing"
        await asyncio.sleep(0.3)  # the watch brings Progressing to kopf, queued behind the slow write

        began = time.monotonic()
        operator.stop.set()
        await asyncio.sleep(0.3)  # kopf stops the daemons it knows (the resync)
    finally:
        slow.release()

    await operator.shutdown()
    took = time.monotonic() - began
    assert hung_tasks_stopped(caplog) == []
    assert took < STOPPED_WITHIN_S, f"the operator took {took:.1f} s to stop after the slow write"


async def test_a_tick_under_way_at_the_stop_is_finished_without_a_warning(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """The resync reads the stable Deployment from the API; that read is slow when the operator is
    told to stop. The tick is finished, not cut, and kopf, which said "did not exit in time. Leaving
    it orphaned." of a daemon still in its tick at once, gives it DAEMON_EXIT_GRACE_S first."""
    caplog.set_level(logging.DEBUG, logger=KOPF_RUNNING)
    caplog.set_level(logging.DEBUG, logger=KOPF_OBJECTS)
    operator = await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl)

    slow = cluster.hold(the_resyncs_read_of_the_stable)
    try:
        await asyncio.wait_for(slow.arrived.wait(), timeout=20)
        ticks_done = ticks(caplog)
        operator.stop.set()
        await asyncio.sleep(0.5)  # kopf stops the daemons: the resync is mid-tick
    finally:
        slow.release()
    took = await stopping(operator)

    assert ticks(caplog) == ticks_done + 1, "the tick under way was not finished"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [line for line in warnings if "did not exit in time" in line], warnings
    assert hung_tasks_stopped(caplog) == []
    assert took < STOPPED_WITHIN_S, f"the operator took {took:.1f} s to stop after the slow read"


async def test_a_tick_under_way_at_the_deletion_leaves_no_gauge_of_the_model(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch's DELETED takes a model's gauges off /metrics. A resync tick under way then (its
    read of the stable held here) finished after it and recorded its decision: the weight and step
    of a model that no longer exists, exported until the operator restarted (nothing else forgets
    them: the daemon ends, and no status write tells the tick the model is gone)."""
    caplog.set_level(logging.DEBUG, logger=KOPF_OBJECTS)
    operator = await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl)
    weight = {slo.NAMESPACE: NAMESPACE, "model": "digits"}
    assert operator.registry.get_sample_value("quantship_rollout_weight", weight) is not None

    slow = cluster.hold(the_resyncs_read_of_the_stable)
    try:
        await asyncio.wait_for(slow.arrived.wait(), timeout=20)
        before = ticks(caplog)  # the held tick's is not among them
        await kubectl.delete()
        await asyncio.sleep(0.5)  # the watch brings DELETED to kopf while the tick waits
    finally:
        slow.release()

    await eventually(lambda: ticks(caplog) > before, what="the held tick done")
    await asyncio.sleep(0.5)  # what the operator does next, if anything
    assert operator.registry.get_sample_value("quantship_rollout_weight", weight) is None
    assert operator.registry.get_sample_value("quantship_rollout_step", weight) is None
