"""The sections of the QuantizedModel's spec that the model servers run by: spec.artifact (what
they serve), spec.server (flags of `quantship serve`, with spec.server.capture) and spec.placement.
"""

from __future__ import annotations

from typing import Any

from quantship.operator import crd_fields, crd_uris, names
from quantship.server.settings import MAX_SLI_CPU_BUDGET, MiB, QualitySettings, ServerSettings, Track


def artifact_schema() -> dict[str, Any]:
    """spec.artifact: where the INT8 artifact lives."""
    return crd_fields.object_of(
        "Where the INT8 artifact lives. Changing it starts a canary of the new revision.",
        {
            "uri": crd_uris.uri_schema(
                "file:///path (on the node image), pvc://CLAIM/PATH (a PersistentVolumeClaim in this "
                "namespace, mounted read-only), http(s)://.../artifact.tar.gz, or oci://REGISTRY/REPO:TAG "
                "or @sha256:DIGEST (quantship push).",
                crd_uris.ARTIFACT_URI,
            ),
            "pullSecret": crd_fields.name_of(
                "For oci://: a Secret of type kubernetes.io/dockerconfigjson with the "
                "registry's credentials (as for imagePullSecrets)."
            ),
            "publicKeySecret": crd_fields.name_of(
                "Secret holding `public.pem`: the artifact's ed25519 signature must verify "
                "with it, or the revision never starts."
            ),
        },
        required=["uri"],
    )


def _by_track(name: str) -> str:
    """What the server takes for an unset quality field, on either track."""
    stable, canary = (QualitySettings.default(name, track) for track in (Track.STABLE, Track.CANARY))
    return f"Unset: {stable:g} on the stable revision, {canary:g} on the canary"


def server_schema() -> dict[str, Any]:
    """spec.server: flags of `quantship serve`."""
    return crd_fields.object_of(
        "Flags of `quantship serve`. Unset ones take the server's defaults. Changing any starts a canary.",
        {
            "maxBatchSize": crd_fields.integer("Rows per batch the dynamic batcher builds at most.", 1, 4096),
            "maxQueueDelayMs": {
                "type": "number",
                "minimum": 0,
                "maximum": 1000,
                "description": "Milliseconds a request may wait for a batch to fill.",
            },
            "maxQueueSize": crd_fields.integer(
                "Requests waiting at most; more are refused at once with 429.", 1, 100000
            ),
            "shadowRate": crd_fields.ratio(
                "Share of requests also run through the FP32 reference (accuracy delta SLI). "
                f"{_by_track('shadow_rate')}, whose SLI CPU budget then decides (a set value applies "
                "to both).",
                exclusive_zero=False,
            ),
            "clipSampleRate": crd_fields.ratio(
                "Share of requests whose activations are checked against calibrated ranges (clip rate SLI).",
                exclusive_zero=False,
            ),
            "sliCpuBudget": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_SLI_CPU_BUDGET,
                "description": "CPU seconds a second the shadow and clip SLIs may spend, split between "
                "the two that run (shadowBudgetShare); samples past it are dropped and counted. "
                f"{_by_track('sli_cpu_budget')}; a value set here applies to both, unless "
                "canarySliCpuBudget is set. The canary's default pays for ~240 FP32 runs a minute "
                "of an image model (EfficientNet-Lite0): the analysis' default minSamples where the gate "
                "compares every row, or, under the confident-agreement rule, where FP32 is sure of 42% "
                "of them. Raise canarySliCpuBudget where a canary's SLIs still get too few samples.",
            },
            "canarySliCpuBudget": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_SLI_CPU_BUDGET,
                "description": "The SLI CPU budget of the canary's servers, in place of sliCpuBudget, for a "
                "model whose reference runs cost more than that budget can pay for in the analysis' "
                "windows (the canary's server logs what its budget buys a minute). It buys samples from "
                "idle CPU only: a canary whose cores are busy serving needs CPU or replicas instead. The "
                "stable revision's servers ignore it, and promotion restarts the canary's as stable, with "
                "sliCpuBudget's. Unset: sliCpuBudget's, else "
                f"{QualitySettings.default('sli_cpu_budget', Track.CANARY):g}. Like any field here, "
                "changing it starts a new canary.",
            },
            "shadowBudgetShare": crd_fields.ratio(
                "Share of sliCpuBudget the shadow SLI pays from when the clip SLI runs too; the clip SLI "
                f"pays from the rest. {_by_track('shadow_budget_share')} (a set value applies to both).",
                exclusive_zero=False,
            ),
            "threads": crd_fields.integer("onnxruntime intra-op threads.", 1, 256),
            "onnxruntimeSpinning": {
                "type": "boolean",
                "description": "onnxruntime's intra-op threads spin while they wait for work instead of "
                "sleeping: that may save a wake-up where the pod has cores of its own (Guaranteed QoS, the "
                "static CPU manager) and burns CPU against any limits.cpu. Unset: "
                f"{str(crd_fields.default_of(ServerSettings, 'onnxruntime_spinning')).lower()}.",
            },
            "perTensorMetrics": {
                "type": "boolean",
                "description": "Also export clip counts and activation drift per activation tensor: one "
                "series per quantized tensor (hundreds for a real network), which the per-tensor drift "
                "alert and the debug dashboard's per-tensor panels read. Unset: "
                f"{str(crd_fields.default_of(QualitySettings, 'per_tensor_metrics')).lower()}.",
            },
            "capture": _capture_schema(),
        },
    )


