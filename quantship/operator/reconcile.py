"""One tick of one QuantizedModel: take its latest state, tick the rollout engine, write status back.

Called by the kopf handlers (on create/resume/spec change, and by the analysis and resync daemons),
always under the resource's lock. The state is what kopf's watches delivered (the resource, our
Deployments and Services: watched.py), or the body our own last write returned while the watch has
not brought it back yet, so two ticks in a row never act on a stale status (or on a one-shot
annotation used up already), and a tick that changes nothing sends no request. Every decision goes,
with the same text, to the status (message, history, conditions), an Event, the log and the
metrics. A decision carried out whose status write failed is kept in the resource's kopf memo and
written again by the next tick before anything is decided (`Acted`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import kopf

from quantship.operator import crd, crd_status, placement, quantization, resources
from quantship.operator import status as status_module
from quantship.operator.kube import ChildGone, Kube, ModelGone
from quantship.operator.metrics import OperatorMetrics
from quantship.operator.routers import GatewayRouter, ReplicaRouter
from quantship.operator.settings import RETRY_BACKOFF_MAX_S, SERVER_BIND_ADDRESS
from quantship.operator.spec import InvalidSpec, ModelSpec
from quantship.operator.watched import Children
from quantship.operator.workloads import KubeWorkloads
from quantship.rollout import (
    Action,
    Decision,
    Fault,
    MetricsSource,
    Phase,
    PortError,
    PrometheusSources,
    RolloutStatus,
    Track,
    TrafficRouter,
    retire,
    tick,
)
from quantship.rollout.analysis import readable_analysis
from quantship.rollout.engine import canary_starting, made_again
from quantship.rollout.state import readable

IN_FLIGHT = ("Pending", "Progressing")
QUANTIZE_JOB_TROUBLE = "QuantizeJobError"
"""The Degraded reason while spec.quantize's Job cannot be created or read: said, and retried at the
next tick or resync, while the rollout itself goes on (it stopped every tick, a bad canary included)."""
RESTORED = "Restored"
"""The Event reason of a Deployment the rollout needs that was gone and was made again."""
UNREADABLE_STATUS = "UnreadableStatus"
"""The Event reason of status fields a person wrote that the operator cannot read, put right."""
STATUS_LOST = "StatusLost"
"""The Event reason of a status without a stable revision for a model whose stable Deployment runs."""
UNSAVED = "unsaved"
"""The memo key of the `Acted` tick whose status write failed."""
T = TypeVar("T")


@dataclass
class Context:
    """What every tick needs, built once by the operator's composition root (`main.run`)."""

    kube: Kube
    metrics: OperatorMetrics
    retry_backoff: float = 10.0
    clock: Callable[[], float] = field(default=time.time)
    metrics_source: Callable[[ModelSpec], MetricsSource] | None = None
    """The MetricsSource a tick judges with; None: Prometheus at spec.analysis.prometheusUrl, over
    the one HTTP client of `prometheus` (built per tick, a client cost ~39 ms of CPU)."""
    prometheus: PrometheusSources | None = None
    """The operator's Prometheus client; `main.run` builds it and closes it at shutdown."""
    server_host: str = SERVER_BIND_ADDRESS
    """Where the model servers listen (OperatorSettings.server_bind_address)."""

    def retry_delay(self, exc: PortError) -> float:
        """Seconds before a tick that failed on `exc` is retried: `retry_backoff`, or what the
        API server asked (Retry-After) where longer, up to RETRY_BACKOFF_MAX_S."""
        return max(self.retry_backoff, min(exc.retry_after or 0.0, RETRY_BACKOFF_MAX_S))

    def source_for(self, spec: ModelSpec) -> MetricsSource:
        if self.metrics_source is not None:
            return self.metrics_source(spec)
        if self.prometheus is None:
            self.prometheus = PrometheusSources()
        return self.prometheus(spec.prometheus_url)


def router_for(kube: Kube, spec: ModelSpec, workloads: KubeWorkloads) -> TrafficRouter:
    if spec.router == "gateway-api":
        return GatewayRouter(kube, spec, workloads)
    return ReplicaRouter(kube, spec, workloads)


