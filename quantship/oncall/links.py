"""Where alerts point people: the on-call dashboard and the runbook section of each alert.

Used by `rules` (alert annotations) and `dashboards` (dashboard uids and links). The base URLs
are placeholders the Helm chart replaces with `grafana.url` and `alerts.runbookBaseUrl`;
users of the plain manifests edit them (or regenerate).
"""

from __future__ import annotations

import re

GRAFANA_URL = "http://localhost:3000"
"""Grafana's own default address: the chart swaps in `grafana.url`."""

RUNBOOK_URL = "https://github.com/quantship/quantship/blob/main/docs/runbooks.md"
"""docs/runbooks.md as a browser sees it: the chart swaps in `alerts.runbookBaseUrl`."""

EXECUTIVE_UID = "quantship-executive"
ONCALL_UID = "quantship-oncall"
DEBUG_UID = "quantship-debug"


NAMESPACE_PARAMETER = "{{ with $labels.namespace }}&var-namespace={{ . }}{{ end }}"
"""An alert's namespace as the dashboards' `namespace` variable, where its series carry one (a
Kubernetes scrape); without, the variable stays at All."""


def dashboard_url(uid: str, model: str, base: str = GRAFANA_URL) -> str:
    """A dashboard opened on one model, in its alert's namespace; `model` may be an alert template
    such as {{ $labels.model }}."""
    return f"{base}/d/{uid}/?var-model={model}{NAMESPACE_PARAMETER}"


def runbook_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_url(alert: str, base: str = RUNBOOK_URL) -> str:
    return f"{base}#{runbook_anchor(alert)}"
