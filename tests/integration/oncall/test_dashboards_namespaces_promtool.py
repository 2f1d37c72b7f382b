"""The dashboards under the real promtool with one model in two namespaces: staging's canary fails a
quarter of its requests, prod's (100x the traffic) none. The alerts page for staging (the rules
group by namespace) and link the on-call dashboard with its namespace; there, the errors panel and
the burn rates show staging's 25%, not the 0.25% of both namespaces summed. The operator's series
(one canary per namespace, both named digits) are told apart the same way, and the debug dashboard's
per-tensor panels keep a canary apart from the stable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantship import generate, slo
from quantship.local.prometheus import find_binary
from quantship.oncall import rules

pytestmark = pytest.mark.prometheus

LABELS = {"model": "digits", "revision": "r2", "track": "canary"}
PER_MINUTE = {"staging": {"200": 30, "500": 10}, "prod": {"200": 4000}}
GRAFANA = {"$__rate_interval": "5m", "$__range": "17m30s", "$model": "digits"}


def matchers(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"


def promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    promtool = find_binary("promtool")
    assert promtool, "promtool is missing: run scripts/install-tools (make setup does)"
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(rules.render_rule_file())
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def series(namespace: str, code: str, per_minute: int) -> dict[str, str]:
    labels = {**LABELS, "namespace": namespace, "code": code}
    return {"series": f"{slo.Metric.REQUESTS_TOTAL}{matchers(labels)}", "values": f"0+{per_minute}x40"}


def panel_exprs(title: str, namespace: str, board_name: str = "oncall") -> list[str]:
    board = json.loads((generate.ROOT / "dashboards" / f"{board_name}.json").read_text())
    (panel,) = [panel for panel in board["panels"] if panel["title"] == title]
    exprs = []
    for target in panel["targets"]:
        expr = target["expr"]
        for variable, value in {**GRAFANA, "$namespace": namespace}.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        exprs.append(expr)
    return exprs


def expected(expr: str, ratio_by_namespace: dict[str, float], name: str = "") -> dict[str, Any]:
    samples = []
    for namespace, ratio in ratio_by_namespace.items():
        samples.append({"labels": f"{name}{matchers({**LABELS, 'namespace': namespace})}", "value": ratio})
    return {"expr": expr, "eval_time": "30m", "exp_samples": samples}


def test_the_oncall_dashboard_shows_each_namespaces_errors_as_the_alert_judged_them(tmp_path: Path) -> None:
    errors = next(objective for objective in slo.DEFAULT_OBJECTIVES if objective.sli is slo.SLI.ERRORS)
    (staging_errors,) = panel_exprs("Errors: bad ratio", "staging")
    (every_errors,) = panel_exprs("Errors: bad ratio", ".*")  # All
    burn_5m = next(expr for expr in panel_exprs("Burn rate: errors", "staging") if "ratio_rate5m" in expr)
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    series(namespace, code, count)
                    for namespace, codes in PER_MINUTE.items()
                    for code, count in codes.items()
                ],
                "promql_expr_test": [
                    expected(staging_errors, {"staging": 0.25}),
                    expected(every_errors, {"staging": 0.25, "prod": 0.0}),
                    expected(burn_5m, {"staging": 0.25 / errors.budget}),
                ],
            }
        ],
    )


def operator_series(metric: slo.Metric, namespace: str, value: float, **labels: str) -> dict[str, str]:
    """The operator's series of one model as scraped with honorLabels: the QuantizedModel's namespace,
    and the scrape's own job and instance."""
    scraped = {"namespace": namespace, "model": "digits", "job": "quantship", "instance": "10.0.0.9:8000"}
    return {"series": f"{metric}{matchers({**scraped, **labels})}", "values": f"{value}x40"}


def test_the_rollout_panels_show_each_namespaces_canary_of_one_model_name(tmp_path: Path) -> None:
    weights, burns = {"staging": 25.0, "prod": 50.0}, {"staging": 10.0, "prod": 0.5}
    (staging_weight,) = panel_exprs("Canary weight", "staging")
    (every_weight,) = panel_exprs("Canary weight", ".*")
    (staging_burn,) = panel_exprs("Canary burn rates the operator judged", "staging")
    burn = {"slo": "errors", "window": "5m"}

    def samples(expr: str, values: dict[str, float], **labels: str) -> dict[str, Any]:
        found = [
            {"labels": matchers({"model": "digits", "namespace": namespace, **labels}), "value": value}
            for namespace, value in values.items()
        ]
        return {"expr": expr, "eval_time": "30m", "exp_samples": found}

    test = {
        "interval": "1m",
        "input_series": [
            *(operator_series(slo.Metric.ROLLOUT_WEIGHT, ns, value) for ns, value in weights.items()),
            *(operator_series(slo.Metric.BURN_RATE, ns, value, **burn) for ns, value in burns.items()),
        ],
        "promql_expr_test": [
            samples(staging_weight, {"staging": 25.0}),
            samples(every_weight, weights),
            samples(staging_burn, {"staging": 10.0}, **burn),
        ],
    }
    promtool_test(tmp_path, [test])


