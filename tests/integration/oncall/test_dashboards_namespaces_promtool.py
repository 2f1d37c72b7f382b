"""The dashboards under the real promtool with one model in two namespaces: staging's canary fails a
quarter of its requests, prod's (100x the traffic) none. The alerts page for staging (the rules
group by namespace) and link the on-call dashboard with its namespace; there, the errors panel and
the burn rates show staging's 25%, not the 0.25% of both namespaces summed."""

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
GRAFANA = {"$__rate_interval": "5m", "$model": "digits"}


def series(namespace: str, code: str, per_minute: int) -> dict[str, str]:
    labels = {**LABELS, "namespace": namespace, "code": code}
    matchers = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return {"series": f"{slo.Metric.REQUESTS_TOTAL}{{{matchers}}}", "values": f"0+{per_minute}x40"}


def panel_exprs(title: str, namespace: str) -> list[str]:
    board = json.loads((generate.ROOT / "dashboards" / "oncall.json").read_text())
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
        labels = ",".join(f'{k}="{v}"' for k, v in sorted({**LABELS, "namespace": namespace}.items()))
        samples.append({"labels": f"{name}{{{labels}}}", "value": ratio})
    return {"expr": expr, "eval_time": "30m", "exp_samples": samples}


def test_the_oncall_dashboard_shows_each_namespaces_errors_as_the_alert_judged_them(tmp_path: Path) -> None:
    promtool = find_binary("promtool")
    assert promtool, "promtool is missing: run scripts/install-tools (make setup does)"
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(rules.render_rule_file())
    errors = next(objective for objective in slo.DEFAULT_OBJECTIVES if objective.sli is slo.SLI.ERRORS)
    (staging_errors,) = panel_exprs("Errors: bad ratio", "staging")
    (every_errors,) = panel_exprs("Errors: bad ratio", ".*")  # All
    burn_5m = next(expr for expr in panel_exprs("Burn rate: errors", "staging") if "ratio_rate5m" in expr)
    test = {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [
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
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
