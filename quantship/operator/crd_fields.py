"""The building blocks of the CRD's schema: typed, bounded fields (integers, ratios, durations,
names of objects, quantities) and sections, as apiextensions.k8s.io/v1's structural schemas want
them. The CRD's sections (crd_serving, crd_quantize, crd_rollout, crd_status) are made of these.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from quantship.operator import names

DURATION_PATTERN = r"^([0-9]{1,4}h)?([0-9]{1,4}m)?([0-9]{1,5}s)?$"
"""At most 9999h9999m99999s (about 14 months): a longer window overflows Prometheus' durations
and the API server's CEL duration(), and no rollout waits that long."""

_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
    "minimum": 0,  # for an integer; the pattern has no minus sign for a string
    "pattern": rf"^\+?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$",
}
"""A resource.Quantity, as Kubernetes' own CRDs declare it (100m, 2Gi, 1e3), not negative (which
a container's resources refuse)."""


def default_of(spec: type[Any], name: str) -> Any:
    """A field's default in the rollout engine's spec dataclasses: the CRD's defaults are theirs."""
    field = {field.name: field for field in dataclasses.fields(spec)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    assert field.default_factory is not dataclasses.MISSING
    return field.default_factory()


def duration(field: str, description: str, default: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "minLength": 2,
        "maxLength": 16,  # the pattern's longest; bounds the CEL cost of crd_rules.WINDOWS_IN_ORDER
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


def ratio(description: str, default: float | None = None, *, exclusive_zero: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1, "description": description}
    if exclusive_zero:
        schema["exclusiveMinimum"] = True
    if default is not None:
        schema["default"] = default
    return schema


def integer(description: str, minimum: int, maximum: int, default: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "integer",
        "minimum": minimum,
        "maximum": maximum,
        "description": description,
    }
    if default is not None:
        schema["default"] = default
    return schema


def object_of(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties, **extra}


def name_of(description: str) -> dict[str, Any]:
    """A reference to an object in the namespace (a Secret, an HTTPRoute) by its name."""
    return {
        "type": "string",
        "pattern": names.DNS_1123_SUBDOMAIN,
        "maxLength": 253,
        "description": description,
    }


def resources(description: str) -> dict[str, Any]:
    """A core/v1 ResourceRequirements' limits and requests (no claims: the pods name no resource
    claims to use). A bad quantity is refused at `kubectl apply`, not by every Deployment the
    operator then tries to create; names and request <= limit are InvalidSpec (`names`)."""
    quantities = {"type": "object", "additionalProperties": QUANTITY}
    return object_of(
        description,
        {
            "limits": {**quantities, "description": "Most of each resource the container may use."},
            "requests": {**quantities, "description": "What the scheduler reserves for the container."},
        },
    )
