"""The QuantizedModel CustomResourceDefinition, rendered from code.

`make generate` writes it to manifests/crd.yaml and, as a template behind `crds.enabled`, into the
Helm chart; a test checks both are current. The schema is structural, as apiextensions.k8s.io/v1
demands (tests/unit/operator/test_crd_structural.py implements those rules over it): every node
typed, closed objects without `additionalProperties` (the API server prunes unknown fields on
write and on read, and warns the client that sent them), only value checks inside anyOf/allOf,
and every default valid and true to every CEL rule. Defaults live here, so `kubectl get -o yaml`
shows every value the operator acts on.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import yaml

from quantship import choices, oci, slo
from quantship.operator import names
from quantship.rollout import AnalysisSpec, OnInconclusive, RolloutSpec, format_duration
from quantship.server.settings import MAX_SLI_CPU_BUDGET, MiB, QualitySettings, ServerSettings, Track

GROUP = "serving.quantship.io"
VERSION = "v1alpha1"
KIND = "QuantizedModel"
PLURAL = "quantizedmodels"
SINGULAR = "quantizedmodel"
SHORT_NAME = "qm"
API_VERSION = f"{GROUP}/{VERSION}"

ABORT_ANNOTATION = f"{GROUP}/abort"
"""Set (any value) to roll the running canary back now."""
PROMOTE_ANNOTATION = f"{GROUP}/promote"
"""Set (any value) to promote the running canary now, skipping its remaining steps."""
RETRY_ANNOTATION = f"{GROUP}/retry"
"""Set (any value) to roll the rolled back or failed revision the spec still asks for out again (as
`kubectl argo rollouts retry`): after fixing what failed it, e.g. the analysis' Prometheus or labels."""
ANNOTATIONS = (ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION)
"""Requests to the operator: each used up once acted on (removed), or meaningless in the state."""

GATEWAY_NEEDS_ROUTE = {
    "rule": "!has(self.router) || self.router != 'gateway-api' || has(self.httpRoute)",
    "message": "traffic.httpRoute is required when traffic.router is gateway-api",
}
PORT_NOT_GRPC = {
    "rule": f"!has(self.port) || self.port != {names.GRPC_PORT}",
    "message": f"traffic.port must not be {names.GRPC_PORT}, the model Services' gRPC port",
}
"""spec.traffic's CEL rules. `has()` guards: the API server checks them against `default: {}` as well."""
WINDOWS_IN_ORDER = {
    "rule": "!has(self.shortWindow) || !has(self.longWindow) "
    "|| duration(self.shortWindow) < duration(self.longWindow)",
    "message": "analysis.longWindow must be longer than analysis.shortWindow",
}
"""spec.analysis's CEL rule (the operator checks it again for objects stored before it existed)."""
MAX_STEPS = 20
STEPS_INCREASE = {
    "rule": f"{list(range(MAX_STEPS - 1))}.all(i, i + 1 >= self.size() || self[i] < self[i + 1])",
    "message": "rollout.steps must increase",
}
"""spec.rollout.steps' CEL rule, each step against the next (CEL's macros give no index; the list
of every index but the last stands for one). The operator checks it again for older objects."""

GATE_FAILED = "GateFailed"
"""status.phase when spec.quantize's Job failed its accuracy gate: no canary, the stable serves on."""
QUANTIZE_STATES = ("Running", "Passed", GATE_FAILED, "Error")
"""status.quantize.state: the Job runs; its gate passed; its gate failed; it failed otherwise."""

DURATION_PATTERN = r"^([0-9]{1,4}h)?([0-9]{1,4}m)?([0-9]{1,5}s)?$"
"""At most 9999h9999m99999s (about 14 months): a longer window overflows Prometheus' durations
and the API server's CEL duration(), and no rollout waits that long."""


_NOT_IN_PATH = r"/?#%\s\x00-\x1f\x7f"
"""What a pvc:// path segment holds none of: the separator, what urlparse would cut the path at
(? #), percent-encoding (fetch would decode it), ASCII space and control characters."""
_PATH_CHAR = f"[^{_NOT_IN_PATH}]"
_NOT_DOT = f"[^.{_NOT_IN_PATH}]"
_NAMED = f"({_NOT_DOT}{_PATH_CHAR}*|\\.{_NOT_DOT}{_PATH_CHAR}*|\\.\\.{_PATH_CHAR}+)"
"""A path segment that names something: not empty, not `.` or `..` (RE2 has no lookahead)."""
_SEGMENT = f"({_NAMED}|\\.)?"
"""Any path segment but `..`."""
_IN_CLAIM = f"/({_SEGMENT}/)*{_NAMED}(/{_SEGMENT})*"
"""A path inside a claim: it names something below the claim, and never goes up out of it."""


