"""`decide` as a specification: one row per branch, status x observations x spec -> decision.

Each row names the situation, the status the engine persisted, what the tick saw and how the spec
differs from the default (revision v2, steps 5/25/50/100 %, 60 s steps, 300 s progress deadline,
one failed judgement rolls back, three inconclusive ones in a row roll back), then the action, the
fields of the status to persist, a phrase of the reason, and the retired revisions. Time is 1000 s.

Below the table: `apply` moves traffic before it retires anything, and `run_rollout` gives up after
`max_errors` adapter failures in a row (a hang fails by pytest-timeout instead of stalling CI).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from memory_ports import MemoryMetrics, MemoryRouter, MemoryWorkloads

from quantship.rollout import (
    Action,
    Analysis,
    Observations,
    Phase,
    PortError,
    RolloutSpec,
    RolloutStatus,
    Track,
    Verdict,
    apply,
    decide,
    retire,
    run_rollout,
    tick,
)
from quantship.rollout.analysis import Fault, GateResult
from quantship.rollout.engine import analysis_due
from quantship.rollout.spec import OnInconclusive
from quantship.rollout.state import to_timestamp

NOW = 1000.0


def verdict(kind: Verdict, fault: Fault | None = None) -> Analysis:
    """A judgement whose only finding is the fallback-ops gate: enough to drive every branch."""
    reason = f"fallback ops: {kind.value}" + (f" ({fault.value})" if fault else "")
    return Analysis(NOW, kind, reason, (), GateResult(None, 0, kind, reason, fault))


PASS = verdict(Verdict.PASS)
FAIL = verdict(Verdict.FAIL)
NO_DATA = verdict(Verdict.INCONCLUSIVE, Fault.NO_DATA)
UNREACHABLE = verdict(Verdict.INCONCLUSIVE, Fault.UNREACHABLE)
MISCONFIGURED = verdict(Verdict.INCONCLUSIVE, Fault.MISCONFIGURED)

# persisted statuses the rows start from
FIRST_STARTING = RolloutStatus(phase=Phase.PENDING, stable="v2", started_at=NOW - 10, message="deploying v2")
NO_CANARY = {"canary": None, "step": -1, "weight": 0, "achieved_weight": 0.0, "step_started_at": None}
"""Every trace of a canary gone from the status (promoted, rolled back, failed)."""
STEADY = RolloutStatus(phase=Phase.PROMOTED, stable="v1", message="v1 serves all traffic")
CANARY_STARTING = RolloutStatus(
    phase=Phase.PROGRESSING, stable="v1", canary="v2", step=-1, started_at=NOW - 10, message="starting"
)
AT_STEP_1 = replace(
    CANARY_STARTING, step=0, weight=5, achieved_weight=5.0, step_started_at=NOW - 60, started_at=NOW - 100
)
"""At 5 %, its 60 s step just over: a judgement is due."""
AT_LAST_STEP = replace(AT_STEP_1, step=3, weight=100)


@dataclass(frozen=True)
class Row:
    situation: str
    status: RolloutStatus
    action: Action
    reason: str
    """A phrase the decision's reason contains; all of it when it starts with "= "."""
    expect: Mapping[str, Any] = field(default_factory=dict)
    """Fields of the status to persist."""
    seen: Mapping[str, Any] = field(default_factory=dict)
    """Observations besides `now` (stable_ready, canary_ready, abort, promote, analysis)."""
    spec: Mapping[str, Any] = field(default_factory=dict)
    """Spec fields other than the default (`analysis` for AnalysisSpec fields)."""
    retire: tuple[str, ...] = ()
    degraded: str | None = None
    """A phrase of the degraded condition's message; None: not degraded."""
    manual: bool = False


