"""One table of metric names (`slo.Metric`): what the server and the operator export is exactly the
table, and every series the rules, dashboards and the engine's PromQL select is in it."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from quantship import generate, slo
from quantship.operator.metrics import OperatorMetrics
from quantship.server.metrics import ServerMetrics

SERIES = re.compile(r"(?<![:\w])quantship_[a-z_]+")
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def exported(registry: CollectorRegistry) -> set[str]:
    return {
        f"{family.name}_total" if family.type == "counter" else family.name for family in registry.collect()
    }


def table_name(series: str) -> str:
    """quantship_request_duration_seconds_bucket -> quantship_request_duration_seconds."""
    for suffix in HISTOGRAM_SERIES:
        if series.endswith(suffix) and series.removesuffix(suffix) in set(slo.Metric):
            return series.removesuffix(suffix)
    return series


def test_the_server_and_the_operator_export_exactly_the_table() -> None:
    server, operator = CollectorRegistry(), CollectorRegistry()
    ServerMetrics(server, {"model": "m", "revision": "r", "track": slo.Track.CANARY}, per_tensor=True)
    OperatorMetrics(operator)

    assert exported(server) | exported(operator) == set(slo.Metric)
    assert exported(operator) == {
        m for m in slo.Metric if m.name.startswith(("ROLLOUT", "ANALYSIS", "BURN", "SLO"))
    }


def test_rules_dashboards_and_the_engine_select_only_names_from_the_table() -> None:
    texts = {path: render() for path, render in generate.outputs().items()}
    objectives = slo.DEFAULT_OBJECTIVES
    texts["engine"] = " ".join(
        " ".join(slo.bad_and_total(objective, "5m", {"model": "m"})) for objective in objectives
    ) + slo.fallback_ops_or_zero({"model": "m"})

    selected = {path: {table_name(s) for s in SERIES.findall(text)} for path, text in texts.items()}

    unknown = {
        path: sorted(names - set(slo.Metric)) for path, names in selected.items() if names - set(slo.Metric)
    }
    assert not unknown
    everything = set().union(*selected.values())
    operator = {
        slo.Metric.ROLLOUTS_TOTAL,
        slo.Metric.ROLLOUT_WEIGHT,
        slo.Metric.BURN_RATE,
        slo.Metric.SLO_BUDGET,
    }
    assert operator <= everything
    assert slo.Metric.SHADOW_DISAGREEMENTS_TOTAL in selected["engine"]


def test_a_counter_is_declared_without_the_suffix_prometheus_client_appends() -> None:
    assert slo.Metric.ROLLOUTS_TOTAL.declared == "quantship_rollouts"
    assert slo.Metric.ROLLOUT_WEIGHT.declared == "quantship_rollout_weight"
    assert slo.Metric.REQUEST_DURATION_SECONDS.buckets == "quantship_request_duration_seconds_bucket"


def test_no_created_series_are_exported_beside_counters_and_histograms() -> None:
    """A third of a server's series (61 of 186 in one scrape), and nothing reads them."""
    server, operator = CollectorRegistry(), CollectorRegistry()
    ServerMetrics(server, {"model": "m", "revision": "r", "track": slo.Track.CANARY}, per_tensor=True)
    OperatorMetrics(operator)
    text = generate_latest(server).decode() + generate_latest(operator).decode()
    assert "quantship_requests_total" in text
    assert "_created" not in text