def _pattern(*schemes: str, in_claim: bool, push: bool) -> str:
    """URIs of these schemes; a pvc:// one names a claim that can exist and stays inside it
    (pvc://CLAIM[/PATH], no `..`), and with `in_claim` names a path in it (pvc://CLAIM/PATH, as a
    quantize Job mounts it); an oci:// one is a reference to pull (a tag, a digest or both) or,
    with `push`, to push to (a tag)."""
    others = "|".join(scheme for scheme in schemes if scheme not in ("pvc", "oci"))
    path = _IN_CLAIM if in_claim else f"(/{_SEGMENT})*"
    alternatives = [f"({others})://.+"] if others else []
    if "oci" in schemes:  # an ambiguous reference sent a registry's credentials elsewhere (oci_reference.py)
        reference = oci.PUSH_REFERENCE_PATTERN if push else oci.PULL_REFERENCE_PATTERN
        alternatives.append(f"oci://{reference}")
    if "pvc" in schemes:
        alternatives.append(f"pvc://{names.SUBDOMAIN}{path}")
    return f"^({'|'.join(alternatives)})$"


_FORMS = {
    "file": "file:///PATH",
    "pvc": "pvc://CLAIM[/PATH]",
    "http": "http(s)://HOST/PATH",
    "oci": "oci://REGISTRY[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST] (a tag, a digest or both)",
}
"""Each scheme's form, in the order a message names them."""
_NOTES = {
    "pvc": "a pvc:// CLAIM is a claim's name, its PATH has no '..' segment, '?', '#', '%', space or control "
    "character",
    "oci": "REPOSITORY in lower-case letters, digits, '.', '_', '-', split by '/'",
}


def _message(*schemes: str, in_claim: bool, push: bool) -> str:
    """What _pattern(*schemes, ...) admits, in words: the API server's whole answer to a URI that
    does not match (as a CEL rule's message; a `pattern` would print its regex)."""
    forms = {**_FORMS}
    if in_claim:
        forms["pvc"] = "pvc://CLAIM/PATH"
    if push:
        forms["oci"] = "oci://REGISTRY[:PORT]/REPOSITORY:TAG (a tag, no digest: the Job pushes to it)"
    named = [form for scheme, form in forms.items() if scheme in schemes]
    notes = [note for scheme, note in _NOTES.items() if scheme in schemes]
    return f"must be {', '.join(named[:-1])} or {named[-1]}; {'; '.join(notes)}"


@dataclasses.dataclass(frozen=True)
class UriForm:
    """The URIs a field takes: the pattern the CRD's rule, the operator and the quantize Job check,
    and the same in words (the rule's message, the chart's refusal). Both come from one `of` call,
    so they cannot name different schemes."""

    pattern: str
    message: str

    @classmethod
    def of(cls, *schemes: str, in_claim: bool = False, push: bool = False) -> UriForm:
        """URIs of these schemes; `in_claim`: a pvc:// one names a path in its claim; `push`: an
        oci:// one is a tag to push to, not a reference to pull."""
        return cls(
            pattern=_pattern(*schemes, in_claim=in_claim, push=push),
            message=_message(*schemes, in_claim=in_claim, push=push),
        )


ARTIFACT_SCHEMES = ("file", "pvc", "http", "https", "oci")
"""What `quantship fetch` takes (fetch.source_path), so what spec.artifact.uri may be."""
ARTIFACT_URI = UriForm.of(*ARTIFACT_SCHEMES)
MAX_URI_CHARS = 1024
"""The longest URI a spec field takes. The longest OCI reference a registry serves is about 700
(host 253, repository 255, tag 128, digest 71); object stores' URLs are shorter (a presigned one,
which expires, is no artifact's address). Five at JSON_BYTES_PER_CHAR (92 KB) keep within what
OPTION_NAMES_BUDGET_BYTES leaves the rest of the object. It also bounds the CEL cost of the
fields' `matches()`, which the API server estimates before it takes the CRD: (4 x maxLength + 1)
/ 10 x the pattern's length / 4 (k8s.io/apiserver's cel/common/schemas.go counts 4 bytes a
character; cel-go's checker/cost.go), 71,750 for the longest pattern here, against 10,000,000 a
rule. Unbounded (a string as long as a 3 MiB request), 39 to 55 million: the CRD is refused.
apiserver_rules.matches_costs estimates them in the tests."""


def matches_rule(pattern: str) -> str:
    """The CEL rule `self` matches `pattern` (RE2 in CEL as in Go), in a raw string: escapes such
    as \\. or \\s reach the regex as written (a quoted CEL string refuses them). A raw string ends
    at the first quote and holds no line break (cel-go's lexer, CEL.g4)."""
    if any(character in pattern for character in "'\r\n"):
        raise ValueError(f"a CEL raw string cannot hold {pattern!r}: a quote or a line break")
    return f"self.matches(r'{pattern}')"


def uri_schema(description: str, form: UriForm) -> dict[str, Any]:
    """A URI field: `form`'s pattern in a CEL rule whose message says it in words."""
    return {
        "type": "string",
        "maxLength": MAX_URI_CHARS,
        "x-kubernetes-validations": [{"rule": matches_rule(form.pattern), "message": form.message}],
        "description": description,
    }


IMAGE_PATTERN = r"^[a-zA-Z0-9\[][a-zA-Z0-9._/:@\[\]-]*$"
"""A container image reference's characters (registry[:port]/path[:tag][@digest]). No reference
holds whitespace, and a Pod's image with some at either end is refused by the API server."""
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
    "minimum": 0,  # for an integer; the pattern has no minus sign for a string
    "pattern": rf"^\+?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$",
}
"""A resource.Quantity, as Kubernetes' own CRDs declare it (100m, 2Gi, 1e3), not negative (which
a container's resources refuse)."""