TABLE = [
    # -- nothing runs yet --------------------------------------------------------------------------
    Row("nothing runs: the asked revision is deployed as the first stable", RolloutStatus(),
        Action.DEPLOY, "deploying v2 as the first revision",
        {"phase": Phase.PENDING, "stable": "v2", "canary": None, "started_at": NOW}),
    # -- the first revision is starting ------------------------------------------------------------
    Row("another revision asked before the first was ready replaces it", FIRST_STARTING,
        Action.DEPLOY, "deploying v3 instead of v2, which never became ready",
        {"phase": Phase.PENDING, "stable": "v3", "started_at": NOW}, spec={"revision": "v3"}, retire=("v2",)),
    Row("first revision, readiness not looked at: wait, message kept", FIRST_STARTING,
        Action.WAIT, "deploying v2", {"phase": Phase.PENDING, "stable": "v2"}),
    Row("first revision ready: it serves everything", FIRST_STARTING,
        Action.SERVE, "v2 is ready and serves all traffic",
        {"phase": Phase.PROMOTED, "stable": "v2", "weight": 0}, {"stable_ready": True}),
    Row("first revision not ready within the deadline: wait", FIRST_STARTING,
        Action.WAIT, "waiting for v2 to become ready", {"phase": Phase.PENDING}, {"stable_ready": False}),
    Row("first revision not ready past the deadline: degraded, still waiting",
        replace(FIRST_STARTING, started_at=NOW - 301),
        Action.WAIT, "v2 not ready after 301 s (progress deadline 300 s)", {"phase": Phase.PENDING},
        {"stable_ready": False}, degraded="not ready after 301 s"),
    Row("first revision not ready exactly at the deadline: not late yet",
        replace(FIRST_STARTING, started_at=NOW - 300),
        Action.WAIT, "waiting for v2 to become ready", {"phase": Phase.PENDING}, {"stable_ready": False}),
    # -- steady ------------------------------------------------------------------------------------
    Row("steady, the stable is asked: nothing to do", STEADY,
        Action.WAIT, "v1 serves all traffic", {"phase": Phase.PROMOTED, "canary": None},
        spec={"revision": "v1"}),
    Row("steady, the rejected revision is asked again: not retried", replace(STEADY, rejected="v2"),
        Action.WAIT, "v1 serves all traffic", {"phase": Phase.PROMOTED, "canary": None, "rejected": "v2"}),
    Row("steady, a new revision: a canary starts, taking no traffic; the last one's traces cleared",
        replace(STEADY, failures=2, inconclusive=1, rejected="v0", last_analysis={"verdict": "fail"}),
        Action.START_CANARY, "= new revision v2: starting it as a canary next to v1",
        {"phase": Phase.PROGRESSING, "canary": "v2", "step": -1, "weight": 0, "failures": 0,
         "inconclusive": 0, "rejected": None, "last_analysis": None, "started_at": NOW}),
    # -- a canary in flight: people and spec changes -----------------------------------------------
    Row("abort: rolled back at once, every trace of the canary gone", replace(AT_STEP_1, inconclusive=1),
        Action.ROLL_BACK, "aborted by a person",
        {"phase": Phase.ROLLED_BACK, "stable": "v1", "rejected": "v2", "inconclusive": 0, **NO_CANARY},
        {"abort": True}, retire=("v2",), manual=True),
    Row("the spec asks for the stable again: rolled back, the canary not rejected (a revert, not a failure)",
        replace(AT_STEP_1, rejected="v0"),
        Action.ROLL_BACK, "asks for the stable revision v1 again",
        {"phase": Phase.ROLLED_BACK, "canary": None, "rejected": "v0"},
        spec={"revision": "v1"}, retire=("v2",)),
    Row("the spec asks for a third revision: it replaces the canary", AT_STEP_1,
        Action.START_CANARY, "(replaces canary v2)",
        {"phase": Phase.PROGRESSING, "canary": "v3", "step": -1, "weight": 0, "started_at": NOW},
        spec={"revision": "v3"}, retire=("v2",)),
    # -- a canary starting -------------------------------------------------------------------------
    Row("canary starting, readiness not looked at: wait", CANARY_STARTING,
        Action.WAIT, "starting", {"step": -1}),
    Row("canary not ready past the deadline: failed, the stable keeps everything",
        replace(CANARY_STARTING, started_at=NOW - 301),
        Action.FAIL, "canary v2 not ready after 301 s (progress deadline 300 s)",
        {"phase": Phase.FAILED, "canary": None, "rejected": "v2", "stable": "v1"},
        {"canary_ready": False}, retire=("v2",)),
    Row("canary not ready exactly at the deadline: not late yet",
        replace(CANARY_STARTING, started_at=NOW - 300),
        Action.WAIT, "waiting for canary v2 to become ready", {"step": -1}, {"canary_ready": False}),
    Row("canary not ready, promotion asked: waits for readiness first", CANARY_STARTING,
        Action.WAIT, "promotion asked: waiting for canary v2", {"step": -1},
        {"canary_ready": False, "promote": True}),
    Row("canary not ready within the deadline: wait", CANARY_STARTING,
        Action.WAIT, "= waiting for canary v2 to become ready", {"step": -1}, {"canary_ready": False}),
    Row("canary ready and promotion asked: promoted without steps", replace(CANARY_STARTING, rejected="v0"),
        Action.PROMOTE, "promoted by a person",
        {"phase": Phase.PROMOTED, "stable": "v2", "rejected": None, **NO_CANARY},
        {"canary_ready": True, "promote": True},
        retire=("v1",), manual=True),
    Row("canary ready: the first step", CANARY_STARTING,
        Action.SET_WEIGHT, "canary v2 is ready; canary at 5% (step 1 of 4)",
        {"step": 0, "weight": 5, "step_started_at": NOW}, {"canary_ready": True}),
    # -- a canary progressing ----------------------------------------------------------------------
    Row("progressing, promotion asked: promoted", AT_STEP_1,
        Action.PROMOTE, "promoted by a person", {"phase": Phase.PROMOTED, "stable": "v2"},
        {"promote": True}, retire=("v1",), manual=True),
    Row("progressing, step not over: wait with the progress", replace(AT_STEP_1, step_started_at=NOW - 59),
        Action.WAIT, "canary v2 at 5% (step 1 of 4), judged every 60 s", {"step": 0}),
    Row("progressing with hold, fewer inconclusive than the limit: not held",
        replace(AT_STEP_1, inconclusive=1, step_started_at=NOW - 10),
        Action.WAIT, "canary v2 at 5% (step 1 of 4)", {"inconclusive": 1},
        spec={"analysis": {"on_inconclusive": OnInconclusive.HOLD}}),
    Row("was held, the spec now says rollback: not held between judgements",
        replace(AT_STEP_1, inconclusive=3, step_started_at=NOW - 10, message="holding: no data"),
        Action.WAIT, "canary v2 at 5% (step 1 of 4)", {"inconclusive": 3}),
    Row("progressing, step over but no judgement came: wait", AT_STEP_1,
        Action.WAIT, "canary v2 at 5% (step 1 of 4)", {"step": 0}),
    Row("holding between judgements: the hold's message stays, degraded",
        replace(AT_STEP_1, inconclusive=3, step_started_at=NOW - 10, message="holding: no data"),
        Action.WAIT, "holding: no data", {"inconclusive": 3},
        spec={"analysis": {"on_inconclusive": OnInconclusive.HOLD}}, degraded="holding: no data"),
    Row("progressing, the canary lost its servers: rolled back at once, no judgement waited for",
        replace(AT_STEP_1, step_started_at=NOW - 10),
        Action.ROLL_BACK, "= canary not ready: v2 has no ready server at step 1 of 4 (5% of traffic); "
        "rolled back at once, so no request goes to it",
        {"phase": Phase.ROLLED_BACK, "stable": "v1", "rejected": "v2", **NO_CANARY},
        {"canary_ready": False, "stable_ready": True}, retire=("v2",)),
    Row("progressing, the canary not ready at a judgement due: rolled back, not judged", AT_STEP_1,
        Action.ROLL_BACK, "canary not ready: v2", {"phase": Phase.ROLLED_BACK, "rejected": "v2"},
        {"canary_ready": False, "stable_ready": True}, retire=("v2",)),
    Row("progressing, the canary not ready wins over a promotion asked", AT_STEP_1,
        Action.ROLL_BACK, "canary not ready: v2", {"phase": Phase.ROLLED_BACK, "stable": "v1"},
        {"canary_ready": False, "promote": True}, retire=("v2",)),
    Row("progressing, the stable lost its servers: no judgement against it, degraded", AT_STEP_1,
        Action.WAIT, "= stable not ready: v1 has no ready server; judging canary v2 waits for it",
        {"phase": Phase.PROGRESSING, "step": 0, "weight": 5},
        {"canary_ready": True, "stable_ready": False}, degraded="stable not ready: v1"),
    # -- judged ------------------------------------------------------------------------------------
    Row("pass: the next step, the inconclusive count reset", replace(AT_STEP_1, inconclusive=2),
        Action.SET_WEIGHT, "step 1 of 4 at 5% passed",
        {"step": 1, "weight": 25, "inconclusive": 0, "step_started_at": NOW}, {"analysis": PASS}),
    Row("pass after the steps changed mid-canary (5/25/50/100 to 100): to the first step above its "
        "weight, never promoted on a judgement at 5% under steps that ask for 100%", AT_STEP_1,
        Action.SET_WEIGHT, "canary at 100% (step 1 of 1)",
        {"phase": Phase.PROGRESSING, "step": 0, "weight": 100}, {"analysis": PASS}, spec={"steps": (100,)}),
    Row("pass at 25% after the steps changed mid-canary (5/25/50/100 to 10/60): to 60%, not promoted",
        replace(AT_STEP_1, step=1, weight=25),
        Action.SET_WEIGHT, "canary at 60% (step 2 of 2)",
        {"step": 1, "weight": 60}, {"analysis": PASS}, spec={"steps": (10, 60)}),
    Row("pass at the last step: promoted", AT_LAST_STEP,
        Action.PROMOTE, "passed all 4 steps",
        {"phase": Phase.PROMOTED, "stable": "v2", "canary": None, "weight": 0}, {"analysis": PASS},
        retire=("v1",)),
    Row("fail at the failure limit: rolled back", AT_STEP_1,
        Action.ROLL_BACK, "(failed judgement 1 of 1, step 1 of 4 at 5%)",
        {"phase": Phase.ROLLED_BACK, "canary": None, "rejected": "v2"}, {"analysis": FAIL}, retire=("v2",)),
    Row("fail below the limit: counted, the inconclusive count reset, the step restarts",
        replace(AT_STEP_1, inconclusive=2),
        Action.JUDGED, "failed judgement 1 of 2 at step 1 of 4",
        {"failures": 1, "inconclusive": 0, "step": 0, "step_started_at": NOW}, {"analysis": FAIL},
        spec={"analysis": {"failure_limit": 2}}),
    Row("no data below the limit: counted, not degraded", AT_STEP_1,
        Action.JUDGED, "inconclusive judgement 1 of 3",
        {"inconclusive": 1, "step_started_at": NOW}, {"analysis": NO_DATA}),
    Row("unreachable metrics below the limit: counted, degraded as unreachable", AT_STEP_1,
        Action.JUDGED, "inconclusive judgement 1 of 3", {"inconclusive": 1},
        {"analysis": UNREACHABLE}, degraded="metrics unreachable"),
    Row("misconfigured queries below the limit: counted, degraded as misconfigured", AT_STEP_1,
        Action.JUDGED, "inconclusive judgement 1 of 3", {"inconclusive": 1},
        {"analysis": MISCONFIGURED}, degraded="metrics queries misconfigured"),
    Row("inconclusive at the limit: rolled back", replace(AT_STEP_1, inconclusive=2),
        Action.ROLL_BACK, "3 inconclusive judgements in a row",
        {"phase": Phase.ROLLED_BACK, "rejected": "v2"}, {"analysis": UNREACHABLE}, retire=("v2",)),
    Row("inconclusive at the limit, on_inconclusive hold: held, degraded", replace(AT_STEP_1, inconclusive=2),
        Action.JUDGED, "holding: 3 inconclusive judgements in a row",
        {"phase": Phase.PROGRESSING, "inconclusive": 3, "weight": 5}, {"analysis": UNREACHABLE},
        spec={"analysis": {"on_inconclusive": OnInconclusive.HOLD}}, degraded="holding"),
    Row("misconfigured at the limit fails even with hold: waiting cannot fix a query",
        replace(AT_STEP_1, inconclusive=2),
        Action.FAIL, "metrics queries misconfigured, the canary cannot be judged",
        {"phase": Phase.FAILED, "canary": None, "rejected": "v2", "stable": "v1"},
        {"analysis": MISCONFIGURED},
        spec={"analysis": {"on_inconclusive": OnInconclusive.HOLD}}, retire=("v2",)),
]  # fmt: skip


