"""The children a QuantizedModel owns, built without an API: every field the cluster relies on."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import re2
from kubernetes import client

from quantship.cli import serving
from quantship.operator import crd, crd_uris, fetch, resources
from quantship.operator.kube import to_model
from quantship.operator.routers import split
from quantship.operator.spec import CAPTURE_FLAGS, SERVER_FLAGS, InvalidSpec, ModelSpec
from quantship.operator.workloads import _resource_patches
from quantship.rollout import Track
from quantship.server.capture import CAPTURE_FILE, Capture

OWNER = {
    "apiVersion": "serving.quantship.io/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "0b3c-uid"},
}


def model(**spec: Any) -> ModelSpec:
    body = {**OWNER, "spec": {"artifact": {"uri": "https://models.example.com/digits.tar.gz"}, **spec}}
    return ModelSpec.from_resource(body)


def test_a_revision_runs_as_a_non_root_read_only_deployment_with_probes_and_scrape_annotations() -> None:
    spec = model(server={"maxBatchSize": 8, "shadowRate": 0.1, "sliCpuBudget": 0.05})
    body = resources.deployment(spec, spec.revision, Track.CANARY, 2, OWNER)

    kubernetes_validate.validate(body, "1.30", strict=True)
    assert body["metadata"]["name"] == f"digits-{spec.revision}"
    labels = body["spec"]["template"]["metadata"]["labels"]
    assert (labels["model"], labels["revision"], labels["track"]) == ("digits", spec.revision, "canary")
    assert "track" not in body["spec"]["selector"]["matchLabels"], (
        "promotion relabels; selectors are immutable"
    )
    pod = body["spec"]["template"]["spec"]
    server, fetch = pod["containers"][0], pod["initContainers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for container in (server, fetch):
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert not security["allowPrivilegeEscalation"] and security["capabilities"] == {"drop": ["ALL"]}
    assert fetch["command"][:4] == ["quantship", "fetch", spec.artifact_uri, resources.MODEL_DIR]
    args = server["args"]
    assert args[:2] == ["serve", resources.MODEL_DIR]
    assert args[args.index("--track") + 1] == "canary" and args[args.index("--revision") + 1] == spec.revision
    assert args[args.index("--max-batch-size") + 1] == "8" and args[args.index("--shadow-rate") + 1] == "0.1"
    assert args[args.index("--sli-cpu-budget") + 1] == "0.05"
    annotations = body["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    assert body["metadata"]["ownerReferences"] == [
        {
            "apiVersion": OWNER["apiVersion"],
            "kind": "QuantizedModel",
            "name": "digits",
            "uid": "0b3c-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


@pytest.mark.parametrize("track", list(Track))
def test_unset_sampling_is_left_to_the_server_so_that_it_follows_the_track(track: Track) -> None:
    """A canary's server samples more by default (QualitySettings.for_track), and promotion only
    flips --track: the operator passes no sampling value the spec does not set."""
    args = resources.serve_args(model(server={"maxBatchSize": 8}), "0123456789", track)
    assert not {"--shadow-rate", "--clip-sample-rate", "--sli-cpu-budget"} & set(args)
    assert args[args.index("--track") + 1] == track.value


def test_the_canary_budget_is_a_canarys_alone_and_promotion_drops_it_without_editing_args() -> None:
    """The operator passes spec.server.canarySliCpuBudget to every revision; promotion flips only
    --track, and the promoted server then takes the shared budget."""
    spec = model(server={"sliCpuBudget": 0.02, "canarySliCpuBudget": 0.3})
    canary = resources.serve_args(spec, "0123456789", Track.CANARY)
    promoted = resources.on_track(canary, Track.STABLE)
    assert [a for a, b in zip(canary, promoted, strict=True) if a != b] == [Track.CANARY.value]

    def budget(args: list[str]) -> float:
        context = serving.serve.make_context("serve", args[1:])  # args[0] is the subcommand
        options = {k: v for k, v in context.params.items() if k not in ("log_level", "access_log")}
        return serving.serve_settings(**options).quality.sli_cpu_budget

    assert (budget(canary), budget(promoted)) == (0.3, 0.02)


def test_every_server_field_of_the_crd_is_a_flag_that_quantship_serve_takes() -> None:
    server = crd.spec_schema()["properties"]["server"]["properties"]
    assert set(server) == {*SERVER_FLAGS, "capture"}
    assert set(server["capture"]["properties"]) == {*CAPTURE_FLAGS, "claimName"}, "claimName: --capture-dir"
    options = {option: param for param in serving.serve.params for option in param.opts}
    assert {*SERVER_FLAGS.values(), *CAPTURE_FLAGS.values()} <= set(options)
    for field, flag in CAPTURE_FLAGS.items():  # the CLI's bounds: what it refuses, the CRD refuses
        assert server["capture"]["properties"][field]["minimum"] == options[flag].type.min, field
    assert options[SERVER_FLAGS["perTensorMetrics"]].is_flag, "a boolean field is passed as the flag alone"


def serve_settings(args: list[str]) -> Any:
    """What `quantship serve` makes of the operator's args (args[0] is the subcommand)."""
    context = serving.serve.make_context("serve", args[1:])
    options = {k: v for k, v in context.params.items() if k not in ("log_level", "access_log")}
    return serving.serve_settings(**options)


