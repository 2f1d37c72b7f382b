"""The QuantizedModel CustomResourceDefinition, rendered from code.

`make generate` writes it to manifests/crd.yaml and, as a template behind `crds.enabled`, into the
Helm chart; a test checks both are current. The schema is structural, as apiextensions.k8s.io/v1
demands (tests/unit/operator/test_crd_structural.py implements those rules over it): every node
typed, closed objects without `additionalProperties` (the API server prunes unknown fields on
write and on read, and warns the client that sent them), only value checks inside anyOf/allOf,
and every default valid and true to every CEL rule. Defaults live in it, so `kubectl get -o yaml`
shows every value the operator acts on.

Here: the resource's names and annotations, the spec's top level, the whole schema and its
rendering. Its parts, each importing only those below it (an import-linter contract):
`crd_serving`, `crd_quantize` and `crd_rollout` (the spec's sections), `crd_status`; under them
`crd_fields` (typed, bounded fields), `crd_rules` (CEL rules across fields, which the operator
checks again) and `crd_uris` (the URIs each field takes, `UriForm`).
"""

from __future__ import annotations

from typing import Any

import yaml

from quantship.operator import crd_fields, crd_quantize, crd_rollout, crd_serving, crd_status, names

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

IMAGE_PATTERN = r"^[a-zA-Z0-9\[][a-zA-Z0-9._/:@\[\]-]*$"
"""A container image reference's characters (registry[:port]/path[:tag][@digest]). No reference
holds whitespace, and a Pod's image with some at either end is refused by the API server."""


def spec_schema() -> dict[str, Any]:
    """The QuantizedModel's spec: one function per section (crd_serving, crd_quantize, crd_rollout)."""
    return crd_fields.object_of(
        "A quantized model served by quantship, rolled out as a canary judged by SLO burn rates.",
        {
            "modelName": {
                "type": "string",
                "pattern": names.LABEL_VALUE,
                "maxLength": names.MAX_LABEL_VALUE_LENGTH,
                "description": "Name in the inference API and in the `model` label of the pods and "
                "of every metric. Defaults to the resource's name.",
            },
            "artifact": crd_serving.artifact_schema(),
            "quantize": crd_quantize.quantize_schema(),
            "image": {
                "type": "string",
                "pattern": IMAGE_PATTERN,
                "default": "ghcr.io/quantship/quantship:0.1.0",
                "description": "Image with the `quantship` command (serve and fetch).",
            },
            "replicas": crd_fields.integer("Model servers per revision.", 1, 100, 2),
            "resources": crd_fields.resources("Container resources of each model server."),
            "server": {**crd_serving.server_schema(), "default": {}},
            "traffic": {**crd_rollout.traffic_schema(), "default": {}},
            "rollout": {**crd_rollout.rollout_schema(), "default": {}},
            "slos": {**crd_rollout.slos_schema(), "default": {}},
            "analysis": {**crd_rollout.analysis_schema(), "default": {}},
            "placement": {**crd_serving.placement_schema(), "default": {}},
        },
        required=["artifact"],
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
            "status": crd_status.status_schema(),
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