@pytest.mark.parametrize("row", TABLE, ids=[row.situation for row in TABLE])
def test_decide(row: Row, make_spec: Callable[..., RolloutSpec]) -> None:
    spec = make_spec(**row.spec)
    decision = decide(row.status, Observations(now=NOW, **row.seen), spec)

    assert decision.action is row.action, decision.reason
    if row.reason.startswith("= "):
        assert decision.reason == row.reason.removeprefix("= ")
    else:
        assert row.reason in decision.reason
    got = {name: getattr(decision.status, name) for name in row.expect}
    assert got == dict(row.expect)
    assert decision.retire == row.retire
    assert decision.manual is row.manual
    assert decision.warning is (row.action in (Action.ROLL_BACK, Action.FAIL) or row.degraded is not None)
    if row.degraded is None:
        assert decision.degraded is None
    else:
        assert decision.degraded is not None and row.degraded in decision.degraded
    assert decision.status.message == decision.reason
    if row.action is Action.WAIT:  # waiting records nothing in the history
        assert decision.status.history == row.status.history
    else:
        assert decision.status.history[-1]["action"] == row.action.value
    if "analysis" in row.seen:
        assert decision.analysis is row.seen["analysis"]
        assert (
            decision.status.last_analysis == row.seen["analysis"].to_dict() or not decision.status.in_flight
        )