def _default(spec: type[Any], name: str) -> Any:
    """A field's default in the rollout engine's spec dataclasses: the CRD's defaults are theirs."""
    field = {field.name: field for field in dataclasses.fields(spec)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    assert field.default_factory is not dataclasses.MISSING
    return field.default_factory()


def _duration(field: str, description: str, default: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "minLength": 2,
        "maxLength": 16,  # the pattern's longest; bounds the CEL cost of duration() in WINDOWS_IN_ORDER
        "x-kubernetes-validations": [_longer_than_zero(field)],
        "default": default,
        "description": description,
    }


def _longer_than_zero(field: str) -> dict[str, str]:
    """A CEL rule refusing a duration of no time (`0s`, `0h0m`), which the operator would mark
    InvalidSpec: one that matches the pattern is longer than zero where it has a digit not 0. One
    that does not match is left to the pattern's one error (duration() of it is an evaluation error)."""
    return {
        "rule": f"!self.matches('{DURATION_PATTERN}') || self.matches('[1-9]')",
        "message": f"{field} must be longer than 0s",
    }


def _ratio(description: str, default: float | None = None, *, exclusive_zero: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1, "description": description}
    if exclusive_zero:
        schema["exclusiveMinimum"] = True
    if default is not None:
        schema["default"] = default
    return schema


def _int(description: str, minimum: int, maximum: int, default: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "integer",
        "minimum": minimum,
        "maximum": maximum,
        "description": description,
    }
    if default is not None:
        schema["default"] = default
    return schema


def _object(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties, **extra}


def _name_of(description: str) -> dict[str, Any]:
    """A reference to an object in the namespace (a Secret, an HTTPRoute) by its name."""
    return {
        "type": "string",
        "pattern": names.DNS_1123_SUBDOMAIN,
        "maxLength": 253,
        "description": description,
    }


def _resources(description: str) -> dict[str, Any]:
    """A core/v1 ResourceRequirements' limits and requests (no claims: the pods name no resource
    claims to use). A bad quantity is refused at `kubectl apply`, not by every Deployment the
    operator then tries to create; names and request <= limit are InvalidSpec (`names`)."""
    quantities = {"type": "object", "additionalProperties": QUANTITY}
    return _object(
        description,
        {
            "limits": {**quantities, "description": "Most of each resource the container may use."},
            "requests": {**quantities, "description": "What the scheduler reserves for the container."},
        },
    )


def spec_schema() -> dict[str, Any]:
    """The QuantizedModel's spec: one function per section, below."""
    return _object(
        "A quantized model served by quantship, rolled out as a canary judged by SLO burn rates.",
        {
            "modelName": {
                "type": "string",
                "pattern": names.LABEL_VALUE,
                "maxLength": names.MAX_LABEL_VALUE_LENGTH,
                "description": "Name in the inference API and in the `model` label of the pods and "
                "of every metric. Defaults to the resource's name.",
            },
            "artifact": _artifact_schema(),
            "quantize": _quantize_schema(),
            "image": {
                "type": "string",
                "pattern": IMAGE_PATTERN,
                "default": "ghcr.io/quantship/quantship:0.1.0",
                "description": "Image with the `quantship` command (serve and fetch).",
            },
            "replicas": _int("Model servers per revision.", 1, 100, 2),
            "resources": _resources("Container resources of each model server."),
            "server": {**_server_schema(), "default": {}},
            "traffic": {**_traffic_schema(), "default": {}},
            "rollout": {**_rollout_schema(), "default": {}},
            "slos": {**_slos_schema(), "default": {}},
            "analysis": {**_analysis_schema(), "default": {}},
            "placement": {**_placement_schema(), "default": {}},
        },
        required=["artifact"],
    )


def _artifact_schema() -> dict[str, Any]:
    """spec.artifact: where the INT8 artifact lives."""
    return _object(
        "Where the INT8 artifact lives. Changing it starts a canary of the new revision.",
        {
            "uri": uri_schema(
                "file:///path (on the node image), pvc://CLAIM/PATH (a PersistentVolumeClaim in this "
                "namespace, mounted read-only), http(s)://.../artifact.tar.gz, or oci://REGISTRY/REPO:TAG "
                "or @sha256:DIGEST (quantship push).",
                ARTIFACT_URI,
            ),
            "pullSecret": _name_of(
                "For oci://: a Secret of type kubernetes.io/dockerconfigjson with the "
                "registry's credentials (as for imagePullSecrets)."
            ),
            "publicKeySecret": _name_of(
                "Secret holding `public.pem`: the artifact's ed25519 signature must verify "
                "with it, or the revision never starts."
            ),
        },
        required=["uri"],
    )


ANNOTATIONS_LIMIT_BYTES = 256 * 1024
"""The most an object's annotations may hold in all (apimachinery's TotalAnnotationSizeLimitB)."""
JSON_BYTES_PER_CHAR = 12 + 6
"""The most bytes one character of the spec takes in the two copies of it annotations keep: kopf's
last-handled-configuration (Python's json.dumps escapes to ASCII: an astral character is a
surrogate pair, \\ud83d\\ude00) and `kubectl apply`'s last-applied-configuration (Go's encoding/json:
`<` is \\u003c). The CRD's maxLength counts characters, not bytes."""
OPTION_NAMES_BUDGET_BYTES = ANNOTATIONS_LIMIT_BYTES * 3 // 5
"""What the names in spec.quantize.options (output, maskInput, excludeNodes) may take of those
annotations at worst, both copies together: the rest of the object (URIs, labels, a user's own
annotations) keeps 100 KiB. Past the limit the API server refuses kopf's patch (422), every time."""
MAX_OPTION_NAME_CHARS = 256
"""The longest tensor or node name spec.quantize.options takes. Real ones are module paths well
under it (`/model/layers.23/self_attn/q_proj/MatMul`); a manifest may hold longer ones
(manifest_schema.MAX_NODE_NAME_CHARS), which `quantship quantize --exclude` still takes."""
MAX_EXCLUDED_NODES = OPTION_NAMES_BUDGET_BYTES // (JSON_BYTES_PER_CHAR * MAX_OPTION_NAME_CHARS) - 2
"""The most nodes spec.quantize.options.excludeNodes keeps in float (32): what the budget leaves of
names of MAX_OPTION_NAME_CHARS besides output and maskInput. Real lists hold a few names; the tuner
finds the rest itself."""
OPTION_NAME_PATTERN = r"^[^\x00]*$"
"""No NUL, which no process argument can carry (the Job's command line passes the names)."""


def _choice(values: type[enum.Enum], description: str) -> dict[str, Any]:
    """One of `quantship quantize`'s choices (quantship.choices, which its options take)."""
    return {"type": "string", "enum": [member.value for member in values], "description": description}


def _name(description: str) -> dict[str, Any]:
    """A tensor's or a node's name, passed to quantize as a process argument."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_OPTION_NAME_CHARS,
        "pattern": OPTION_NAME_PATTERN,
        "description": description,
    }


ONE_GATE_LIMIT = {
    "rule": "!has(self.threshold) || !has(self.maxAccuracyDelta)",
    "message": "quantize.options: threshold or maxAccuracyDelta, not both (each sets the gate's limit)",
}
ENOUGH_BINS = {
    method.value: {
        "rule": f"!has(self.numBins) || !has(self.calibrationMethod) "
        f"|| self.calibrationMethod != '{method.value}' || self.numBins >= {least}",
        "message": f"quantize.options.numBins: {method.value} calibration needs at least {least}",
    }
    for method, least in choices.MIN_NUM_BINS.items()
}
"""By calibration method, what `quantship quantize --num-bins` refuses (a usage error): the Job
would fail at once, after its downloads."""
METRIC_OF_TASK = {
    task.value: {
        "rule": f"!has(self.task) || !has(self.metric) || self.task != '{task.value}' "
        f"|| self.metric in {[metric.value for metric in metrics]}",
        "message": f"quantize.options.metric: task {task.value} is gated by one of "
        f"{', '.join(metric.value for metric in metrics)}",
    }
    for task, metrics in choices.METRICS_OF_TASK.items()
}
"""By task, the metrics quantize gates its outputs by: it refuses another task's (after the Job's
downloads, as soon as it reads the evaluation data)."""


def _in_domain(metric: choices.Metric) -> str:
    """The CEL condition that spec.quantize.options.threshold is among the metric's values; double()
    compares it as one, whether it arrived as 2 or 2.0."""
    low, high = choices.DOMAIN_OF_METRIC[metric]
    if math.isinf(high):
        return f"double(self.threshold) >= {low!r}"
    return f"(double(self.threshold) >= {low!r} && double(self.threshold) <= {high!r})"


THRESHOLD_IN_DOMAIN = {
    metric.value: {
        "rule": f"!has(self.threshold) || !has(self.metric) || self.metric != '{metric.value}' "
        f"|| {_in_domain(metric)}",
        "message": f"quantize.options.threshold: {metric.value} is {choices.domain_in_words(metric)}",
    }
    for metric in choices.Metric
}
"""By metric, the thresholds quantize takes: outside the metric's values, which would pass every
model or none, it refuses them (after the Job's downloads)."""
INPUT_SCHEMES = ("file", "pvc", "http", "https")
"""What a quantize Job reads its model and data from (no oci://: an artifact registry holds artifacts)."""
INPUT_URI = UriForm.of(*INPUT_SCHEMES, in_claim=True)
TARGET_SCHEMES = ("pvc", "oci")
TARGET_URI = UriForm.of(*TARGET_SCHEMES, in_claim=True, push=True)
"""A target a Job can publish to: a path in a claim, or an oci:// tag (no digest: the Job pushes)."""
PULL_SECRET_FOR_OCI = {
    "rule": "!has(self.pullSecret) || self.uri.startsWith('oci://')",
    "message": "quantize.target.pullSecret is for an oci:// target only",
}


def _quantize_schema() -> dict[str, Any]:
    """spec.quantize: a quantization Job whose passing artifact becomes the canary."""
    quantize_options = _object(
        "Flags of `quantship quantize`. Unset ones take its defaults.",
        {
            "mode": _choice(choices.Mode, "--mode"),
            "format": _choice(choices.Format, "--format"),
            "perChannel": {"type": "boolean", "description": "--per-channel: weights per output channel."},
            "activationType": _choice(choices.Precision, "--activation-type"),
            "weightType": _choice(choices.Precision, "--weight-type"),
            "reduceRange": {
                "type": "boolean",
                "description": "--reduce-range (true) or --no-reduce-range (false): 7-bit weights. Unset: "
                "on where the Job's CPU lacks VNNI.",
            },
            "calibrationMethod": _choice(choices.Calibration, "--calibration-method"),
            "percentile": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 100,
                "description": "--percentile: percentile calibration's share of values kept, in percent.",
            },
            "numBins": _int(
                "--num-bins: histogram bins (percentile, entropy, distribution).", 2, choices.MAX_NUM_BINS
            ),
            "batchSize": _int(
                "--batch-size: calibration rows per batch at most (the Job's memory grows with it).", 1, 2**16
            ),
            "preProcess": {
                "type": "boolean",
                "description": "--pre-process (true) or --no-pre-process (false): onnxruntime's "
                "quant_pre_process first (it renames the nodes it fuses).",
            },
            "matmulConstBOnly": {
                "type": "boolean",
                "description": "--matmul-const-b-only (true) or --no-matmul-const-b-only (false): static "
                "mode quantizes only MatMuls by a weight.",
            },
            "task": _choice(choices.Task, "--task: what the gated output is. Unset: inferred from it."),
            "output": _name("--output: the model output the gate compares. Unset: the first."),
            "maskInput": _name(
                "--mask-input: for an answer per position (a causal LM's, a token classifier's), the input "
                "whose zeros mark padding. Unset: the one input named like an attention mask."
            ),
            "metric": _choice(choices.Metric, "--metric: the gating metric."),
            "threshold": {
                "type": "number",
                "minimum": -1e9,
                "maximum": 1e9,
                "description": "--threshold: the gating metric's limit in its own units.",
            },
            "maxAccuracyDelta": _ratio(
                "--max-accuracy-delta: the gate's tolerated loss.", exclusive_zero=False
            ),
            "minCosine": {
                "type": "number",
                "minimum": -1,
                "maximum": 1,
                "description": "--min-cosine: embeddings, the least cosine to FP32 at which a row agrees.",
            },
            "strategy": _choice(choices.Strategy, "--strategy: recipes, or fallback from the given one."),
            "keepGoing": {
                "type": "boolean",
                "description": "--keep-going: try stage 1's recipes on after one passes, keep the best.",
            },
            "maxTrials": _int("--max-trials: tuning trials after the first.", 0, 1000),
            "excludeNodes": {
                "type": "array",
                "items": _name("A node's name."),
                "maxItems": MAX_EXCLUDED_NODES,
                "description": "--exclude, each: nodes kept in float (names after pre-processing, unless "
                "preProcess is false).",
            },
        },
        **{
            "x-kubernetes-validations": [
                ONE_GATE_LIMIT,
                *ENOUGH_BINS.values(),
                *METRIC_OF_TASK.values(),
                *THRESHOLD_IN_DOMAIN.values(),
            ]
        },
    )
    return _object(
        "Quantize an FP32 model in a Job (`quantship quantize-job`) whenever this changes. When its "
        "accuracy gate passes, the produced artifact replaces spec.artifact as the canary; when it "
        "fails, phase GateFailed shows the report's numbers and nothing is rolled out.",
        {
            "model": uri_schema(
                "The FP32 .onnx: file://, pvc://CLAIM/PATH or http(s)://.",
                INPUT_URI,
            ),
            "calibration": uri_schema(
                "Calibration data (.npz keyed by input name): file://, pvc:// or http(s)://.",
                INPUT_URI,
            ),
            "evaluation": uri_schema(
                "Gate data (.npz, with a 'labels' array for accuracy). Default: the calibration data.",
                INPUT_URI,
            ),
            "options": quantize_options,
            "target": _object(
                "Where the Job writes the artifact: pvc://CLAIM/PATH (under PATH/<job hash>) or "
                "oci://REGISTRY/REPO:TAG (pushed to the Job's own tag TAG-<model>-<job hash>, then "
                "TAG moved to it; served pinned by its digest, which keeps its own tag when the "
                "next Job moves TAG: a registry's cleanup of untagged manifests spares it).",
                {
                    "uri": uri_schema("The target.", TARGET_URI),
                    "pullSecret": _name_of(
                        "For oci://: a dockerconfigjson Secret allowed to push (and pull)."
                    ),
                },
                required=["uri"],
                **{"x-kubernetes-validations": [PULL_SECRET_FOR_OCI]},
            ),
            "signingKeySecret": _name_of(
                "Secret holding `private.pem` (ed25519): the Job signs the manifest."
            ),
            "resources": _resources("Container resources of the Job."),
            "activeDeadlineSeconds": _int("How long the Job may run.", 60, 7 * 24 * 3600, 3600),
        },
        required=["model", "calibration", "target"],
    )


