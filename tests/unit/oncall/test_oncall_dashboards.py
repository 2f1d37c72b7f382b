"""The generated dashboards are portable and scoped: no data source uid is baked in, every query
follows the `model` variable, ids are unique, and the SLI panels read slo.py's series."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from quantship import generate, slo
from quantship.oncall import dashboard_promql, links, rules

NAMES = ("executive", "oncall", "debug")
SERVED = 'model=~"$model",namespace=~"$namespace"'
"""A server's series on the dashboards: one model of one namespace."""


def load(name: str) -> dict[str, Any]:
    return json.loads((generate.ROOT / "dashboards" / f"{name}.json").read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def datasources(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasources(value)


@pytest.mark.parametrize("name", NAMES)
def test_no_data_source_uid_is_hard_coded(name: str) -> None:
    board = load(name)
    refs = list(datasources(board))
    assert refs, "no datasource references at all"
    assert all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in refs), refs


@pytest.mark.parametrize("name", NAMES)
def test_each_dashboard_has_a_datasource_and_a_multi_value_model_variable(name: str) -> None:
    variables = {variable["name"]: variable for variable in load(name)["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"]
    assert model["query"] == f'label_values({slo.PREFIX}model_info{{namespace=~"$namespace"}}, model)'
    namespace = variables["namespace"]
    assert namespace["type"] == "query" and namespace["multi"] and namespace["includeAll"]
    assert namespace["query"] == f"label_values({slo.PREFIX}model_info, namespace)"
    assert namespace["allValue"] == ".*", "All must match series scraped without a namespace too"


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_query_follows_the_model_variable(name: str) -> None:
    board = load(name)
    targets = [target for panel in panels(board) for target in panel.get("targets", [])]
    assert targets
    for target in targets:
        assert 'model=~"$model"' in target["expr"], target["expr"]
        assert target["refId"]
        if "threshold" in target.get("legendFormat", ""):  # a drift threshold: one per model name
            assert 'namespace=~"$namespace"' in target["expr"], target["expr"]
        else:  # a server's or the operator's series: one model is one namespace's, as the alerts judge it
            assert 'namespace=~"$namespace"' in target["expr"], target["expr"]
            for grouping in re.findall(r"by \(([^)]*)\)", target["expr"]):
                assert "namespace" in grouping or "model" not in grouping, target["expr"]
            assert "{{namespace}}/{{model}}" in target.get("legendFormat", "{{namespace}}/{{model}}"), target


@pytest.mark.parametrize("name", NAMES)
def test_panel_ids_are_unique_and_every_panel_but_rows_has_a_query(name: str) -> None:
    board = load(name)
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["type"] == "row" or panel.get("targets"), panel["title"]


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_fits_grafanas_24_columns(name: str) -> None:
    """A panel past the 24th column is moved by Grafana on load, not where the layout put it."""
    for panel in panels(load(name)):
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, (panel["title"], place)


def test_dashboards_have_the_uids_the_alerts_link_to() -> None:
    assert [load(name)["uid"] for name in NAMES] == [links.EXECUTIVE_UID, links.ONCALL_UID, links.DEBUG_UID]


def test_the_oncall_dashboard_plots_every_slos_burn_rate_over_every_recorded_window() -> None:
    exprs = [target["expr"] for panel in panels(load("oncall")) for target in panel.get("targets", [])]
    for objective in slo.DEFAULT_OBJECTIVES:
        for window in slo.RULE_WINDOWS:
            served = f"{slo.recording_rule(objective.sli, window)}{{{SERVED}}}"
            assert rules.burn_rate(objective, served) in exprs


def test_sli_panels_use_the_ratio_slo_py_defines() -> None:
    exprs = {target["expr"] for panel in panels(load("oncall")) for target in panel.get("targets", [])}
    for objective in slo.DEFAULT_OBJECTIVES:
        ratio = slo.ratio(objective, "$__rate_interval", dashboard_promql.MODEL, dashboard_promql.TRACKS)
        assert ratio in exprs


def test_the_oncall_dashboard_marks_promotions_and_rollbacks() -> None:
    names = {annotation["name"]: annotation for annotation in load("oncall")["annotations"]["list"]}
    assert 'result=~"promoted"' in names["Promotions"]["expr"]
    assert 'result=~"rolled_back|failed"' in names["Rollbacks"]["expr"]


def test_drift_panels_draw_the_alert_thresholds_over_the_series_the_alerts_read() -> None:
    oncall = {panel["title"]: panel for panel in panels(load("oncall"))}
    debug = {panel["title"]: panel for panel in panels(load("debug"))}
    drift = oncall["Activation drift"]
    exprs = [target["expr"] for target in drift["targets"]]
    assert f"{rules.drift_rule()}{{{SERVED}}}" in exprs
    steps = [step["value"] for step in drift["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, rules.DRIFT_THRESHOLD]
    tensor = debug["Activation drift per tensor (top 20)"]
    assert 'tensor!="all"' in tensor["targets"][0]["expr"]
    steps = [step["value"] for step in tensor["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, rules.DRIFT_TENSOR_THRESHOLD]
    for title in ("Hardware mismatch", "Nondeterministic outputs"):
        assert oncall[title]["type"] == "stat"


def test_the_oncall_dashboard_plots_what_the_sli_starved_alert_reads_under_its_threshold() -> None:
    """The alert links the on-call dashboard: there, the series it judges and its threshold."""
    starved = {panel["title"]: panel for panel in panels(load("oncall"))}["SLI samples dropped as behind"]
    (alert,) = [rule for rule in rules.operation_alerts() if rule["alert"] == "QuantshipSliStarved"]
    assert alert["expr"].startswith(rules.sli_starved())
    plotted = [target["expr"] for target in starved["targets"]]
    assert plotted == [rules.sli_starved(dashboard_promql.MODEL)]
    steps = [step["value"] for step in starved["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, slo.STARVED_BEHIND_PER_S]


def legends(board: str, title: str) -> list[str]:
    """The legends of a panel's targets, but for a model's threshold (one line per model)."""
    panel = {panel["title"]: panel for panel in panels(load(board))}[title]
    return [
        target["legendFormat"] for target in panel["targets"] if "threshold" not in target["legendFormat"]
    ]


PER_REVISION = {
    "oncall": (
        *(f"Burn rate: {dashboard_promql.sli_title(objective.sli)}" for objective in slo.DEFAULT_OBJECTIVES),
        "Latency p95 and p99",
        "Fallback ops",
        "Activation drift",
        "Activation drift, most drifted tensor",
        "Hardware mismatch",
        "Nondeterministic outputs",
    ),
    "debug": (
        "Clip rate per tensor (top 20)",
        "Activation drift per tensor (top 20)",
        "Activation drift heat map (every tensor)",
    ),
}
"""Panels whose series are per revision and track: two stable revisions in one range (before and
after a promotion), or a canary of the same track in two namespaces, are told apart by the legend."""


@pytest.mark.parametrize(("board", "title"), [(b, t) for b, titles in PER_REVISION.items() for t in titles])
def test_legends_of_per_revision_panels_name_the_track_and_the_revision(board: str, title: str) -> None:
    found = legends(board, title)
    assert found
    for legend in found:
        assert "{{track}}" in legend and "{{revision}}" in legend, f"{title}: {legend}"


@pytest.mark.parametrize("name", NAMES)
def test_a_query_kept_per_revision_names_the_revision_in_its_legend(name: str) -> None:
    """Where every aggregation of a query keeps `revision`, two revisions of a track are two lines:
    a legend without {{revision}} draws them under one name."""
    for panel in panels(load(name)):
        for target in panel.get("targets", []):
            groupings = re.findall(r"by \(([^)]*)\)", target["expr"])
            if groupings and all("revision" in grouping.split(", ") for grouping in groupings):
                assert "{{revision}}" in target["legendFormat"], (panel["title"], target["legendFormat"])