def test_the_table_covers_every_action() -> None:
    assert {row.action for row in TABLE} == set(Action)


def test_a_hold_that_finds_what_the_last_judgement_found_is_no_news_and_adds_to_its_history_entry(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    """A hold lasts as long as the trouble: a Judged Event at every judgement was an endless Warning
    per step interval, and its history entries pushed StartCanary and SetWeight out of the status."""
    spec = make_spec(analysis={"on_inconclusive": OnInconclusive.HOLD})
    started = AT_STEP_1.with_history(NOW - 100, "StartCanary", "new revision v2").with_history(
        NOW - 60, "SetWeight", "canary v2 is ready; canary at 5%"
    )
    judgements = [NO_DATA] * 22 + [UNREACHABLE]  # 2 below the limit of 3, 20 held alike, then other news
    status, decisions = started, []
    for n, analysis in enumerate(judgements):
        decisions.append(decide(status, Observations(now=NOW + 60 * n, analysis=analysis), spec))
        status = decisions[-1].status

    assert {decision.action for decision in decisions} == {Action.JUDGED}
    assert [decision.news for decision in decisions] == [True] * 3 + [False] * 19 + [True]
    assert all(decision.degraded == decision.reason for decision in decisions[2:])
    history = status.history
    assert [entry["action"] for entry in history] == ["StartCanary", "SetWeight"] + ["Judged"] * 4
    held = history[-2]
    assert held["count"] == 20 and "holding: 22 inconclusive judgements in a row" in held["reason"]
    assert (held["firstAt"], held["at"]) == (to_timestamp(NOW + 60 * 2), to_timestamp(NOW + 60 * 21))
    assert "count" not in history[-1] and "holding: 23 inconclusive" in history[-1]["reason"]
    assert status.message == decisions[-1].reason and status.inconclusive == 23


async def test_a_replaced_canary_loses_its_traffic_before_the_next_one_starts(
    make_spec: Callable[..., RolloutSpec], workloads: MemoryWorkloads, router: MemoryRouter
) -> None:
    decision = decide(AT_STEP_1, Observations(now=NOW), make_spec("v3"))

    applied = await apply(decision, workloads=workloads, router=router)
    assert applied.status.retiring == ("v2",), "removed only once the status saying so is saved"
    retired = await retire(applied.status, workloads, make_spec("v3"), now=NOW)

    assert router.routes == [("v1", None, 0)]
    assert workloads.calls == [("run", "v3", "canary"), ("remove", "v2")]
    assert retired.retiring == ()


ROLLED_BACK = RolloutStatus(
    phase=Phase.ROLLED_BACK, stable="v1", rejected="v2", retiring=("v2",), retiring_since=NOW - 10
)
"""A rollback from 100% 10 s ago: the stable, scaled down to one server for the canary, is scaled
back up; the canary's servers are still there, and serve."""


async def test_a_revision_that_serves_is_kept_until_its_successor_has_all_its_servers(
    make_spec: Callable[..., RolloutSpec], workloads: MemoryWorkloads
) -> None:
    """Removed once the stable had one server ready, the canary left it all the traffic (1 of 4
    servers, on a rollback from 100% with 4 replicas); none ready, no server at all."""
    workloads.running = {"v1": Track.STABLE, "v2": Track.CANARY}
    workloads.never_ready = {"v1"}
    spec = make_spec()

    none_ready = await retire(ROLLED_BACK, workloads, spec, now=NOW)
    workloads.never_ready.clear()
    workloads.partly_ready = {"v1"}
    some_ready = await retire(none_ready, workloads, spec, now=NOW + 5)
    workloads.partly_ready.clear()
    all_ready = await retire(some_ready, workloads, spec, now=NOW + 10)

    assert none_ready == some_ready == ROLLED_BACK
    assert all_ready.retiring == () and all_ready.retiring_since is None
    assert workloads.calls == [("remove", "v2")]


@pytest.mark.parametrize(
    ("since", "kept"),
    [(NOW - 299, ("v2",)), (NOW - 301, ()), (None, ())],
    ids=["within the progress deadline: kept", "past it: removed", "a status with no retiringSince: removed"],
)
async def test_a_successor_short_of_servers_is_waited_for_up_to_the_progress_deadline(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    since: float | None,
    kept: tuple[str, ...],
) -> None:
    """A stable that never gets all its servers (a quota, a node short) does not keep the old ones
    for ever: past spec.progress_deadline (300 s here), one ready server of its is enough."""
    workloads.running = {"v1": Track.STABLE, "v2": Track.CANARY}
    workloads.partly_ready = {"v1"}

    retired = await retire(replace(ROLLED_BACK, retiring_since=since), workloads, make_spec(), now=NOW)

    assert retired.retiring == kept


async def test_past_the_progress_deadline_the_last_revision_that_serves_still_stays(
    make_spec: Callable[..., RolloutSpec], workloads: MemoryWorkloads
) -> None:
    workloads.running = {"v1": Track.STABLE, "v2": Track.CANARY}
    workloads.never_ready = {"v1"}

    retired = await retire(replace(ROLLED_BACK, retiring_since=None), workloads, make_spec(), now=NOW)

    assert retired.retiring == ("v2",) and workloads.calls == []


def test_a_decision_that_retires_says_since_when() -> None:
    rolled_back = decide(AT_STEP_1, Observations(now=NOW, abort=True), RolloutSpec("digits", "v2", ()))
    started = decide(rolled_back.status, Observations(now=NOW + 5), RolloutSpec("digits", "v3", ()))

    assert rolled_back.status.retiring_since == NOW
    assert started.status.retiring == ("v2",) and started.status.retiring_since == NOW, "nothing more retired"
    assert RolloutStatus.from_dict(rolled_back.status.to_dict()) == rolled_back.status


async def test_a_retiring_revision_asked_for_again_is_not_removed(
    make_spec: Callable[..., RolloutSpec], workloads: MemoryWorkloads
) -> None:
    again = RolloutStatus(phase=Phase.PROGRESSING, stable="v1", canary="v2", retiring=("v2", "v3"))

    retired = await retire(again, workloads, make_spec(), now=NOW)

    assert retired.retiring == () and workloads.calls == [("remove", "v3")]


async def test_a_fresh_canary_starts_without_touching_the_routes(
    make_spec: Callable[..., RolloutSpec], workloads: MemoryWorkloads, router: MemoryRouter
) -> None:
    decision = decide(STEADY, Observations(now=NOW), make_spec())

    await apply(decision, workloads=workloads, router=router)

    assert router.routes == [] and workloads.calls == [("run", "v2", "canary")]


class CountingWorkloads(MemoryWorkloads):
    def __init__(self) -> None:
        super().__init__(ready_after=0.0)
        self.asked: list[str] = []

    async def ready(self, revision: str) -> bool:
        self.asked.append(revision)
        return await super().ready(revision)


async def test_a_tick_observes_no_readiness_of_a_canary_the_spec_moved_on_from(
    make_spec: Callable[..., RolloutSpec], router: MemoryRouter, metrics: MemoryMetrics
) -> None:
    workloads = CountingWorkloads()

    decision = await tick(
        replace(AT_STEP_1, step_started_at=NOW), make_spec("v3"), workloads=workloads, router=router,
        metrics=metrics, now=NOW,
    )  # fmt: skip

    assert decision.action is Action.START_CANARY
    assert workloads.asked == [], "the replaced canary's readiness (and the stable's) decides nothing"


@pytest.mark.parametrize(
    ("status", "asked"),
    [
        (CANARY_STARTING, ["v2"]),
        (replace(AT_STEP_1, step_started_at=NOW), ["v1", "v2"]),
        (FIRST_STARTING, ["v2"]),
        (STEADY, []),
    ],
    ids=[
        "canary starting: its readiness",
        "progressing: both readinesses",
        "first revision: its readiness",
        "steady, a canary to start: nothing",
    ],
)
async def test_a_tick_observes_only_what_the_state_needs(
    make_spec: Callable[..., RolloutSpec],
    router: MemoryRouter,
    metrics: MemoryMetrics,
    status: RolloutStatus,
    asked: list[str],
) -> None:
    workloads = CountingWorkloads()

    await tick(status, make_spec(), workloads=workloads, router=router, metrics=metrics, now=NOW)

    assert workloads.asked == asked and metrics.queries == []


class CoarseRouter(MemoryRouter):
    """Splits by replica counts of three: 33.3 % where 25 % is asked."""

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        await super().route(stable, canary, weight)
        return round(weight / (100 / 3)) * (100 / 3) if canary else 0.0


async def test_what_a_coarse_router_achieves_is_folded_into_the_status_and_reason(
    make_spec: Callable[..., RolloutSpec], workloads: MemoryWorkloads
) -> None:
    earlier = AT_STEP_1.with_history(NOW - 60, "SetWeight", "canary v2 is ready; canary at 5%")
    decision = decide(earlier, Observations(now=NOW, analysis=PASS), make_spec())

    applied = await apply(decision, workloads=workloads, router=CoarseRouter())
    exact = await apply(decision, workloads=workloads, router=MemoryRouter())

    assert decision.status.weight == 25 and applied.status.achieved_weight == pytest.approx(100 / 3)
    assert applied.reason.endswith("(the router achieves 33.3%)")
    assert applied.status.message == applied.reason == applied.status.history[-1]["reason"]
    assert applied.status.history[:-1] == decision.status.history[:-1] == earlier.history
    assert {**applied.status.history[-1], "reason": ""} == {**decision.status.history[-1], "reason": ""}
    assert exact.reason == decision.reason and exact.status == replace(decision.status, achieved_weight=25.0)


@pytest.mark.looptime
@pytest.mark.timeout(30)
@pytest.mark.parametrize("max_errors", [4, None], ids=["max_errors=4", "the default, 10"])
async def test_run_rollout_gives_up_after_max_errors_failures_in_a_row(
    make_spec: Callable[..., RolloutSpec],
    workloads: MemoryWorkloads,
    router: MemoryRouter,
    metrics: MemoryMetrics,
    max_errors: int | None,
) -> None:
    router.failures.extend(PortError(f"route refused {n}", reason="Refused") for n in range(12))
    status = replace(CANARY_STARTING, started_at=None)
    workloads.ready_after = 0.0
    await workloads.run("v2", Track.CANARY)
    limit = {} if max_errors is None else {"max_errors": max_errors}
    tries = max_errors or 10

    with pytest.raises(PortError, match=f"route refused {tries - 1}$"):
        await run_rollout(
            make_spec(), status, workloads=workloads, router=router, metrics=metrics, interval=5, **limit
        )
    assert len(router.failures) == 12 - tries  # exactly that many tries, then it gave up


class FlakyRouter(MemoryRouter):
    """Refuses every other call: never `max_errors` failures in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        self.calls += 1
        if self.calls % 2:
            raise PortError(f"route refused (call {self.calls})", reason="Refused")
        return await super().route(stable, canary, weight)


@pytest.mark.looptime
@pytest.mark.timeout(30)
async def test_run_rollout_counts_only_failures_in_a_row(
    make_spec: Callable[..., RolloutSpec], workloads: MemoryWorkloads, metrics: MemoryMetrics
) -> None:
    router = FlakyRouter()
    workloads.ready_after = 0.0
    await workloads.run("v1", Track.STABLE)  # a stable that is down would hold every judgement
    await workloads.run("v2", Track.CANARY)
    status = replace(CANARY_STARTING, started_at=None)

    final = await run_rollout(
        make_spec(steps=(5, 25, 50)),
        status,
        workloads=workloads,
        router=router,
        metrics=metrics,
        interval=5,
        max_errors=2,
        clock=asyncio.get_running_loop().time,
    )

    # no metrics were served: the canary is rolled back after three inconclusive judgements,
    # having ridden out a refused route call before every step
    assert final.phase is Phase.ROLLED_BACK and router.calls >= 4


def test_a_clock_that_went_back_restarts_the_step_instead_of_holding_it_as_long(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    """An hour back: the step would have waited an hour more for its judgement."""
    back = NOW - 3600

    decision = decide(AT_STEP_1, Observations(now=back, canary_ready=True, stable_ready=True), make_spec())
    later = decide(decision.status, Observations(now=back + 60, canary_ready=True), make_spec())

    assert decision.action is Action.WAIT and "the clock went back 3540 s" in decision.reason
    assert decision.status.step_started_at == back and decision.status.step == AT_STEP_1.step
    assert analysis_due(later.status, make_spec(), back + 60), "due one interval later, on the new clock"


def test_a_skew_within_the_tolerance_is_no_step_back(make_spec: Callable[..., RolloutSpec]) -> None:
    started = replace(AT_STEP_1, step_started_at=NOW)
    decision = decide(started, Observations(now=NOW - 5, canary_ready=True, stable_ready=True), make_spec())

    assert decision.status.step_started_at == NOW and "clock" not in decision.reason


REJECTED = RolloutStatus(phase=Phase.ROLLED_BACK, stable="v1", rejected="v2", message="rolled back: ...")


def test_a_rejected_revision_is_not_tried_again_unless_a_person_retries_it(
    make_spec: Callable[..., RolloutSpec],
) -> None:
    """As `kubectl argo rollouts retry`: once the analysis' Prometheus or labels are fixed, the same
    artifact can be rolled out again without changing it."""
    waiting = decide(REJECTED, Observations(now=NOW), make_spec())
    retried = decide(REJECTED, Observations(now=NOW, retry=True), make_spec())

    assert waiting.action is Action.WAIT
    assert retried.action is Action.START_CANARY and retried.manual, "the annotation is used up"
    assert retried.status.canary == "v2" and retried.status.rejected is None
    assert retried.reason.startswith("retried by a person (annotation serving.quantship.io/retry)")


def test_a_retry_without_a_rejected_revision_changes_nothing(make_spec: Callable[..., RolloutSpec]) -> None:
    promoted = RolloutStatus(phase=Phase.PROMOTED, stable="v2")

    decision = decide(promoted, Observations(now=NOW, retry=True), make_spec())

    assert decision.action is Action.WAIT and not decision.manual
