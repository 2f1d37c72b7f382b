"""Names a QuantizedModel lends to what the operator creates, and what Kubernetes and Prometheus
accept of them. The CRD refuses what would not fit (`crd.py`), so a name the API server admits
never comes back as an invalid Service or Deployment, or a query Prometheus cannot parse.

The rules are Kubernetes' own (k8s.io/apimachinery/pkg/util/validation: IsDNS1035Label for a
Service's name, IsValidLabelValue) and PromQL's for a label name.
"""

from __future__ import annotations

import re

REVISION_DIGITS = 10
"""Hex digits of a revision id, the suffix of its Deployment's and Service's names."""

DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 63 - len("-") - REVISION_DIGITS
"""52: a revision's Service is NAME-REVISION, and a Service's name is a DNS-1035 label of at most
63 characters. The model's shared Service is NAME itself."""

LABEL_VALUE = r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$"
MAX_LABEL_VALUE_LENGTH = 63
"""spec.modelName becomes the `model` label of the model's pods (and of every metric)."""

PROMQL_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset({"model", "revision"})
"""Labels every query already matches on, by the revision it judges."""


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
