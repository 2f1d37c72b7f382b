"""The Kubernetes objects a QuantizedModel owns, built as plain dicts (no API calls here).

Per revision: a Deployment of `quantship serve` (an init container fetches and verifies the
artifact first) and a Service over it. In `replicas` traffic mode also one Service named like
the model over every revision, so the replica ratio splits traffic. Called by the adapters in
`workloads.py` and `routers.py`; pure, so tests can check every field without an API.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import kopf

from quantship.operator import fetch, names, placement
from quantship.operator.settings import SERVER_BIND_ADDRESS
from quantship.operator.spec import ModelSpec
from quantship.rollout import Track

SERVER_PORT = 8080
GRPC_PORT = names.GRPC_PORT
# Shutdown: the kubelet runs preStop (endpoints drop the pod meanwhile), then sends SIGTERM; the server
# drains within its budget and exits before the grace period (counted from preStop) runs out.
GRACE_PERIOD_S = 30
PRESTOP_SLEEP_S = 5
DRAIN_TIMEOUT_S = GRACE_PERIOD_S - PRESTOP_SLEEP_S - 5  # 5 s left for the process to exit
ARTIFACT_DIR = "/artifact"
MODEL_DIR = f"{ARTIFACT_DIR}/model"
PVC_ROOT = str(fetch.PVC_ROOT)
KEY_DIR = "/etc/quantship/keys"
KEY_FILE = "public.pem"
REGISTRY_DIR = "/etc/quantship/registry"
"""The pull secret of an oci:// artifact, mounted for the fetch init container only."""
CAPTURE_ROOT = "/var/lib/quantship/capture"
"""Where spec.server.capture's claim is mounted, its root (`_server_mounts`)."""
POD_NAME_ENV = "POD_NAME"
CAPTURE_DIR = f"{CAPTURE_ROOT}/$({POD_NAME_ENV})"
"""The server's --capture-dir: the kubelet expands $(POD_NAME) from the container's env, and the
server makes the directory itself, as its user, at start and again if it is deleted meanwhile."""
RUN_AS = names.RUN_AS
MANAGED_BY = {"app.kubernetes.io/managed-by": "quantship"}


def child_name(spec: ModelSpec, revision: str) -> str:
    return f"{spec.name}-{revision}"


def is_revision_service(spec: ModelSpec, name: str) -> bool:
    """Whether a Service name is one of this model's per-revision Services (or its shared one)."""
    revision = rf"{re.escape(spec.name)}-[0-9a-f]{{{names.REVISION_DIGITS}}}"
    return name == spec.name or re.fullmatch(revision, name) is not None


def selector(spec: ModelSpec, revision: str) -> dict[str, str]:
    """The labels a new revision's Deployment selects its pods by (its selector never changes after)."""
    return {"app.kubernetes.io/instance": spec.name, "model": spec.model, "revision": revision}


SERVER_NAME = {"app.kubernetes.io/name": "quantship-server"}
"""What every model server pod is: with the instance label, a model's servers and nothing else (a Helm
release named like the model labels its own pods with the same instance)."""


def shared_selector(spec: ModelSpec) -> dict[str, str]:
    """The server pods of every revision of the model: not by spec.modelName (the `model` label), which
    is part of the revision: a stable made before it changed keeps the old one."""
    return {**SERVER_NAME, "app.kubernetes.io/instance": spec.name}


def labels(spec: ModelSpec, revision: str, track: Track) -> dict[str, str]:
    return {
        **SERVER_NAME,
        **MANAGED_BY,
        **selector(spec, revision),
        "track": track.value,
    }


def container_resources(requirements: Mapping[str, Any]) -> dict[str, Any]:
    """spec.resources as a container takes them: quantities as strings. The CRD admits 2 for "2",
    as a Pod does, but the API client's typed model takes only strings. An empty section is left
    out, as the API server leaves it out of what it stores: kept, it differed on every resync."""
    return {
        key: {name: str(quantity) for name, quantity in value.items()}
        for key, value in requirements.items()
        if value
    }


def fetch_command(spec: ModelSpec) -> list[str]:
    command = ["quantship", "fetch", spec.artifact_uri, MODEL_DIR, "--pvc-root", PVC_ROOT]
    if spec.public_key_secret:
        command += ["--public-key", f"{KEY_DIR}/{KEY_FILE}"]
    if spec.pull_secret:
        command += ["--registry-config", f"{REGISTRY_DIR}/config.json"]
    return command


def serve_args(spec: ModelSpec, revision: str, track: Track, host: str = SERVER_BIND_ADDRESS) -> list[str]:
    """`quantship serve`'s arguments; `host` is where its HTTP and gRPC ports listen."""
    args = [
        "serve", MODEL_DIR,
        "--model-name", spec.model, "--revision", revision, "--track", track.value,
        "--host", host, "--port", str(SERVER_PORT), "--grpc-port", str(GRPC_PORT),
        "--drain-timeout-s", str(DRAIN_TIMEOUT_S),
        *spec.server_args(),
    ]  # fmt: skip
    if spec.public_key_secret:
        args += ["--public-key", f"{KEY_DIR}/{KEY_FILE}"]
    if spec.capture_claim:
        args += ["--capture-dir", CAPTURE_DIR]
    return args


def on_track(args: list[str], track: Track) -> list[str]:
    """A server's args moved to `track` (promotion): only --track changes, so sampling the spec left
    unset follows the new track, and a stable server ignores the canary's own SLI budget."""
    moved = list(args)
    if "--track" in moved:
        moved[moved.index("--track") + 1] = track.value
    return moved


