"""The canary state machine: a pure `decide`, and a thin async `tick` that feeds and applies it.

Each tick re-derives everything from the persisted `RolloutStatus` (nothing lives in memory):
it observes only what the current state needs (is the new revision ready? is a judgement due?),
asks `decide` what to do, carries the decision out through the ports, and returns the decision
with the status to persist. The operator calls `tick` from its kopf handlers and daemons; the
local demo and the tests call `run_rollout`, a loop of ticks.

The walk, one guarded step at a time (each returns early):
  first revision   Pending -> (ready) Promoted; it serves everything, there is nothing to compare
  new revision     -> canary Progressing, waiting for readiness (step -1) -> (ready) steps[0]
  each step        a canary with no ready server -> RolledBack at once ("canary not ready: ...");
                   a stable with none -> hold the judgement (Degraded) until it is back;
  gone             a revision the rollout needs whose servers were deleted (the first one, the
                   stable, a starting canary) is made again by the caller: "gone, made again", and
                   a starting revision's progress deadline starts again
                   wait step_interval, judge: pass -> next step (after the last: Promoted);
                   fail -> failure_limit reached? RolledBack; inconclusive -> inconclusive_limit
                   reached? RolledBack (or hold), but Failed when the metrics queries are
                   misconfigured (holding cannot fix that); a canary never ready by the deadline -> Failed
  a person         abort -> RolledBack; promote -> Promoted (once the canary is ready)
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from quantship.rollout.analysis import (
    Analysis,
    Fault,
    Verdict,
    judge,
    measure,
    metrics_fault,
    metrics_trouble,
    persisted_faults,
    why_inconclusive,
)
from quantship.rollout.ports import MetricsSource, PortError, Track, TrafficRouter, Workloads
from quantship.rollout.spec import OnInconclusive, RolloutSpec
from quantship.rollout.state import Phase, RolloutStatus

log = logging.getLogger(__name__)

CLOCK_STEP_BACK_S = 30.0
"""A step that began this far in the future began by another clock (stepped back, or another
operator replica's): more than any skew between replicas NTP keeps, less than a step."""
ABORTED = "aborted by a person (annotation serving.quantship.io/abort)"
PROMOTED = "promoted by a person (annotation serving.quantship.io/promote)"
RETRIED = "retried by a person (annotation serving.quantship.io/retry): revision"


class Action(enum.StrEnum):
    """What a decision does. CamelCase: the operator uses them as Event reasons."""

    WAIT = "Wait"
    DEPLOY = "Deploy"
    SERVE = "Serve"
    START_CANARY = "StartCanary"
    SET_WEIGHT = "SetWeight"
    JUDGED = "Judged"
    PROMOTE = "Promote"
    ROLL_BACK = "RollBack"
    FAIL = "Fail"


@dataclass(frozen=True)
class Observations:
    """What a tick saw. None means "not looked at": the state did not need it."""

    now: float
    """Seconds since the epoch (or the test loop's clock): the same clock as the status times."""
    stable_ready: bool | None = None
    canary_ready: bool | None = None
    abort: bool = False
    """A person asked to abort the canary (annotation serving.quantship.io/abort)."""
    promote: bool = False
    """A person asked to promote the canary now (annotation serving.quantship.io/promote)."""
    retry: bool = False
    """A person asked to roll the rejected revision out again (annotation serving.quantship.io/retry)."""
    analysis: Analysis | None = None
    restored: tuple[str, ...] = ()
    """Revisions whose servers were gone and were made again just before this tick."""


@dataclass(frozen=True)
class Decision:
    action: Action
    status: RolloutStatus
    """The status to persist once the action is carried out."""
    reason: str
    analysis: Analysis | None = None
    retire: tuple[str, ...] = ()
    """Revisions to remove once traffic has left them: the status keeps them (`retiring`) until
    `retire` has removed them."""
    manual: bool = False
    """Taken because a person asked (abort / promote): the request is used up."""
    degraded: str | None = None
    """Why the rollout is stuck without having failed (no data, not ready past the deadline)."""
    fault: Fault | None = None
    """When `degraded` is the metrics' trouble (Prometheus unreachable, queries refused): which."""
    again: bool = False
    """A held judgement that finds what the last one found (`why_inconclusive`): it adds to the
    history's last entry, and is no news to announce (the hold was, and Degraded says it)."""

    @property
    def warning(self) -> bool:
        return self.action in (Action.ROLL_BACK, Action.FAIL) or self.degraded is not None

    @property
    def news(self) -> bool:
        """Worth an Event and a log line: it acted, or judged something not said already."""
        return self.action is not Action.WAIT and not self.again


@dataclass(frozen=True)
class Needs:
    stable_ready: bool
    canary_ready: bool
    analysis: bool


def analysis_due(status: RolloutStatus, spec: RolloutSpec, now: float) -> bool:
    return (
        status.phase is Phase.PROGRESSING
        and status.canary == spec.revision
        and status.step_started_at is not None
        and now - status.step_started_at >= spec.step_interval
    )


def canary_starting(status: RolloutStatus) -> bool:
    """A canary runs but takes no traffic yet: it waits for readiness. (Phase Progressing, as Argo
    Rollouts users expect; statuses written before that say Pending.)"""
    return status.in_flight and status.canary is not None and status.step < 0


def needs(status: RolloutStatus, spec: RolloutSpec, now: float) -> Needs:
    """What `decide` will look at in this state: a tick observes nothing else. Readiness is looked
    at on every tick of a canary, not only while it starts: a server that dies mid-step must lose
    its traffic at once, not after a run of judgements reading "no data"."""
    pending = status.phase is Phase.PENDING
    canary = status.in_flight and status.canary == spec.revision  # not one the spec has moved on from
    return Needs(
        stable_ready=(pending and status.canary is None and status.stable == spec.revision)
        or (canary and not canary_starting(status)),
        canary_ready=canary,
        analysis=analysis_due(status, spec, now),
    )


# -- decide: pure ---------------------------------------------------------------------------------


def decide(status: RolloutStatus, obs: Observations, spec: RolloutSpec) -> Decision:
    """The next step of the rollout, with its reason. Pure: same inputs, same decision."""
    # nothing runs yet: deploy the asked revision as the first stable
    if status.stable is None:
        first = RolloutStatus(phase=Phase.PENDING, stable=spec.revision, started_at=obs.now)
        return _decision(Action.DEPLOY, first, obs.now, f"deploying {spec.revision} as the first revision")
    # the first revision is starting
    if status.canary is None and status.phase is Phase.PENDING:
        return _first_revision(status, obs, spec)
    # a canary is in flight
    if status.canary is not None:
        return _canary(status, obs, spec)
    # steady: the stable serves everything; a new revision (or a rejected one retried) starts a canary
    if spec.revision == status.rejected and obs.retry:
        return replace(_start_canary(status, spec, obs.now, replacing=None, why=RETRIED), manual=True)
    if spec.revision in (status.stable, status.rejected):
        return _wait(status, status.message)
    return _start_canary(status, spec, obs.now, replacing=None)


def _first_revision(status: RolloutStatus, obs: Observations, spec: RolloutSpec) -> Decision:
    assert status.stable is not None
    if spec.revision != status.stable:  # asked for another before the first one ever served
        first = replace(status, stable=spec.revision, started_at=obs.now)
        reason = f"deploying {spec.revision} instead of {status.stable}, which never became ready"
        return _decision(Action.DEPLOY, first, obs.now, reason, retire=(status.stable,))
    if status.stable in obs.restored:  # its pods start again: so does its deadline
        return _wait(replace(status, started_at=obs.now), f"{made_again(status.stable)}; waiting for it")
    if obs.stable_ready is None:
        return _wait(status, status.message)
    if obs.stable_ready:
        serving = replace(status, phase=Phase.PROMOTED)
        return _decision(Action.SERVE, serving, obs.now, f"{status.stable} is ready and serves all traffic")
    waited = _since(status.started_at, obs.now)
    if waited > spec.progress_deadline:
        deadline = spec.progress_deadline
        late = f"{status.stable} not ready after {waited:.0f} s (progress deadline {deadline:.0f} s)"
        return _wait(status, late, degraded=late)
    return _wait(status, f"waiting for {status.stable} to become ready")


def _canary(status: RolloutStatus, obs: Observations, spec: RolloutSpec) -> Decision:
    canary, now = status.canary, obs.now
    assert canary is not None
    # a person aborts
    if obs.abort:
        return _roll_back(status, now, ABORTED, manual=True)
    # the spec moved on while the canary ran
    if spec.revision != canary:
        if spec.revision == status.stable:  # a person's revert, not the canary's failure: not rejected
            reverted = f"the spec asks for the stable revision {status.stable} again"
            return _roll_back(status, now, reverted, reject=False)
        return _start_canary(status, spec, now, replacing=canary)
    # the canary is starting: waiting for its readiness
    if canary_starting(status):
        if canary in obs.restored:  # its pods start again: so does its deadline
            return _wait(replace(status, started_at=now), f"canary {made_again(canary)}; waiting for it")
        if obs.canary_ready is None:
            return _wait(status, status.message)
        if not obs.canary_ready:
            waited = _since(status.started_at, now)
            if waited > spec.progress_deadline:
                reason = (
                    f"canary {canary} not ready after {waited:.0f} s "
                    f"(progress deadline {spec.progress_deadline:.0f} s)"
                )
                failed = replace(_without_canary(status), phase=Phase.FAILED, rejected=canary)
                return _decision(Action.FAIL, failed, now, reason, retire=(canary,))
            if obs.promote:
                return _wait(status, f"promotion asked: waiting for canary {canary} to become ready")
            return _wait(status, f"waiting for canary {canary} to become ready")
        if obs.promote:
            return _promote(status, now, PROMOTED, manual=True)
        return _set_step(status, spec, 0, now, f"canary {canary} is ready")
    # progressing: a canary that lost its servers takes no more traffic (Argo and Flagger do the same)
    if obs.canary_ready is False:
        return _roll_back(status, now, _not_ready(status, spec))
    # progressing: a person promotes
    if obs.promote:
        return _promote(status, now, PROMOTED, manual=True)
    # progressing: no judgement against a stable that is down (its SLIs are no baseline); hold
    if obs.stable_ready is False:
        down = f"stable not ready: {status.stable} has no ready server; judging canary {canary} waits for it"
        if status.stable in obs.restored:
            down = f"stable {made_again(status.stable)}; judging canary {canary} waits for it to be ready"
        return _wait(status, down, degraded=down)
    # progressing: a clock that went back (NTP, another operator replica taking over) would hold the
    # step for as long as it went back: the step's interval starts again now
    if status.step_started_at is not None and now < status.step_started_at - CLOCK_STEP_BACK_S:
        back = status.step_started_at - now
        went_back = f"the clock went back {back:.0f} s: this step's interval starts again"
        return _wait(replace(status, step_started_at=now), went_back)
    # progressing: judge at the end of the step; while holding, the hold's reason stays
    if not analysis_due(status, spec, now) or obs.analysis is None:
        fault = _still_in_trouble(status)
        if _holding(status, spec):
            return _wait(status, status.message, degraded=status.message, fault=fault)
        said = metrics_trouble(fault, str((status.last_analysis or {}).get("reason", "")))
        return _wait(status, _progress_message(status, spec), degraded=said, fault=fault)
    return _judged(status, obs.analysis, spec, now)


def _judged(status: RolloutStatus, analysis: Analysis, spec: RolloutSpec, now: float) -> Decision:
    assert status.canary is not None
    limits = spec.analysis
    judged = replace(status, last_analysis=analysis.to_dict())
    step = f"step {status.step + 1} of {len(spec.steps)} at {status.weight}%"
    match analysis.verdict:
        case Verdict.PASS:
            judged = replace(judged, inconclusive=0)
            following = _step_above(spec, status.weight)
            if following is None:
                return _promote(
                    judged, now, f"passed all {len(spec.steps)} steps: {analysis.reason}", analysis
                )
            return _set_step(judged, spec, following, now, f"{step} passed: {analysis.reason}", analysis)
        case Verdict.FAIL:
            failures = status.failures + 1
            judged = replace(judged, failures=failures, inconclusive=0, step_started_at=now)
            if failures >= limits.failure_limit:
                reason = f"{analysis.reason} (failed judgement {failures} of {limits.failure_limit}, {step})"
                return _roll_back(judged, now, reason, analysis=analysis)
            reason = f"failed judgement {failures} of {limits.failure_limit} at {step}: {analysis.reason}"
            return _decision(Action.JUDGED, judged, now, reason, analysis=analysis)
        case Verdict.INCONCLUSIVE:
            count = status.inconclusive + 1
            judged = replace(judged, inconclusive=count, step_started_at=now)
            fault = metrics_fault(analysis.faults())
            degraded = metrics_trouble(fault, analysis.reason)
            if count >= limits.inconclusive_limit:
                reason = f"{count} inconclusive judgements in a row at {step}: {analysis.reason}"
                if analysis.misconfigured:  # no outage to wait out: the canary cannot be judged
                    failed = replace(_without_canary(judged), phase=Phase.FAILED, rejected=status.canary)
                    misconfigured = f"metrics queries misconfigured, the canary cannot be judged: {reason}"
                    return _decision(
                        Action.FAIL, failed, now, misconfigured, analysis, retire=(status.canary,)
                    )
                if limits.on_inconclusive is OnInconclusive.ROLLBACK:
                    return _roll_back(judged, now, reason, analysis=analysis)
                held = f"holding: {reason}"
                again = _holding(status, spec) and _found_again(status, analysis)
                return _decision(
                    Action.JUDGED, judged, now, held, analysis, degraded=held, fault=fault, again=again
                )
            reason = (
                f"inconclusive judgement {count} of {limits.inconclusive_limit} at {step}: {analysis.reason}"
            )
            return _decision(
                Action.JUDGED, judged, now, reason, analysis=analysis, degraded=degraded, fault=fault
            )
    raise AssertionError(analysis.verdict)


# -- transitions ----------------------------------------------------------------------------------


def _decision(
    action: Action,
    status: RolloutStatus,
    now: float,
    reason: str,
    analysis: Analysis | None = None,
    *,
    retire: tuple[str, ...] = (),
    manual: bool = False,
    degraded: str | None = None,
    fault: Fault | None = None,
    again: bool = False,
) -> Decision:
    retiring = tuple(dict.fromkeys((*status.retiring, *retire)))
    since = now if retire else status.retiring_since
    retired = replace(status, retiring=retiring, retiring_since=since if retiring else None)
    recorded = retired.with_history(now, action.value, reason, again=again)
    return Decision(action, recorded, reason, analysis, retire, manual, degraded, fault, again)


def _wait(
    status: RolloutStatus, reason: str, *, degraded: str | None = None, fault: Fault | None = None
) -> Decision:
    return Decision(Action.WAIT, replace(status, message=reason), reason, degraded=degraded, fault=fault)


def _without_canary(status: RolloutStatus) -> RolloutStatus:
    return replace(
        status, canary=None, step=-1, weight=0, achieved_weight=0.0, step_started_at=None, inconclusive=0
    )


def _start_canary(
    status: RolloutStatus, spec: RolloutSpec, now: float, *, replacing: str | None, why: str = ""
) -> Decision:
    started = replace(
        _without_canary(status),
        phase=Phase.PROGRESSING,
        canary=spec.revision,
        rejected=None,
        started_at=now,
        failures=0,
        last_analysis=None,
    )
    reason = f"{why or 'new revision'} {spec.revision}: starting it as a canary next to {status.stable}"
    if replacing:
        reason += f" (replaces canary {replacing})"
    return _decision(Action.START_CANARY, started, now, reason, retire=(replacing,) if replacing else ())


def _set_step(
    status: RolloutStatus,
    spec: RolloutSpec,
    index: int,
    now: float,
    why: str,
    analysis: Analysis | None = None,
) -> Decision:
    weight = spec.steps[index]
    stepped = replace(status, phase=Phase.PROGRESSING, step=index, weight=weight, step_started_at=now)
    reason = f"{why}; canary at {weight}% (step {index + 1} of {len(spec.steps)})"
    return _decision(Action.SET_WEIGHT, stepped, now, reason, analysis)


def _promote(
    status: RolloutStatus, now: float, reason: str, analysis: Analysis | None = None, *, manual: bool = False
) -> Decision:
    assert status.canary is not None and status.stable is not None
    promoted = replace(
        _without_canary(status), phase=Phase.PROMOTED, stable=status.canary, failures=0, rejected=None
    )
    return _decision(Action.PROMOTE, promoted, now, reason, analysis, retire=(status.stable,), manual=manual)


def _roll_back(
    status: RolloutStatus,
    now: float,
    reason: str,
    *,
    analysis: Analysis | None = None,
    manual: bool = False,
    reject: bool = True,
) -> Decision:
    """Back to the stable revision; the canary rejected (not tried again until the spec asks for
    another) unless `reject` is False."""
    assert status.canary is not None
    rejected = status.canary if reject else status.rejected
    rolled_back = replace(_without_canary(status), phase=Phase.ROLLED_BACK, rejected=rejected)
    return _decision(
        Action.ROLL_BACK, rolled_back, now, reason, analysis, retire=(status.canary,), manual=manual
    )


def _still_in_trouble(status: RolloutStatus) -> Fault | None:
    """Between judgements, the trouble the last inconclusive one met (Prometheus down, queries
    refused) is still the news: Degraded stays until a judgement gets through, rather than
    flipping back to healthy on every tick in between and warning again at each judgement."""
    if status.inconclusive == 0 or not status.last_analysis:
        return None
    return metrics_fault(persisted_faults(status.last_analysis))


def _step_above(spec: RolloutSpec, weight: int) -> int | None:
    """The step a canary that passed at `weight` goes to: the first above it (the next one, while
    the steps are as they were); None past the last. Not the step index plus one: spec.rollout.steps
    edited mid-canary (5/25/50/100 to 100) promoted a canary judged at 5% under steps that ask for
    a judgement at 100%."""
    return next((index for index, step in enumerate(spec.steps) if step > weight), None)


def _holding(status: RolloutStatus, spec: RolloutSpec) -> bool:
    """Too many inconclusive judgements in a row, and the spec says hold rather than roll back."""
    limits = spec.analysis
    return limits.on_inconclusive is OnInconclusive.HOLD and status.inconclusive >= limits.inconclusive_limit


def _found_again(status: RolloutStatus, analysis: Analysis) -> bool:
    """The judgement finds what the last one did (`why_inconclusive`), however its counts moved."""
    return why_inconclusive(status.last_analysis) == why_inconclusive(analysis.to_dict())


def _not_ready(status: RolloutStatus, spec: RolloutSpec) -> str:
    return (
        f"canary not ready: {status.canary} has no ready server at step {status.step + 1} of "
        f"{len(spec.steps)} ({status.weight}% of traffic); rolled back at once, so no request goes to it"
    )


def made_again(revision: str) -> str:
    return f"{revision} was gone, made again"


def _since(start: float | None, now: float) -> float:
    return 0.0 if start is None else now - start


def _progress_message(status: RolloutStatus, spec: RolloutSpec) -> str:
    return (
        f"canary {status.canary} at {status.weight}% (step {status.step + 1} of {len(spec.steps)}), "
        f"judged every {spec.step_interval:g} s"
    )


# -- tick: observe, decide, apply -----------------------------------------------------------------


async def tick(
    status: RolloutStatus,
    spec: RolloutSpec,
    *,
    workloads: Workloads,
    router: TrafficRouter,
    metrics: MetricsSource,
    now: float,
    abort: bool = False,
    promote: bool = False,
    retry: bool = False,
    restored: tuple[str, ...] = (),
) -> Decision:
    """One step of the rollout. Raises PortError when an adapter fails: nothing is committed then,
    and the next tick decides again from the same status (every effect is idempotent). `restored`:
    revisions the caller found gone and made again (`Observations.restored`)."""
    need = needs(status, spec, now)
    stable_ready = await workloads.ready(status.stable) if need.stable_ready and status.stable else None
    canary_ready = await workloads.ready(status.canary) if need.canary_ready and status.canary else None
    analysis = None
    if need.analysis and status.canary and canary_ready is not False and stable_ready is not False:
        analysis = judge(await measure(metrics, spec, status.canary, status.stable, now), spec)
    observations = Observations(now, stable_ready, canary_ready, abort, promote, retry, analysis, restored)
    decision = decide(status, observations, spec)
    return await apply(decision, workloads=workloads, router=router)


async def apply(decision: Decision, *, workloads: Workloads, router: TrafficRouter) -> Decision:
    """Carry a decision out, but for removing revisions: that is `retire`'s, once the status is saved.
    Returns the decision with what the router achieved folded into its status and reason."""
    status, reason = decision.status, decision.reason
    match decision.action:
        case Action.DEPLOY:
            assert status.stable is not None
            await workloads.run(status.stable, Track.STABLE)
        case Action.SERVE:
            assert status.stable is not None
            await router.route(status.stable, None, 0)
        case Action.START_CANARY:
            assert status.stable is not None and status.canary is not None
            if decision.retire:
                await router.route(status.stable, None, 0)
            await workloads.run(status.canary, Track.CANARY)
        case Action.SET_WEIGHT:
            assert status.stable is not None and status.canary is not None
            achieved = await router.route(status.stable, status.canary, status.weight)
            status = replace(status, achieved_weight=achieved)
            if achieved != status.weight:  # a coarse router (replica ratios): say how close it got
                note = f" (the router achieves {achieved:.1f}%)"
                last = {**status.history[-1], "reason": f"{status.history[-1]['reason']}{note}"}
                status = replace(status, message=status.message + note, history=(*status.history[:-1], last))
                reason += note
        case Action.PROMOTE:
            assert status.stable is not None
            await router.route(status.stable, None, 0)
            await workloads.run(status.stable, Track.STABLE)
        case Action.ROLL_BACK | Action.FAIL:
            assert status.stable is not None
            await router.route(status.stable, None, 0)
        case Action.WAIT | Action.JUDGED:
            pass
    return replace(decision, status=status, reason=reason)


async def retire(
    status: RolloutStatus, workloads: Workloads, spec: RolloutSpec, *, now: float
) -> RolloutStatus:
    """Remove the revisions `status.retiring` names, and return the status without them. Call it
    once `status` is saved: removed before, a promotion whose status write failed would resume at a
    stable revision that is gone.

    A revision that still serves stays until the stable, its successor, has all its servers ready:
    a rollback from 100% (replicas router: 4 canaries, 1 stable) or a promotion (the new stable
    scaled up from its share) would otherwise leave the whole model's traffic to the one or two
    successor servers ready so far. A successor that cannot get them all (a quota, a node short)
    is waited for `spec.progress_deadline` from the decision (a status saved before
    `retiring_since` existed: not at all); past it, the revision stays only while the successor
    has no ready server: never removed while it is the last that serves."""
    if not status.retiring:
        return status
    kept: list[str] = []
    takes_over: bool | None = None
    for revision in status.retiring:
        if revision in (status.stable, status.canary):
            continue  # asked for again meanwhile: not to remove
        if await workloads.ready(revision):
            if takes_over is None:
                takes_over = await _takes_over(status, workloads, spec, now)
            if not takes_over:
                kept.append(revision)
                continue
        await workloads.remove(revision)
    return replace(status, retiring=tuple(kept), retiring_since=status.retiring_since if kept else None)


async def _takes_over(status: RolloutStatus, workloads: Workloads, spec: RolloutSpec, now: float) -> bool:
    """Whether the stable can take the traffic of the revisions retiring: all its servers are ready;
    past the progress deadline of the wait, one is."""
    if status.stable is None:
        return False
    if await workloads.all_ready(status.stable):
        return True
    waited = None if status.retiring_since is None else now - status.retiring_since
    if waited is not None and waited <= spec.progress_deadline:
        return False
    if not await workloads.ready(status.stable):
        return False
    log.warning(
        "removing %s: its successor %s has not all its servers ready %s (progress deadline %.0f s)",
        ", ".join(status.retiring),
        status.stable,
        "(no record of when they began retiring)" if waited is None else f"after {waited:.0f} s",
        spec.progress_deadline,
    )
    return True


# -- the loop the local demo and the tests run ----------------------------------------------------


@dataclass
class Intervention:
    """A person's requests to a running `run_rollout` (the local twin of the annotations)."""

    abort: bool = False
    promote: bool = False


async def run_rollout(
    spec: RolloutSpec,
    status: RolloutStatus,
    *,
    workloads: Workloads,
    router: TrafficRouter,
    metrics: MetricsSource,
    interval: float,
    clock: Callable[[], float] = time.time,
    on_decision: Callable[[Decision], None] | None = None,
    intervention: Intervention | None = None,
    max_errors: int = 10,
) -> RolloutStatus:
    """Tick every `interval` seconds until the asked revision is settled (promoted, rolled back or
    failed); returns the final status. Gives up after `max_errors` adapter failures in a row."""
    intervention = intervention if intervention is not None else Intervention()
    errors = 0
    while True:
        try:
            decision = await tick(
                status,
                spec,
                workloads=workloads,
                router=router,
                metrics=metrics,
                now=clock(),
                abort=intervention.abort,
                promote=intervention.promote,
            )
        except PortError as exc:
            errors += 1
            log.warning(
                "rollout of %s: %s (%d of %d errors in a row)", spec.revision, exc, errors, max_errors
            )
            if errors >= max_errors:
                raise
            await asyncio.sleep(interval)
            continue
        errors = 0
        status = decision.status
        try:
            status = await retire(status, workloads, spec, now=clock())
        except PortError as exc:  # kept in the status: the next tick removes them
            log.warning("rollout of %s: %s (retried next tick)", spec.revision, exc)
        if decision.manual:
            intervention.abort = intervention.promote = False
        if on_decision is not None:
            on_decision(decision)
        if decision.news:
            log.info("rollout of %s: %s: %s", spec.revision, decision.action.value, decision.reason)
        if decision.action is Action.WAIT and not status.in_flight and not status.retiring:
            return status
        await asyncio.sleep(interval)