def _by_track(name: str) -> str:
    """What the server takes for an unset quality field, on either track."""
    stable, canary = (QualitySettings.default(name, track) for track in (Track.STABLE, Track.CANARY))
    return f"Unset: {stable:g} on the stable revision, {canary:g} on the canary"


def _server_schema() -> dict[str, Any]:
    """spec.server: flags of `quantship serve`."""
    return _object(
        "Flags of `quantship serve`. Unset ones take the server's defaults. Changing any starts a canary.",
        {
            "maxBatchSize": _int("Rows per batch the dynamic batcher builds at most.", 1, 4096),
            "maxQueueDelayMs": {
                "type": "number",
                "minimum": 0,
                "maximum": 1000,
                "description": "Milliseconds a request may wait for a batch to fill.",
            },
            "maxQueueSize": _int("Requests waiting at most; more are refused at once with 429.", 1, 100000),
            "shadowRate": _ratio(
                "Share of requests also run through the FP32 reference (accuracy delta SLI). "
                f"{_by_track('shadow_rate')}, whose SLI CPU budget then decides (a set value applies "
                "to both).",
                exclusive_zero=False,
            ),
            "clipSampleRate": _ratio(
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
            "shadowBudgetShare": _ratio(
                "Share of sliCpuBudget the shadow SLI pays from when the clip SLI runs too; the clip SLI "
                f"pays from the rest. {_by_track('shadow_budget_share')} (a set value applies to both).",
                exclusive_zero=False,
            ),
            "threads": _int("onnxruntime intra-op threads.", 1, 256),
            "perTensorMetrics": {
                "type": "boolean",
                "description": "Also export clip counts and activation drift per activation tensor: one "
                "series per quantized tensor (hundreds for a real network), which the per-tensor drift "
                "alert and the debug dashboard's per-tensor panels read. Unset: "
                f"{str(_default(QualitySettings, 'per_tensor_metrics')).lower()}.",
            },
            "capture": _capture_schema(),
        },
    )


def _capture_schema() -> dict[str, Any]:
    """spec.server.capture: `quantship serve --capture-dir` in a claim, one directory per pod."""
    samples, size, flush = (
        _default(ServerSettings, name)
        for name in ("capture_max_samples", "capture_max_bytes", "capture_flush_s")
    )
    return _object(
        "Keep a reservoir sample of production inputs (calibration format) in a PersistentVolumeClaim: "
        "each server writes CLAIM/<pod name>/capture.npz, which spec.quantize.calibration reads as "
        "pvc://CLAIM/<pod name>/capture.npz. The files hold user inputs: set it only where keeping "
        f"them is allowed. The claim's root must be writable by user or group {names.RUN_AS} (the "
        "pods' fsGroup where the volume type applies one), and must not be the artifact's claim. With "
        "replicas on several nodes the claim must be ReadWriteMany.",
        {
            "claimName": _name_of("The PersistentVolumeClaim (this namespace) the servers write to."),
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


def _placement_schema() -> dict[str, Any]:
    """spec.placement: where the model servers may run."""
    return _object(
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


def _traffic_schema() -> dict[str, Any]:
    """spec.traffic: how traffic is split."""
    return _object(
        "How traffic is split between the stable and the canary revision.",
        {
            "router": {
                "type": "string",
                "enum": ["gateway-api", "replicas"],
                "default": "replicas",
                "description": "gateway-api: set the weights of this model's backendRefs in an HTTPRoute. "
                "replicas: one Service over both revisions, split by replica ratio (coarse; status shows "
                "the achieved weight).",
            },
            "httpRoute": _name_of(
                "gateway-api only: the HTTPRoute (same namespace) whose rules reference the "
                "Service named like this resource; only those backendRefs are rewritten."
            ),
            "port": _int("Service port of the model servers.", 1, 65535, 8080),
        },
        # The API server evaluates every rule against `default: {}` too, before nested defaults:
        # each rule must hold where a field it reads is absent.
        **{"x-kubernetes-validations": [GATEWAY_NEEDS_ROUTE, PORT_NOT_GRPC]},
    )


def _rollout_schema() -> dict[str, Any]:
    """spec.rollout: the canary steps (defaults: the engine's RolloutSpec)."""
    return _object(
        "The canary steps.",
        {
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_STEPS,
                "items": {"type": "integer", "minimum": 1, "maximum": 100},
                "x-kubernetes-validations": [STEPS_INCREASE],
                "default": list(_default(RolloutSpec, "steps")),
                "description": "Canary weights in percent, increasing. Passing the last step promotes.",
            },
            "stepInterval": _duration(
                "rollout.stepInterval",
                "How long each step lasts before it is judged.",
                format_duration(_default(RolloutSpec, "step_interval")),
            ),
            "progressDeadline": _duration(
                "rollout.progressDeadline",
                "How long a new revision may take to become ready.",
                format_duration(_default(RolloutSpec, "progress_deadline")),
            ),
        },
    )


def _slos_schema() -> dict[str, Any]:
    """spec.slos: the error budgets (defaults: slo.DEFAULT_OBJECTIVES, as the generated rules)."""
    # Defaults are the SLOs the generated alert rules and dashboards use: one source, slo.py.
    default = {objective.sli: objective for objective in slo.DEFAULT_OBJECTIVES}
    latency_default = default[slo.SLI.LATENCY]
    latency = _object(
        "Latency SLO: `objective` of requests finish within `thresholdSeconds`.",
        {
            "thresholdSeconds": {
                "type": "number",
                "enum": list(slo.LATENCY_BUCKETS),
                "default": latency_default.latency_threshold,
                "description": "A bucket of quantship_request_duration_seconds.",
            },
            "objective": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "exclusiveMaximum": True,
                "default": round(1 - latency_default.budget, 12),
                "description": "Share of requests that must be faster; 1 - objective is the error budget.",
            },
        },
    )
    return _object(
        "Error budgets of the canary. Burn rate = measured bad ratio / budget.",
        {
            "maxAccuracyDelta": _ratio(
                "Share of shadow comparisons whose top-1 may disagree with FP32.",
                default[slo.SLI.ACCURACY_DELTA].budget,
            ),
            "latency": {**latency, "default": {}},
            "maxErrorRate": _ratio(
                "Share of requests that may fail with 5xx.", default[slo.SLI.ERRORS].budget
            ),
            "maxClipRate": _ratio(
                "Share of activation values that may fall outside calibration.",
                default[slo.SLI.CLIP_RATE].budget,
            ),
            "maxFallbackOps": _int(
                "Ops that may run in float instead of quantized (a hard gate).",
                0,
                10000,
                _default(AnalysisSpec, "max_fallback_ops"),
            ),
        },
    )


def _analysis_schema() -> dict[str, Any]:
    """spec.analysis: how each step is judged (defaults: the engine's AnalysisSpec)."""
    return _object(
        "How each step is judged: multi-window burn rates from Prometheus.",
        {
            "prometheusUrl": {
                "type": "string",
                "pattern": r"^https?://.+",
                "default": "http://prometheus-operated.monitoring.svc:9090",
                "description": "Prometheus that scrapes the model servers.",
            },
            "shortWindow": _duration(
                "analysis.shortWindow",
                "Recent window: is the burn still going on?",
                format_duration(_default(AnalysisSpec, "short_window")),
            ),
            "longWindow": _duration(
                "analysis.longWindow",
                "Longer window, longer than shortWindow: is the burn significant?",
                format_duration(_default(AnalysisSpec, "long_window")),
            ),
            "burnRateThreshold": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 1000,
                "default": _default(AnalysisSpec, "burn_rate_threshold"),
                "description": "A breach is a burn rate above this on both windows.",
            },
            "maxBurnRateIncrease": {
                "type": "number",
                "minimum": 0,
                "maximum": 1000,
                "default": _default(AnalysisSpec, "max_burn_rate_increase"),
                "description": "The canary's burn rate may exceed the stable revision's by at most this "
                "much on both windows (catches a regression inside the absolute SLO).",
            },
            "minSamples": _int(
                "Events an SLI needs on a window to be judged; fewer is inconclusive.",
                1,
                10**9,
                _default(AnalysisSpec, "min_samples"),
            ),
            "failureLimit": _int(
                "Failed judgements that roll the canary back.",
                1,
                100,
                _default(AnalysisSpec, "failure_limit"),
            ),
            "inconclusiveLimit": _int(
                "Inconclusive judgements in a row before onInconclusive.",
                1,
                100,
                _default(AnalysisSpec, "inconclusive_limit"),
            ),
            "onInconclusive": {
                "type": "string",
                "enum": [choice.value for choice in OnInconclusive],
                "default": _default(AnalysisSpec, "on_inconclusive").value,
                "description": "rollback: without data a canary cannot be shown safe. hold: stay at the "
                "current weight and keep judging.",
            },
            "labels": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Extra label matchers for every query, e.g. {cluster: eu-1}. Names are "
                "Prometheus label names, not model or revision (the operator sets those). Every query "
                f"matches {names.NAMESPACE_LABEL} = the model's namespace unless set here (to '' where "
                "the scrape adds no namespace label, or to the namespace the series carry).",
            },
        },
        **{"x-kubernetes-validations": [WINDOWS_IN_ORDER]},
    )