def _volumes(spec: ModelSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and the mounts both containers share: the fetched artifact, /tmp (the root file
    system is read-only), the artifact's claim for pvc:// and the signing key; and the volume of
    spec.server.capture's claim, which only the server mounts (`_server_mounts`)."""
    volumes: list[dict[str, Any]] = [
        {"name": "artifact", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "artifact", "mountPath": ARTIFACT_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.artifact_uri.startswith("pvc://"):
        claim = fetch.pvc_claim(spec.artifact_uri)
        volumes.append({"name": "source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "source", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    if spec.capture_claim:  # never the artifact's claim (`spec._check_capture_claim`)
        volumes.append({"name": "capture", "persistentVolumeClaim": {"claimName": spec.capture_claim}})
    if spec.public_key_secret:
        volumes.append({"name": "keys", "secret": {"secretName": spec.public_key_secret}})
        mounts.append({"name": "keys", "mountPath": KEY_DIR, "readOnly": True})
    if spec.pull_secret:
        # A dockerconfigjson Secret keeps its config under this key; fetch reads it as config.json.
        items = [{"key": ".dockerconfigjson", "path": "config.json"}]
        volumes.append({"name": "registry", "secret": {"secretName": spec.pull_secret, "items": items}})
    return volumes, mounts


def _server_mounts(spec: ModelSpec, shared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server's mounts: the shared ones, and with spec.server.capture its claim's root, in
    which each server makes its own directory named like its pod (`CAPTURE_DIR`), so that replicas
    never overwrite each other's file. The root must be writable by the server's user or group
    (`RUN_AS`): the pod's fsGroup makes it so where the volume type applies one; the root file
    system stays read-only."""
    if not spec.capture_claim:
        return shared
    return [*shared, {"name": "capture", "mountPath": CAPTURE_ROOT}]


def _server_env(spec: ModelSpec) -> list[dict[str, Any]]:
    """The pod's name (the downward API) for the capture's directory; nothing without a capture."""
    if not spec.capture_claim:
        return []
    pod_name = {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    return [{"name": POD_NAME_ENV, "valueFrom": pod_name}]


def _fetch_mounts(spec: ModelSpec, shared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The init container's mounts: the shared ones, and the registry's pull secret, which the
    model server never needs to see."""
    if not spec.pull_secret:
        return shared
    return [*shared, {"name": "registry", "mountPath": REGISTRY_DIR, "readOnly": True}]


CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def deployment(
    spec: ModelSpec,
    revision: str,
    track: Track,
    replicas: int,
    owner: Mapping[str, Any],
    host: str = SERVER_BIND_ADDRESS,
) -> dict[str, Any]:
    volumes, mounts = _volumes(spec)
    probe = {
        "httpGet": {"path": "/v2/health/ready", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    liveness = {
        "httpGet": {"path": "/v2/health/live", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    }
    startup = {
        "httpGet": {"path": "/v2/health/live", "port": "http"},
        "periodSeconds": 2,
        "failureThreshold": 60,
    }
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": child_name(spec, revision),
            "namespace": spec.namespace,
            "labels": labels(spec, revision, track),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(spec, revision)},
            # relabelling at promotion rolls the pods: never below the asked replicas meanwhile
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels(spec, revision, track),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(SERVER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": GRACE_PERIOD_S,
                    "initContainers": [
                        {
                            "name": "fetch",
                            "image": spec.image,
                            "command": fetch_command(spec),
                            # a compute ResourceQuota refuses a pod any container of which, init
                            # ones included, asks for nothing; the pod's request is the larger of
                            # the two (they never run together), so this costs nothing
                            "resources": container_resources(spec.resources),
                            "securityContext": CONTAINER_SECURITY,
                            "volumeMounts": _fetch_mounts(spec, mounts),
                        }
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": spec.image,
                            "command": ["quantship"],
                            "args": serve_args(spec, revision, track, host),
                            "ports": [
                                {"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"},
                                {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                            ],
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
                            "readinessProbe": probe,
                            "livenessProbe": liveness,
                            "startupProbe": startup,
                            "resources": container_resources(spec.resources),
                            "securityContext": CONTAINER_SECURITY,
                            "volumeMounts": _server_mounts(spec, mounts),
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }
    if env := _server_env(spec):
        body["spec"]["template"]["spec"]["containers"][0]["env"] = env
    if spec.match_gate_hardware and spec.gate_int8_flags is not None:
        body["spec"]["template"]["spec"]["affinity"] = placement.node_affinity(spec.gate_int8_flags)
    return owned(body, owner)


def owned(body: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with the QuantizedModel `owner` as its controller (the garbage collector follows it)."""
    kopf.append_owner_reference(body, owner=dict(owner))  # type: ignore[arg-type]
    return body


def made_again(seen: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """A Deployment to create again as it was last seen (its spec, name and labels), owned by `owner`:
    for a revision the spec no longer describes (the stable, mid-canary)."""
    metadata = seen["metadata"]
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {k: metadata[k] for k in ("name", "namespace", "labels", "annotations") if k in metadata},
        "spec": copy.deepcopy(seen["spec"]),
    }
    return owned(body, owner)


def service(
    spec: ModelSpec, revision: str | None, owner: Mapping[str, Any], pods: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Service of one revision; with `revision` None, the model's shared Service (replicas mode).
    `pods`: the labels a revision's Deployment selects (by default those of a new one from `spec`)."""
    name = child_name(spec, revision) if revision else spec.name
    if pods is None:
        pods = selector(spec, revision) if revision else shared_selector(spec)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": {**MANAGED_BY, **pods}},
        "spec": {
            "selector": dict(pods),
            "ports": [
                {"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }
    return owned(body, owner)
