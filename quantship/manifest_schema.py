"""What an artifact's manifest may hold: the types of every field quantship reads (`MANIFEST_SCHEMA`),
bounds on the names and labels that reach logs, reports and Prometheus, and `manifest_problem`, which
names the first thing a hostile or damaged manifest breaks, so that it is refused on loading rather
than failing later in whichever part reads the field.
A leaf: it imports nothing of quantship but `activations` and `printable` (leaves too).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

from quantship.activations import HISTOGRAM_BINS
from quantship.printable import UNPRINTABLE, brief

SIGNATURE_KEY = "signature"
"""The manifest's key holding its ed25519 signature (left out of the bytes it signs)."""

MAX_LABEL_CHARS = 128
"""The longest manifest string that becomes a Prometheus label value (`quantship_model_info`,
`quantship_hardware_info`): a calibration method, a CPU's name (x86's brand string is at most 48),
a version. Every replica sends each one on every scrape, and Prometheus keeps them."""

MAX_TENSOR_NAME_CHARS = 4096
"""The longest tensor name a manifest may hold (a range's, a histogram's, a sensitivity's, the gated
output's). ONNX sets no limit; exporters write names of tens of characters, a few hundred at most
(a deep module path), so 4096 refuses nothing real, and a hostile name of megabytes never reaches a
load error, a log line or the report (its refusal shows 40 characters of it)."""
TENSOR_NAME_FIELDS = {
    "activation_ranges": ("tensor", "float_tensor"),
    "activation_histograms": ("tensor",),
    "sensitivity": ("tensor",),
}
"""Where a manifest lists tensor names: the fields of each item of these lists (and quantization.output)."""
MAX_NODE_NAME_CHARS = MAX_TENSOR_NAME_CHARS
"""The longest node name a manifest may hold (quantization.excluded_nodes, a trial's excluded, a
sensitivity's node): ONNX bounds node names no more than tensor names, and the report and
`quantize`'s summary print them (cut to `reporting.SHOWN_NAME_CHARS`)."""

