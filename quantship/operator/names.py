"""Names a QuantizedModel lends to what the operator creates, and what Kubernetes and Prometheus
accept of them (and of a container's resources). The CRD refuses what would not fit (`crd.py`),
so a name the API server admits never comes back as an invalid Service or Deployment, or a query
Prometheus cannot parse; `spec.py` refuses what a schema cannot say.

The rules are Kubernetes' own (k8s.io/apimachinery/pkg/util/validation: IsDNS1123Label,
IsDNS1123Subdomain, IsDNS1035Label, IsValidLabelValue; core/v1's ValidateResourceRequirements)
and PromQL's for a label name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from kubernetes.utils import parse_quantity

from quantship import slo

GRPC_PORT = 8081
"""The model Services' gRPC port (KServe's, for `inference.GRPCInferenceService`) beside
spec.traffic.port: a Service refuses two ports of one protocol and number, so the CRD refuses this."""
RUN_AS = 10001
"""The user and group of the server image (server/Dockerfile), which the operator's pods run as."""

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
NAMESPACE_LABEL = slo.NAMESPACE
"""Every analysis query matches the model's own namespace on it, unless spec.analysis.labels sets
it: the same artifact in two namespaces is the same revision, and a canary judged on the other
namespace's traffic was promoted with none of its own."""


SECTIONS = ("limits", "requests")
"""What a container's resources hold here (no claims: the pods name no resource claims)."""
STANDARD_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
"""A container's resources without a domain, besides hugepages-<page size>."""
_QUALIFIED = re.compile(rf"(?P<domain>{SUBDOMAIN})/(?P<name>[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)")


def container_resource_errors(requirements: Mapping[str, Any]) -> list[str]:
    """What core/v1 (ValidateResourceRequirements) refuses in a container's limits and requests
    that a schema cannot say, or that a resource stored before the CRD said it may hold. An
    extended resource (example.com/gpu) is whole and cannot be overcommitted: request = limit."""
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
                amount = parse_quantity(quantity)
            except (ValueError, TypeError, ArithmeticError):
                amount = None
            if amount is None or not amount.is_finite() or amount < 0:
                errors.append(f"{key}.{name}: {quantity!r} is not a quantity")
            else:
                amounts[key][name] = amount
    limits, requests = amounts["limits"], amounts["requests"]
    for name in sorted({*sections["limits"], *sections["requests"]}):
        kind = _resource_kind(name)
        if kind is None:
            errors.append(
                f"{name!r} is not a container resource "
                "(cpu, memory, ephemeral-storage, hugepages-<size>, or domain/name, e.g. nvidia.com/gpu)"
            )
        elif kind == "extended":
            if any(
                amount != amount.to_integral_value()
                for amount in (limits.get(name), requests.get(name))
                if amount is not None
            ):
                errors.append(f"{name}: an extended resource is a whole number")
            elif name in requests and limits.get(name) != requests[name]:
                errors.append(f"{name}: an extended resource's request needs an equal limit")
        elif kind == "hugepages":
            if not {"cpu", "memory"} & {*limits, *requests}:
                errors.append(f"{name}: hugepages need a cpu or memory request or limit")
            page = parse_quantity(name.removeprefix("hugepages-"))
            for section, amounts_of in (("limits", limits), ("requests", requests)):
                amount = amounts_of.get(name)
                if amount is not None and (page != int(page) or math.ceil(amount) % page):
                    errors.append(
                        f"{section}.{name}: {sections[section][name]} is not a whole number of pages"
                    )
        if name in limits and name in requests and requests[name] > limits[name]:
            asked, most = sections["requests"][name], sections["limits"][name]
            errors.append(f"{name}: the request {asked} is more than the limit {most}")
    return errors


def _resource_kind(name: str) -> str | None:
    """standard, hugepages or extended; None for a name a container cannot take."""
    if name in STANDARD_RESOURCES:
        return "standard"
    if name.startswith("hugepages-"):
        try:
            return "hugepages" if parse_quantity(name.removeprefix("hugepages-")) > 0 else None
        except (ValueError, ArithmeticError):
            return None
    qualified = _QUALIFIED.fullmatch(name)
    if qualified is None or len(qualified["domain"]) > 253 or len(qualified["name"]) > 63:
        return None
    domain = qualified["domain"]
    native = domain == "kubernetes.io" or domain.endswith(".kubernetes.io")
    return None if native else "extended"


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
