"""What kopf's watches last delivered, so that a tick which changes nothing asks the API nothing.

Before issue 15 every 5 s tick of every in-flight resource GOT the resource and its Deployment:
0.4 requests per second per model, 79 at 200 canaries. Now:

- our Deployments and Services (label app.kubernetes.io/managed-by=quantship) live in kopf
  indexes: kopf lists each kind before any handler runs and keeps it by its watch, like an
  informer. A miss is not proof of absence (the ADDED event of a Deployment just created may be on
  its way), so the adapters GET then; a hit needs no request. Nor is a hit proof of presence:
  after a watch's 410 kopf lists again without computing deletions, so the ticks read the API
  now and then (`KubeWorkloads.fresh`), and what it proved gone is skipped from then on (`Gone`).
- the QuantizedModel is the body kopf hands the handler, which kopf keeps current from its own
  watch (and an index of the models, by name and uid, says when one is gone: the analysis daemon
  holds no finalizer, so kopf does not stop it on deletion). Only one thing can make it stale: our
  own write (of its status, or of the one-shot annotations it used up), until its watch event
  comes back. `Kube` keeps the body our last write returned, and `latest` prefers it until then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from quantship.operator import crd, resources

DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
DEPLOYMENTS_INDEX = "quantship_deployments"
SERVICES_INDEX = "quantship_services"
MODELS_INDEX = "quantship_models"
"""The kopf index ids: kopf passes each index to every handler as a keyword argument of that name."""
GONE_KEPT = 1024
"""How many of our Deployments and Services (by kind, namespace and name) `Gone` keeps the uids of,
the one proved longest ago forgotten first: a ghost of it that kopf's index still holds is then
trusted again, as before, until the next fresh read proves it gone again."""
WRITE_VISIBLE_S = 60.0
"""How long our status write is preferred over what the watch delivers. The watch brings it back
within milliseconds, seconds under load; only a status someone else edited meanwhile (nobody but
the operator writes it) could keep the two apart longer."""

Key = tuple[str, str]


def index_by_name(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    """A kopf indexing function: the object's body under (namespace, name)."""
    return {(namespace or "", name or ""): dict(body)}


def index_uid(namespace: str | None, name: str | None, uid: str | None, **_: Any) -> dict[Key, Any]:
    """A kopf indexing function: the object's uid under (namespace, name)."""
    return {(namespace or "", name or ""): uid}


def register(registry: kopf.OperatorRegistry) -> None:
    """Index our Deployments and Services (kopf watches them; RBAC: list and watch), and the
    QuantizedModels by uid (the watch kopf keeps of them anyway)."""
    for resource, index_id in ((DEPLOYMENTS, DEPLOYMENTS_INDEX), (SERVICES, SERVICES_INDEX)):
        decorate = kopf.index(*resource, id=index_id, labels=dict(resources.MANAGED_BY), registry=registry)
        decorate(index_by_name)
    kopf.index(crd.GROUP, crd.VERSION, crd.PLURAL, id=MODELS_INDEX, registry=registry)(index_uid)


def watch_only_ours(settings: kopf.OperatorSettings) -> None:
    """Ask the API server for our Deployments and Services only (a label selector on kopf's list and
    watch): without it kopf lists and watches every one in the served namespaces, cluster-wide all
    of them, and filters by `labels=` on its side."""
    selector = ",".join(f"{key}={value}" for key, value in resources.MANAGED_BY.items())
    for resource in (DEPLOYMENTS, SERVICES):
        settings.watching.label_selectors[resource] = selector


def still_there(kwargs: Mapping[str, Any], namespace: str, name: str, uid: str | None) -> bool:
    """The model with this uid is still in the watch (False once deleted, or replaced by a new one)."""
    models = kwargs.get(MODELS_INDEX)
    if models is None:
        return True  # no index (a handler kopf gives none): the tick itself finds out
    store = models.get((namespace, name))
    return store is not None and uid in store


@dataclass
class Gone:
    """The uids of our Deployments and Services that the API proved gone: a read of the name found
    another or none, a write to it was answered 404, we deleted it. kopf's index may still hold
    them (it lists again after a watch's 410 without computing deletions, and keeps those bodies
    until the operator restarts): `Children` skips them, so what a fresh read found out is not
    trusted away again by the next tick that reads the index."""

    _uids: dict[tuple[str, str, str], frozenset[str]] = field(default_factory=dict)

    def add(self, kind: str, namespace: str, name: str, uids: Iterable[str]) -> None:
        key, proved = (kind, namespace, name), frozenset(uid for uid in uids if uid)
        if not proved:
            return
        self._uids[key] = self._uids.pop(key, frozenset()) | proved  # the latest proved last
        while len(self._uids) > GONE_KEPT:
            del self._uids[next(iter(self._uids))]

    def of(self, kind: str, namespace: str, name: str) -> frozenset[str]:
        return self._uids.get((kind, namespace, name), frozenset())

    def forget(self, namespace: str, names: Callable[[str], bool]) -> None:
        """Drop the uids of the children whose name `names` accepts (a deleted model's)."""
        for key in [k for k in self._uids if k[1] == namespace and names(k[2])]:
            del self._uids[key]


