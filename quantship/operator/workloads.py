"""`KubeWorkloads`: the rollout's `Workloads` port as one Deployment and one Service per revision,
owned by the QuantizedModel. Every method is idempotent (create-or-patch, delete ignoring 404), so
a tick that failed half-way can rerun; a child of a name the model needs that another controls is
never taken over (`CHILD_NOT_OURS`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from kubernetes.aio import client
from kubernetes.utils import parse_quantity

from quantship.operator import crd, resources
from quantship.operator.kube import (
    CHILD_NOT_OURS,
    JSON_PATCH,
    MERGE_PATCH,
    ChildGone,
    Kube,
    ModelGone,
    call,
    read,
    to_model,
)
from quantship.operator.settings import SERVER_BIND_ADDRESS
from quantship.operator.spec import ModelSpec
from quantship.operator.status import degraded_reason
from quantship.operator.watched import DEPLOYMENT, SERVICE, Children
from quantship.rollout import PortError, Track

log = logging.getLogger(__name__)


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
        created = await call(f"creating {kind} {name}", request, exists_ok=True, timeout=self.kube.timeout)
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
            patched = await call(
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
        patcher = (
            self.kube.apps.patch_namespaced_deployment
            if kind == DEPLOYMENT
            else self.kube.core.patch_namespaced_service
        )
        adopted = await call(
            f"adopting {name}",
            patcher(metadata["name"], self.spec.namespace, patch, _content_type=JSON_PATCH),
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
        """Delete the revision's Deployment and Service where they are this model's (or its previous
        incarnation's): a revision read from the status (retiringRevisions) that a person wrote
        could name anyone's, and `digits-db` was deleted for a retiring "db"; one that is not is
        left, said in a warning, and counts as removed."""
        name = resources.child_name(self.spec, revision)
        found = await self.deployment(revision), await self.service(name)
        self.kube.last_seen.pop((self.spec.namespace, name), None)
        self._read.pop(name, None)
        self._read_services.pop(name, None)
        if self._not_ours(DEPLOYMENT, found[0]):
            return
        held = self.children.uids(DEPLOYMENT, self.spec.namespace, name)
        await call(
            f"deleting Deployment {name}",
            self.kube.apps.delete_namespaced_deployment(name, self.spec.namespace),
            missing_ok=True,
            timeout=self.kube.timeout,
        )
        self._proved_gone(DEPLOYMENT, name, held)
        if self._not_ours(SERVICE, found[1]):
            return
        held = self.children.uids(SERVICE, self.spec.namespace, name)
        await call(
            f"deleting Service {name}",
            self.kube.core.delete_namespaced_service(name, self.spec.namespace),
            missing_ok=True,
            timeout=self.kube.timeout,
        )
        self._proved_gone(SERVICE, name, held)

    def _not_ours(self, kind: str, current: Mapping[str, Any] | None) -> bool:
        """Whether `current` exists and another controls it (a warning says so): not to delete."""
        if current is None:
            return False
        controller = next(
            (r for r in current["metadata"].get("ownerReferences") or [] if r.get("controller")), None
        )
        ours = controller is not None and controller.get("uid") == self.owner.get("metadata", {}).get("uid")
        if ours or self._predecessor(controller):
            return False
        name = f"{kind} {self.spec.namespace}/{current['metadata']['name']}"
        owner = (
            "no controller"
            if controller is None
            else f"controlled by {controller.get('kind')} {controller.get('name')}"
        )
        log.warning("not deleting %s for a retiring revision: it is not this model's (%s)", name, owner)
        return True

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
            request = self.kube.core.read_namespaced_service_without_preload_content(name, namespace)
            found = await read(request, timeout=self.kube.timeout)
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
        patched = await call(
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
