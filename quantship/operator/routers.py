"""The rollout's `TrafficRouter` port: `GatewayRouter` sets the weights of this model's backendRefs in
the user's Gateway API HTTPRoute and touches nothing else in it; `ReplicaRouter` splits traffic by
replica counts behind one Service where no gateway exists. Both are idempotent, so a tick that
failed half-way can rerun.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantship.operator import resources
from quantship.operator.kube import (
    GATEWAY,
    JSON_PATCH,
    ChildGone,
    Kube,
    call,
    read,
)
from quantship.operator.spec import ModelSpec
from quantship.operator.status import has_served
from quantship.operator.watched import DEPLOYMENT
from quantship.operator.workloads import KubeWorkloads
from quantship.rollout import PortError


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
        route = await read(
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
            await call(
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


def split(total: int, weight: int) -> tuple[int, int]:
    """(canary, stable) replicas closest to `weight` percent for the canary, with `total` in all;
    at 100%, `total` canaries and one stable: a stable scaled to 0 would leave the last step waiting
    for it to be ready (never judged, never promoted) and a rollback from it with no server at all."""
    if weight >= 100:
        return total, 1
    canary = min(max(1, round(total * weight / 100)), max(total - 1, 1))
    return canary, max(total - canary, 1)