def workloads_for(
    kube: Kube,
    spec: ModelSpec,
    owner: Mapping[str, Any],
    children: Children | None = None,
    server_host: str = SERVER_BIND_ADDRESS,
    fresh: bool = False,
) -> KubeWorkloads:
    # behind one shared Service every ready canary pod takes a share at once: start with one
    canary_replicas = 1 if spec.router == "replicas" else spec.replicas
    return KubeWorkloads(
        kube,
        spec,
        owner,
        canary_replicas=canary_replicas,
        children=children,
        server_host=server_host,
        fresh=fresh,
    )


async def reconcile(
    ctx: Context,
    namespace: str,
    name: str,
    logger: logging.Logger | Any,
    *,
    seen: Mapping[str, Any],
    children: Children | None = None,
    fresh: bool = False,
    memo: MutableMapping[str, Any] | None = None,
) -> Decision | None:
    """Tick the rollout of one resource: `seen` is its body as kopf's watch delivered it,
    `children` our Deployments and Services as kopf's indexes hold them, `memo` kopf's memo of
    the resource (what a tick whose status write failed left to save: `Acted`). Raises
    kopf.TemporaryError when anything talking to the API failed (an adapter,
    writing status or annotations): the Degraded condition says why where it can still be written,
    and kopf retries with backoff. Returns the decision, or None when there was nothing to decide
    (resource gone or being deleted). `fresh`: read our Deployments from the API, not the index
    (the resync; an in-flight model's ticks do now and then: `Kube.fresh_due`)."""
    try:
        return await _reconcile(
            ctx, namespace, name, logger, seen, children, fresh, memo if memo is not None else {}
        )
    except ModelGone as exc:  # deleted while the watch was away: kopf will never say DELETED
        logger.info("%s: its ticks end and its gauges go", exc)
        ctx.metrics.forget((namespace, name))
        ctx.kube.forget(namespace, name)
        if memo is not None:
            memo.pop(UNSAVED, None)  # nothing to save it to (kopf drops a memo only on DELETED)
        return None
    except PortError as exc:
        raise kopf.TemporaryError(f"{exc.reason}: {exc}", delay=ctx.retry_delay(exc)) from exc


