"""A QuantizedModel resource read into typed settings: what to run and how to roll it out.

The handlers call `ModelSpec.from_resource` on every tick. Defaults come from the CRD's own
schema (`crd.schema()`), applied the way the API server applies them, so an object that reached
us without them (an older one, a test API) means the same thing. A spec the schema cannot catch
(windows in the wrong order, steps not increasing) raises `InvalidSpec`, which the handlers turn
into a Degraded condition while the stable revision keeps serving.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantship import slo
from quantship.operator import crd, crd_rules, fetch, names, placement, quantize_job
from quantship.rollout import AnalysisSpec, OnInconclusive, RolloutSpec, parse_duration

SERVER_FLAGS = {
    "maxBatchSize": "--max-batch-size",
    "maxQueueDelayMs": "--max-queue-delay-ms",
    "maxQueueSize": "--max-queue-size",
    "shadowRate": "--shadow-rate",
    "clipSampleRate": "--clip-sample-rate",
    "sliCpuBudget": "--sli-cpu-budget",
    "canarySliCpuBudget": "--canary-sli-cpu-budget",
    "shadowBudgetShare": "--shadow-budget-share",
    "threads": "--threads",
    "onnxruntimeSpinning": "--onnxruntime-spinning",
    "perTensorMetrics": "--per-tensor-metrics",
}
"""spec.server fields -> `quantship serve` flags; a boolean one is the flag alone, when true."""
CAPTURE_FLAGS = {
    "maxSamples": "--capture-max-samples",
    "maxBytes": "--capture-max-bytes",
    "flushSeconds": "--capture-flush-s",
}
"""spec.server.capture fields -> `quantship serve` flags. Its claimName is no flag: the Deployment
mounts the claim and passes --capture-dir (`resources`)."""


class InvalidSpec(Exception):
    """The resource passed the schema but cannot work as written. Permanent until the spec changes."""


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in where fields are missing (structural defaulting)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        result = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in result and "default" in sub:
                result[name] = copy.deepcopy(sub["default"])
            if name in result:
                result[name] = apply_defaults(sub, result[name])
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


@dataclass(frozen=True)
class ModelSpec:
    name: str
    namespace: str
    model: str
    """The model's name in the inference API and the `model` label of its metrics."""
    artifact_uri: str
    public_key_secret: str | None
    pull_secret: str | None
    """A dockerconfigjson Secret with the oci:// registry's credentials."""
    image: str
    replicas: int
    resources: Mapping[str, Any]
    server: Mapping[str, Any]
    router: str
    http_route: str | None
    port: int
    prometheus_url: str
    rollout: RolloutSpec
    match_gate_hardware: bool = False
    """spec.placement.matchGateHardware: pin the servers to nodes with the gate's int8 CPU features."""
    gate_int8_flags: tuple[str, ...] | None = None
    """The int8 CPU features the served artifact's gate ran with; None where the operator cannot
    know them (an artifact it did not produce through spec.quantize)."""
    shadow_disagreement: float | None = None
    """The share of the served artifact's evaluation rows the shadow SLI's rule counts as disagreeing
    (its manifest's validation.shadow_disagreement); None where the operator cannot know it (as
    gate_int8_flags)."""

    @property
    def revision(self) -> str:
        return self.rollout.revision

    @property
    def capture_claim(self) -> str | None:
        """spec.server.capture.claimName: the claim the servers keep their input samples in."""
        return (self.server.get("capture") or {}).get("claimName")

    def server_args(self) -> list[str]:
        """The flags spec.server sets (but --capture-dir, a path in the pod: `resources`)."""
        return _flags(self.server, SERVER_FLAGS) + _flags(self.server.get("capture") or {}, CAPTURE_FLAGS)

    @classmethod
    def from_resource(cls, body: Mapping[str, Any]) -> ModelSpec:
        metadata = body.get("metadata", {})
        spec = apply_defaults(crd.spec_schema(), dict(body.get("spec") or {}))
        if "uri" not in spec.get("artifact", {}):
            raise InvalidSpec("spec.artifact.uri is required")
        _check_names(metadata["name"], spec)
        traffic, slos, analysis, steps = spec["traffic"], spec["slos"], spec["analysis"], spec["rollout"]
        if traffic["router"] == "gateway-api" and not traffic.get("httpRoute"):
            raise InvalidSpec("spec.traffic.httpRoute is required when spec.traffic.router is gateway-api")
        gate_int8_flags = gate_hardware(spec, body.get("status") or {})
        shadow_disagreement = gate_shadow_disagreement(spec, body.get("status") or {})
        unmapped = sorted(set(gate_int8_flags or ()) - set(placement.NFD_LABELS))
        if spec["placement"]["matchGateHardware"] and unmapped:
            raise InvalidSpec(
                f"spec.placement.matchGateHardware: the gate's int8 CPU features {unmapped} have no "
                "node-feature-discovery label this operator knows; upgrade it, or set the field to false"
            )
        spec = served_artifact(spec, body.get("status") or {})
        _check_capture_claim(spec)
        model = spec.get("modelName") or metadata["name"]
        try:
            latency = slos["latency"]
            objectives = (
                slo.Objective(slo.SLI.ACCURACY_DELTA, budget=slos["maxAccuracyDelta"]),
                slo.Objective(
                    slo.SLI.LATENCY,
                    budget=round(1 - latency["objective"], 12),
                    latency_threshold=latency["thresholdSeconds"],
                ),
                slo.Objective(slo.SLI.ERRORS, budget=slos["maxErrorRate"]),
                slo.Objective(slo.SLI.CLIP_RATE, budget=slos["maxClipRate"]),
            )
            rollout = RolloutSpec(
                model=model,
                revision=revision_of(spec),
                objectives=objectives,
                steps=tuple(steps["steps"]),
                step_interval=parse_duration(steps["stepInterval"]),
                progress_deadline=parse_duration(steps["progressDeadline"]),
                analysis=AnalysisSpec(
                    short_window=parse_duration(analysis["shortWindow"]),
                    long_window=parse_duration(analysis["longWindow"]),
                    burn_rate_threshold=float(analysis["burnRateThreshold"]),
                    max_burn_rate_increase=float(analysis["maxBurnRateIncrease"]),
                    min_samples=int(analysis["minSamples"]),
                    failure_limit=int(analysis["failureLimit"]),
                    inconclusive_limit=int(analysis["inconclusiveLimit"]),
                    on_inconclusive=OnInconclusive(analysis["onInconclusive"]),
                    max_fallback_ops=int(slos["maxFallbackOps"]),
                    labels={
                        names.NAMESPACE_LABEL: metadata.get("namespace", "default"),
                        **(analysis.get("labels") or {}),
                    },
                ),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidSpec(f"invalid spec: {exc}") from exc
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace", "default"),
            model=model,
            artifact_uri=spec["artifact"]["uri"],
            public_key_secret=spec["artifact"].get("publicKeySecret"),
            pull_secret=spec["artifact"].get("pullSecret"),
            image=spec["image"],
            replicas=int(spec["replicas"]),
            resources=dict(spec.get("resources") or {}),
            server=dict(spec["server"]),
            router=traffic["router"],
            http_route=traffic.get("httpRoute"),
            port=int(traffic["port"]),
            prometheus_url=analysis["prometheusUrl"],
            rollout=rollout,
            match_gate_hardware=bool(spec["placement"]["matchGateHardware"]),
            gate_int8_flags=gate_int8_flags,
            shadow_disagreement=shadow_disagreement,
        )