MAX_INT8_FLAGS = 32
"""int8 CPU features a manifest may list (quantship.runtime reads 7): together one label value."""
_NUMBER = {"type": "number"}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_STRING = {"type": "string"}
_LABEL = {"type": "string", "maxLength": MAX_LABEL_CHARS, "not": {"pattern": UNPRINTABLE.pattern}}
"""A string that becomes a label value (or the verdict `verify` prints): bounded, and nothing a
terminal would act on (it is logged too)."""
_MAYBE_STRING = {"type": ["string", "null"]}
_FLAG = {"type": "boolean"}
_EVALUATION = {  # quantize.gate_metrics.Evaluation.to_json: in the validation and in every trial
    "metric": _STRING,
    **dict.fromkeys(
        ("value", "threshold", "delta", "limit", "fp32", "int8", "agreement", "shadow_disagreement"),
        _MAYBE_NUMBER,
    ),
    "samples": _COUNT,
    "metrics": {"type": "object", "additionalProperties": _MAYBE_NUMBER},
}
_TRIAL = {  # quantize.tuner.Trial.to_json
    "type": "object",
    "required": ["number", "stage", "excluded", "quantized_nodes", "passed", "seconds"],
    "properties": {
        **_EVALUATION,
        "number": _COUNT,
        **dict.fromkeys(("stage", "recipe"), _STRING),
        "config": {"type": "object"},
        "excluded": {"type": "array", "items": _STRING},
        "quantized_nodes": _COUNT,
        **dict.fromkeys(("quantized_share", "seconds", "peak_rss_mb"), _NUMBER),
        "passed": _FLAG,
        "latency_ms": _MAYBE_NUMBER,
        "error": _MAYBE_STRING,
    },
}
_TENSOR_ERROR = {  # quantize.sensitivity.TensorError.to_json
    "type": "object",
    "required": ["tensor", "kind", "sqnr_db"],
    "properties": {
        **dict.fromkeys(("tensor", "kind"), _STRING),
        **dict.fromkeys(("node", "op_type"), _MAYBE_STRING),
        **dict.fromkeys(("sqnr_db", "qdq_sqnr_db"), _MAYBE_NUMBER),
    },
}
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format_version", "files"],
    "properties": {
        "format_version": {"type": "integer"},
        "files": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["sha256", "size"],
                "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "size": _COUNT},
            },
        },
        SIGNATURE_KEY: {
            "type": "object",
            "properties": {"algorithm": {"type": "string"}, "value": {"type": "string"}},
        },
        "created": _STRING,
        "model": {
            "type": "object",
            "properties": {
                "source": {"type": "string"},
                "inputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": _STRING, "row_shape": {"type": "array", "items": _COUNT}},
                    },
                },
            },
        },
        "validation": {
            "type": "object",
            "properties": {
                **_EVALUATION,
                **dict.fromkeys(("gate_reason", "data_sha256"), _STRING),
                "gate": _LABEL,  # `verify` prints it: "ok: ...; gate passed"
                "max_accuracy_delta": _MAYBE_NUMBER,
                "on_calibration_data": _FLAG,
                "shadow_rule": {"type": ["object", "null"]},
                "hardware": {
                    "type": "object",
                    "properties": {
                        "int8_flags": {"type": "array", "maxItems": MAX_INT8_FLAGS, "items": _LABEL},
                        "vnni": _FLAG,
                        **dict.fromkeys(("machine", "graph_optimization_level"), _STRING),
                        **dict.fromkeys(("cpu", "provider", "onnxruntime"), _LABEL),
                    },
                },
            },
        },
        "tuning": {
            "type": "object",
            "properties": {
                **dict.fromkeys(("strategy", "stage"), _STRING),
                "keep_going": _FLAG,
                **dict.fromkeys(("max_trials", "chosen"), _COUNT),
                **dict.fromkeys(("seconds", "peak_rss_mb"), _NUMBER),
                "advice": _MAYBE_STRING,
            },
        },
        "task": {"type": "object", "properties": dict.fromkeys(("name", "why"), _STRING)},
        "trials": {"type": "array", "items": _TRIAL},
        "sensitivity": {"type": "array", "items": _TENSOR_ERROR},
        "warnings": {"type": "array", "items": _STRING},
        "quantization": {
            "type": "object",
            "properties": {
                "output": {"type": ["string", "null"]},
                "excluded_nodes": {"type": "array", "items": _STRING},
                **dict.fromkeys(("precision", "mode"), _LABEL),
            },
        },
        "runtime": {"type": "object"},
        "calibration": {  # null: dynamic quantization calibrates nothing
            "type": ["object", "null"],
            "properties": {**dict.fromkeys(("method", "sha256"), _LABEL), "samples": _COUNT},
        },
        "activation_ranges": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tensor", "low", "high", "scale"],
                "properties": {
                    "tensor": {"type": "string"},
                    **dict.fromkeys(("low", "high", "scale"), _NUMBER),
                    **dict.fromkeys(
                        ("calibrated_min", "calibrated_max", "activation_low", "activation_high"),
                        _MAYBE_NUMBER,
                    ),
                    **{key: {"type": ["string", "null"]} for key in ("requantized_by", "float_tensor")},
                    "zero_point": {"type": ["integer", "null"]},
                },
            },
        },
        "activation_histograms": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tensor", "low", "high", "counts", "underflow", "overflow"],
                "properties": {
                    "tensor": {"type": "string"},
                    "low": _NUMBER,
                    "high": _NUMBER,
                    "counts": {  # the length first: checked before the items (SCHEMA_ERRORS_WEIGHED)
                        "type": "array",
                        "minItems": HISTOGRAM_BINS,
                        "maxItems": HISTOGRAM_BINS,
                        "items": _COUNT,
                    },
                    "underflow": _COUNT,
                    "overflow": _COUNT,
                },
            },
        },
    },
}
"""The types of what quantship reads from a manifest: a hostile or damaged one is refused on loading,
by name, rather than failing later in whichever part reads the field (other keys are free)."""


SCHEMA_ERRORS_WEIGHED = 100
"""How many of a manifest's schema errors are weighed for the one to name: listing them all took
80-115 s of CPU for a 4 MiB manifest of a million bad items, about 60 µs each."""


def manifest_problem(manifest: Any) -> str | None:
    """What makes a manifest unreadable past its file list and version: a type (MANIFEST_SCHEMA), a
    tensor or node name past MAX_TENSOR_NAME_CHARS or MAX_NODE_NAME_CHARS, or a tensor given two
    different ranges or histograms."""
    return _schema_problem(manifest) or _name_problem(manifest) or _twice_problem(manifest)