DEPLOYMENT, SERVICE = "Deployment", "Service"


@dataclass(frozen=True)
class Children:
    """Our Deployments and Services as the indexes hold them (empty ones: nothing known, GET all),
    less those the API proved `gone`."""

    deployments: Mapping[Key, Any] = field(default_factory=dict)
    services: Mapping[Key, Any] = field(default_factory=dict)
    gone: Gone = field(default_factory=Gone)

    @classmethod
    def from_handler(cls, kwargs: Mapping[str, Any]) -> Children:
        return cls(kwargs.get(DEPLOYMENTS_INDEX) or {}, kwargs.get(SERVICES_INDEX) or {})

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.child(DEPLOYMENT, namespace, name)

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.child(SERVICE, namespace, name)

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return _one(self._index(kind), (namespace, name), self.gone.of(kind, namespace, name))

    def uids(self, kind: str, namespace: str, name: str) -> set[str]:
        """The uids the index holds under this name, gone or not."""
        return {_uid(body) for body in self._index(kind).get((namespace, name)) or ()}

    def _index(self, kind: str) -> Mapping[Key, Any]:
        return self.deployments if kind == DEPLOYMENT else self.services


def _uid(body: Mapping[str, Any] | None) -> str:
    return str(((body or {}).get("metadata") or {}).get("uid") or "")


def _one(index: Mapping[Key, Any], key: Key, gone: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """The body under `key`, unless it is being deleted (then it is as good as gone) or its uid is
    `gone`. Of several (one per uid: kopf keeps one deleted while its watch was away, and the one
    made again since), the last kopf heard of: the API holds one object of a name at a time, and
    kopf first hears of each while it exists, so an earlier one is gone."""
    bodies = [body for body in index.get(key) or () if _uid(body) not in gone]
    body = bodies[-1] if bodies else None
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    return dict(body)


@dataclass(frozen=True)
class _Write:
    """A body our write returned, and when."""

    at: float
    body: dict[str, Any]
    superseded: frozenset[str | None] = frozenset()
    """The resourceVersions our earlier writes returned, which this one came after."""

    @property
    def version(self) -> str | None:
        return self.body["metadata"].get("resourceVersion")


@dataclass
class Written:
    """The body our last write of a resource returned, until the watch delivers it (per resource)."""

    clock: Any = field(default=time.monotonic)
    _writes: dict[Key, _Write] = field(default_factory=dict)

    def wrote(self, body: Mapping[str, Any] | None) -> None:
        if not isinstance(body, Mapping) or "metadata" not in body:
            return
        metadata = body["metadata"]
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        earlier = self._pending(key, metadata.get("uid"))
        superseded = earlier.superseded | {earlier.version} if earlier else frozenset()
        self._writes[key] = _Write(self.clock(), dict(body), superseded)

    def latest(self, seen: Mapping[str, Any]) -> dict[str, Any]:
        """`seen` (the watch's body), or our newer write of it while the watch has not caught up.

        Caught up: the same resourceVersion, or our status (only the operator writes the status,
        so any later version carries ours) in a version that none of our earlier writes returned:
        a tick that used up a one-shot annotation removes it after its status write, whose body
        has our status and the annotation still. Another object of the same name (deleted and
        created again) or a write older than WRITE_VISIBLE_S is forgotten."""
        metadata = seen.get("metadata", {})
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        write = self._pending(key, metadata.get("uid"))
        version = metadata.get("resourceVersion")
        if (
            write is not None
            and write.version != version
            and (version in write.superseded or write.body.get("status") != seen.get("status"))
        ):
            return write.body
        self._writes.pop(key, None)
        return dict(seen)

    def _pending(self, key: Key, uid: str | None) -> _Write | None:
        """Our last write of this object (this uid), unless older than WRITE_VISIBLE_S."""
        write = self._writes.get(key)
        if write is None or write.body["metadata"].get("uid") != uid:
            return None
        return write if self.clock() - write.at < WRITE_VISIBLE_S else None