async def _reconcile(
    ctx: Context,
    namespace: str,
    name: str,
    logger: logging.Logger | Any,
    seen: Mapping[str, Any],
    children: Children | None,
    fresh: bool,
    memo: MutableMapping[str, Any],
) -> Decision | None:
    body = ctx.kube.latest_model(seen)
    if body.get("metadata", {}).get("deletionTimestamp"):
        return None
    unsaved: Acted | None = memo.get(UNSAVED)
    if unsaved is not None:  # carried out, not saved: saved as it was decided, never decided again
        workloads = workloads_for(ctx.kube, unsaved.spec, body, children, ctx.server_host)
        await _save(ctx, memo, body, unsaved, workloads, logger, conform=False)
        body = ctx.kube.latest_model(seen)
    metadata, previous = body["metadata"], dict(body.get("status") or {})
    generation = metadata.get("generation")
    now = ctx.clock()
    current = _read_status(rollout_view(previous), now, body, logger)
    trouble: tuple[str, str] | None = None
    try:
        try:
            quantize = await quantization.step(ctx.kube, body, now)
        except PortError as exc:  # a Job refused (policy, quota, RBAC) or unreadable: the rollout goes on
            quantize = quantization.Outcome(previous.get("quantize"), previous.get("quantizedArtifact"))
            trouble = (QUANTIZE_JOB_TROUBLE, f"spec.quantize: {exc}")
        served = {**previous, "quantize": quantize.status, "quantizedArtifact": quantize.produced}
        spec = ModelSpec.from_resource({**body, "status": served})
    except InvalidSpec as exc:
        await _write_status(ctx, body, previous, current, ("InvalidSpec", str(exc)), generation, now, logger)
        raise kopf.PermanentError(str(exc)) from exc
    ctx.metrics.budgets((namespace, name), spec.model, spec.rollout.objectives)
    if current.stable is None:  # a new model, or one whose status was lost
        current = await _stable_found(ctx.kube, spec, body, current, logger) or current
    evaluation = status_module.evaluation_condition(spec.rollout, spec.shadow_disagreement)

    fresh = fresh or (current.in_flight and ctx.kube.fresh_due(namespace, name))
    workloads = workloads_for(ctx.kube, spec, body, children, ctx.server_host, fresh)
    source = ctx.source_for(spec)
    annotations = metadata.get("annotations") or {}
    # promote and abort are for the canary in flight: given while none was, they would act on the
    # next one, which no one has seen yet (as `kubectl argo rollouts promote` of a settled rollout)
    for_a_canary = current.in_flight
    router = router_for(ctx.kube, spec, workloads)

    restored: list[str] = []  # kept when the tick decides again: made (and said) once

    async def ticked() -> Decision:
        await _restore(workloads, current, spec, body, logger, restored)
        decision = await tick(
            current,
            spec.rollout,
            workloads=workloads,
            router=router,
            metrics=source,
            now=now,
            abort=for_a_canary and crd.ABORT_ANNOTATION in annotations,
            promote=for_a_canary and crd.PROMOTE_ANNOTATION in annotations,
            retry=crd.RETRY_ANNOTATION in annotations,
            restored=tuple(restored),
        )
        return await _rebalanced(router, decision)

    try:
        decision = await _on_fresh_reads_if_gone(workloads, ticked, logger)
    except ModelGone:
        raise
    except PortError as exc:
        try:
            await _write_status(
                ctx, body, previous, current, (exc.reason, str(exc)), generation, now, logger, evaluation
            )
        except PortError as unwritten:  # the API is down: the log says it, the retry comes anyway
            logger.warning("could not record %s in the status: %s", exc.reason, unwritten)
        raise

    degraded = trouble
    if decision.degraded:  # the rollout's trouble first; the Job's, if any, is said too
        said = f"{decision.degraded}; {trouble[1]}" if trouble else decision.degraded
        degraded = (_degraded_reason(decision), said)
    try:  # after the tick: a Service in conflict must not keep a failing canary from its rollback
        await _conform_services(workloads, spec, decision.status)
    except PortError as exc:
        degraded = degraded or (exc.reason, str(exc))
    placed = await _placement(ctx.kube, spec, decision.status, previous, logger)
    stable_ready = await _stable_ready(workloads, decision.status, logger)
    late = None
    if decision.analysis is not None and current.step_started_at is not None:
        late = now - (current.step_started_at + spec.rollout.step_interval)
    acted = Acted(
        decision=decision,
        spec=spec,
        patch=_status_patch(
            previous, decision.status, degraded, generation, now, quantize, placed, stable_ready, evaluation
        ),
        previous=previous,
        degraded=degraded,
        placed=placed,
        evaluation=evaluation,
        quantize=quantize,
        late=late,
        # the annotations are one-shot requests: used up once acted on, meaningless without a canary
        used=decision.manual or not for_a_canary or not decision.status.in_flight,
    )
    await _save(ctx, memo, body, acted, workloads, logger)
    return decision


async def _on_fresh_reads_if_gone(
    workloads: KubeWorkloads, act: Callable[[], Awaitable[T]], logger: logging.Logger | Any
) -> T:
    """`act`, and again on our Deployments and Services as the API has them where it found a
    Deployment gone that it read from kopf's index (which keeps what was deleted while its watch
    was away): a canary gone is rolled back as not ready, a stable gone made again, in this tick."""
    try:
        return await act()
    except ChildGone as exc:
        if workloads.fresh:
            raise
        logger.info("%s: deciding again on our Deployments and Services as the API has them", exc)
        workloads.fresh = True
        return await act()


