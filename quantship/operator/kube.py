"""Kubernetes adapters of the rollout ports, over the official asyncio client (kubernetes.aio).

`KubeWorkloads` runs revisions as Deployments + Services; `GatewayRouter` sets the weights of
this model's backendRefs in the user's HTTPRoute and touches nothing else in it; `ReplicaRouter`
splits traffic by replica counts behind one Service where no gateway exists. Every method is
idempotent (create-or-patch, delete ignoring 404), so a tick that failed half-way can rerun.
API failures become `PortError` with a reason for the resource's conditions.

Reads use the `*_without_preload_content` variants and plain JSON: the adapters work with dicts
like the rest of the operator, never with the client's generated models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import aiohttp
from kubernetes.aio import client
from kubernetes.utils import parse_quantity

from quantship.operator import crd, names, resources
from quantship.operator.settings import RESYNC_INTERVAL, SERVER_BIND_ADDRESS
from quantship.operator.spec import ModelSpec
from quantship.operator.status import degraded_reason, has_served
from quantship.operator.watched import DEPLOYMENT, SERVICE, Children, Gone, Written
from quantship.rollout import PortError, Track

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
M = TypeVar("M")
GATEWAY = ("gateway.networking.k8s.io", "v1", "httproutes")


API_TIMEOUT = 30.0
"""Seconds one API call may take before it counts as a failure (OperatorSettings.api_timeout)."""
UNREACHABLE = "KubernetesUnreachable"
API_ERROR = "KubernetesAPIError"
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError, json.JSONDecodeError)
"""What a call can fail with besides an HTTP error status: connection refused or reset, DNS,
TLS, a timeout, a body that is not JSON. Every one becomes a PortError, like an ApiException."""
MODEL_GONE = "ModelGone"
CHILD_NOT_OURS = "ChildNotOurs"
"""The Degraded reason of a Deployment or Service of a name the model needs that another controls."""


class ModelGone(PortError):
    """The QuantizedModel a tick acts for is no longer in the API (404 on its own status write, or
    on the read before making a child again): deleted while a watch was away, so kopf, which lists
    again after a 410 without computing deletions, still holds it."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"{crd.KIND} {namespace}/{name} is gone from the API", reason=MODEL_GONE)