def _name_problem(manifest: Mapping[str, Any]) -> str | None:
    """The first tensor or node name (or node type: the report prints it beside its tensor) longer
    than its bound, shown cut short."""
    for where, name, kind, bound in _every_name(manifest):
        if isinstance(name, str) and len(name) > bound:
            return (
                f"{''.join(f'[{part!r}]' for part in where)}: a {kind} name of {len(name)} characters, "
                f"more than the {bound} a manifest may hold: {brief(repr(name), 40)}"
            )
    return None


def _every_name(manifest: Mapping[str, Any]) -> Iterator[tuple[tuple[Any, ...], Any, str, int]]:
    """Every tensor and node name of a manifest the schema passed: where, the name, its kind and bound."""
    quantization = manifest.get("quantization") or {}
    yield ("quantization", "output"), quantization.get("output"), "tensor", MAX_TENSOR_NAME_CHARS
    for key, fields in TENSOR_NAME_FIELDS.items():
        for index, entry in enumerate(manifest.get(key) or ()):
            for field in fields:
                yield (key, index, field), entry.get(field), "tensor", MAX_TENSOR_NAME_CHARS
    for index, node in enumerate(quantization.get("excluded_nodes") or ()):
        yield ("quantization", "excluded_nodes", index), node, "node", MAX_NODE_NAME_CHARS
    for index, trial in enumerate(manifest.get("trials") or ()):
        for at, node in enumerate(trial["excluded"]):
            yield ("trials", index, "excluded", at), node, "node", MAX_NODE_NAME_CHARS
    for index, entry in enumerate(manifest.get("sensitivity") or ()):
        yield ("sensitivity", index, "node"), entry.get("node"), "node", MAX_NODE_NAME_CHARS
        yield ("sensitivity", index, "op_type"), entry.get("op_type"), "node type", MAX_NODE_NAME_CHARS


def _twice_problem(manifest: Mapping[str, Any]) -> str | None:
    """The first tensor the manifest gives two different activation ranges (or histograms). A range
    is what the served graph clamps that tensor to, so two that differ say nothing the clip and drift
    SLIs could count by: a broken or tampered manifest. Two alike are only said twice (onnxruntime
    quantizes a tensor once per consumer with DedicatedQDQPair; quantship writes one)."""
    for key in ("activation_ranges", "activation_histograms"):
        first: dict[str, Any] = {}
        for index, entry in enumerate(manifest.get(key) or ()):
            if first.setdefault(entry["tensor"], entry) != entry:
                tensor = brief(repr(entry["tensor"]), 60)
                return f"[{key!r}][{index}]: a second, different entry for tensor {tensor}"
    return None


def _schema_problem(manifest: Any) -> str | None:
    import jsonschema  # here: ~60 ms to import, and every command imports this module

    errors = itertools.islice(_manifest_validator().iter_errors(manifest), SCHEMA_ERRORS_WEIGHED)
    error = jsonschema.exceptions.best_match(errors)
    if error is None:
        return None
    where = "".join(f"[{part!r}]" for part in error.absolute_path) or "the manifest"
    return brief(f"{where}: {schema_error_text(error)}", 300)  # the keys are the manifest's too


def schema_error_text(error: Any) -> str:
    """jsonschema's message for `error`, the value it quotes cut short (and printable): a line, not
    a hostile document's whole field."""
    return str(error.message.replace(repr(error.instance), brief(repr(error.instance), 60)))


@functools.cache
def _manifest_validator() -> Any:
    return strict_validator(MANIFEST_SCHEMA)


def strict_validator(schema: Mapping[str, Any]) -> Any:
    """A JSON Schema (draft 7) validator for `schema` whose "integer" is a JSON integer only: draft 7
    counts 174788.0 as one, and a file size read as a float failed later, wherever it was a count
    (`os.read`, a buffer's size: a traceback in `fetch`, "a bug" in `serve`)."""
    return _strict_draft7()(schema)


@functools.cache
def _strict_draft7() -> Any:
    import jsonschema

    integers = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: type(value) is int
    )
    return jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=integers)