def test_per_tensor_metrics_and_capture_reach_the_server_as_its_flags() -> None:
    capture = {"claimName": "captures", "maxSamples": 200, "maxBytes": 1 << 20, "flushSeconds": 5.5}
    spec = model(server={"perTensorMetrics": True, "capture": capture})
    settings = serve_settings(resources.serve_args(spec, spec.revision, Track.CANARY))
    assert settings.quality.per_tensor_metrics
    assert str(settings.capture_dir) == resources.CAPTURE_DIR
    assert (settings.capture_max_samples, settings.capture_max_bytes, settings.capture_flush_s) == (
        200,
        1 << 20,
        5.5,
    )
    off = serve_settings(
        resources.serve_args(model(server={"perTensorMetrics": False}), "0123456789", Track.STABLE)
    )
    assert not off.quality.per_tensor_metrics and off.capture_dir is None, "unset or false: off, as today"


@pytest.mark.parametrize("spinning", [True, False, None])
def test_onnxruntime_spinning_reaches_the_server_only_when_true(spinning: bool | None) -> None:
    server = {} if spinning is None else {"onnxruntimeSpinning": spinning}
    spec = model(server=server)
    settings = serve_settings(resources.serve_args(spec, spec.revision, Track.CANARY))
    assert settings.onnxruntime_spinning is bool(spinning)


def kubelet_expanded(arg: str, env: dict[str, str]) -> str:
    """An arg as the kubelet passes it: $(VAR) of the container's env replaced, an unknown one kept."""
    return re.sub(r"\$\((\w+)\)", lambda match: env.get(match[1], match[0]), arg)


def test_each_server_captures_into_its_own_directory_of_the_claim_named_like_its_pod(tmp_path: Path) -> None:
    """The claim's root is mounted (no subPath, whose directory the kubelet would make, root-owned,
    where fsGroup does not apply); --capture-dir names the pod's directory in it, which the kubelet
    expands from the env and the server makes, as its own user, in a root it can write."""
    spec = model(server={"capture": {"claimName": "captures"}})
    body = resources.deployment(spec, spec.revision, Track.STABLE, 3, OWNER)
    kubernetes_validate.validate(body, "1.30", strict=True)
    to_model(client.V1Deployment, body)
    pod = body["spec"]["template"]["spec"]
    server, init = pod["containers"][0], pod["initContainers"][0]

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["capture"]["persistentVolumeClaim"] == {"claimName": "captures"}
    assert {"name": "capture", "mountPath": resources.CAPTURE_ROOT} in server["volumeMounts"]
    assert not any("subPath" in m or "subPathExpr" in m for m in server["volumeMounts"])
    assert not any(m["name"] == "capture" for m in init["volumeMounts"])
    assert server["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
    ]
    pod_name = f"digits-{spec.revision}-7d9f8b6c4-xk2p4"
    capture_dir = kubelet_expanded(
        server["args"][server["args"].index("--capture-dir") + 1], {"POD_NAME": pod_name}
    )
    assert capture_dir == f"{resources.CAPTURE_ROOT}/{pod_name}"
    # the server's start (Capture.prepare) in the claim's root, standing in for CAPTURE_ROOT
    claim_root = tmp_path / "captures"
    claim_root.mkdir()
    Capture.prepare(claim_root / Path(capture_dir).relative_to(resources.CAPTURE_ROOT))
    assert (claim_root / pod_name).is_dir()
    # what a quantize Job reads back, as spec.quantize.calibration
    uri = f"pvc://captures/{pod_name}/{CAPTURE_FILE}"
    assert re2.search(crd_uris.INPUT_URI.pattern, uri)
    root = Path(resources.PVC_ROOT)
    assert fetch.source_path(uri, root) == root / "captures" / pod_name / CAPTURE_FILE