def test_the_burn_panels_divide_a_models_errors_by_its_own_budget_as_the_alerts_judge_them(
    tmp_path: Path,
) -> None:
    """staging's spec.slos.maxErrorRate is 0.05 (the operator reports it); prod reports none. At 25%
    errors staging burns 5x its own budget (no page: the alerts compare with 14.4 x 0.05), not the
    250x of the default budget, on the on-call burn panel and on the executive's budget spent; prod
    reads against the default."""
    errors = next(objective for objective in slo.DEFAULT_OBJECTIVES if objective.sli is slo.SLI.ERRORS)
    own = 0.05
    (burn_5m,) = [expr for expr in panel_exprs("Burn rate: errors", ".*") if "ratio_rate5m" in expr]
    spent_title = f"Error budget spent, last {slo.SLO_PERIOD}"
    (spent,) = [expr for expr in panel_exprs(spent_title, ".*", "executive") if 'code=~"5..' in expr]
    budget = operator_series(slo.Metric.SLO_BUDGET, "staging", own, slo=errors.sli.value)
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    budget,
                    *(
                        series(namespace, code, count)
                        for namespace, codes in PER_MINUTE.items()
                        for code, count in codes.items()
                    ),
                ],
                "promql_expr_test": [
                    expected(burn_5m, {"staging": 0.25 / own, "prod": 0.0}),
                    {
                        "expr": spent,
                        "eval_time": "30m",
                        "exp_samples": [
                            {
                                "labels": matchers({"namespace": "staging", "model": "digits"}),
                                "value": 0.25 / own,
                            },
                            {"labels": matchers({"namespace": "prod", "model": "digits"}), "value": 0.0},
                        ],
                    },
                ],
            }
        ],
    )


def test_the_per_tensor_panels_keep_a_canary_apart_from_the_stable(tmp_path: Path) -> None:
    """The canary clips half of tensor conv's values and drifts 0.5 bits on it; the stable (ten times
    the traffic, two replicas) clips none and drifts 0.0625. Summed, the clip rate read 4.5% for
    both revisions, and drift averaged over them and their replicas."""
    canary, stable = {**LABELS, "namespace": "prod"}, {**LABELS, "namespace": "prod", "revision": "r1"}
    stable["track"] = "stable"
    tensor = {"tensor": "conv"}
    metric = slo.Metric

    def counter(name: slo.Metric, labels: dict[str, str], per_minute: int) -> dict[str, str]:
        return {"series": f"{name}{matchers({**labels, **tensor})}", "values": f"0+{per_minute}x40"}

    def drift(labels: dict[str, str], bits: float) -> dict[str, str]:
        return {
            "series": f"{metric.ACTIVATION_DRIFT}{matchers({**labels, **tensor})}",
            "values": f"{bits}x40",
        }

    pod_a, pod_b = {"instance": "10.0.0.1:8080"}, {"instance": "10.0.0.2:8080"}
    input_series = [
        counter(metric.TENSOR_ACTIVATIONS_OBSERVED_TOTAL, canary, 100),
        counter(metric.TENSOR_ACTIVATIONS_CLIPPED_TOTAL, canary, 50),
        counter(metric.TENSOR_ACTIVATIONS_OBSERVED_TOTAL, stable, 1000),
        counter(metric.TENSOR_ACTIVATIONS_CLIPPED_TOTAL, stable, 0),
        drift(canary, 0.5),
        drift({**stable, **pod_a}, 0.0625),
        drift({**stable, **pod_b}, 0.0625),
    ]

    def per_revision(expr: str, values: dict[str, float]) -> dict[str, Any]:
        samples = [
            {"labels": matchers({**labels, **tensor}), "value": value}
            for labels, value in ((canary, values["canary"]), (stable, values["stable"]))
        ]
        return {"expr": expr, "eval_time": "30m", "exp_samples": samples}

    (clip,) = panel_exprs("Clip rate per tensor (top 20)", "prod", "debug")
    (top,) = panel_exprs("Activation drift per tensor (top 20)", "prod", "debug")
    (every,) = panel_exprs("Activation drift heat map (every tensor)", "prod", "debug")
    drifts = {"canary": 0.5, "stable": 0.0625}
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": input_series,
                "promql_expr_test": [
                    per_revision(clip, {"canary": 0.5, "stable": 0.0}),
                    per_revision(top, drifts),
                    per_revision(every, drifts),
                ],
            }
        ],
    )


def test_the_rollout_tables_count_one_rollback_as_one(tmp_path: Path) -> None:
    """increase() extrapolates a counter's rise to the window's edges: one rollback in a window of
    17.5 minutes, sampled every minute, reads 1.029 (1.00958 measured over a live range)."""
    rolled_back = operator_series(slo.Metric.ROLLOUTS_TOTAL, "prod", 0, result="rolled_back")
    rolled_back["values"] = "1x20 2x20"  # an earlier one before the window; this one at minute 20
    tables = (("executive", "Rollouts over the time range"), ("oncall", "Recent promotions and rollbacks"))
    exprs = [expr for board, title in tables for expr in panel_exprs(title, "prod", board)]
    assert all("[17m30s]" in expr for expr in exprs)
    one = {
        "labels": matchers({"model": "digits", "namespace": "prod", "result": "rolled_back"}),
        "value": 1.0,
    }
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [rolled_back],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "30m",
                        "exp_samples": [one],
                    }
                    for expr in exprs
                ],
            }
        ],
    )