@dataclass(frozen=True)
class Acted:
    """A tick whose decision is carried out (routed, scaled, judged): the status it writes, and
    what is said and done once that is saved. Kept in the resource's memo until the write goes
    through, and written again by the next tick before anything is decided: decided again, a
    rollback already carried out could be followed by a judgement that passes and the promotion of
    the revision it rejected, with no trace of either, and a failed judgement would not count
    towards failureLimit. An operator restarted meanwhile has no memo: it decides again from the
    saved status, as after a crash between the effects and the write."""

    decision: Decision
    spec: ModelSpec
    patch: dict[str, Any] | None
    """The status merge patch; None when it would change nothing."""
    previous: Mapping[str, Any]
    """The status before the tick: what says whether a condition just turned."""
    degraded: tuple[str, str] | None
    placed: status_module.Condition | None
    evaluation: status_module.Condition | None
    """EvaluationWithinAccuracySLO of the served artifact, where its shadow disagreement is known."""
    quantize: quantization.Outcome
    late: float | None
    """How late after it fell due the step was judged; None when nothing was judged."""
    used: bool
    """Whether the one-shot annotations are used up."""


async def _save(
    ctx: Context,
    memo: MutableMapping[str, Any],
    body: Mapping[str, Any],
    acted: Acted,
    workloads: KubeWorkloads,
    logger: logging.Logger | Any,
    *,
    conform: bool = True,
) -> None:
    """Write the status of a tick that acted, then say and finish what it did: kept in `memo`
    while the write fails (raises the PortError). `conform`: bring a settled stable to the spec it
    was decided under; not for a save a later tick makes, whose own decision conforms it to the
    spec as it is now."""
    metadata = body["metadata"]
    namespace, name = metadata.get("namespace", "default"), metadata["name"]
    decision = acted.decision
    if acted.patch is not None:
        memo[UNSAVED] = acted
        await ctx.kube.patch_model_status(namespace, name, acted.patch)
        del memo[UNSAVED]
        _say_conditions(body, acted.previous, acted.degraded, acted.placed, logger, acted.evaluation)
    for event in (acted.quantize.cancelled, acted.quantize.event):
        if event is not None:
            reason, message, warning = event
            (kopf.warn if warning else kopf.info)(_event_target(body), reason=reason, message=message)
            (logger.warning if warning else logger.info)("%s: %s", reason, message)
    ctx.metrics.record((namespace, name), acted.spec.model, decision)
    if acted.late is not None:
        ctx.metrics.judged_late(acted.late)
    if decision.news:
        _announce(body, decision, logger)
    annotations = metadata.get("annotations") or {}
    stale = [key for key in crd.ANNOTATIONS if key in annotations]
    if acted.used and stale:
        await ctx.kube.patch_model_metadata(namespace, name, {"annotations": dict.fromkeys(stale)})
    # Last, once the decision is announced and counted (a removal that fails here must not lose its
    # Promote event: the next tick decides from the saved status and has nothing to announce).
    # Removed only now that the status naming their successor is saved (a promotion whose write
    # failed would resume at a stable revision already gone); kept in it until they are gone.
    retired = await retire(decision.status, workloads, acted.spec.rollout, now=ctx.clock())
    if retired.retiring != decision.status.retiring:
        written = retired.to_dict()
        patch = {key: written[key] for key in ("retiringRevisions", "retiringSince")}
        await ctx.kube.patch_model_status(namespace, name, patch)
    if conform and retired.stable is not None and not retired.in_flight and not retired.retiring:
        await workloads.conform(retired.stable)  # replicas and resources as the spec says now


def _to_restore(status: RolloutStatus, spec: ModelSpec) -> list[tuple[str, Track]]:
    """The revisions whose Deployments the rollout needs now, whatever the phase: the stable (but a
    first revision the spec has moved on from: it is replaced), and a canary waiting for readiness.
    A canary gone mid-step is not made again: with no server it is rolled back at once."""
    wanted: list[tuple[str, Track]] = []
    replaced = status.canary is None and status.phase is Phase.PENDING and status.stable != spec.revision
    if status.stable is not None and not replaced:
        wanted.append((status.stable, Track.STABLE))
    if status.canary == spec.revision and canary_starting(status):
        wanted.append((status.canary, Track.CANARY))
    return wanted


