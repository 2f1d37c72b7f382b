"""The generated alert rules hang together: every alert reads recorded windows, links a runbook
section that exists and a dashboard that is generated, and every SLO has both severities."""

from __future__ import annotations

import json
import re

from quantship import generate, slo
from quantship.oncall import links, rules
from quantship.server.settings import QualitySettings

RUNBOOKS = (generate.ROOT / "docs" / "runbooks.md").read_text()


def all_rules() -> list[dict]:
    return [rule for group in rules.rule_groups() for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def test_every_slo_has_a_paging_and_a_ticket_alert_for_each_burn_window() -> None:
    seen = {
        (rule["labels"]["slo"], rule["labels"]["severity"], rule["labels"]["long_window"])
        for rule in alerts()
        if "slo" in rule["labels"]
    }
    expected = {(o.sli.value, w.severity, w.long) for o in slo.DEFAULT_OBJECTIVES for w in slo.BURN_WINDOWS}
    assert seen == expected


def test_burn_alerts_read_only_recorded_ratios() -> None:
    recorded = {rule["record"] for rule in all_rules() if "record" in rule}
    for rule in alerts():
        for name in re.findall(r"model_revision_track:[a-z_]+:ratio_rate\w+", rule["expr"]):
            assert name in recorded, f"{rule['alert']} reads {name}, which no rule records"


def test_burn_thresholds_are_the_burn_factor_times_the_models_budget_or_the_default() -> None:
    budgets = {o.sli.value: o.budget for o in slo.DEFAULT_OBJECTIVES}
    factors = {w.long: w.factor for w in slo.BURN_WINDOWS}
    for rule in alerts():
        labels = rule["labels"]
        if "slo" not in labels:
            continue
        expr = rule["expr"]
        limits = {
            float(x)
            for x in re.findall(
                r"ratio_rate\w+ > on \(namespace, model\) group_left \(\) \(([0-9.]+) \*", expr
            )
        }
        assert limits == {factors[labels["long_window"]]}, rule["alert"]
        assert {float(x) for x in re.findall(r"\* 0 \+ ([0-9.e-]+)\)", expr)} == {budgets[labels["slo"]]}
        assert f'quantship_slo_budget{{slo="{labels["slo"]}"}}' in expr, rule["alert"]


def test_every_alert_has_a_runbook_section_with_confirmation_queries() -> None:
    headings = {links.runbook_anchor(h): h for h in re.findall(r"^## (.+)$", RUNBOOKS, re.MULTILINE)}
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", RUNBOOKS, re.MULTILINE | re.DOTALL))
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(links.RUNBOOK_URL + "#")
        assert headings.get(url.split("#", 1)[1]) == rule["alert"], f"no runbook section for {rule['alert']}"
        body = sections[rule["alert"]]
        for part in ("**Means.**", "**Confirm.**", "```promql", "**Act.**"):
            assert part in body, f"{rule['alert']}'s runbook lacks {part}"


def test_runbooks_cover_exactly_the_alerts_there_are() -> None:
    sections = set(re.findall(r"^## (Quantship\w+)$", RUNBOOKS, re.MULTILINE))
    assert sections == {rule["alert"] for rule in alerts()} == set(rules.alert_names())


def test_alerts_link_the_generated_oncall_dashboard_on_their_model() -> None:
    oncall = json.loads((generate.ROOT / "dashboards" / "oncall.json").read_text())
    for rule in alerts():
        link = rule["annotations"]["dashboard"]
        assert (
            link
            == f"{links.GRAFANA_URL}/d/{oncall['uid']}/?var-model={{{{ $labels.model }}}}"
            + links.NAMESPACE_PARAMETER
        )
        assert "{{ $labels.model }}" in rule["annotations"]["summary"], (
            f"{rule['alert']} does not name the model"
        )


def test_every_alert_says_how_urgent_it_is() -> None:
    assert {rule["labels"]["severity"] for rule in alerts()} == {"page", "ticket"}
    assert all(
        rule["labels"]["severity"] == "ticket" for rule in alerts() if rule["alert"] in rules.OPERATION_ALERTS
    )


def test_the_prometheusrule_holds_the_same_groups_as_the_rule_file() -> None:
    import yaml

    plain = yaml.safe_load((generate.ROOT / "manifests" / "prometheus-rules.yaml").read_text())
    wrapped = yaml.safe_load((generate.ROOT / "manifests" / "prometheusrule.yaml").read_text())
    assert wrapped["apiVersion"] == "monitoring.coreos.com/v1" and wrapped["kind"] == "PrometheusRule"
    assert wrapped["spec"] == plain


def test_a_runbook_anchor_is_githubs() -> None:
    assert links.runbook_anchor("Rolling back by hand") == "rolling-back-by-hand"
    assert links.runbook_anchor("QuantshipErrorsFastBurn") == "quantshiperrorsfastburn"


def test_quantization_alerts_are_tickets_reading_recorded_drift() -> None:
    recorded = {rule["record"] for rule in all_rules() if "record" in rule}
    found = {rule["alert"]: rule for rule in alerts() if rule["alert"] in rules.QUANTIZATION_ALERTS}
    assert set(found) == set(rules.QUANTIZATION_ALERTS)
    assert {rule["labels"]["severity"] for rule in found.values()} == {"ticket"}
    assert {rules.drift_rule(), rules.drift_tensor_rule()} <= recorded
    drift, tensor = found["QuantshipActivationDrift"], found["QuantshipActivationDriftTensor"]
    assert f"{rules.drift_rule()} > {rules.DRIFT_THRESHOLD:g}" in drift["expr"]
    assert f"{rules.drift_tensor_rule()} > {rules.DRIFT_TENSOR_THRESHOLD:g}" in tensor["expr"]
    for rule in (drift, tensor):
        assert f">= {rules.DRIFT_MINIMUM_VALUES})" in rule["expr"], "drift judged without evidence"
    assert "{{ $labels.aspect }}" in found["QuantshipHardwareMismatch"]["annotations"]["summary"]


def test_the_sampled_minimum_outweighs_one_bad_request_and_leaves_1_req_s_its_pages() -> None:
    """rules.MINIMUM_SAMPLED_REQUESTS as its docstring argues: one wholly bad request among that many
    of equal size reads under the fastest page threshold of each sampled SLO's default budget, and
    1 req/s at the default sampling samples that many in an hour with 3 in 5 of them dropped."""
    fastest = max(slo.BURN_WINDOWS, key=lambda window: window.factor)
    minimum = rules.MINIMUM_SAMPLED_REQUESTS
    for objective in slo.DEFAULT_OBJECTIVES:
        if objective.sli in slo.SAMPLED_SLIS:
            assert 1 / minimum < rules.threshold(objective, fastest), objective.sli
    quality = QualitySettings()
    sampled_an_hour = min(quality.shadow_rate, quality.clip_sample_rate) * rules.seconds(fastest.long)
    assert minimum <= 0.4 * sampled_an_hour


def test_a_burn_alerts_summary_gives_its_tiers_factor_as_a_floor_not_the_burn() -> None:
    """The tier's factor is the least burn that fires it (a 50x burn fires the 14.4x tier too); the
    description gives the days the budget really lasts."""
    factors = {window.long: window.factor for window in slo.BURN_WINDOWS}
    for rule in alerts():
        if "slo" in rule["labels"]:
            factor = factors[rule["labels"]["long_window"]]
            assert f"burns over {factor:g}x too fast" in rule["annotations"]["summary"], rule["alert"]
