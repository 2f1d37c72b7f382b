"""Names a QuantizedModel lends to what the operator creates, and what Kubernetes and Prometheus
accept of them (and of a container's resources). The CRD refuses what would not fit (`crd.py`),
so a name the API server admits never comes back as an invalid Service or Deployment, or a query
Prometheus cannot parse; `spec.py` refuses what a schema cannot say.

The rules are Kubernetes' own (k8s.io/apimachinery/pkg/util/validation: IsDNS1123Label,
IsDNS1123Subdomain, IsDNS1035Label, IsValidLabelValue; core/v1's ValidateResourceRequirements)
and PromQL's for a label name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kubernetes.utils import parse_quantity

_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_1123_LABEL = f"^{_LABEL}$"
SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
"""A DNS-1123 subdomain, unanchored: a Secret's or a PersistentVolumeClaim's name (at most 253)."""
DNS_1123_SUBDOMAIN = f"^{SUBDOMAIN}$"

REVISION_DIGITS = 10
"""Hex digits of a revision id, the suffix of its Deployment's and Service's names."""

DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A Service's name."""
MAX_NAME_LENGTH = 63 - len("-") - REVISION_DIGITS
"""52: a revision's Service is NAME-REVISION, and a Service's name is a DNS-1035 label of at most
63 characters. The model's shared Service is NAME itself."""

LABEL_VALUE = r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$"
MAX_LABEL_VALUE_LENGTH = 63
"""spec.modelName becomes the `model` label of the model's pods (and of every metric)."""

PROMQL_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset({"model", "revision"})
"""Labels every query already matches on, by the revision it judges."""


SECTIONS = ("limits", "requests")
"""What a container's resources hold here (no claims: the pods name no resource claims)."""
STANDARD_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
"""A container's resources without a domain (and hugepages-<size>); others are example.com/name."""


def container_resource_errors(requirements: Mapping[str, Any]) -> list[str]:
    """What core/v1 refuses in a container's limits and requests that a schema cannot say (or, in
    a resource admitted before the CRD said it, a quantity's syntax): a name that is not a
    container resource, a request above its limit."""
    if not isinstance(requirements, Mapping):
        return [f"{requirements!r} is not limits and requests"]
    errors = [f"{key}: only limits and requests are taken" for key in requirements if key not in SECTIONS]
    sections = {key: requirements.get(key) or {} for key in SECTIONS}
    amounts: dict[str, dict[str, Any]] = {key: {} for key in sections}
    for key, section in sections.items():
        if not isinstance(section, Mapping):
            errors.append(f"{key}: {section!r} does not map resources to quantities")
            sections[key] = {}
        for name, quantity in sections[key].items():
            try:
                amounts[key][name] = parse_quantity(quantity)
            except (ValueError, TypeError):
                errors.append(f"{key}.{name}: {quantity!r} is not a quantity")
    for name in sorted({*sections["limits"], *sections["requests"]}):
        if name not in STANDARD_RESOURCES and not name.startswith("hugepages-") and "/" not in name:
            errors.append(
                f"{name!r} is not a container resource "
                "(cpu, memory, ephemeral-storage, hugepages-*, or domain/name)"
            )
        limit, request = amounts["limits"].get(name), amounts["requests"].get(name)
        if limit is not None and request is not None and request > limit:
            asked, most = sections["requests"][name], sections["limits"][name]
            errors.append(f"{name}: the request {asked} is more than the limit {most}")
    return errors


def analysis_label_errors(labels: dict[str, str]) -> list[str]:
    """What is wrong with spec.analysis.labels' names: each is a matcher in every PromQL query."""
    errors = []
    for name in sorted(labels):
        if not PROMQL_LABEL_NAME.fullmatch(name):
            errors.append(f"{name!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        elif name.startswith("__"):
            errors.append(f"{name!r}: names starting with __ are Prometheus' own")
        elif name in RESERVED_LABELS:
            errors.append(f"{name!r} is set by the operator for the revision it judges")
    return errors
