"""The error-rate SLI under the real promtool: 499 (client gone mid-body) and 408 (too slow) are never
errors, 5xx always are. Both the PromQL the rollout engine judges with (`slo.ratio`) and the
generated recording rule the alerts read are evaluated on the same counters the server exports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from quantship import slo
from quantship.local.prometheus import find_binary
from quantship.oncall import rules

pytestmark = pytest.mark.prometheus

MODEL = {"model": "digits", "revision": "r2", "track": "canary"}
ERRORS = next(objective for objective in slo.DEFAULT_OBJECTIVES if objective.sli is slo.SLI.ERRORS)
PER_MINUTE = {"200": 50, "408": 10}
"""Requests a minute by code, beside 40 a minute of the code under test: its share is 40%."""


def series(code: str, per_minute: int) -> dict[str, str]:
    labels = ",".join(f'{key}="{value}"' for key, value in sorted({**MODEL, "code": code}.items()))
    return {"series": f"{slo.Metric.REQUESTS_TOTAL}{{{labels}}}", "values": f"0+{per_minute}x40"}


def case(code: str, ratio: float, rule_file: Path) -> dict[str, object]:
    recorded = slo.recording_rule(slo.SLI.ERRORS, "5m")
    recorded_labels = ",".join(f'{key}="{value}"' for key, value in sorted(MODEL.items()))
    return {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [series(code, 40), *(series(c, n) for c, n in PER_MINUTE.items())],
                "promql_expr_test": [
                    {
                        "expr": slo.ratio(ERRORS, "5m", MODEL),
                        "eval_time": "30m",
                        "exp_samples": [{"labels": "{}", "value": ratio}],
                    },
                    {
                        "expr": recorded,
                        "eval_time": "30m",
                        "exp_samples": [{"labels": f"{recorded}{{{recorded_labels}}}", "value": ratio}],
                    },
                ],
            }
        ],
    }


@pytest.mark.parametrize(
    ("code", "ratio"),
    [("499", 0.0), ("500", 0.4), ("503", 0.4)],
    ids=["499 is the client's", "500 is an error", "503 is an error"],
)
def test_the_error_rate_counts_5xx_and_never_499_or_408(code: str, ratio: float, tmp_path: Path) -> None:
    promtool = find_binary("promtool")
    assert promtool, "promtool is missing: run scripts/install-tools (make setup does)"
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(rules.render_rule_file())
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(case(code, ratio, rule_file)))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