def _capture_schema() -> dict[str, Any]:
    """spec.server.capture: `quantship serve --capture-dir` in a claim, one directory per pod."""
    samples, size, flush = (
        crd_fields.default_of(ServerSettings, name)
        for name in ("capture_max_samples", "capture_max_bytes", "capture_flush_s")
    )
    return crd_fields.object_of(
        "Keep a reservoir sample of production inputs (calibration format) in a PersistentVolumeClaim: "
        "each server writes CLAIM/<pod name>/capture.npz, which spec.quantize.calibration reads as "
        "pvc://CLAIM/<pod name>/capture.npz. The files hold user inputs: set it only where keeping "
        f"them is allowed. The claim's root must be writable by user or group {names.RUN_AS} (the "
        "pods' fsGroup where the volume type applies one), and must not be the artifact's claim. With "
        "replicas on several nodes the claim must be ReadWriteMany.",
        {
            "claimName": crd_fields.name_of(
                "The PersistentVolumeClaim (this namespace) the servers write to."
            ),
            "maxSamples": {
                "type": "integer",
                "minimum": 1,
                "description": f"Samples each server keeps, at most. Unset: {samples}.",
            },
            "maxBytes": {
                "type": "integer",
                "minimum": 1,
                "description": f"Bytes of inputs each server keeps, at most (held in memory, written as "
                f"one file; writing briefly needs twice this). Unset: {size} ({size // MiB} MiB).",
            },
            "flushSeconds": {
                "type": "number",
                "minimum": 0,
                "description": f"Seconds between writes of the file, at least (and once at shutdown). "
                f"Unset: {flush:g}.",
            },
        },
        required=["claimName"],
    )


def placement_schema() -> dict[str, Any]:
    """spec.placement: where the model servers may run."""
    return crd_fields.object_of(
        "Where the model servers run.",
        {
            "matchGateHardware": {
                "type": "boolean",
                "default": False,
                "description": "Schedule a revision's servers only on nodes whose CPU has exactly the int8 "
                "features of the machine its accuracy gate ran on (node-feature-discovery's "
                "feature.node.kubernetes.io/cpu-cpuid.* labels, e.g. AVX512VNNI): int8 accuracy depends on "
                "them. Known for artifacts spec.quantize produced; applies to Deployments created after it "
                "is set. Condition GateHardwareMatched says whether a node could take them.",
            },
        },
    )
