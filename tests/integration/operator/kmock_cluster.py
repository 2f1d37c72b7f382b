"""kmock's Kubernetes emulator with what a real API server adds, for the operator tests and the
rollout benchmark (never product code).

kmock 0.8 emulates the Kubernetes API statefully but leaves some work to a real API server;
`Cluster` does it: `namespace` from the URL, `uid`, `creationTimestamp`, `generation` and a name
for `generateName` on create; a fresh `resourceVersion` on every write (kopf's finalizer patch
tests it), in lists too, and watches that start from it instead of replaying old versions; a
`generation` bump when a write touches `spec`; 422, not 500, when a JSON patch's `test` fails.
It also records the status it answered each request with (`answers`), answers the requests a
test picks with an error of its choice (`refuse`), as a real API server in trouble would,
deletes what a request a test picks names just before it arrives (`delete_before`), and leaves
one a test picks unanswered until the test says (`hold`), as a slow API server would.

Every write of a QuantizedModel or an HTTPRoute goes through what the API server does with a
custom resource (`apiserver_rules`, with Gateway API's own CRD for routes): the status
subresource's split (a write of the object keeps its status, a write of /status changes only the
status, a create drops it), pruning of the fields the CRD does not know, its defaults, its schema
and CEL rules (422 Invalid), ratcheting on update. Deployments, Services and Jobs are checked by
apimachinery's name and label rules and core/v1's pod checks. So every operator test also checks
that what the operator writes survives a real API server: a status field left out of the CRD's
schema would be pruned (and the operator's state lost at a restart), a value of the wrong type
refused at every write; the conftest's teardown fails on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import functools
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import apiserver_rules
import attrs
import jsonpatch
import kmock

from quantship.operator import crd

QM = f"{crd.GROUP}/{crd.VERSION}/{crd.PLURAL}"
ROUTES = "gateway.networking.k8s.io/v1/httproutes"
ROUTE = ("gateway.networking.k8s.io", "httproutes")
STORED_AS = {"op": "replace", "path": ""}
"""The operation the cluster adds to a JSON patch of a custom resource: the object as stored."""
BUILT_IN_CHECKED = {("apps", "deployments"), ("", "services"), ("batch", "jobs")}
"""The built-in kinds the operator writes, checked by apimachinery's and core/v1's rules."""


@attrs.define
class Hold:
    """A request held unanswered (`Cluster.hold`): `arrived` once it came, answered at `release`."""

    which: Callable[[kmock.Request], bool]
    arrived: asyncio.Event = attrs.field(factory=asyncio.Event)
    released: asyncio.Event = attrs.field(factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


@functools.cache
def _route_schema() -> dict[str, Any] | None:
    """HTTPRoute's schema from the Gateway API CRDs beside the repository (None without them)."""
    if not apiserver_rules.GATEWAY_API.is_dir():
        return None
    return apiserver_rules.crd_schema(
        apiserver_rules.load_gateway_api()["httproutes.gateway.networking.k8s.io"], "v1"
    )


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    """kmock plus the metadata a real API server stamps on every object."""

    _latest: int = attrs.field(default=0, init=False)
    answers: list[tuple[kmock.Request, int]] = attrs.field(factory=list, init=False)
    """Every request with the HTTP status it was answered with, in order."""
    refusals: list[tuple[Callable[[kmock.Request], bool], kmock.KubernetesError, Mapping[str, str]]] = (
        attrs.field(factory=list, init=False)
    )
    deletions: list[Callable[[kmock.Request], bool]] = attrs.field(factory=list, init=False)
    holds: list[Hold] = attrs.field(factory=list, init=False)
    invalid: list[tuple[kmock.Request, str]] = attrs.field(factory=list, init=False)
    """Every write refused as invalid (of a custom resource or a checked built-in object), with the
    API server's reasons."""
    pruned: list[tuple[kmock.Request, list[str]]] = attrs.field(factory=list, init=False)
    """Every write of a custom resource that lost something on the way: fields the CRD does not
    know, or a status sent to the object (or a spec to /status), with their paths."""
    _older_crd: bool = attrs.field(default=False, init=False)
    pods_ready_at_once: bool = attrs.field(default=False, init=False)
    """A kubelet that is never late: a Deployment is created with all its replicas ready (as
    `Kubectl.make_ready` says later), so the operator's next read finds it ready."""

    @contextlib.contextmanager
    def older_crd(self) -> Iterator[None]:
        """Writes stored, pruned and defaulted as under a CRD without today's rules: what a resource
        written before an upgrade holds (the API server does not check a stored object again)."""
        self._older_crd = True
        try:
            yield
        finally:
            self._older_crd = False

    def refuse(
        self,
        which: Callable[[kmock.Request], bool],
        error: kmock.KubernetesError,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer every request `which` picks with `error` (a Status body with its reason), and
        `headers` (a 429's Retry-After), from now on."""
        self.refusals.append((which, error, dict(headers or {})))

    def delete_before(self, which: Callable[[kmock.Request], bool]) -> None:
        """Delete the object that the next request `which` picks names, just before it arrives, as
        the garbage collector or a person may: a write of it read a moment ago is answered 404."""
        self.deletions.append(which)

    def hold(self, which: Callable[[kmock.Request], bool]) -> Hold:
        """Leave the next request `which` picks unanswered until the test releases it: whoever sent
        it waits meanwhile."""
        hold = Hold(which)
        self.holds.append(hold)
        return hold

    async def _held(self, request: kmock.Request) -> None:
        for hold in [hold for hold in self.holds if hold.which(request)]:
            self.holds.remove(hold)
            hold.arrived.set()
            await hold.released.wait()

    async def _delete_first(self, request: kmock.Request) -> None:
        for which in [which for which in self.deletions if which(request)]:
            self.deletions.remove(which)
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                async with self._lock:
                    raw = self.objects[key].raw
                    self.objects[key].delete()
                    await self._buses[request.resource].put({"type": "DELETED", "object": raw})

    async def _handle(self, request: kmock.Request) -> Any:
        try:
            response = await self._answer(request)
        except kmock.KubernetesError as exc:  # kmock's own 404 and 409, rendered by its caller
            self.answers.append((request, exc.status))
            raise
        self.answers.append((request, int(getattr(response, "status", 200))))
        return response

    async def _answer(self, request: kmock.Request) -> Any:
        await self._held(request)
        await self._delete_first(request)
        for which, error, headers in self.refusals:
            if which(request):
                refusal = await self._render_error(error)
                refusal.headers.update(headers)
                return refusal
        conflict = self._failed_precondition(request)
        if conflict:
            return await self._render_error(
                kmock.KubernetesError(status=409, reason="Conflict", message=conflict)
            )
        if request.resource is not None and isinstance(request.data, dict | list):
            self._latest += 1
            version = str(self._latest)
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                metadata = request.data.setdefault("metadata", {})
                if request.namespace:
                    metadata.setdefault("namespace", request.namespace)
                if "name" not in metadata and "generateName" in metadata:  # kopf's Events
                    metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
                metadata.setdefault("uid", str(uuid.uuid4()))
                metadata.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).isoformat())
                metadata["generation"] = 1
                metadata["resourceVersion"] = version
                if self.pods_ready_at_once and request.resource.plural == "deployments":
                    replicas = request.data.get("spec", {}).get("replicas", 1)
                    request.data["status"] = {"replicas": replicas, "readyReplicas": replicas}
            elif request.action == kmock.action.UPDATE:
                self._stamp_update(request, version)
            refused = self._validate(request)
            if refused:
                kind = request.resource.plural
                message = f"{kind} {request.name or ''} is invalid: {'; '.join(refused)}"
                self.invalid.append((request, message))
                return await self._render_error(
                    kmock.KubernetesError(status=422, reason="Invalid", message=message)
                )
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchException as exc:  # a failed "test": the object changed meanwhile
            return await self._render_error(
                kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
            )

    def _failed_precondition(self, request: kmock.Request) -> str | None:
        """A DELETE whose DeleteOptions.preconditions (uid, resourceVersion) the stored object does
        not meet: 409, and nothing is deleted."""
        if request.action != kmock.action.DELETE or not isinstance(request.data, dict):
            return None
        wanted = request.data.get("preconditions") or {}
        key = (request.resource, request.namespace, request.name)
        stored = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None
        if not wanted or stored is None:
            return None
        for field in ("uid", "resourceVersion"):
            if wanted.get(field) is not None and wanted[field] != stored["metadata"].get(field):
                return (
                    f"Precondition failed: {field} in precondition: {wanted[field]}, "
                    f"{field} in object meta: {stored['metadata'].get(field)}"
                )
        return None

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        listing["metadata"]["resourceVersion"] = str(self._latest)
        return listing

    async def _serve_watch(self, request: kmock.Request) -> Any:
        """Watch from the listed resourceVersion on, as kopf asks: kmock replays every object as
        ADDED, so a watch opened after a write would deliver that object's stale version again."""
        since = request.params.get("resourceVersion", "")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and event.get("type") == "ADDED" and since.isdigit():
                version = event["object"].get("metadata", {}).get("resourceVersion", "0")
                if int(version) <= int(since):
                    continue
            yield event

    def _validate(self, request: kmock.Request) -> list[str]:
        """Why the API server would refuse this write (nothing when it would not). A custom resource
        of ours or Gateway API's is then stored as it would be (`_admit_custom_resource`)."""
        kind = (request.resource.group, request.resource.plural)
        if kind == (crd.GROUP, crd.PLURAL):
            return self._admit_custom_resource(request, crd.schema())
        if kind == ROUTE and (schema := _route_schema()) is not None:
            return self._admit_custom_resource(request, schema)
        if kind in BUILT_IN_CHECKED:
            written, _, _ = self._written(request)
            return [] if written is None else apiserver_rules.object_errors(written)
        return []

    def _written(
        self, request: kmock.Request
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
        """(the object as this write would leave it, the object stored before it, what the status
        subresource's split dropped): a write of the object keeps its status, a write of /status
        changes only the status, a create drops it. (None, None, []) for anything but a write."""
        key = (request.resource, request.namespace, request.name)
        current = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            dropped = ["status (a create drops it)"] if request.data.get("status") else []
            return {k: v for k, v in request.data.items() if k != "status"}, None, dropped
        if request.action != kmock.action.UPDATE or current is None:
            return None, None, []
        trial = kmock.Object(copy.deepcopy(current))  # patched as kmock then patches it
        try:
            trial.patch(request.data)
        except jsonpatch.JsonPatchException:
            return None, None, []  # a failed "test": answered 422 as for any resource
        patched = trial.raw
        if request.subresource == "status":
            written = {**copy.deepcopy(current), "status": patched.get("status")}
            written["metadata"] = {**current["metadata"], **_stamped(patched["metadata"])}
            ignored = [
                key
                for key in patched
                if key not in ("status", "metadata") and patched[key] != current.get(key)
            ]
            dropped = [f"{key} (sent to /status)" for key in ignored]
        else:
            written = {**patched, "status": copy.deepcopy(current.get("status"))}
            dropped = (
                ["status (sent to the object)"] if patched.get("status") != current.get("status") else []
            )
        if written.get("status") is None:
            written.pop("status", None)
        return written, current, dropped

    def _admit_custom_resource(self, request: kmock.Request, schema: Mapping[str, Any]) -> list[str]:
        """What the API server makes of a write of a custom resource: the errors that refuse it, or
        none, and then the write stores the object as the API server would (pruned, defaulted).
        kmock's request is frozen and is what it matches reactions by, its data is not: a JSON
        patch gets a last operation, STORED_AS (the client's stay readable before it); a merge
        patch or a new object is rewritten in place."""
        written, current, dropped = self._written(request)
        if written is None:
            return []
        stored, problems = apiserver_rules.admit(schema, written, current)
        if problems and not self._older_crd:
            return problems
        dropped += apiserver_rules.pruned_fields(written, stored)
        if dropped:
            self.pruned.append((request, dropped))
        if isinstance(request.data, list):
            request.data.append({**STORED_AS, "value": stored})
        else:
            patch = stored if request.action == kmock.action.CREATE else _merge_patch(current or {}, stored)
            request.data.clear()
            request.data.update(patch)
        return []

    def _stamp_update(self, request: kmock.Request, version: str) -> None:
        key = (request.resource, request.namespace, request.name)
        current = self.objects[key] if key in self.objects and not self.objects[key].deleted else {}
        generation = int(dict(current.get("metadata", {})).get("generation", 1)) if current else 1
        if isinstance(request.data, dict):
            touches_spec = "spec" in request.data and request.subresource is None
            metadata = request.data.setdefault("metadata", {}) if isinstance(request.data, dict) else {}
            metadata["resourceVersion"] = version
            if touches_spec:
                metadata["generation"] = generation + 1
        else:
            touches_spec = request.subresource is None and any(
                op.get("path", "").startswith("/spec") for op in request.data
            )
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            if touches_spec:
                request.data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})


def _merge_patch(current: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `current` into `target`."""
    patch: dict[str, Any] = {key: None for key in current if key not in target}
    for key, value in target.items():
        old = current.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            nested = _merge_patch(old, value)
            if nested:
                patch[key] = nested
        elif key not in current or value != old:
            patch[key] = copy.deepcopy(value)
    return patch


def _stamped(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a write stamps on the metadata itself (resourceVersion, generation): kept on /status."""
    return {key: metadata[key] for key in ("resourceVersion", "generation") if key in metadata}


def declare(cluster: kmock.KubernetesEmulator) -> None:
    """The built-in resources, the QuantizedModel CRD and Gateway API's HTTPRoute."""
    cluster.resources.load_bundled()
    cluster.resources[QM] = kmock.ResourceInfo(
        kind=crd.KIND,
        singular=crd.SINGULAR,
        namespaced=True,
        shortnames={crd.SHORT_NAME},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    )
    cluster.resources[ROUTES] = kmock.ResourceInfo(
        kind="HTTPRoute",
        singular="httproute",
        namespaced=True,
        verbs={"get", "list", "watch", "patch", "create"},
    )
