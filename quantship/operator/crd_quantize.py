"""spec.quantize's schema: the quantization Job, its `quantship quantize` options and their
bounds, which keep a spec's names within what the object's annotations may hold.
"""

from __future__ import annotations

import enum
from typing import Any

from quantship import choices
from quantship.operator import crd_fields, crd_rules, crd_uris

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


def quantize_schema() -> dict[str, Any]:
    """spec.quantize: a quantization Job whose passing artifact becomes the canary."""
    quantize_options = crd_fields.object_of(
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
            "numBins": crd_fields.integer(
                "--num-bins: histogram bins (percentile, entropy, distribution).", 2, choices.MAX_NUM_BINS
            ),
            "batchSize": crd_fields.integer(
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
                "mode quantizes only MatMuls by a weight. false: no trial does; unset: the tuner's "
                "recipes may.",
            },
            "matmulsOnly": {
                "type": "boolean",
                "description": "--matmuls-only (true) or --no-matmuls-only (false): static mode quantizes "
                "only MatMuls and Gemms, less those reading an MLP's GELU or SiLU. false: no trial does; "
                "unset: the tuner may try it once no recipe passes.",
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
            "maxAccuracyDelta": crd_fields.ratio(
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
            "maxTrials": crd_fields.integer("--max-trials: tuning trials after the first.", 0, 1000),
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
                crd_rules.ONE_GATE_LIMIT,
                *crd_rules.ENOUGH_BINS.values(),
                *crd_rules.METRIC_OF_TASK.values(),
                *crd_rules.THRESHOLD_IN_DOMAIN.values(),
            ]
        },
    )
    return crd_fields.object_of(
        "Quantize an FP32 model in a Job (`quantship quantize-job`) whenever this changes. When its "
        "accuracy gate passes, the produced artifact replaces spec.artifact as the canary; when it "
        "fails, phase GateFailed shows the report's numbers and nothing is rolled out.",
        {
            "model": crd_uris.uri_schema(
                "The FP32 .onnx: file://, pvc://CLAIM/PATH or http(s)://.",
                crd_uris.INPUT_URI,
            ),
            "calibration": crd_uris.uri_schema(
                "Calibration data (.npz keyed by input name): file://, pvc:// or http(s)://.",
                crd_uris.INPUT_URI,
            ),
            "evaluation": crd_uris.uri_schema(
                "Gate data (.npz, with a 'labels' array for accuracy). Default: the calibration data.",
                crd_uris.INPUT_URI,
            ),
            "options": quantize_options,
            "target": crd_fields.object_of(
                "Where the Job writes the artifact: pvc://CLAIM/PATH (under PATH/<job hash>) or "
                "oci://REGISTRY/REPO:TAG (pushed to the Job's own tag TAG-<model>-<job hash>, then "
                "TAG moved to it; served pinned by its digest, which keeps its own tag when the "
                "next Job moves TAG: a registry's cleanup of untagged manifests spares it).",
                {
                    "uri": crd_uris.uri_schema("The target.", crd_uris.TARGET_URI),
                    "pullSecret": crd_fields.name_of(
                        "For oci://: a dockerconfigjson Secret allowed to push (and pull)."
                    ),
                },
                required=["uri"],
                **{"x-kubernetes-validations": [crd_rules.PULL_SECRET_FOR_OCI]},
            ),
            "signingKeySecret": crd_fields.name_of(
                "Secret holding `private.pem` (ed25519): the Job signs the manifest."
            ),
            "resources": crd_fields.resources("Container resources of the Job."),
            "activeDeadlineSeconds": crd_fields.integer("How long the Job may run.", 60, 7 * 24 * 3600, 3600),
        },
        required=["model", "calibration", "target"],
    )