def test_without_capture_the_pod_is_as_before() -> None:
    spec = model(server={"perTensorMetrics": True})
    pod = resources.deployment(spec, spec.revision, Track.STABLE, 1, OWNER)["spec"]["template"]["spec"]
    assert "env" not in pod["containers"][0] and "--capture-dir" not in pod["containers"][0]["args"]
    assert [volume["name"] for volume in pod["volumes"]] == ["artifact", "tmp"]


@pytest.mark.parametrize(
    ("spec", "status", "what"),
    [
        ({"artifact": {"uri": "pvc://models/digits/v2"}}, {}, "the served artifact"),
        (  # the artifact a spec.quantize Job published to a pvc:// target
            {"quantize": {"model": "pvc://models/fp32", "calibration": "pvc://data/c.npz",
                          "target": {"uri": "pvc://models/out"}}},
            {"quantizedArtifact": {"uri": "pvc://models/out/digits/0123", "job": "digits-q-0123",
                                   "target": "pvc://models/out"}},
            "the served artifact",
        ),
        (  # before its Job passes: where the artifact it makes would be
            {"quantize": {"model": "https://models.example.com/fp32.onnx", "calibration": "pvc://data/c.npz",
                          "target": {"uri": "pvc://models/out"}}},
            {},
            "spec.quantize.target",
        ),
    ],
)  # fmt: skip
def test_a_capture_on_the_artifacts_claim_is_refused(
    spec: dict[str, Any], status: dict[str, Any], what: str
) -> None:
    """Writable for the capture, the claim would be chowned to the pod's fsGroup, every model in it,
    at every pod start; and users' inputs would sit next to the models."""
    body = {
        **OWNER,
        "spec": {"artifact": {"uri": "https://models.example.com/digits.tar.gz"}, **spec,
                 "server": {"capture": {"claimName": "models"}}},
        "status": status,
    }  # fmt: skip
    with pytest.raises(InvalidSpec, match=f"'models' is the claim of {what} .*a claim of its own"):
        ModelSpec.from_resource(body)
    body["spec"]["server"]["capture"]["claimName"] = "captures"
    ModelSpec.from_resource(body)  # a claim of its own


def test_a_pvc_artifact_and_a_signing_key_are_mounted_read_only() -> None:
    spec = model(artifact={"uri": "pvc://models/digits/v2", "publicKeySecret": "signing"})
    pod = resources.deployment(spec, spec.revision, Track.STABLE, 1, OWNER)["spec"]["template"]["spec"]

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["source"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["keys"]["secret"] == {"secretName": "signing"}
    mounts = {mount["name"]: mount for mount in pod["initContainers"][0]["volumeMounts"]}
    assert mounts["source"] == {"name": "source", "mountPath": "/mnt/pvc/models", "readOnly": True}
    assert pod["initContainers"][0]["command"][-2:] == ["--public-key", "/etc/quantship/keys/public.pem"]
    assert pod["containers"][0]["args"][-2:] == ["--public-key", "/etc/quantship/keys/public.pem"]


def test_integer_quantities_reach_the_api_client_as_the_strings_it_takes() -> None:
    """The CRD admits `cpu: 2`, as a Pod does; the client's typed models take only strings."""
    spec = model(resources={"limits": {"cpu": 2, "memory": "1Gi"}, "requests": {"cpu": "500m"}})
    body = resources.deployment(spec, spec.revision, Track.STABLE, 1, OWNER)
    typed = to_model(client.V1Deployment, body)
    assert typed.spec.template.spec.containers[0].resources.limits == {"cpu": "2", "memory": "1Gi"}


def test_the_fetch_init_container_asks_for_the_servers_resources_as_a_compute_quota_requires() -> None:
    """A namespace's compute ResourceQuota refuses a pod any container of which, init containers
    included, names no limits.memory (when no LimitRange fills it in)."""
    asked = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}}
    spec = model(resources=asked)
    pod = resources.deployment(spec, spec.revision, Track.STABLE, 2, OWNER)["spec"]["template"]["spec"]
    given = {c["name"]: c.get("resources") for c in pod["initContainers"] + pod["containers"]}
    as_strings = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    assert given == {"fetch": as_strings, "server": as_strings}