def _flags(section: Mapping[str, Any], flags: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for field, flag in flags.items():
        value = section.get(field)
        if isinstance(value, bool):
            args += [flag] if value else []
        elif value is not None:
            args += [flag, str(value)]
    return args


def _check_names(name: str, spec: Mapping[str, Any]) -> None:
    """What the CRD refuses at admission (for a resource admitted before it did), and what it
    cannot say: the operator would create objects Kubernetes refuses, and run queries Prometheus
    cannot parse, again at every retry."""
    if len(name) > names.MAX_NAME_LENGTH or not re.fullmatch(names.DNS_1035_LABEL, name):
        raise InvalidSpec(
            f"metadata.name {name!r} cannot name the model's Services: a DNS-1035 label "
            f"(a-z, 0-9, -) of at most {names.MAX_NAME_LENGTH} characters"
        )
    errors = names.analysis_label_errors(spec["analysis"].get("labels") or {})
    if errors:
        raise InvalidSpec(f"spec.analysis.labels: {'; '.join(errors)}")
    errors = names.container_resource_errors(spec.get("resources") or {})
    if errors:
        raise InvalidSpec(f"spec.resources: {'; '.join(errors)}")
    if (spec.get("traffic") or {}).get("port") == names.GRPC_PORT:
        raise InvalidSpec(crd_rules.PORT_NOT_GRPC["message"])


def _check_capture_claim(spec: Mapping[str, Any]) -> None:
    """spec.server.capture's claim is never the served artifact's (spec.artifact's, or a pvc://
    artifact spec.quantize made), nor spec.quantize's target: writable for the capture, the kubelet
    would give the whole model store to the pod's fsGroup at every pod start, and users' inputs
    would sit next to the models."""
    capture = ((spec.get("server") or {}).get("capture") or {}).get("claimName")
    uris = {
        "the served artifact": spec["artifact"]["uri"],
        "spec.quantize.target": ((spec.get("quantize") or {}).get("target") or {}).get("uri", ""),
    }
    for what, uri in uris.items():
        if capture and str(uri).startswith("pvc://") and fetch.pvc_claim(str(uri)) == capture:
            raise InvalidSpec(
                f"spec.server.capture.claimName {capture!r} is the claim of {what} ({uri}): capture "
                "into a claim of its own (the servers mount it writable, and the models' claim read-only)"
            )


def served_artifact(spec: dict[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with the artifact the servers run: while spec.quantize is set and one of its Jobs
    passed the gate (status.quantizedArtifact), that Job's artifact replaces spec.artifact, with
    the pull secret of the target it was published to (not the section's now: an edited target
    is a new Job, and until it passes the artifact serves as before); its Job's name is part of
    the revision (a pvc:// path or oci:// tag may be reused)."""
    produced = status.get("quantizedArtifact")
    if not spec.get("quantize") or not produced:
        return spec
    artifact = {"uri": produced["uri"], "job": produced["job"]}
    if "target" in produced:
        pull_secret = produced.get("pullSecret")
    else:  # recorded by an older operator, which kept no target: the section's secret, as it did
        pull_secret = (spec["quantize"].get("target") or {}).get("pullSecret")
    if pull_secret:
        artifact["pullSecret"] = pull_secret
    if spec["artifact"].get("publicKeySecret"):
        artifact["publicKeySecret"] = spec["artifact"]["publicKeySecret"]
    return {**spec, "artifact": artifact}


def gate_hardware(spec: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The int8 CPU features the served artifact was gated on, where the operator learnt them: from
    spec.quantize's Job, which reads the manifest it produced (status.quantizedArtifact.int8Flags)."""
    produced = status.get("quantizedArtifact") if spec.get("quantize") else None
    flags = (produced or {}).get("int8Flags")
    return tuple(str(flag) for flag in flags) if isinstance(flags, list) else None


def gate_shadow_disagreement(spec: Mapping[str, Any], status: Mapping[str, Any]) -> float | None:
    """The served artifact's shadow disagreement on its evaluation rows, where the operator learnt it:
    from spec.quantize's Job, as `gate_hardware` (status.quantizedArtifact.shadowDisagreement)."""
    produced = status.get("quantizedArtifact") if spec.get("quantize") else None
    return quantize_job.share((produced or {}).get("shadowDisagreement"))


def revision_of(spec: Mapping[str, Any]) -> str:
    """A revision id: hex digits over everything that changes what the servers do. Replicas,
    SLOs and rollout settings are not part of it: changing them starts no canary."""
    served = {
        "artifact": spec.get("artifact"),
        "image": spec.get("image"),
        "server": spec.get("server") or {},
        "modelName": spec.get("modelName"),
    }
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[: names.REVISION_DIGITS]