def status_schema() -> dict[str, Any]:
    condition = _object(
        "A metav1.Condition.",
        {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
        required=["type", "status"],
    )
    nullable_string = {"type": "string", "nullable": True}
    return _object(
        "Where the rollout stands. Written by the operator only; it resumes from here after a restart.",
        {
            "phase": {
                "type": "string",
                "enum": ["Pending", "Progressing", "Promoted", "RolledBack", "Failed", GATE_FAILED],
                "description": "The rollout's phase; GateFailed: spec.quantize's Job failed its "
                "accuracy gate (status.quantize has the numbers) and the stable serves on.",
            },
            "quantize": _object(
                "spec.quantize's last Job and its gate verdict.",
                {
                    "job": {"type": "string"},
                    "hash": {"type": "string", "description": "Of the spec.quantize the Job runs."},
                    "state": {"type": "string", "enum": list(QUANTIZE_STATES)},
                    "metric": nullable_string,
                    "value": {"type": "number", "nullable": True},
                    "threshold": {"type": "number", "nullable": True},
                    "artifact": {**nullable_string, "description": "The artifact it produced."},
                    "message": {"type": "string"},
                    "startedAt": nullable_string,
                    "finishedAt": nullable_string,
                    "waiting": {
                        **nullable_string,
                        "description": "Why the running Job's pod has not started (ImagePullBackOff, "
                        "Unschedulable, CreateContainerConfigError); the message has the details.",
                    },
                    "found": {
                        "type": "boolean",
                        "nullable": True,
                        "description": "The Job was there already, finished (the section was reverted to): "
                        "its outcome is recorded without an event.",
                    },
                    "rolloutPhase": {
                        **nullable_string,
                        "description": "The rollout engine's phase while phase reads GateFailed.",
                    },
                },
                nullable=True,
            ),
            "quantizedArtifact": _object(
                "The artifact of the last Job whose gate passed: served instead of spec.artifact while "
                "spec.quantize is set.",
                {
                    "uri": {"type": "string"},
                    "job": {"type": "string"},
                    "target": {
                        "type": "string",
                        "description": "The spec.quantize.target.uri it was published to.",
                    },
                    "pullSecret": {
                        "type": "string",
                        "description": "That target's pullSecret: the servers fetch the artifact with it.",
                    },
                    "int8Flags": {
                        "type": "array",
                        "items": {"type": "string"},
                        "nullable": True,
                        "description": "The int8 CPU features of the machine its gate ran on (its manifest's "
                        "validation.hardware), for spec.placement.matchGateHardware.",
                    },
                    "shadowDisagreement": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 1,
                        "nullable": True,
                        "description": "The share of its evaluation rows the servers' shadow SLI counts as "
                        "disagreeing with FP32 (its manifest's validation.shadow_disagreement): over "
                        "spec.slos.maxAccuracyDelta, condition EvaluationWithinAccuracySLO is False.",
                    },
                },
                nullable=True,
            ),
            "stableRevision": nullable_string,
            "canaryRevision": nullable_string,
            "rejectedRevision": nullable_string,
            "retiringRevisions": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Revisions whose Deployments are being removed: once the status naming "
                "their successor is saved, and once the stable has all its servers ready (a rollback "
                "keeps the canary's servers until then; past spec.rollout.progressDeadline from "
                "retiringSince, once it has one).",
            },
            "retiringSince": {
                **nullable_string,
                "description": "When the last decision that retired a revision was taken.",
            },
            "step": {"type": "integer", "description": "Index into spec.rollout.steps; -1 before the first."},
            "weight": {"type": "integer", "description": "Canary weight asked, percent."},
            "achievedWeight": {
                "type": "number",
                "description": "Canary weight the router achieved, percent.",
            },
            "accuracyDelta": {
                "type": "number",
                "nullable": True,
                "description": "Canary's share of shadow disagreements on the short window, last judgement.",
            },
            "startedAt": nullable_string,
            "stepStartedAt": nullable_string,
            "failures": {"type": "integer"},
            "inconclusive": {"type": "integer"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "lastAnalysis": {
                "type": "object",
                "nullable": True,
                "description": "The last judgement: verdict, reason, and per SLO and window the counts, "
                "burn rates, budget and threshold that decided it.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "history": {
                "type": "array",
                "description": "The last decisions (steps, promotions, rollbacks) with their reasons. A "
                "held judgement that finds what the one before it found is counted in that one's entry "
                "(count; firstAt: when the first of them was).",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "kopf": {
                "type": "object",
                "description": "The kopf framework's handler progress.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    )


def schema() -> dict[str, Any]:
    """The openAPIV3Schema of the served version."""
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": names.DNS_1035_LABEL,
                        "maxLength": names.MAX_NAME_LENGTH,
                        "description": "Names the model's Services (NAME and NAME-REVISION): a DNS-1035 "
                        "label, short enough for the revision's suffix.",
                    }
                },
            },
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }


def definition() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "quantship"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["quantship"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Weight",
                            "type": "integer",
                            "jsonPath": ".status.weight",
                            "description": "Canary weight, percent",
                        },
                        {
                            "name": "Accuracy-Delta",
                            "type": "number",
                            "jsonPath": ".status.accuracyDelta",
                            "description": "Canary's share of shadow disagreements with FP32",
                        },
                        {
                            "name": "Stable",
                            "type": "string",
                            "jsonPath": ".status.stableRevision",
                            "priority": 1,
                        },
                        {
                            "name": "Canary",
                            "type": "string",
                            "jsonPath": ".status.canaryRevision",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `make generate` from quantship/operator/crd.py. Do not edit by hand.\n"
KEEP_POLICY = {"helm.sh/resource-policy": "keep"}
"""On the chart's CRD: `helm uninstall` leaves it, and so every QuantizedModel, in place."""


def render() -> str:
    """manifests/crd.yaml: `kubectl apply --server-side -f` it (the object is too big for the
    last-applied annotation of a client-side apply once it grows)."""
    return HEADER + yaml.safe_dump(definition(), sort_keys=False, width=100)


def render_chart_template() -> str:
    """helm/quantship/templates/crd.yaml: a template, not a file under crds/, which Helm installs
    once and never upgrades. Behind `crds.enabled`, kept by `helm uninstall`."""
    body = definition()
    body["metadata"]["annotations"] = dict(KEEP_POLICY)
    text = yaml.safe_dump(body, sort_keys=False, width=100)
    if "{{" in text or "}}" in text:
        raise ValueError("the CRD's text holds template braces: Helm would read them as actions")
    return f"{HEADER}{{{{- if .Values.crds.enabled }}}}\n{text}{{{{- end }}}}\n"
