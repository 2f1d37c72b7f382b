"""helm/quantship/values.schema.json: hand-written, except what the chart hands on to a QuantizedModel.

The `example.*` values become the example model's spec, so their schema is the CRD's own for those
fields (from `crd.spec_schema()`), and the example's name is refused as the operator refuses a
model's name: `helm install` refuses what the API server or the operator would refuse, rather than
failing in its post-install hook after everything else was created. (What a schema cannot say,
steps that do not increase and a step interval of no time, templates/example-quantizedmodel.yaml
refuses with `fail`.) `render` writes these pieces
into the checked-in file and keeps the rest as written (in the file's own layout).
"""

from __future__ import annotations

import json
from typing import Any

from quantship import generate
from quantship.operator import crd, names

PATH = "helm/quantship/values.schema.json"
WIDTH = 106
"""A value is written on one line when it fits this width (the file's layout)."""


def _admitted(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD field's schema less what documents it (values.yaml holds the chart's defaults) and its CEL
    rules, which JSON Schema cannot read (the template refuses what they would)."""
    dropped = ("description", "default", "x-kubernetes-validations")
    return {key: value for key, value in node.items() if key not in dropped}


def example_properties() -> dict[str, Any]:
    """The schema of each example value that lands in the example model's spec."""
    spec = crd.spec_schema()["properties"]
    rollout = spec["rollout"]["properties"]
    return {
        # JSON Schema has no message of its own: helm prints the pattern the CRD's rule words
        "artifactUri": {**_admitted(spec["artifact"]["properties"]["uri"]), "pattern": crd.URI_PATTERN},
        "image": _admitted(spec["image"]),
        "replicas": _admitted(spec["replicas"]),
        "steps": _admitted(rollout["steps"]),
        "stepInterval": _admitted(rollout["stepInterval"]),
        "prometheusUrl": _admitted(spec["analysis"]["properties"]["prometheusUrl"]),
    }


def model_name() -> dict[str, Any]:
    """A model's name as the operator takes it: it names the model's Services."""
    return {"type": "string", "pattern": names.DNS_1035_LABEL, "maxLength": names.MAX_NAME_LENGTH}


def schema(written: dict[str, Any]) -> dict[str, Any]:
    """`written` (the file as it is) with the generated pieces in place."""
    written["definitions"]["modelName"] = model_name()
    written["properties"]["example"]["properties"].update(example_properties())
    return written


def layout(value: Any, indent: int = 0, taken: int = 0) -> str:
    """JSON with two-space indents, each object or array on one line where it fits WIDTH."""
    flat = json.dumps(value, separators=(", ", ": "))
    if not isinstance(value, dict | list) or indent + taken + len(flat) <= WIDTH:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        lines = [
            f"{pad}{json.dumps(key)}: {layout(item, indent + 2, len(json.dumps(key)) + 2)}"
            for key, item in value.items()
        ]
        opening, closing = "{", "}"
    else:
        lines = [f"{pad}{layout(item, indent + 2)}" for item in value]
        opening, closing = "[", "]"
    return opening + "\n" + ",\n".join(lines) + "\n" + " " * indent + closing


def render() -> str:
    written = json.loads((generate.ROOT / PATH).read_text())
    return layout(schema(written)) + "\n"
