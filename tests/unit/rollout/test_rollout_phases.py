"""Phases as Argo Rollouts users read them: a canary is Progressing from the tick that starts it
(waiting for its readiness, then stepping), and a held canary keeps one message between
judgements instead of flipping between the hold and the step text on every tick."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from memory_ports import GOOD, MemoryMetrics, MemoryRouter, MemoryWorkloads

from quantship.rollout import Action, OnInconclusive, Phase, RolloutSpec, RolloutStatus, Track, tick

pytestmark = pytest.mark.looptime

STABLE = RolloutStatus(phase=Phase.PROMOTED, stable="v1")


async def test_a_canary_is_progressing_while_it_waits_for_readiness(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    workloads.running["v1"] = Track.STABLE
    spec, loop = make_spec(), asyncio.get_running_loop()
    ports = {"workloads": workloads, "router": router, "metrics": metrics}

    started = await tick(STABLE, spec, now=loop.time(), **ports)  # type: ignore[arg-type]
    assert started.action is Action.START_CANARY
    assert (started.status.phase, started.status.step) == (Phase.PROGRESSING, -1)
    waiting = await tick(started.status, spec, now=loop.time(), **ports)  # type: ignore[arg-type]
    assert waiting.action is Action.WAIT and waiting.status.phase is Phase.PROGRESSING
    assert "waiting for canary v2 to become ready" in waiting.status.message
    await asyncio.sleep(workloads.ready_after)
    stepped = await tick(waiting.status, spec, now=loop.time(), **ports)  # type: ignore[arg-type]
    assert stepped.action is Action.SET_WEIGHT and stepped.status.weight == spec.steps[0]


async def test_an_old_status_with_a_pending_canary_still_waits_for_it(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    """Statuses written before this change said Pending for a starting canary: they resume."""
    workloads.running.update({"v1": Track.STABLE, "v2": Track.CANARY})
    loop = asyncio.get_running_loop()
    workloads.started["v2"] = loop.time() - 60
    old = RolloutStatus(phase=Phase.PENDING, stable="v1", canary="v2", started_at=loop.time())
    decision = await tick(
        old, make_spec(), workloads=workloads, router=router, metrics=metrics, now=loop.time()
    )
    assert decision.action is Action.SET_WEIGHT and decision.status.phase is Phase.PROGRESSING


async def test_a_held_canary_keeps_one_message_and_stays_degraded_between_judgements(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    metrics.down = True
    workloads.running["v1"] = Track.STABLE
    spec = make_spec(analysis={"inconclusive_limit": 2, "on_inconclusive": OnInconclusive.HOLD})
    loop, status = asyncio.get_running_loop(), STABLE
    ports = {"workloads": workloads, "router": router, "metrics": metrics}
    texts: list[tuple[str, str | None]] = []
    while loop.time() < 5 * 60:
        decision = await tick(status, spec, now=loop.time(), **ports)  # type: ignore[arg-type]
        status = decision.status
        if status.inconclusive >= 2:
            texts.append((status.message, decision.degraded))
        await asyncio.sleep(5)
    assert status.phase is Phase.PROGRESSING and len(texts) > 10
    assert all(message.startswith("holding: ") and degraded == message for message, degraded in texts)
    changes = sum(1 for before, after in itertools.pairwise(texts) if before != after)
    judgements = int((5 * 60) / spec.step_interval)
    assert changes <= judgements, "the message changes only when a judgement says something new"