async def _restore(
    workloads: KubeWorkloads,
    status: RolloutStatus,
    spec: ModelSpec,
    body: Mapping[str, Any],
    logger: Any,
    made: list[str],
) -> None:
    """Make the Deployments the rollout needs again where they are gone (as Argo Rollouts makes a
    deleted ReplicaSet again), each said in a warning Event and added to `made` as soon as it is
    made, then its Service: a tick that fails or decides again after finds it there. Read from
    the API on a `fresh` tick (`KubeWorkloads.fresh`), where the index may be stale."""
    for revision, track in _to_restore(status, spec):
        if await workloads.restore(revision, track):
            made.append(revision)
            name = resources.child_name(spec, revision)
            message = f"Deployment {name}: {track.value} {made_again(revision)}"
            kopf.warn(_event_target(body), reason=RESTORED, message=message)
            logger.warning("%s: %s", RESTORED, message)
            await workloads.ensure_service(revision)


async def _conform_services(workloads: KubeWorkloads, spec: ModelSpec, status: RolloutStatus) -> None:
    """The Services of the revisions that serve, and the shared one once it routes (replicas mode),
    made again or put back if deleted or edited by hand; from the index, free when they match."""
    for revision in (status.stable, status.canary):
        if revision is not None:
            await workloads.ensure_service(revision)
    if spec.router == "replicas" and status_module.has_served(workloads.owner.get("status") or {}):
        await workloads.ensure_service(None)


async def _rebalanced(router: TrafficRouter, decision: Decision) -> Decision:
    """A canary between steps follows spec.replicas as they change: the replicas router's split of
    them at its weight, a gateway's spec.replicas in both tracks. The engine routes only at a step."""
    status = decision.status
    routed = decision.action in (Action.SET_WEIGHT, Action.PROMOTE, Action.ROLL_BACK, Action.FAIL)
    if not isinstance(router, ReplicaRouter | GatewayRouter):
        return decision
    if routed or not (status.in_flight and status.canary):
        return decision
    if status.stable is None or status.step < 0:
        return decision
    achieved = await router.rebalance(status.stable, status.canary, status.weight)
    if achieved is None:
        return decision
    return dataclasses.replace(decision, status=dataclasses.replace(status, achieved_weight=achieved))


async def _stable_ready(workloads: KubeWorkloads, status: RolloutStatus, logger: Any) -> bool | None:
    """Whether the stable revision has a ready server, for the Ready condition (from the index of
    our Deployments: a settled model's resync reads it for free). None when it cannot be read."""
    if status.stable is None:
        return None
    try:
        return await workloads.ready(status.stable)
    except PortError as exc:  # the tick has acted already: its status must be written regardless
        logger.warning("could not read whether %s is ready: %s", status.stable, exc)
        return None


async def _placement(
    kube: Kube, spec: ModelSpec, status: RolloutStatus, previous: Mapping[str, Any], logger: Any
) -> tuple[str, str, str] | None:
    """GateHardwareMatched for the newest revision (the canary, else the stable), with
    spec.placement.matchGateHardware: the scheduler's verdict on its pods, read until one is placed."""
    revision = status.canary or status.stable
    if not spec.match_gate_hardware or revision is None:
        return None
    if spec.gate_int8_flags is None:
        return placement.condition(revision, None, [])
    before = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == status_module.GATE_HARDWARE), None
    )
    kept = (before["status"], before["reason"], before["message"]) if before else None
    if kept and kept[0] == "True" and kept[2].startswith(f"{revision} "):
        return kept  # placed: nothing more to learn from its pods
    try:
        # not by `model`: a stable made before spec.modelName changed keeps the old one
        pods = await kube.pods(spec.namespace, {**resources.shared_selector(spec), "revision": revision})
    except PortError as exc:  # the tick has acted already: its status must be written regardless
        logger.warning("could not read %s's pods for %s: %s", revision, status_module.GATE_HARDWARE, exc)
        return kept
    found = placement.condition(revision, spec.gate_int8_flags, pods)
    if found is not None:
        return found
    return kept or ("Unknown", "Scheduling", f"waiting for {revision}'s pods to be scheduled")