def test_an_empty_resources_section_is_left_out_as_the_api_server_stores_it() -> None:
    """`requests: {}` (the CRD admits it) is not stored by the API server: kept in what the operator
    asks, the Deployment differed from it on every resync and was patched each time."""
    spec = model(resources={"limits": {"memory": "1Gi"}, "requests": {}})
    wanted = resources.deployment(spec, spec.revision, Track.STABLE, 2, OWNER)
    stored = copy.deepcopy(wanted)
    pod = stored["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        container["resources"] = {kind: v for kind, v in container["resources"].items() if v}
    assert wanted["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}
    assert _resource_patches(stored, wanted) == []


def test_services_select_one_revision_or_the_whole_model() -> None:
    spec = model()
    one = resources.service(spec, spec.revision, OWNER)
    shared = resources.service(spec, None, OWNER)

    for body in (one, shared):
        kubernetes_validate.validate(body, "1.30", strict=True)
    assert one["spec"]["selector"]["revision"] == spec.revision
    assert "revision" not in shared["spec"]["selector"] and shared["metadata"]["name"] == "digits"
    # not by `model`: both tracks, whatever spec.modelName each was made with (part of the revision)
    # a Helm release named like the model labels its pods with the same instance: not selected
    assert shared["spec"]["selector"] == {
        "app.kubernetes.io/name": "quantship-server",
        "app.kubernetes.io/instance": "digits",
    }
    assert resources.is_revision_service(spec, one["metadata"]["name"])
    assert resources.is_revision_service(spec, "digits")
    assert not resources.is_revision_service(spec, "digits-legacy")


@pytest.mark.parametrize(
    ("replicas", "weight", "expected"),
    [
        (4, 5, (1, 3)),
        (4, 25, (1, 3)),
        (4, 50, (2, 2)),
        (4, 100, (4, 1)),  # one stable stays until promotion: a rollback target that serves
        (2, 25, (1, 1)),
        (1, 50, (1, 1)),
        (10, 5, (1, 9)),
        (10, 95, (9, 1)),
    ],
)
def test_replica_split_is_as_close_as_whole_pods_allow(
    replicas: int, weight: int, expected: tuple[int, int]
) -> None:
    assert split(replicas, weight) == expected


def test_an_oci_artifact_with_a_pull_secret_mounts_it_for_the_fetch_container_only() -> None:
    uri = "oci://registry.example:5000/models/digits@sha256:" + "a" * 64
    spec = model(artifact={"uri": uri, "pullSecret": "registry-creds"})
    body = resources.deployment(spec, spec.revision, Track.CANARY, 1, OWNER)
    kubernetes_validate.validate(body, "1.30", strict=True)
    pod = body["spec"]["template"]["spec"]
    server, fetch = pod["containers"][0], pod["initContainers"][0]
    assert fetch["command"][:4] == ["quantship", "fetch", uri, resources.MODEL_DIR]
    assert fetch["command"][-2:] == ["--registry-config", f"{resources.REGISTRY_DIR}/config.json"]
    secret = next(v for v in pod["volumes"] if v["name"] == "registry")["secret"]
    assert secret == {
        "secretName": "registry-creds",
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }
    assert any(m["mountPath"] == resources.REGISTRY_DIR for m in fetch["volumeMounts"])
    assert not any(m["mountPath"] == resources.REGISTRY_DIR for m in server["volumeMounts"])
