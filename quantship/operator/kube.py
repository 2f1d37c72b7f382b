"""The operator's Kubernetes API client, over the official asyncio client (kubernetes.aio).

`Kube` reads and writes what the operator touches (its QuantizedModels' status, Deployments,
Services, HTTPRoutes, Jobs) with a timeout on every call; `read` answers one GET and `call` awaits
one write. API failures become `PortError` with a reason for the resource's conditions. The
rollout's ports are adapted over it in `workloads` (revisions as Deployments + Services) and
`routers` (traffic weights).

Reads use the `*_without_preload_content` variants and plain JSON: the adapters work with dicts
like the rest of the operator, never with the client's generated models.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import aiohttp
from kubernetes.aio import client

from quantship.operator import crd, names
from quantship.operator.settings import RESYNC_INTERVAL
from quantship.operator.watched import Gone, Written
from quantship.rollout import PortError

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
        found = await read(
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
        written = await call(
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
        found = await read(
            self.custom.get_namespaced_custom_object_without_preload_content(
                crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name
            ),
            timeout=self.timeout,
        )
        return found is not None and found.get("metadata", {}).get("uid") == uid

    async def patch_model_metadata(self, namespace: str, name: str, metadata: Mapping[str, Any]) -> None:
        """Kept as the latest version like a status write: the body that write returned still has
        what this one removed (the one-shot annotations, used up)."""
        written = await call(
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
        return await read(
            self.batch.read_namespaced_job_without_preload_content(name, namespace), timeout=self.timeout
        )

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a Job; one of that name already there is the same Job (its name is its spec's hash):
        True when this call created it, False when it was there (from an earlier run of the section)."""
        created = await call(
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
        await call(
            f"deleting Job {name}",
            self.batch.delete_namespaced_job(name, namespace, body=options),
            missing_ok=True,
            exists_ok=True,  # 409: the uid precondition failed, another Job has that name now
            timeout=self.timeout,
        )

    async def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pods carrying all of `labels` (a revision's, for spec.placement)."""
        selector = _label_selector(labels)
        listing = await read(
            self.core.list_namespaced_pod_without_preload_content(namespace, label_selector=selector),
            timeout=self.timeout,
        )
        return _labelled(listing, labels)

    async def deployments(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The Deployments carrying all of `labels` (a model's stable ones, for a status without one)."""
        listing = await read(
            self.apps.list_namespaced_deployment_without_preload_content(
                namespace, label_selector=_label_selector(labels)
            ),
            timeout=self.timeout,
        )
        return _labelled(listing, labels)

    async def models_served(self) -> bool:
        """Whether the API server serves QuantizedModels (API discovery, which every authenticated
        client may read): False until the CRD is established."""
        listing = await read(
            self.custom.get_api_resources_without_preload_content(crd.GROUP, crd.VERSION),
            timeout=self.timeout,
        )
        return any(resource.get("name") == crd.PLURAL for resource in (listing or {}).get("resources") or [])

    async def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The pods of a Job (the Job controller labels them `job-name`)."""
        listing = await read(
            self.core.list_namespaced_pod_without_preload_content(
                namespace, label_selector=f"job-name={job}"
            ),
            timeout=self.timeout,
        )
        items = (listing or {}).get("items") or []
        # filtered here too: the selector is the API server's to apply, and a test API may not
        return [pod for pod in items if (pod.get("metadata", {}).get("labels") or {}).get("job-name") == job]


async def read(response_coroutine: Any, *, timeout: float = API_TIMEOUT) -> dict[str, Any] | None:
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


async def call(
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


def _label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _labelled(listing: Mapping[str, Any] | None, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The listed objects carrying all of `labels`: filtered here too, the selector is the API
    server's to apply, and a test API may not."""
    return [
        item
        for item in (listing or {}).get("items") or []
        if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
    ]