def _read_status(
    status: Mapping[str, Any], now: float, body: Mapping[str, Any], logger: logging.Logger | Any
) -> RolloutStatus:
    """The rollout's status, with what a person wrote into it that it cannot read put right
    (`state.readable`, `readable_analysis`) and said in a warning Event: the tick's write replaces it."""
    data, put_right = readable(status, now)
    if not readable_analysis(data.get("lastAnalysis")):
        data["lastAnalysis"] = None
        put_right.append("status.lastAnalysis is not a judgement the operator wrote: dropped")
    if put_right:
        message = "; ".join(put_right)
        kopf.warn(_event_target(body), reason=UNREADABLE_STATUS, message=message)
        logger.warning("%s: %s", UNREADABLE_STATUS, message)
    return RolloutStatus.from_dict(data)


async def _stable_found(
    kube: Kube, spec: ModelSpec, body: Mapping[str, Any], status: RolloutStatus, logger: logging.Logger | Any
) -> RolloutStatus | None:
    """The status to resume from where the model's status names no stable revision, but a
    Deployment of its own serves as its stable (track label) for another revision than the asked
    one: the status was lost (removed by hand, or the model restored without it, as a create drops
    it). Decided from nothing, the asked revision was deployed as a first revision and served all
    traffic unjudged: a canary mid-step, or one rolled back. From that stable instead, it is rolled
    out as a canary again (the history kept, where any is left); said in a warning Event. None where
    there is no such Deployment."""
    uid = body["metadata"].get("uid")
    stables = [
        deployment
        for deployment in await kube.deployments(
            spec.namespace, {**resources.shared_selector(spec), "track": Track.STABLE.value}
        )
        if any(owner.get("uid") == uid for owner in deployment["metadata"].get("ownerReferences") or [])
    ]
    revisions = [d["metadata"]["labels"].get("revision") for d in stables]
    if not revisions or spec.revision in revisions:  # the asked one: a first revision, as decided anew
        return None
    newest = max(stables, key=lambda deployment: deployment["metadata"].get("creationTimestamp") or "")
    stable = newest["metadata"]["labels"]["revision"]
    message = (
        f"the status names no stable revision, but Deployment {newest['metadata']['name']} serves as "
        f"the stable: resuming from {stable}, and rolling {spec.revision} out as a canary (was the "
        "status removed, or the model restored without it?)"
    )
    kopf.warn(_event_target(body), reason=STATUS_LOST, message=message)
    logger.warning("%s: %s", STATUS_LOST, message)
    return RolloutStatus(phase=Phase.PROMOTED, stable=stable, message=message, history=status.history)


