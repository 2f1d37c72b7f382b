"""The Kubernetes API calls the operator makes, as RBAC names them: (API group, resource, verb).

Written once here; the chart's RBAC (helm/quantship/templates/rbac.yaml) grants exactly these, and
the tests hold three things equal to them: the chart in each mode, the calls in this package's
code, and the requests a real kopf runtime sends (tests/integration/operator/test_operator_rbac.py).
"""

from __future__ import annotations

from quantship.operator import crd

Permission = tuple[str, str, str]

MODELS = (crd.GROUP, crd.PLURAL)

QUANTIZE_JOB: frozenset[Permission] = frozenset(
    {
        # spec.quantize: one Job per version of the section, read until it finishes; its verdict
        # is the termination message in its pod's status. A section changed or removed while its
        # Job runs has that Job deleted.
        ("batch", "jobs", "get"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("", "pods", "list"),
    }
)
"""The calls of spec.quantize (quantization.py), made only for models that have the section."""

PLACEMENT: frozenset[Permission] = frozenset(
    {
        # spec.placement.matchGateHardware: whether the scheduler could place a revision's pods
        ("", "pods", "list"),
    }
)
"""The calls of spec.placement (reconcile.py), made only for models that set it."""

CACHE_MISS_READS: frozenset[Permission] = frozenset(
    {
        # a Deployment or Service the indexes do not hold (yet): created a moment ago, or gone
        ("apps", "deployments", "get"),
        ("", "services", "get"),
    }
)
"""Reads the adapters make only when kopf's indexes miss (watched.py): rare, but they must be
granted."""

REPAIRS: frozenset[Permission] = frozenset(
    {
        # a Service's selector and ports put back, a child of the model's previous uid adopted
        # (its ownerReferences: Deployments are patched anyway)
        ("", "services", "patch"),
        # a model deleted while the watch was away: asked before a gone Deployment is made again
        (*MODELS, "get"),
    }
)
"""Calls made only when something was removed or edited by hand (workloads.py): they must be granted,
or every repair is refused and the rollout stays Degraded."""

OPERATOR: frozenset[Permission] = frozenset(
    {
        # a QuantizedModel's status and its one-shot annotations (it is read from kopf's watch)
        (*MODELS, "patch"),
        (crd.GROUP, f"{crd.PLURAL}/status", "patch"),
        # one Deployment and one Service per revision (and one Service per model in replicas mode)
        ("apps", "deployments", "create"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "delete"),
        ("", "services", "create"),
        ("", "services", "delete"),
        # a status that names no stable revision (a new model's first tick, or a status lost):
        # the model's own Deployments labelled track=stable, to resume from (reconcile._stable_found)
        ("apps", "deployments", "list"),
        # gateway-api mode: the weights of our backendRefs in the user's HTTPRoute
        ("gateway.networking.k8s.io", "httproutes", "get"),
        ("gateway.networking.k8s.io", "httproutes", "patch"),
        *CACHE_MISS_READS,
        *REPAIRS,
        *QUANTIZE_JOB,
        *PLACEMENT,
    }
)
"""Our adapters' calls (kube.py, workloads.py, routers.py), in every namespace the operator serves."""

OWNER_REFERENCES: frozenset[Permission] = frozenset({(crd.GROUP, f"{crd.PLURAL}/finalizers", "update")})
"""No call of ours: what the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift
and hardened clusters) asks of a client that sets `blockOwnerDeletion` in an ownerReference, as
kopf.append_owner_reference does on every Deployment, Service and Job we create. Without it each
create is 403 there."""

KOPF_IN_NAMESPACES: frozenset[Permission] = frozenset(
    {
        # kopf lists and watches the resource, patches its progress and finalizer into it
        (*MODELS, "list"),
        (*MODELS, "watch"),
        (*MODELS, "patch"),
        # kopf.info / kopf.warn post core/v1 Events beside the object
        ("", "events", "create"),
    }
)
"""kopf's own calls in every namespace it serves."""

KOPF_INDEXES: frozenset[Permission] = frozenset(
    {
        # kopf indexes our Deployments and Services (watched.py): a tick reads them there, not by
        # a GET each (issue 15); its list and watch ask for our label only (a label selector).
        ("apps", "deployments", "list"),
        ("apps", "deployments", "watch"),
        ("", "services", "list"),
        ("", "services", "watch"),
    }
)
"""kopf's calls for the operator's indexes, in every namespace it serves."""

KOPF_CLUSTER_SCANNING: frozenset[Permission] = frozenset(
    {
        # cluster-wide mode: kopf follows the CRD (a schema change, a re-install) without a restart
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
)
"""kopf's cluster-scoped calls when it watches the whole cluster. In namespaced mode the operator
turns kopf's scanning off, so it needs nothing cluster-wide: not `namespaces`, not the CRDs."""

KOPF_PEERING_CLUSTER: frozenset[Permission] = frozenset(
    {("kopf.dev", "clusterkopfpeerings", verb) for verb in ("list", "watch", "patch")}
)
KOPF_PEERING_NAMESPACED: frozenset[Permission] = frozenset(
    {("kopf.dev", "kopfpeerings", verb) for verb in ("list", "watch", "patch")}
)
"""Peering (several replicas, one active): only without --standalone, which the chart always passes."""


def needed(*, clusterwide: bool, peering: bool) -> tuple[frozenset[Permission], frozenset[Permission]]:
    """(in each served namespace, at cluster scope) for a mode. Cluster-wide, the first applies in
    every namespace through a ClusterRoleBinding."""
    in_namespaces = OPERATOR | OWNER_REFERENCES | KOPF_IN_NAMESPACES | KOPF_INDEXES
    cluster_scope: frozenset[Permission] = KOPF_CLUSTER_SCANNING if clusterwide else frozenset()
    if peering:
        if clusterwide:
            cluster_scope |= KOPF_PEERING_CLUSTER
        else:
            in_namespaces |= KOPF_PEERING_NAMESPACED
    return in_namespaces, cluster_scope