class ChildGone(PortError):
    """One of our Deployments or Services (`kind`) that a tick read is not in the API: a write to a
    Deployment was answered 404, a router found one missing before sending it traffic, or a child
    made came and went twice (409, then 404). What it was read from is stale (kopf's index lists
    again after a watch's 410 without computing deletions): the tick decides again on what the
    API says (`KubeWorkloads.fresh`). A Service gone, or a predecessor's child collected before
    its adoption, is made again where the 404 answers."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        super().__init__(f"{kind} {namespace}/{name} is gone from the API", reason=f"{kind}Gone")


class Kube:
    """The API groups the operator talks to, over one ApiClient. `timeout` bounds each call."""

    def __init__(
        self,
        api: client.ApiClient,
        timeout: float = API_TIMEOUT,
        *,
        fresh_interval: float = RESYNC_INTERVAL,
    ) -> None:
        self.api = api
        self.timeout = timeout
        self.fresh_interval = fresh_interval
        """Seconds between an in-flight model's reads of its Deployments and Services from the API
        (`fresh_due`): OperatorSettings.resync_interval, as a settled model's resync reads its stable
        and its Services."""
        self.read_fresh_at: dict[tuple[str, str], float] = {}
        """When each in-flight model, by (namespace, name), last read them (time.monotonic)."""
        self.written = Written()
        """What our writes of a model returned, until kopf's watch delivers it (see watched.py)."""
        self.last_seen: dict[tuple[str, str], dict[str, Any]] = {}
        """Each of our Deployments as a tick last read it, by (namespace, name): what makes a stable
        deleted mid-canary again, whose revision the spec no longer describes (as Argo Rollouts
        makes a ReplicaSet again from its template). Lost at a restart, like any memory."""
        self.gone = Gone()
        """The uids of our Deployments and Services the API proved gone, which kopf's index may keep."""
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)

    def forget(self, namespace: str, model: str) -> None:
        """Drop a deleted model's Deployments from `last_seen` (its revisions': MODEL-<hex digits>),
        and its children's uids from `gone` (its revisions' and its shared Service's), which would
        otherwise stay for the operator's lifetime."""
        revision = re.compile(rf"{re.escape(model)}-[0-9a-f]{{{names.REVISION_DIGITS}}}")
        for key in [k for k in self.last_seen if k[0] == namespace and revision.fullmatch(k[1])]:
            del self.last_seen[key]
        self.gone.forget(namespace, lambda name: name == model or revision.fullmatch(name) is not None)
        self.read_fresh_at.pop((namespace, model), None)

    def fresh_due(self, namespace: str, model: str) -> bool:
        """Whether this in-flight tick of a model reads its Deployments and Services from the API, not
        kopf's index: once every `fresh_interval` seconds, counted from its first tick. The index
        keeps what was deleted while its watch was away, and a step that writes nothing to them (a
        gateway's, one held or waiting for its judgement) would not find out: a canary's weight
        would go to no pod, a stable or a Service gone would not be made again."""
        key, now = (namespace, model), time.monotonic()
        if now - self.read_fresh_at.setdefault(key, now) < self.fresh_interval:
            return False
        self.read_fresh_at[key] = now
        return True

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One of our Deployments as the API has it now (None: gone), kept in `last_seen`."""
        found = await _read(
            self.apps.read_namespaced_deployment_without_preload_content(name, namespace),
            timeout=self.timeout,
        )
        if found is not None:
            self.last_seen[namespace, name] = found
        return found

    def latest_model(self, seen: Mapping[str, Any]) -> dict[str, Any]:
        """The resource as it stands: `seen` (kopf's body, kept current by its watch), or our own
        later write of it (status, or annotations) while the watch has not delivered that yet. No
        GET: kopf's watch already brings every version."""
        return self.written.latest(seen)

    async def patch_model_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Raises ModelGone on 404: the model was deleted, whatever kopf's watch still holds."""
        written = await _call(
            f"writing the status of {crd.KIND} {namespace}/{name}",
            self.custom.patch_namespaced_custom_object_status(
                crd.GROUP,
                crd.VERSION,
                namespace,
                crd.PLURAL,
                name,
                {"status": status},
                _content_type=MERGE_PATCH,
            ),
            timeout=self.timeout,
            missing_ok=True,
        )
        if written is None:
            raise ModelGone(namespace, name)
        self.written.wrote(written)

    async def model_exists(self, namespace: str, name: str, uid: str | None) -> bool:
        """Whether the API still has this model (this uid): asked before making a child again, as a
        child made for a model deleted while the watch was away would be collected again at once."""
        found = await _read(
            self.custom.get_namespaced_custom_object_without_preload_content(
                crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name
            ),
            timeout=self.timeout,
        )
        return found is not None and found.get("metadata", {}).get("uid") == uid

    async def patch_model_metadata(self, namespace: str, name: str, metadata: Mapping[str, Any]) -> None:
        """Kept as the latest version like a status write: the body that write returned still has
        what this one removed (the one-shot annotations, used up)."""
        written = await _call(
            f"writing the metadata of {crd.KIND} {namespace}/{name}",
            self.custom.patch_namespaced_custom_object(
                crd.GROUP,
                crd.VERSION,
                namespace,
                crd.PLURAL,
                name,
                {"metadata": metadata},
                _content_type=MERGE_PATCH,
            ),
            timeout=self.timeout,
        )
        self.written.wrote(written)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """spec.quantize's Job, or None when there is none (yet, or any more)."""
        return await _read(
            self.batch.read_namespaced_job_without_preload_content(name, namespace), timeout=self.timeout
        )

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a Job; one of that name already there is the same Job (its name is its spec's hash):
        True when this call created it, False when it was there (from an earlier run of the section)."""
        created = await _call(
            f"creating Job {body['metadata']['name']}",
            self.batch.create_namespaced_job(namespace, to_model(client.V1Job, body)),
            exists_ok=True,
            timeout=self.timeout,
        )
        return created is not None

    async def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the Job `uid` names, and its pods with it (a Job deleted alone leaves them
        running); gone already, or replaced by another of that name, is fine."""
        options = client.V1DeleteOptions(
            propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid)
        )
        await _call(
            f"deleting Job {name}",
            self.batch.delete_namespaced_job(name, namespace, body=options),
            missing_ok=True,
            exists_ok=True,  # 409: the uid precondition failed, another Job has that name now
            timeout=self.timeout,
        )

    async def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pods carrying all of `labels` (a revision's, for spec.placement)."""
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        listing = await _read(
            self.core.list_namespaced_pod_without_preload_content(namespace, label_selector=selector),
            timeout=self.timeout,
        )
        items = (listing or {}).get("items") or []
        # filtered here too: the selector is the API server's to apply, and a test API may not
        return [
            pod
            for pod in items
            if all((pod.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    async def models_served(self) -> bool:
        """Whether the API server serves QuantizedModels (API discovery, which every authenticated
        client may read): False until the CRD is established."""
        listing = await _read(
            self.custom.get_api_resources_without_preload_content(crd.GROUP, crd.VERSION),
            timeout=self.timeout,
        )
        return any(resource.get("name") == crd.PLURAL for resource in (listing or {}).get("resources") or [])

    async def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The pods of a Job (the Job controller labels them `job-name`)."""
        listing = await _read(
            self.core.list_namespaced_pod_without_preload_content(
                namespace, label_selector=f"job-name={job}"
            ),
            timeout=self.timeout,
        )
        items = (listing or {}).get("items") or []
        # filtered here too: the selector is the API server's to apply, and a test API may not
        return [pod for pod in items if (pod.get("metadata", {}).get("labels") or {}).get("job-name") == job]


async def _read(response_coroutine: Any, *, timeout: float = API_TIMEOUT) -> dict[str, Any] | None:
    """The JSON body of a GET, or None for 404. Every other failure raises a PortError."""
    try:
        async with asyncio.timeout(timeout):
            response = await response_coroutine
            async with response:
                if response.status == 404:
                    return None
                body = await response.read()
                if response.status >= 400:
                    answer = _answer(response.status, response.reason, body)
                    raise PortError(
                        f"Kubernetes API answered {answer}",
                        reason=API_ERROR,
                        retry_after=_retry_after(response.headers, body),
                    )
                return dict(json.loads(body))
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        answer = _answer(exc.status, exc.reason, exc.body)
        raise PortError(
            f"Kubernetes API answered {answer}",
            reason=API_ERROR,
            retry_after=_retry_after(exc.headers, exc.body),
        ) from exc
    except TRANSPORT_ERRORS as exc:
        raise PortError(f"Kubernetes API unreachable: {_describe(exc, timeout)}", reason=UNREACHABLE) from exc


def _text(body: bytes | str | None) -> str:
    return body.decode(errors="replace") if isinstance(body, bytes) else (body or "")


def _status_object(body: bytes | str | None) -> dict[str, Any] | None:
    """The Status object an error answer's body holds, if it is one."""
    text = _text(body)
    try:
        answer = json.loads(text) if text else None
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and answer.get("kind") == "Status" else None


def _answer(status: int | None, phrase: str | None, body: bytes | str | None) -> str:
    """An error answer as the API server meant it: the status, and its Status object's reason and
    message (where the cause is: "failed to allocate a serviceIP: range is full"), else the body."""
    text, answer = _text(body), _status_object(body)
    head = f"{status} {phrase or ''}".strip()
    if answer is not None:
        reason, message = answer.get("reason"), answer.get("message")
        details = ": ".join(str(part) for part in (reason, message) if part)
        return f"{head} ({details})" if details else head
    return f"{head}: {text[:200]}" if text.strip() else head


def _retry_after(headers: Mapping[str, str] | None, body: bytes | str | None) -> float | None:
    """Seconds the API server asked us to wait before trying again: its Retry-After header (sent
    with a 429 of API priority and fairness, and some 5xx), else its Status object's
    details.retryAfterSeconds; None when it asked nothing. Only seconds: the API server never
    sends Retry-After as a date."""
    asked: Any = (headers or {}).get("Retry-After")
    details = (_status_object(body) or {}).get("details")
    if asked is None and isinstance(details, dict):
        asked = details.get("retryAfterSeconds")
    try:
        seconds = float(asked)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def to_model(model: type[M], body: Mapping[str, Any]) -> M:
    """The client's typed model of a body we built as a dict (its create calls take only models)."""
    built = model.from_dict(dict(body))  # type: ignore[attr-defined]
    if built is None:
        raise ValueError(f"cannot build {model.__name__} from {body!r}")
    return built


async def _call(
    what: str,
    coroutine: Any,
    *,
    timeout: float = API_TIMEOUT,
    missing_ok: bool = False,
    exists_ok: bool = False,
) -> Any:
    """Await one write; its answer (None for a 404 or 409 let pass: the object was already gone, or
    there). An HTTP error status or a transport failure raises a PortError naming it, with the API
    server's own reason."""
    try:
        async with asyncio.timeout(timeout):
            return await coroutine
    except client.ApiException as exc:
        if (exc.status == 404 and missing_ok) or (exc.status == 409 and exists_ok):
            return None
        raise PortError(
            f"{what}: Kubernetes API answered {_answer(exc.status, exc.reason, exc.body)}",
            reason=API_ERROR,
            retry_after=_retry_after(exc.headers, exc.body),
        ) from exc
    except TRANSPORT_ERRORS as exc:
        raise PortError(
            f"{what}: Kubernetes API unreachable: {_describe(exc, timeout)}", reason=UNREACHABLE
        ) from exc


class KubeWorkloads:
    """`Workloads` as one Deployment and one Service per revision, owned by the QuantizedModel."""

    def __init__(
        self,
        kube: Kube,
        spec: ModelSpec,
        owner: Mapping[str, Any],
        *,
        canary_replicas: int | None = None,
        children: Children | None = None,
        server_host: str = SERVER_BIND_ADDRESS,
        fresh: bool = False,
    ) -> None:
        self.kube = kube
        self.spec = spec
        self.owner = owner
        self.canary_replicas = canary_replicas if canary_replicas is not None else spec.replicas
        """Replicas a new canary starts with (1 in replicas mode: each one takes a share at once)."""
        self.children = dataclasses.replace(children or Children(), gone=kube.gone)
        """Our Deployments and Services as kopf's watches hold them, less those the API proved gone:
        read there before the API."""
        self.server_host = server_host
        """Where a new Deployment's server listens (OperatorSettings.server_bind_address)."""
        self.fresh = fresh
        """Read our Deployments and Services from the API, not the index, each once (a Deployment
        again after a write to it, a Service after its creation): after a watch's 410 kopf lists
        again and keeps what was deleted meanwhile."""
        self._read: dict[str, dict[str, Any] | None] = {}
        """What this tick read from the API while `fresh`, by Deployment name."""
        self._read_services: dict[str, dict[str, Any] | None] = {}
        """What this tick read from the API while `fresh`, by Service name."""
        self.in_conflict = degraded_reason(owner.get("status") or {}) == CHILD_NOT_OURS
        """A child of a name the model needs is another's (its status says so): every child is read
        before it is created, as one that may exist. Created outright, that one was answered 409 at
        every retry, a write a tick while nothing changed."""

    async def run(self, revision: str, track: Track) -> None:
        # A revision the status does not name yet is new: create it outright. Reading first would
        # be answered 404 on every new revision, and creating what exists 409 on every promotion.
        namespace, name = self.spec.namespace, resources.child_name(self.spec, revision)
        known = revision in _revisions(self.owner) or self.in_conflict
        current = await self.deployment(revision) if known else None
        if current is None or not await self._adopt(DEPLOYMENT, current):
            # none, or its predecessor's that the collector took since it was read: made again
            if revision != self.spec.revision:
                raise PortError(
                    f"Deployment {namespace}/{name} is gone and revision {revision} is no longer in the spec",
                    reason="RevisionGone",
                )
            current = await self._create_or_adopt(DEPLOYMENT, self._built(revision, track))
            if current is None:
                await self.ensure_service(revision, may_exist=False)
                return
        if current["metadata"].get("labels", {}).get("track") != track.value:
            await self._relabel(current, track)
        await self.ensure_service(revision, may_exist=True)

    async def restore(self, revision: str, track: Track) -> bool:
        """Make `revision`'s Deployment again if it is gone (deleted by hand, or collected after its
        model was deleted and created again): True when this call made it. From the spec while it
        asks for `revision`, else from the body last seen (a stable mid-canary); neither: False,
        and the engine finds it not ready. Only a `fresh` tick sees one deleted while the index's
        watch was away (kopf computes no deletions on a relist). Its Service is the caller's to
        make again (`ensure_service`), once it has said that this call made the Deployment."""
        name = resources.child_name(self.spec, revision)
        current = await self.deployment(revision)
        if current is not None:
            return False
        body = self._built(revision, track) if revision == self.spec.revision else self._from_last_seen(name)
        if body is None:
            return False
        model, uid = self.owner["metadata"]["name"], self.owner["metadata"].get("uid")
        if not await self.kube.model_exists(self.spec.namespace, model, uid):
            raise ModelGone(self.spec.namespace, model)
        return await self._create(DEPLOYMENT, body)

    def _built(self, revision: str, track: Track) -> dict[str, Any]:
        replicas = self.spec.replicas if track is Track.STABLE else self.canary_replicas
        return resources.deployment(self.spec, revision, track, replicas, self.owner, self.server_host)

    def _from_last_seen(self, name: str) -> dict[str, Any] | None:
        seen = self.kube.last_seen.get((self.spec.namespace, name))
        return resources.made_again(seen, self.owner) if seen is not None else None

    async def _create(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Create one of our Deployments or Services: True, or False when one of its name is there
        already (409). A `fresh` tick reads it from the API again after."""
        name = body["metadata"]["name"]
        (self._read if kind == DEPLOYMENT else self._read_services).pop(name, None)
        namespace = self.spec.namespace
        request: Awaitable[Any]
        if kind == DEPLOYMENT:
            request = self.kube.apps.create_namespaced_deployment(
                namespace, to_model(client.V1Deployment, body)
            )
        else:
            request = self.kube.core.create_namespaced_service(namespace, to_model(client.V1Service, body))
        created = await _call(f"creating {kind} {name}", request, exists_ok=True, timeout=self.kube.timeout)
        return created is not None

    async def _create_or_adopt(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create one of our children as `body`: None, or the one of its name there already (a tick
        that failed half-way, or the predecessor's), adopted. One gone before its adoption (the
        collector took it with its old owner) is created again, once."""
        name = body["metadata"]["name"]
        for _ in range(2):
            if await self._create(kind, body):
                return None
            current = await self._from_api(kind, name)
            if current is not None and await self._adopt(kind, current):
                return current
        raise ChildGone(kind, self.spec.namespace, name)

    async def ensure_service(self, revision: str | None, *, may_exist: bool = True) -> None:
        """A revision's Service (None: the model's shared one) made if missing; its selector (the pods
        its Deployment selects: `_pods_of`), ports and owner put back if someone changed them (as
        Flagger restores its Services). Read as `service` reads it: on most ticks one that matches
        costs no request."""
        namespace = self.spec.namespace
        pods = self._pods_of(revision) if revision else resources.shared_selector(self.spec)
        if pods is None:
            return  # neither its Deployment nor the spec says which pods it selects: left as it is
        wanted = resources.service(self.spec, revision, self.owner, pods)
        name = wanted["metadata"]["name"]
        current = await self.service(name, may_exist=may_exist or self.in_conflict)
        if current is None or not await self._adopt(SERVICE, current):
            # none, or its predecessor's that the collector took since it was read: made again
            current = await self._create_or_adopt(SERVICE, wanted)
            if current is None:
                return
        patch = service_patch(current, wanted)
        if patch:
            self._read_services.pop(name, None)
            # the one read is gone on a 404 too: read from the API, the index may not hold it (yet)
            held = self.children.uids(SERVICE, namespace, name) | {current["metadata"]["uid"]}
            patched = await _call(
                f"restoring the selector and ports of Service {name}",
                self.kube.core.patch_namespaced_service(name, namespace, patch, _content_type=JSON_PATCH),
                timeout=self.kube.timeout,
                missing_ok=True,
            )
            if patched is None:  # deleted since it was read: made again as wanted, in this tick
                self._proved_gone(SERVICE, name, held)
                await self._create_or_adopt(SERVICE, wanted)

    def _pods_of(self, revision: str) -> dict[str, str] | None:
        """The labels `revision`'s Deployment selects its pods by, as the index (or the last read)
        holds it, else as the spec makes it while the spec asks for `revision`; None if neither.
        Not the current spec's: spec.modelName (the `model` label) is part of the revision and a
        Deployment's selector cannot change, so a stable keeps the model it was made with."""
        namespace, name = self.spec.namespace, resources.child_name(self.spec, revision)
        made = self.children.deployment(namespace, name) or self.kube.last_seen.get((namespace, name))
        if made is not None:
            return dict((made.get("spec") or {}).get("selector", {}).get("matchLabels") or {}) or None
        return resources.selector(self.spec, revision) if revision == self.spec.revision else None

    async def _adopt(self, kind: str, current: Mapping[str, Any]) -> bool:
        """A child whose controller is another QuantizedModel of this name (deleted and created again
        at once: `kubectl replace --force`) becomes ours, so that the garbage collector, which
        removes the dependents of the old uid, leaves it: one being deleted already is waited for.
        Any other is not ours, and never patched: ChildNotOurs. The user's, or another model's
        child of this name: model `a`'s revision Service `a-0123456789` is the shared Service a
        model named `a-0123456789` wants, and adopting it in turn flipped its traffic each tick.
        False: it is gone (the collector took it with its old owner since it was read: the patch
        was answered 404), and the caller makes it again as one never there."""
        metadata = current["metadata"]
        uid = self.owner.get("metadata", {}).get("uid")
        controller = next((r for r in metadata.get("ownerReferences") or [] if r.get("controller")), None)
        if controller is not None and controller.get("uid") == uid:
            return True
        name = f"{kind} {self.spec.namespace}/{metadata['name']}"
        if not self._predecessor(controller):
            raise PortError(
                f"{name} exists and is not this model's: {_controlled_by(controller)}", reason=CHILD_NOT_OURS
            )
        if metadata.get("deletionTimestamp"):
            raise PortError(
                f"{name} of the model's previous incarnation is being deleted: made again once it is gone",
                reason="ChildBeingDeleted",
            )
        wanted = resources.owned({}, self.owner)["metadata"]["ownerReferences"]
        patch = [
            {"op": "test", "path": "/metadata/uid", "value": metadata["uid"]},
            {"op": "add", "path": "/metadata/ownerReferences", "value": wanted},
        ]
        call = (
            self.kube.apps.patch_namespaced_deployment
            if kind == DEPLOYMENT
            else self.kube.core.patch_namespaced_service
        )
        adopted = await _call(
            f"adopting {name}",
            call(metadata["name"], self.spec.namespace, patch, _content_type=JSON_PATCH),
            timeout=self.kube.timeout,
            missing_ok=True,
        )
        if adopted is None:
            self._proved_gone(kind, metadata["name"], {metadata["uid"]})
        return adopted is not None

    def _predecessor(self, controller: Mapping[str, Any] | None) -> bool:
        """Whether a controller reference names a QuantizedModel of this model's name (of its
        namespace: an owner reference cannot name another's)."""
        return (
            controller is not None
            and controller.get("kind") == crd.KIND
            and str(controller.get("apiVersion", "")).split("/")[0] == crd.GROUP
            and controller.get("name") == self.owner.get("metadata", {}).get("name")
        )

    async def ready(self, revision: str) -> bool:
        current = await self.deployment(revision)
        return current is not None and int(current.get("status", {}).get("readyReplicas") or 0) >= 1

    async def scale(self, revision: str, replicas: int) -> None:
        name = resources.child_name(self.spec, revision)
        patch = {"spec": {"replicas": replicas}}
        await self._patch_deployment(f"scaling Deployment {name}", name, patch, MERGE_PATCH)

    async def all_ready(self, revision: str) -> bool:
        """As many ready pods as its Deployment asks for. A yes is the API's word, not the index's:
        it lets a revision be removed, and the index may not hold our scale-up yet (a rollback from
        100% read 1 ready pod of 1 there); a no, however stale, only keeps one longer."""
        if not _all_ready(await self.deployment(revision)):
            return False
        return _all_ready(await self.in_api(revision))

    async def in_api(self, revision: str) -> dict[str, Any] | None:
        """A revision's Deployment as the API has it (None: gone): as this tick read it there where
        it is `fresh`, else read now."""
        if self.fresh:
            return await self.deployment(revision)
        return await self._from_api(DEPLOYMENT, resources.child_name(self.spec, revision))

    async def remove(self, revision: str) -> None:
        name = resources.child_name(self.spec, revision)
        self.kube.last_seen.pop((self.spec.namespace, name), None)
        self._read.pop(name, None)
        self._read_services.pop(name, None)
        held = self.children.uids(DEPLOYMENT, self.spec.namespace, name)
        await _call(
            f"deleting Deployment {name}",
            self.kube.apps.delete_namespaced_deployment(name, self.spec.namespace),
            missing_ok=True,
            timeout=self.kube.timeout,
        )
        self._proved_gone(DEPLOYMENT, name, held)
        held = self.children.uids(SERVICE, self.spec.namespace, name)
        await _call(
            f"deleting Service {name}",
            self.kube.core.delete_namespaced_service(name, self.spec.namespace),
            missing_ok=True,
            timeout=self.kube.timeout,
        )
        self._proved_gone(SERVICE, name, held)

    async def service(self, name: str, *, may_exist: bool = True) -> dict[str, Any] | None:
        """One of our Services as the index holds it (else, where it `may_exist`, as the API does),
        or None; `fresh` and where it `may_exist`: as the API does. One that may not (a new
        revision's, its Deployment just made) is created outright: no 409 on every new revision;
        `fresh`, the index's copy is not trusted for it either (the collector may have taken it)."""
        if self.fresh:  # one that may not exist is not read: the index may keep one deleted
            if may_exist and name not in self._read_services:
                self._read_services[name] = await self._from_api(SERVICE, name)
            return self._read_services.get(name)
        watched = self.children.service(self.spec.namespace, name)
        if watched is not None or not may_exist:
            return watched
        return await self._from_api(SERVICE, name)  # not seen (yet): created a moment ago, or gone

    async def deployment(self, revision: str) -> dict[str, Any] | None:
        """A revision's Deployment as the index holds it (else as the API does), or None; `fresh`:
        as the API does."""
        name = resources.child_name(self.spec, revision)
        if self.fresh:
            if name not in self._read:
                self._read[name] = await self._from_api(DEPLOYMENT, name)
            return self._read[name]
        watched = self.children.deployment(self.spec.namespace, name)
        if watched is not None:
            self.kube.last_seen[self.spec.namespace, name] = watched
            return watched
        # not seen (yet): created a moment ago, or gone
        return await self._from_api(DEPLOYMENT, name)

    async def _from_api(self, kind: str, name: str) -> dict[str, Any] | None:
        """One of our Deployments or Services as the API has it now (None: gone). The uids the index
        held under its name before the read, but the one found, are gone (`Kube.gone`): the API has
        one object of a name at a time, and uids are never reused."""
        namespace = self.spec.namespace
        held = self.children.uids(kind, namespace, name)
        if kind == DEPLOYMENT:
            found = await self.kube.read_deployment(namespace, name)
        else:
            read = self.kube.core.read_namespaced_service_without_preload_content(name, namespace)
            found = await _read(read, timeout=self.kube.timeout)
        self.kube.gone.add(kind, namespace, name, held - {(found or {}).get("metadata", {}).get("uid")})
        return found

    def _proved_gone(self, kind: str, name: str, held: set[str]) -> None:
        """`held` (the uids the index held under `name` before a write) are gone: the write was
        answered 404, or deleted the one there."""
        self.kube.gone.add(kind, self.spec.namespace, name, held)

    async def _patch_deployment(self, what: str, name: str, patch: Any, content_type: str) -> None:
        """Patch one of our Deployments; one the API no longer has raises ChildGone: whoever
        read it (the index) was stale."""
        self._read.pop(name, None)
        held = self.children.uids(DEPLOYMENT, self.spec.namespace, name)
        patched = await _call(
            what,
            self.kube.apps.patch_namespaced_deployment(
                name, self.spec.namespace, patch, _content_type=content_type
            ),
            timeout=self.kube.timeout,
            missing_ok=True,
        )
        if patched is None:
            self._proved_gone(DEPLOYMENT, name, held)
            raise ChildGone(DEPLOYMENT, self.spec.namespace, name)

    async def conform(self, revision: str) -> None:
        """A settled model's stable Deployment as the spec asks now (`restore` made it again if it
        was gone): the spec's replicas and its containers' resources (server and fetch). Neither
        starts a canary (`revision_of` leaves them out), so nothing else would apply them; a
        Deployment that matches costs no request."""
        current = await self.deployment(revision)
        if current is None:
            return
        wanted = resources.deployment(
            self.spec, revision, Track.STABLE, self.spec.replicas, self.owner, self.server_host
        )
        patch: list[dict[str, Any]] = []
        if current["spec"].get("replicas") != self.spec.replicas:
            patch.append({"op": "replace", "path": "/spec/replicas", "value": self.spec.replicas})
        patch += _resource_patches(current, wanted)
        if not patch:
            return
        name = current["metadata"]["name"]
        patch.insert(0, {"op": "test", "path": "/metadata/name", "value": name})
        what = f"updating Deployment {name} to the spec's replicas and resources"
        await self._patch_deployment(what, name, patch, JSON_PATCH)

    async def _relabel(self, current: Mapping[str, Any], track: Track) -> None:
        """Promotion: the track label and the server's --track flag change; the pods roll."""
        containers = current["spec"]["template"]["spec"]["containers"]
        index = next(i for i, c in enumerate(containers) if c["name"] == "server")
        args = resources.on_track(containers[index].get("args", []), track)
        name = current["metadata"]["name"]
        patch = [
            {"op": "test", "path": "/metadata/name", "value": name},
            {"op": "add", "path": "/metadata/labels/track", "value": track.value},
            {"op": "add", "path": "/spec/template/metadata/labels/track", "value": track.value},
            {"op": "replace", "path": f"/spec/template/spec/containers/{index}/args", "value": args},
        ]
        what = f"relabelling Deployment {name} as {track.value}"
        await self._patch_deployment(what, name, patch, JSON_PATCH)


class GatewayRouter:
    """`TrafficRouter` over a Gateway API HTTPRoute the user owns.

    In every rule with a backendRef to this model's Services (the shared name, as the user writes
    it, or a revision's), the operator changes only what routing needs: the `weight` of our refs,
    the `name` of the ref that follows the stable revision, a copy of that ref (filters and all)
    for the canary, and the removal of refs to retired revisions. Every other field of every ref,
    and every other ref, match and filter, stays as the user wrote it. Each change is a JSON patch
    op on one field, preceded by a `test` of the whole ref, so a concurrent edit by the user
    fails the patch instead of being overwritten; the next tick retries on the fresh route.
    """

    def __init__(self, kube: Kube, spec: ModelSpec, workloads: KubeWorkloads | None = None) -> None:
        if spec.http_route is None:
            raise ValueError("GatewayRouter needs spec.traffic.httpRoute")
        self.kube = kube
        self.spec = spec
        self.route_name = spec.http_route
        self.workloads = workloads if workloads is not None else KubeWorkloads(kube, spec, {})
        """The tick's: what the revisions routed are read from (a release routes none)."""

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        wanted: list[tuple[str, int | None]] = [
            (resources.child_name(self.spec, stable), 100 - weight if canary else 100)
        ]
        if canary:
            wanted.append((resources.child_name(self.spec, canary), weight))
        for revision in (stable, canary):
            if revision is not None:
                await self._confirm(revision)
        await self.set_refs(wanted)
        return float(weight) if canary else 0.0

    async def _confirm(self, revision: str) -> None:
        """A revision's Deployment is in the API before its Service gets a weight. The tick may have
        read it from an index that keeps one deleted while its watch was away, and a gateway's step
        writes nothing to it that a 404 would answer (the replicas router's scale does). One GET
        per revision routed, at a decision only, and none on a tick that read it from the API."""
        if await self.workloads.in_api(revision) is None:
            name = resources.child_name(self.spec, revision)
            raise ChildGone(DEPLOYMENT, self.spec.namespace, name)

    async def rebalance(self, stable: str, canary: str, weight: int) -> float | None:
        """Both revisions at spec.replicas again, if they are not: spec.replicas changed mid-canary
        (scaled up for load, as Argo Rollouts rescales both ReplicaSets at once), or a Deployment
        scaled by hand. The weights stay (None: the achieved weight too). Read from the index: no
        request while they match."""
        for revision in (canary, stable):  # up before down, as the replicas router scales
            current = await self.workloads.deployment(revision)
            if current is not None and current["spec"].get("replicas") != self.spec.replicas:
                await self.workloads.scale(revision, self.spec.replicas)
        return None

    async def release(self) -> None:
        """Point the route back at the shared Service name, as the user wrote it (on deletion)."""
        await self.set_refs([(self.spec.name, None)])

    async def set_refs(self, wanted: list[tuple[str, int | None]]) -> None:
        """Make our refs in each rule exactly `wanted`: (Service name, weight or None to leave it)."""
        namespace = self.spec.namespace
        route = await _read(
            self.kube.custom.get_namespaced_custom_object_without_preload_content(
                *GATEWAY[:2], namespace, GATEWAY[2], self.route_name
            ),
            timeout=self.kube.timeout,
        )
        if route is None:
            raise PortError(f"HTTPRoute {namespace}/{self.route_name} not found", reason="HTTPRouteNotFound")
        patch: list[dict[str, Any]] = []
        referenced = False
        for index, rule in enumerate(route.get("spec", {}).get("rules") or []):
            refs = rule.get("backendRefs") or []
            if any(self._ours(ref) for ref in refs):
                referenced = True
                patch += weight_patch(f"/spec/rules/{index}/backendRefs", refs, wanted, self._ours)
        if not referenced:
            raise PortError(
                f"HTTPRoute {namespace}/{self.route_name} has no rule with a backendRef to Service "
                f"{self.spec.name}: add one where this model should be served",
                reason="HTTPRouteNotReferenced",
            )
        if patch:
            await _call(
                f"setting weights in HTTPRoute {self.route_name}",
                self.kube.custom.patch_namespaced_custom_object(
                    *GATEWAY[:2], namespace, GATEWAY[2], self.route_name, patch, _content_type=JSON_PATCH
                ),
                timeout=self.kube.timeout,
            )

    def _ours(self, ref: Mapping[str, Any]) -> bool:
        return (
            ref.get("kind", "Service") == "Service"
            and ref.get("group", "") in ("", "core")
            and ref.get("namespace", self.spec.namespace) == self.spec.namespace
            and resources.is_revision_service(self.spec, str(ref.get("name", "")))
        )


def weight_patch(
    path: str,
    refs: list[dict[str, Any]],
    wanted: list[tuple[str, int | None]],
    ours: Any,
) -> list[dict[str, Any]]:
    """JSON patch ops turning our refs among `refs` (at `path`) into `wanted`, one field at a time.

    The first wanted name (the stable revision) always lives in our first ref, the one the user
    wrote: it is renamed when the stable revision changes, so its filters and fields stay the
    user's. Each further name (the canary) keeps its ref, else gets a copy of the first. Our refs
    left over are removed. Pure; `ours` says which refs are this model's."""
    mine = [index for index, ref in enumerate(refs) if ours(ref)]
    taken: dict[int, tuple[str, int | None]] = {mine[0]: wanted[0]}
    added: list[tuple[str, int | None]] = []
    for name, weight in wanted[1:]:
        match = next((i for i in mine if i not in taken and refs[i].get("name") == name), None)
        if match is None:
            added.append((name, weight))
        else:
            taken[match] = (name, weight)
    ops: list[dict[str, Any]] = []
    for index, (name, weight) in sorted(taken.items()):
        ref, at = refs[index], f"{path}/{index}"
        changes: list[tuple[str, str | int]] = [("name", name)] if ref.get("name") != name else []
        if weight is not None and ref.get("weight") != weight:
            changes.append(("weight", weight))
        if changes:
            ops.append({"op": "test", "path": at, "value": ref})
            ops += [{"op": "add", "path": f"{at}/{key}", "value": value} for key, value in changes]
    for index in sorted(set(mine) - set(taken), reverse=True):
        ops += [
            {"op": "test", "path": f"{path}/{index}", "value": refs[index]},
            {"op": "remove", "path": f"{path}/{index}"},
        ]
    template = refs[mine[0]]
    for name, weight in added:
        copy = {**template, "name": name}
        if weight is not None:
            copy["weight"] = weight
        ops.append({"op": "add", "path": f"{path}/-", "value": copy})
    return ops


class ReplicaRouter:
    """`TrafficRouter` without a gateway: one Service over both revisions, weight = replica share.

    With N replicas, the canary gets round(N * weight) of them (at least 1, and at least 1 stays
    stable until promotion: at 100%, N canaries and 1 stable); the achieved weight returned says how
    close that comes: with 4 replicas, 5% becomes 1 canary pod of 4 = 25%, 100% 4 of 5 = 80%.
    """

    def __init__(self, kube: Kube, spec: ModelSpec, workloads: KubeWorkloads) -> None:
        self.kube = kube
        self.spec = spec
        self.workloads = workloads

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        # the model's Service may exist once a revision has served (or was deleted by hand)
        await self.workloads.ensure_service(
            None, may_exist=has_served(self.workloads.owner.get("status") or {})
        )
        total = self.spec.replicas
        if canary is None:
            await self.workloads.scale(stable, total)
            return 0.0
        canary_replicas, stable_replicas = split(total, weight)
        # up before down: never fewer servers than asked while the split moves
        await self.workloads.scale(canary, canary_replicas)
        await self.workloads.scale(stable, stable_replicas)
        return 100.0 * canary_replicas / (canary_replicas + stable_replicas)

    async def rebalance(self, stable: str, canary: str, weight: int) -> float | None:
        """The split of `weight` again, if the Deployments no longer hold it: spec.replicas changed
        mid-canary (scaled up for load, as Argo Rollouts rescales both ReplicaSets at once), or a
        Deployment scaled by hand. None when they hold it (read from the index: no request)."""
        wanted = dict(zip((canary, stable), split(self.spec.replicas, weight), strict=True))
        for revision, replicas in wanted.items():
            current = await self.workloads.deployment(revision)
            if current is not None and current["spec"].get("replicas") != replicas:
                return await self.route(stable, canary, weight)
        return None


def _all_ready(deployment: Mapping[str, Any] | None) -> bool:
    if deployment is None:
        return False
    asked = max(int((deployment.get("spec") or {}).get("replicas", 1)), 1)  # 0 asked: none serves
    return int((deployment.get("status") or {}).get("readyReplicas") or 0) >= asked


def _controlled_by(controller: Mapping[str, Any] | None) -> str:
    if controller is None:
        return "no controller (made by hand?): rename or delete it"
    return f"controlled by {controller.get('kind')} {controller.get('name')}"


def service_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch putting a Service's selector and ports back as `wanted` (none if they are)."""
    patch: list[dict[str, Any]] = []
    spec, asked = current.get("spec") or {}, wanted["spec"]
    if (spec.get("selector") or {}) != asked["selector"]:
        patch.append({"op": "add", "path": "/spec/selector", "value": asked["selector"]})
    if _ports(spec.get("ports") or []) != _ports(asked["ports"]):
        patch.append({"op": "add", "path": "/spec/ports", "value": asked["ports"]})
    if patch:
        patch.insert(0, {"op": "test", "path": "/metadata/uid", "value": current["metadata"].get("uid")})
    return patch


def _ports(ports: list[Mapping[str, Any]]) -> set[tuple[Any, ...]]:
    """A Service's ports as what routes traffic: the API server adds the defaults we set anyway."""
    return {
        (p.get("name"), p.get("port"), str(p.get("targetPort", p.get("port"))), p.get("protocol") or "TCP")
        for p in ports
    }


def _resource_patches(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON patch operations giving each container of `current` that `wanted` names (the server and
    the fetch init container) the resources `wanted` gives it."""
    operations = []
    for kind in ("initContainers", "containers"):
        asked = {c["name"]: c.get("resources") or {} for c in wanted["spec"]["template"]["spec"][kind]}
        for index, container in enumerate(current["spec"]["template"]["spec"].get(kind) or []):
            name = container.get("name")
            if name in asked and not _same_resources(container.get("resources") or {}, asked[name]):
                path = f"/spec/template/spec/{kind}/{index}/resources"
                operations.append({"op": "add", "path": path, "value": asked[name]})
    return operations


def _same_resources(current: Mapping[str, Any], asked: Mapping[str, Any]) -> bool:
    """Whether a container's resources are those asked, as quantities (the API server writes 0.5 as
    500m): a textual difference would patch the Deployment on every tick."""
    if set(current) != set(asked):
        return False
    for kind in asked:
        have, want = current[kind] or {}, asked[kind] or {}
        if set(have) != set(want):
            return False
        if any(parse_quantity(str(have[name])) != parse_quantity(str(want[name])) for name in want):
            return False
    return True


def _revisions(owner: Mapping[str, Any]) -> set[str]:
    """The revisions the QuantizedModel's status names: their Deployments were created before."""
    status = owner.get("status") or {}
    return {status[key] for key in ("stableRevision", "canaryRevision") if status.get(key)}


def split(total: int, weight: int) -> tuple[int, int]:
    """(canary, stable) replicas closest to `weight` percent for the canary, with `total` in all;
    at 100%, `total` canaries and one stable: a stable scaled to 0 would leave the last step waiting
    for it to be ready (never judged, never promoted) and a rollback from it with no server at all."""
    if weight >= 100:
        return total, 1
    canary = min(max(1, round(total * weight / 100)), max(total - 1, 1))
    return canary, max(total - canary, 1)