def rollout_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status as the rollout engine wrote it: phase GateFailed is ours, laid over the engine's
    settled phase, which status.quantize.rolloutPhase keeps meanwhile."""
    if status.get("phase") != crd_status.GATE_FAILED:
        return dict(status)
    return {**status, "phase": (status.get("quantize") or {}).get("rolloutPhase") or "Promoted"}


def _quantize_status(
    previous: Mapping[str, Any],
    new: dict[str, Any],
    status: RolloutStatus,
    quantize: quantization.Outcome,
) -> dict[str, Any]:
    """The status.quantize and status.quantizedArtifact keys to write (none when unchanged), and
    phase GateFailed over `new`'s settled phase while the current Job's gate failed."""
    wanted = dict(quantize.status) if quantize.status is not None else None
    if wanted is not None:
        wanted.pop("rolloutPhase", None)
        if wanted.get("state") == crd_status.GATE_FAILED and not status.in_flight:
            wanted["rolloutPhase"] = new["phase"]
            new["phase"] = crd_status.GATE_FAILED
    extra: dict[str, Any] = {}
    for key, value in (("quantize", wanted), ("quantizedArtifact", quantize.produced)):
        before = previous.get(key)
        if before == value:
            continue
        if isinstance(before, Mapping) and isinstance(value, Mapping):
            # a merge patch: keys that went away are written as null
            value = {**dict.fromkeys(set(before) - set(value)), **value}
        extra[key] = value
    return extra


def _degraded_reason(decision: Decision) -> str:
    if decision.fault is Fault.MISCONFIGURED:
        return "MetricsMisconfigured"
    if decision.fault is Fault.UNREACHABLE:
        return "MetricsUnreachable"
    if decision.action is Action.JUDGED:
        return "AnalysisInconclusive"
    return "NotReady"


def _status_patch(
    previous: Mapping[str, Any],
    status: RolloutStatus,
    degraded: tuple[str, str] | None,
    generation: int | None,
    now: float,
    quantize: quantization.Outcome | None = None,
    placed: status_module.Condition | None = None,
    stable_ready: bool | None = None,
    evaluation: status_module.Condition | None = None,
) -> dict[str, Any] | None:
    """The status merge patch a tick writes; None when it would change nothing."""
    new = status_module.status_body(
        previous, status, degraded=degraded, generation=generation, now=now, placed=placed,
        stable_ready=stable_ready, evaluation=evaluation,
    )  # fmt: skip
    extra = _quantize_status(previous, new, status, quantize) if quantize is not None else {}
    if not status_module.changed(previous, new) and not extra:
        return None
    new.update(extra)
    return new


async def _write_status(
    ctx: Context,
    body: Mapping[str, Any],
    previous: Mapping[str, Any],
    status: RolloutStatus,
    degraded: tuple[str, str] | None,
    generation: int | None,
    now: float,
    logger: logging.Logger | Any,
    evaluation: status_module.Condition | None = None,
) -> None:
    """The status of a tick that could not act (an invalid spec, an adapter that failed);
    `evaluation` is kept where the spec could be read (a condition dropped and written again would
    warn again)."""
    new = _status_patch(previous, status, degraded, generation, now, evaluation=evaluation)
    if new is None:
        return
    metadata = body["metadata"]
    await ctx.kube.patch_model_status(metadata.get("namespace", "default"), metadata["name"], new)
    _say_conditions(body, previous, degraded, None, logger, evaluation)


def _say_conditions(
    body: Mapping[str, Any],
    previous: Mapping[str, Any],
    degraded: tuple[str, str] | None,
    placed: status_module.Condition | None,
    logger: logging.Logger | Any,
    evaluation: status_module.Condition | None = None,
) -> None:
    """A warning Event and log line for a condition a saved status just turned bad; for
    EvaluationWithinAccuracySLO, also when its message changed (another artifact, another SLO)."""
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    was = {kind: condition.get("status") for kind, condition in old.items()}
    if degraded and was.get(status_module.DEGRADED) != "True":
        kopf.warn(_event_target(body), reason=degraded[0], message=degraded[1])
        logger.warning("%s: %s", degraded[0], degraded[1])
    if placed and placed[0] == "False" and was.get(status_module.GATE_HARDWARE) != "False":
        kopf.warn(_event_target(body), reason=placed[1], message=placed[2])
        logger.warning("%s: %s", placed[1], placed[2])
    said_before = old.get(status_module.EVALUATION, {}).get("message")
    if evaluation and evaluation[0] == "False" and said_before != evaluation[2]:
        kopf.warn(_event_target(body), reason=evaluation[1], message=evaluation[2])
        logger.warning("%s: %s", evaluation[1], evaluation[2])


def _event_target(body: Mapping[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, dict(body)))


def _announce(body: Mapping[str, Any], decision: Decision, logger: logging.Logger | Any) -> None:
    """The decision's reason, verbatim, as an Event and a log line."""
    message = decision.reason
    if decision.warning:
        kopf.warn(_event_target(body), reason=decision.action.value, message=message)
        logger.warning("%s: %s", decision.action.value, message)
    else:
        kopf.info(_event_target(body), reason=decision.action.value, message=message)
        logger.info("%s: %s", decision.action.value, message)
