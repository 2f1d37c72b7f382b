"""The kopf handlers of QuantizedModel, registered on a registry the composition root passes in.

- create / resume / spec change: tick at once (children appear within a second of `kubectl apply`);
  kopf retries a failed tick with backoff (`retry_delay`).
- a daemon ticking every `tick_interval` seconds while a rollout is in flight (phase Pending or
  Progressing) judges the steps; kopf starts it then and stops it when the rollout settles. The
  next tick comes `tick_interval` after the last ended, as kopf's timers do: a step starts at a
  tick, so its judgement falls due a hair after the tick one interval later at a fixed rate, and
  waited a whole interval more (5 s lag at every N on kmock, measured). A failed tick is retried
  after `retry_delay` instead: an API server in trouble gets fewer ticks, not one per interval.
  It ends by itself once the resource is gone, so it needs no finalizer (kopf would add one for it).
- a daemon resyncing a settled model every `resync_interval` (the analysis daemon has the others):
  its stable Deployment and Services read from the API and put back as the spec says.
- Both daemons also end when the watch says the model was deleted and when kopf's cleanup says the
  operator exits, not only when kopf stops them. kopf stops the daemons it knows at exit, and at
  a deletion only with its finalizer (nolar/kopf#548): without one it forgets a deleted model's
  daemons unstopped, and one spawned by an event its watches drain at exit starts after it stopped
  the others. Either kept the operator's shutdown waiting 5 s (kopf's wait for hung tasks), and a
  deleted model's resync, a kopf timer then, woke every interval for as long as the operator ran.
  A tick under way when the operator stops is finished, not cut: kopf waits up to 5 s for it (and
  warns it "did not exit in time") before cancelling it.
- delete, gateway-api mode only, once the operator has routed the user's HTTPRoute: point it back
  at the model's Service name (a finalizer, because the route is not ours to garbage-collect).
  Children go with their owner.
- indexes of our Deployments and Services (watched.py): a tick reads them, and the resource's
  own body kopf keeps current, instead of GETting them.

So a model carries the finalizer only while an HTTPRoute must be released: deleting the namespace
of any other model, mid-rollout or not, does not wait for the operator.

Ticks of one resource never overlap: the handlers share a lock in kopf's per-resource memo, which
also keeps a tick whose status write failed until the next one saves it (`reconcile.Acted`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import kopf

from quantship.operator import crd, quantization, watched
from quantship.operator import status as status_module
from quantship.operator.reconcile import IN_FLIGHT, Context, reconcile
from quantship.operator.routers import GatewayRouter
from quantship.operator.settings import DAEMON_EXIT_GRACE_S, RETRY_BACKOFF_MAX_S, OperatorSettings
from quantship.operator.spec import InvalidSpec, ModelSpec
from quantship.rollout import Decision, PortError

RESOURCE = (crd.GROUP, crd.VERSION, crd.PLURAL)
FINALIZER = f"{crd.GROUP}/finalizer"
TICK_DONE = "tick done"
"""Logged (debug) after each tick of the analysis and resync daemons: what tests count ticks by."""
Logger = logging.Logger | logging.LoggerAdapter[Any]


def diffbase_storage() -> kopf.AnnotationsDiffBaseStorage:
    """Where kopf keeps the spec it last handled: an annotation under our prefix, whose size the
    CRD's bounds on names keep within what an object's annotations may hold
    (crd_quantize.JSON_BYTES_PER_CHAR)."""
    return kopf.AnnotationsDiffBaseStorage(prefix=crd.GROUP, key="last-handled-configuration")


def _lock(memo: Any) -> asyncio.Lock:
    lock: asyncio.Lock | None = memo.get("lock")
    if lock is None:
        lock = memo["lock"] = asyncio.Lock()
    return lock


def _deleted(memo: Any) -> asyncio.Event:
    """Set when the watch says the model is deleted: its daemons end then (kopf forgets them)."""
    deleted: asyncio.Event | None = memo.get("deleted")
    if deleted is None:
        deleted = memo["deleted"] = asyncio.Event()
    return deleted


def retry_delay(first: float, failures: int) -> float:
    """Seconds before the retry of a tick that failed `failures` times in a row (1: this once):
    `first` (the TemporaryError's delay: retry_backoff, or the API server's Retry-After) doubled
    at each failure after the first, up to RETRY_BACKOFF_MAX_S; a longer `first` is kept."""
    return max(first, min(RETRY_BACKOFF_MAX_S, first * 2.0 ** min(failures - 1, 32)))


def in_flight(status: kopf.Status, **_: Any) -> bool:
    """A rollout is in flight, revisions it retired are still to remove (an API error left them), or
    spec.quantize's Job runs: the analysis daemon's models (it also reads the Job's verdict)."""
    job = status.get("quantize") or {}
    return (
        status.get("phase") in IN_FLIGHT
        or bool(status.get("retiringRevisions"))
        or job.get("state") == quantization.RUNNING
    )


def settled(status: kopf.Status, **kwargs: Any) -> bool:
    """Nothing in flight: the resync daemon's models (the analysis daemon has the others)."""
    return bool(status.get("stableRevision")) and not in_flight(status, **kwargs)


def gateway_api(spec: kopf.Spec, **_: Any) -> bool:
    return (spec.get("traffic") or {}).get("router") == "gateway-api"


def route_to_release(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """gateway-api mode, and the operator has pointed the HTTPRoute at a revision: deleting the
    model must point it back first. Until then the route is as the user wrote it."""
    return gateway_api(spec) and status_module.has_served(status)


def without_finalizer(registry: kopf.OperatorRegistry, handler_id: str) -> None:
    """Let a daemon run without the finalizer kopf gives every daemon and timer so it can stop it
    before the object goes (kopf offers no option; nolar/kopf#1074). Ours ends by itself when the
    resource is gone, and a finalizer on every model mid-rollout keeps its namespace Terminating
    while the operator is down."""
    spawning = registry._spawning  # kopf's private registry (checked on kopf 1.45): fail loudly
    ours = [handler for handler in spawning._handlers if handler.id == handler_id]
    if len(ours) != 1 or getattr(ours[0], "requires_finalizer", None) is not True:
        raise RuntimeError(f"kopf's registry changed: cannot run daemon {handler_id!r} without a finalizer")
    spawning._handlers = [
        dataclasses.replace(handler, requires_finalizer=False) if handler.id == handler_id else handler
        for handler in spawning._handlers
    ]


async def _sleep_unless_stopped(stopped: kopf.DaemonStopped, seconds: float, *ends: asyncio.Event) -> None:
    """`seconds`, or until kopf stops the daemon or one of `ends` is set. Not `stopped.wait(seconds)`:
    that is a wait_for, and on Python 3.11 a wait_for cancelled as its delay ends raises TimeoutError,
    which kopf takes for the delay and so swallows the cancellation (seen as an operator that would
    not stop)."""
    waiters = {asyncio.ensure_future(stopped.wait()), *(asyncio.ensure_future(end.wait()) for end in ends)}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


CRD_POLL_S = 2.0
"""How often a namespaced operator started before its CRD asks whether it is served yet."""
CRD_WAIT_LOG_S = 30.0


async def _models_served(ctx: Context) -> bool:
    try:
        return await ctx.kube.models_served()
    except PortError:  # the API server is not there yet either: keep waiting
        return False


def register(
    registry: kopf.OperatorRegistry,
    ctx: Context,
    operator: OperatorSettings,
    *,
    login: Callable[..., kopf.ConnectionInfo | None] | None = None,
) -> None:
    tick_interval, retry_backoff = operator.tick_interval, operator.retry_backoff

    async def reconcile_locked(
        namespace: str | None,
        name: str,
        body: kopf.Body,
        logger: Logger,
        memo: Any,
        kwargs: dict[str, Any],
    ) -> Decision | None:
        """One tick of the resource under its lock, with our children as kopf's indexes hold them.
        A failed one waits longer at each of kopf's retries (`retry`: how many came before)."""
        async with _lock(memo):
            children = watched.Children.from_handler(kwargs)
            try:
                return await reconcile(
                    ctx,
                    namespace or "default",
                    name,
                    logger,
                    seen=body,
                    children=children,
                    memo=memo,
                )
            except kopf.TemporaryError as exc:
                delay = retry_delay(exc.delay or retry_backoff, int(kwargs.get("retry") or 0) + 1)
                raise kopf.TemporaryError(str(exc), delay=delay) from exc

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = operator.standalone
        settings.peering.name = operator.peering
        settings.peering.priority = operator.priority
        settings.persistence.finalizer = FINALIZER
        # our own annotation prefix for kopf's bookkeeping, not kopf.zalando.org
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
        settings.persistence.diffbase_storage = diffbase_storage()
        settings.posting.level = logging.INFO  # steps and promotions are Normal events worth seeing
        # Namespaced: serve exactly the namespaces named, and follow neither namespaces nor CRDs
        # cluster-wide (kopf would list them first, and its service account may not).
        settings.scanning.disabled = bool(operator.namespaces)
        watched.watch_only_ours(settings)

    watched.register(registry)

    if operator.namespaces:

        @kopf.on.startup(registry=registry)
        async def wait_for_the_crd(logger: kopf.Logger, **_: Any) -> None:
            """Namespaced, kopf scans the API's resources once, at start (it may not watch CRDs): an
            operator up before its CRD is served would never watch a QuantizedModel. Waits before any
            watch starts (the liveness endpoint too: the pod restarts if it takes longer than the
            startup probe allows, and waits again)."""
            waited, said = 0.0, -float("inf")
            while not await _models_served(ctx):
                if waited - said >= CRD_WAIT_LOG_S:
                    served = f"{crd.PLURAL}.{crd.GROUP}/{crd.VERSION}"
                    logger.warning(f"waiting for the API server to serve {served} (is the CRD applied?)")
                    said = waited
                await asyncio.sleep(CRD_POLL_S)
                waited += CRD_POLL_S

    @kopf.on.login(registry=registry)
    def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return login(**kwargs) if login is not None else kopf.login_via_client(**kwargs)

    @kopf.on.create(*RESOURCE, registry=registry, backoff=retry_backoff, id="reconcile")
    @kopf.on.resume(*RESOURCE, registry=registry, backoff=retry_backoff, id="reconcile")
    @kopf.on.update(*RESOURCE, field="spec", registry=registry, backoff=retry_backoff, id="reconcile")
    async def reconcile_now(
        namespace: str | None, name: str, body: kopf.Body, logger: Logger, memo: Any, **kwargs: Any
    ) -> None:
        await reconcile_locked(namespace, name, body, logger, memo, kwargs)

    def settled_and_asked(annotations: kopf.Annotations, status: kopf.Status, **kwargs: Any) -> bool:
        return settled(status, **kwargs) and any(key in annotations for key in crd.ANNOTATIONS)

    @kopf.on.event(*RESOURCE, registry=registry, when=settled_and_asked, id="one-shot")
    async def one_shot_now(
        namespace: str | None, name: str, body: kopf.Body, logger: Logger, memo: Any, **kwargs: Any
    ) -> None:
        """A one-shot annotation on a settled model: no tick runs to see it (the analysis daemon
        runs only in flight), and no update handler would (kopf's diff leaves out our group's
        annotations, its own storage's prefix). Its reconcile uses it up, so this runs once: retry
        rolls the rejected revision out again; promote and abort, with no canary to act on, are
        dropped then and there rather than left for the next canary."""
        try:
            await reconcile_locked(namespace, name, body, logger, memo, kwargs)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:  # event handlers are not retried
            logger.warning("one-shot annotation not acted on, the resync will try again: %s", exc)

    @kopf.on.event(*RESOURCE, registry=registry, id="forget")
    async def forget_deleted(type: str | None, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
        """A deleted model's gauges leave /metrics, and its Deployments `Kube.last_seen` (no
        finalizer: the watch's DELETED is enough, and a restart starts from empty series anyway).
        Its daemons end: kopf forgets them now without stopping them. Forgotten under the lock, after
        a tick under way has recorded its decision: forgotten before, that tick put the gauges back
        for as long as the operator ran. Async: kopf runs a sync handler in a thread, and an
        asyncio.Event set from there wakes the loop's waiters only when something else wakes it."""
        if type == "DELETED":
            _deleted(memo).set()  # no tick starts after this one
            async with _lock(memo):
                ctx.metrics.forget((namespace or "default", name))
                ctx.kube.forget(namespace or "default", name)

    exiting = asyncio.Event()
    """Set by kopf's cleanup, once its watches have drained: a daemon spawned by an event they
    drained started after kopf stopped the daemons it knew, and would tick until cancelled."""

    @kopf.on.cleanup(registry=registry, id="end-the-daemons")
    async def end_the_daemons(**_: Any) -> None:
        # async, as `forget_deleted`: not set from a thread
        exiting.set()

    async def tick_until_stopped(
        namespace: str | None,
        name: str,
        body: kopf.Body,
        logger: Logger,
        memo: Any,
        stopped: kopf.DaemonStopped,
        kwargs: dict[str, Any],
        *,
        interval: float,
        first_after: float,
        fresh: bool,
    ) -> None:
        """A daemon's ticks of the resource, `interval` apart (the first after `first_after`), until
        kopf stops it, the model is deleted or the operator exits. A failed tick is retried after
        `retry_delay` instead: an API server in trouble gets fewer ticks, not one per interval."""
        uid = body.get("metadata", {}).get("uid")
        failures = 0  # ticks failed in a row
        pause = first_after
        deleted = _deleted(memo)

        def ended() -> bool:
            return bool(stopped) or exiting.is_set() or deleted.is_set()

        while True:
            if pause > 0:
                await _sleep_unless_stopped(stopped, pause, exiting, deleted)
            if ended():
                return
            if not watched.still_there(kwargs, namespace or "default", name, uid):
                return  # deleted, or replaced by a new model of the name: nothing more to tick
            pause = interval
            async with _lock(memo):
                if ended():  # while this tick waited for the lock
                    return
                children = watched.Children.from_handler(kwargs)
                try:
                    # a daemon's body is live: it follows the watch, also while we wait for the lock
                    decision = await reconcile(
                        ctx,
                        namespace or "default",
                        name,
                        logger,
                        seen=body,
                        children=children,
                        fresh=fresh,
                        memo=memo,
                    )
                except (kopf.TemporaryError, kopf.PermanentError) as exc:
                    # the condition and event are written where they can be. An API in trouble is
                    # retried later each time; a spec that cannot work, every tick until changed.
                    # only an API in trouble backs off: a spec that cannot work is not one
                    failures = failures + 1 if isinstance(exc, kopf.TemporaryError) else 0
                    if isinstance(exc, kopf.TemporaryError):
                        pause = retry_delay(exc.delay or retry_backoff, failures)
                    # said once: the same failure every tick is news once
                    repeated = memo.get("last_tick_failure") == str(exc)
                    memo["last_tick_failure"] = str(exc)
                    level = logging.DEBUG if repeated else logging.WARNING
                    logger.log(level, "tick failed, next in %g s: %s", pause, exc)
                else:
                    failures = 0
                    memo.pop("last_tick_failure", None)
                    if decision is None:
                        return  # gone, or being deleted: nothing more to tick
                logger.debug(TICK_DONE)

    def ticking(when: Callable[..., bool], handler_id: str) -> Callable[[Any], Any]:
        """kopf's decorator for a daemon of `tick_until_stopped`: restarted after `retry_backoff` if it
        fails, and given DAEMON_EXIT_GRACE_S at the operator's exit to finish a tick under way."""
        return kopf.daemon(
            *RESOURCE,
            registry=registry,
            when=when,
            backoff=retry_backoff,
            cancellation_backoff=DAEMON_EXIT_GRACE_S,
            id=handler_id,
        )

    @ticking(in_flight, "analysis")
    async def analysis(
        namespace: str | None,
        name: str,
        body: kopf.Body,
        logger: Logger,
        memo: Any,
        stopped: kopf.DaemonStopped,
        **kwargs: Any,
    ) -> None:
        """A rollout in flight, every `tick_interval` from now: its steps judged."""
        await tick_until_stopped(
            namespace,
            name,
            body,
            logger,
            memo,
            stopped,
            kwargs,
            interval=tick_interval,
            first_after=0,
            fresh=False,
        )

    without_finalizer(registry, "analysis")

    @ticking(settled, "resync")
    async def resync(
        namespace: str | None,
        name: str,
        body: kopf.Body,
        logger: Logger,
        memo: Any,
        stopped: kopf.DaemonStopped,
        **kwargs: Any,
    ) -> None:
        """A settled model, now and then: its stable Deployment as the spec says (made again if
        deleted by hand, scaled back, resources) and its Services, which no event of the model's
        would bring. The stable and the Services are read from the API, not the index: after a
        watch's 410 kopf lists again but keeps what was deleted meanwhile (its indexes are not
        informers)."""
        interval = operator.resync_interval
        await tick_until_stopped(
            namespace,
            name,
            body,
            logger,
            memo,
            stopped,
            kwargs,
            interval=interval,
            first_after=interval,
            fresh=True,
        )

    without_finalizer(registry, "resync")

    @kopf.on.delete(
        *RESOURCE, registry=registry, when=route_to_release, backoff=retry_backoff, id="release-route"
    )
    async def release_route(body: kopf.Body, logger: Logger, **_: Any) -> None:
        try:
            spec = ModelSpec.from_resource(body)
        except InvalidSpec:
            return  # it never routed anything
        try:
            await GatewayRouter(ctx.kube, spec).release()
        except PortError as exc:
            if exc.reason in ("HTTPRouteNotFound", "HTTPRouteNotReferenced"):
                return  # nothing of ours left in a route
            raise kopf.TemporaryError(str(exc), delay=ctx.retry_delay(exc)) from exc
        logger.info("HTTPRoute %s points at Service %s again", spec.http_route, spec.name)
