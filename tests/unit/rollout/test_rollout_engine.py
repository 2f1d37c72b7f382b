"""The canary state machine walked through every path, against in-memory ports in virtual time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from memory_ports import GOOD, MemoryMetrics, MemoryRouter, MemoryWorkloads

from quantship import slo
from quantship.rollout import (
    Action,
    Decision,
    Fault,
    Intervention,
    OnInconclusive,
    Phase,
    PortError,
    RolloutSpec,
    RolloutStatus,
    Track,
    retire,
    run_rollout,
    tick,
)

pytestmark = pytest.mark.looptime

TICK = 5.0
STABLE = RolloutStatus(phase=Phase.PROMOTED, stable="v1")


def bad(sli: slo.SLI, ratio: float) -> dict[slo.SLI, float]:
    return {**GOOD, sli: ratio}


async def roll(
    spec: RolloutSpec,
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    status: RolloutStatus = STABLE,
    intervention: Intervention | None = None,
) -> tuple[RolloutStatus, list[Decision]]:
    workloads.running.setdefault("v1", Track.STABLE)
    decisions: list[Decision] = []
    final = await run_rollout(
        spec,
        status,
        workloads=workloads,
        router=router,
        metrics=metrics,
        interval=TICK,
        clock=asyncio.get_running_loop().time,
        on_decision=decisions.append,
        intervention=intervention,
    )
    return final, [d for d in decisions if d.action is not Action.WAIT]


async def test_first_revision_is_deployed_and_then_serves_all_traffic(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    final, decisions = await roll(make_spec("v1"), workloads, router, metrics, status=RolloutStatus())

    assert [d.action for d in decisions] == [Action.DEPLOY, Action.SERVE]
    assert final.phase is Phase.PROMOTED and final.stable == "v1" and final.canary is None
    assert workloads.running == {"v1": Track.STABLE}
    assert router.routes == [("v1", None, 0)]
    assert not metrics.queries, "nothing to judge without a canary"


async def test_good_canary_walks_every_step_and_is_promoted(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    looptime: float,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    assert [d.action for d in decisions] == [Action.START_CANARY] + [Action.SET_WEIGHT] * 4 + [Action.PROMOTE]
    assert router.weights == [5, 25, 50, 100]
    assert router.routes[-1] == ("v2", None, 0)
    assert final.phase is Phase.PROMOTED and final.stable == "v2" and final.canary is None
    assert workloads.running == {"v2": Track.STABLE}, "the old stable is removed, the canary relabelled"
    # ready after 5 s, then four steps of 60 s, then one more tick that finds nothing to do
    assert looptime == 5 + 4 * 60 + TICK
    assert "passed all 4 steps" in decisions[-1].reason
    assert [entry["action"] for entry in final.history][-2:] == ["SetWeight", "Promote"]


@pytest.mark.parametrize(
    ("sli", "ratio"),
    [
        (slo.SLI.ACCURACY_DELTA, 0.02),
        (slo.SLI.LATENCY, 0.05),
        (slo.SLI.ERRORS, 0.01),
        (slo.SLI.CLIP_RATE, 0.006),
    ],
)
async def test_canary_burning_an_slo_on_both_windows_is_rolled_back_with_the_numbers(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    sli: slo.SLI,
    ratio: float,
    looptime: float,
) -> None:
    metrics.serve("v1", GOOD)
    # 100 events a second: 18 bad clip events on the 30 s window at 0.006 (analysis.MIN_BAD_EVENTS)
    metrics.serve("v2", bad(sli, ratio), events_per_second=100.0)

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    rollback = decisions[-1]
    assert rollback.action is Action.ROLL_BACK
    assert final.phase is Phase.ROLLED_BACK and final.stable == "v1" and final.rejected == "v2"
    assert router.routes[-1] == ("v1", None, 0) and "v2" not in workloads.running
    assert f"{sli.value} burn rate above 1 on both windows" in rollback.reason
    assert looptime == 5 + 60 + TICK, "judged bad at the end of the first step"
    # the judgement is data: SLO, windows, budget, threshold and the burn rates that decided
    assert rollback.analysis is not None
    burned = next(r for r in rollback.analysis.slos if r.sli is sli)
    assert [w.burn_rate for w in burned.windows] == pytest.approx([ratio / burned.budget] * 2)
    stored = json.loads(json.dumps(final.last_analysis))
    assert stored["verdict"] == "fail"
    entry = next(s for s in stored["slos"] if s["slo"] == sli.value)
    assert entry["burnRateThreshold"] == 1.0 and [w["window"] for w in entry["windows"]] == ["30s", "2m"]


async def test_burn_on_the_short_window_alone_is_a_blip_not_a_breach(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    # for 10 s at the end of the first 150 s step the canary clips 4x its budget: the 30 s window
    # burns at 1.3, the 120 s window at 0.3
    metrics.serve("v2", bad(slo.SLI.CLIP_RATE, 0.004), start=145)
    metrics.serve("v2", GOOD, start=155)

    final, decisions = await roll(make_spec(step_interval=150.0), workloads, router, metrics)

    first = decisions[2]
    assert first.analysis is not None
    clip = next(r for r in first.analysis.slos if r.sli is slo.SLI.CLIP_RATE)
    short, long = (w.burn_rate for w in clip.windows)
    assert short is not None and long is not None and short > 1 > long
    assert final.phase is Phase.PROMOTED


async def test_breach_starting_mid_rollout_is_rolled_back_within_two_steps(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    looptime: float,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    breach = 100.0  # during step 2 (25 %), which runs from 65 s to 125 s
    metrics.serve("v2", bad(slo.SLI.ERRORS, 0.05), start=breach)

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    assert final.phase is Phase.ROLLED_BACK
    decided_at = looptime - TICK
    assert decided_at - breach <= 2 * 60
    assert "errors burn rate above 1" in decisions[-1].reason


async def test_too_few_samples_are_inconclusive_never_a_pass(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    looptime: float,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD, events_per_second=1.0)  # 30 events on the 30 s window, 50 needed

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    judged = [d for d in decisions if d.analysis is not None]
    assert [d.analysis.verdict.value for d in judged if d.analysis] == ["inconclusive"] * 3
    assert "30 samples of the 50 needed on 30s" in judged[0].reason
    # and what would give more where it is not only traffic: the sampled SLIs' rates and CPU budget
    assert (
        "accuracy_delta: 30 samples of the 50 needed on 30s (to get more: if the canary drops shadow samples"
        in (judged[0].reason)
    )
    assert (
        "clip_rate: 30 samples of the 50 needed on 30s (to get more: if the canary drops clip samples "
        "as failed" in (judged[0].reason)
    )
    assert "else a higher clip sample rate" in judged[0].reason
    assert "errors: 30 samples of the 50 needed on 30s;" in judged[0].reason
    assert final.phase is Phase.ROLLED_BACK and router.weights == [5]
    assert "3 inconclusive judgements in a row" in decisions[-1].reason
    assert looptime == 5 + 3 * 60 + TICK


async def test_no_data_is_inconclusive_and_never_promotes(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", GOOD)  # the canary exports nothing at all

    final, decisions = await roll(make_spec(analysis={"inconclusive_limit": 2}), workloads, router, metrics)

    assert final.phase is Phase.ROLLED_BACK
    assert "no data on 30s" in decisions[-1].reason
    assert "fallback ops: no data" in decisions[-1].reason


async def test_unreachable_metrics_hold_the_canary_until_they_come_back(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    metrics.down = True
    spec = make_spec(analysis={"inconclusive_limit": 2, "on_inconclusive": OnInconclusive.HOLD})

    async def recover() -> None:
        await asyncio.sleep(5 + 4 * 60 + 1)  # four inconclusive judgements, then Prometheus is back
        metrics.down = False

    recovery = asyncio.create_task(recover())
    final, decisions = await roll(spec, workloads, router, metrics)
    await recovery

    held = [d for d in decisions if d.degraded]
    assert len(held) == 4 and all("unreachable" in (d.degraded or "") for d in held)
    assert "holding: 2 inconclusive judgements in a row" in held[1].reason
    assert router.weights == [5, 25, 50, 100], "held at 5 %, never advanced without data"
    assert final.phase is Phase.PROMOTED


async def test_fallback_ops_are_a_hard_gate(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    metrics.fallback["v2"] = 3

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    assert final.phase is Phase.ROLLED_BACK
    assert decisions[-1].reason.startswith("fallback ops: 3 ops run in float (limit 0)")


async def test_canary_slower_than_the_stable_within_the_slo_is_rolled_back(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", bad(slo.SLI.LATENCY, 0.0005))  # FP32 stable: 0.05 % slower than 100 ms
    metrics.serve("v2", bad(slo.SLI.LATENCY, 0.008))  # INT8 canary: 0.8 %, inside the 1 % budget

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    assert final.phase is Phase.ROLLED_BACK
    reason = decisions[-1].reason
    assert "latency burns more than 0.5 above the stable revision on both windows" in reason
    assert "0.80 vs 0.05 on 30s" in reason


async def test_failure_limit_tolerates_a_single_failed_judgement(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", bad(slo.SLI.ERRORS, 0.01))
    metrics.serve("v2", GOOD, start=70)  # one bad judgement at 65 s, then recovered (windows clear)

    final, decisions = await roll(make_spec(analysis={"failure_limit": 2}), workloads, router, metrics)

    judged = [d for d in decisions if d.action is Action.JUDGED]
    assert len(judged) == 1 and "failed judgement 1 of 2" in judged[0].reason
    assert final.phase is Phase.PROMOTED and final.failures == 0


async def test_abort_rolls_back_at_once(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    looptime: float,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    person = Intervention()

    async def abort() -> None:
        await asyncio.sleep(92)  # between two ticks: the one at 95 s acts on it
        person.abort = True

    aborting = asyncio.create_task(abort())
    final, decisions = await roll(make_spec(), workloads, router, metrics, intervention=person)
    await aborting

    assert final.phase is Phase.ROLLED_BACK and decisions[-1].manual
    assert "aborted by a person" in decisions[-1].reason
    assert looptime == 95 + TICK and not person.abort, "the request is used up"


async def test_promote_skips_the_remaining_steps_once_the_canary_is_ready(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    person = Intervention(promote=True)  # asked before the canary is even ready
    workloads.ready_after = 20

    final, decisions = await roll(make_spec(), workloads, router, metrics, intervention=person)

    assert [d.action for d in decisions] == [Action.START_CANARY, Action.PROMOTE]
    assert final.phase is Phase.PROMOTED and final.stable == "v2"
    assert not metrics.queries, "a person's promotion needs no judgement"


async def test_canary_never_ready_fails_after_the_progress_deadline(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    workloads.never_ready.add("v2")

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    assert decisions[-1].action is Action.FAIL
    assert final.phase is Phase.FAILED and final.rejected == "v2" and "v2" not in workloads.running
    assert "not ready after 305 s (progress deadline 300 s)" in decisions[-1].reason


async def test_resume_after_a_restart_continues_from_the_persisted_status(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    looptime: float,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    spec = make_spec()
    clock = asyncio.get_running_loop().time
    status = STABLE
    workloads.running["v1"] = Track.STABLE
    # the first operator runs three minutes, persisting after each tick, then dies
    while clock() < 180:
        decision = await tick(status, spec, workloads=workloads, router=router, metrics=metrics, now=clock())
        status = RolloutStatus.from_dict(json.loads(json.dumps(decision.status.to_dict())))
        await asyncio.sleep(TICK)
    assert status.phase is Phase.PROGRESSING and status.step == 2
    await asyncio.sleep(100)  # nobody ticks for 100 s

    # a new one starts from the stored status alone, with fresh adapters over the same world
    final, decisions = await roll(spec, workloads, MemoryRouter(), metrics, status=status)

    assert [d.action for d in decisions] == [Action.SET_WEIGHT, Action.PROMOTE]
    assert decisions[0].status.weight == 100
    assert final.phase is Phase.PROMOTED and final.stable == "v2"
    assert looptime == 280 + 60 + TICK


async def test_a_new_revision_during_a_canary_replaces_it_and_the_stable_one_again_rolls_back_unrejected(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    clock = asyncio.get_running_loop().time
    workloads.running["v1"] = Track.STABLE
    ports = {"workloads": workloads, "router": router, "metrics": metrics}

    async def saved(status: RolloutStatus, revision: str) -> tuple[Decision, RolloutStatus]:
        """One tick as the operator runs it: decide and act, save the status, then retire."""
        decision = await tick(status, make_spec(revision), now=clock(), **ports)  # type: ignore[arg-type]
        return decision, await retire(decision.status, workloads, make_spec(revision), now=clock())

    _, started = await saved(STABLE, "v2")
    replaced, after_replacing = await saved(started, "v3")
    reverted, after_reverting = await saved(after_replacing, "v1")
    assert set(workloads.running) == {"v1"}
    asked_again, _ = await saved(after_reverting, "v3")

    assert replaced.action is Action.START_CANARY and "replaces canary v2" in replaced.reason
    assert replaced.status.canary == "v3" and "v2" not in workloads.running
    assert reverted.action is Action.ROLL_BACK and "asks for the stable revision v1 again" in reverted.reason
    # a revert is no verdict on v3: asked for again, it is rolled out again (as Argo and Flagger do)
    assert asked_again.action is Action.START_CANARY and asked_again.status.canary == "v3"


async def test_a_rolled_back_revision_is_not_tried_again(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    rejected = replace(STABLE, phase=Phase.ROLLED_BACK, rejected="v2")

    decision = await tick(
        rejected, make_spec("v2"), workloads=workloads, router=router, metrics=metrics, now=0.0
    )

    assert decision.action is Action.WAIT and decision.status == rejected
    assert not workloads.calls and not router.routes


async def test_an_adapter_failure_commits_nothing_and_the_next_tick_retries(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    router.failures.append(PortError("HTTPRoute default/digits not found", reason="HTTPRouteNotFound"))

    final, decisions = await roll(make_spec(), workloads, router, metrics)

    assert final.phase is Phase.PROMOTED
    assert router.weights == [5, 25, 50, 100]
    assert [d.action for d in decisions].count(Action.SET_WEIGHT) == 4


async def test_a_held_canary_says_prometheus_is_down_on_every_tick_not_only_at_judgements(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
) -> None:
    """Held after too many inconclusive judgements, the ticks between judgements said no fault: the
    Degraded reason flipped from MetricsUnreachable to NotReady and back at every judgement."""
    metrics.serve("v1", GOOD)
    metrics.serve("v2", GOOD)
    metrics.down = True
    spec = make_spec(analysis={"inconclusive_limit": 2, "on_inconclusive": OnInconclusive.HOLD})

    async def recover() -> None:
        await asyncio.sleep(5 + 4 * 60 + 1)
        metrics.down = False

    recovering = asyncio.create_task(recover())
    workloads.running["v1"] = Track.STABLE
    decisions: list[Decision] = []
    await run_rollout(
        spec, RolloutStatus(phase=Phase.PROMOTED, stable="v1"), workloads=workloads, router=router,
        metrics=metrics, interval=5.0, clock=asyncio.get_running_loop().time, on_decision=decisions.append,
    )  # fmt: skip
    await recovering

    troubled = [decision for decision in decisions if decision.degraded]
    assert any(decision.action is Action.WAIT for decision in troubled), "held between judgements"
    assert {decision.fault for decision in troubled} == {Fault.UNREACHABLE}
