"""The generated rules under the real promtool: they load, and each alert fires exactly when it should.

Burn cases feed constant counters whose bad ratio sits 5% above or below a tier's threshold, then
evaluate after the tier's long window and `for:` have passed. promtool compares every firing alert
of the named rule, labels and rendered annotations, so "silent" means no alert of that name at all.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantship import generate, slo
from quantship.local.prometheus import find_binary
from quantship.oncall import rules
from quantship.server.settings import QualitySettings

pytestmark = pytest.mark.prometheus

MODEL = {"model": "digits", "revision": "r2", "track": "canary"}
EVENTS_PER_MINUTE = 20_000
OBJECTIVES = {objective.sli: objective for objective in slo.DEFAULT_OBJECTIVES}
FAST_1H, FAST_6H = (window for window in slo.BURN_WINDOWS if window.severity == "page")
SLOW_1D, SLOW_3D = (window for window in slo.BURN_WINDOWS if window.severity == "ticket")


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = find_binary("promtool")
    assert binary, "promtool is missing: run scripts/install-tools (make setup does)"
    return binary


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "prometheus-rules.yaml"
    path.write_text(rules.render_rule_file())
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


# -- input series and expected alerts ------------------------------------------------------------


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    matchers = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return {"series": f"{name}{{{matchers}}}", "values": values}


def sli_series(
    objective: slo.Objective,
    total: float,
    bad: float,
    minutes: int,
    labels: dict[str, str] = MODEL,
    requests: float | None = None,
    sampled: float | None = None,
) -> list[dict[str, str]]:
    """Counters of one SLI growing by `total` events a minute, `bad` of them bad, the requests
    they came from (`requests` a minute; as many as events where None) and, for a sampled SLI, the
    sampled requests its lane processed (`sampled` a minute; every request where None)."""
    p = slo.PREFIX
    answered_per_minute = total if requests is None else requests
    answered = [(f"{p}requests_total", {"code": "200"}, answered_per_minute)]
    if objective.sli in slo.SAMPLED_SLIS:
        kind = {"kind": slo.SAMPLED_SLIS[objective.sli]}
        processed = answered_per_minute if sampled is None else sampled
        answered.append((str(slo.Metric.SAMPLES_PROCESSED_TOTAL), kind, processed))
    pairs: list[tuple[str, dict[str, str], float]]
    match objective.sli:
        case slo.SLI.ACCURACY_DELTA:
            pairs = [(f"{p}shadow_comparisons_total", {}, total), (f"{p}shadow_disagreements_total", {}, bad)]
        case slo.SLI.CLIP_RATE:
            pairs = [
                (f"{p}activations_observed_total", {}, total),
                (f"{p}activations_clipped_total", {}, bad),
            ]
        case slo.SLI.ERRORS:
            assert requests is None, "the errors SLI's events are requests"
            answered = []
            pairs = [
                (f"{p}requests_total", {"code": "200"}, total - bad),
                (f"{p}requests_total", {"code": "500"}, bad),
            ]
        case slo.SLI.LATENCY:
            le = {"le": f"{objective.latency_threshold:g}"}
            pairs = [
                (f"{p}request_duration_seconds_count", {}, total),
                (f"{p}request_duration_seconds_bucket", le, total - bad),
            ]
    pairs += answered
    return [series(name, {**labels, **extra}, f"0+{step:g}x{minutes}") for name, extra, step in pairs]


def go_value(value: float) -> str:
    """Go's %v of a float64, as Prometheus templates print $value."""
    return str(int(value)) if value.is_integer() else repr(value)


def humanize(value: float) -> str:
    """Prometheus' `humanize` for values of 1 and up: four significant digits, a k, M, G... prefix."""
    assert value >= 1, "only values of 1 and up are rendered here"
    prefix = ""
    for larger in ("k", "M", "G", "T"):
        if value < 1000:
            break
        value, prefix = value / 1000, larger
    return f"{value:.4g}{prefix}"


BUDGET_QUERY = re.compile(
    r"\{\{ with printf `[^`]*` \$labels\.namespace \$labels\.model \| query \}\}"
    r"\{\{ \. \| first \| value \}\}\{\{ else \}\}([^{]*)\{\{ end \}\}"
)
"""rules.budget_used: the model's own budget where the operator reports one, else the default."""
BUDGET_LASTS = re.compile(
    r"\{\{ with printf `([0-9.]+) \* \([^`]* or vector\(([^)]*)\)\) / %g` \$labels\.namespace "
    r"\$labels\.model \$value \| query \}\}\{\{ \. \| first \| value \| printf \"%\.3g\" \}\}\{\{ end \}\}"
)
"""rules.budget_lasts: the days a budget (the model's own, else the default) lasts at $value."""


def expand(template: str, labels: dict[str, str], value: float, budget: float | None = None) -> str:
    """Render the few template forms our annotations use, as Prometheus would; `budget` is the model's
    own SLO budget the operator reports (None: it reports none)."""
    text = BUDGET_QUERY.sub(lambda match: match[1] if budget is None else go_value(budget), template)
    text = BUDGET_LASTS.sub(
        lambda match: f"{float(match[1]) * (float(match[2]) if budget is None else budget) / value:.3g}", text
    )
    text = text.replace("{{ $value | humanizePercentage }}", f"{value * 100:.4g}%")
    if "{{ $value | humanize }}" in text:
        text = text.replace("{{ $value | humanize }}", humanize(value))
    text = text.replace("{{ $value }}", go_value(value))
    # {{ with $labels.x }}...{{ . }}...{{ end }}: the inside, with x for {{ . }}, where the label is
    # set; nothing where not
    text = re.sub(
        r"\{\{ with \$labels\.(\w+) \}\}(.*?)\{\{ end \}\}",
        lambda match: match[2].replace("{{ . }}", labels[match[1]]) if labels.get(match[1]) else "",
        text,
    )
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda match: labels[match[1]], text)


def rule(alert: str, **labels: str) -> dict[str, Any]:
    found = [
        candidate
        for group in rules.rule_groups()
        for candidate in group["rules"]
        if candidate.get("alert") == alert and labels.items() <= candidate.get("labels", {}).items()
    ]
    assert len(found) == 1, f"{alert} {labels}: {len(found)} rules"
    return found[0]


def expected(
    alert: str, labels: dict[str, str], value: float, budget: float | None = None, **rule_labels: str
) -> dict[str, Any]:
    defined = rule(alert, **rule_labels)
    all_labels = {**labels, **defined["labels"]}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {
            key: expand(text, all_labels, value, budget) for key, text in defined["annotations"].items()
        },
    }


def burn_expected(objective: slo.Objective, ratio: float, *windows: slo.BurnWindow) -> list[dict[str, Any]]:
    name = rules.alert_name(objective.sli, windows[0].severity) if windows else ""
    return [expected(name, MODEL, ratio, long_window=window.long) for window in windows]


@dataclass(frozen=True)
class BurnCase:
    """Counters at `factor` times a tier's threshold; after `minutes`, these tiers fire."""

    tier: slo.BurnWindow
    factor: float
    minutes: int
    fire: tuple[slo.BurnWindow, ...]


def evaluate_after(window: slo.BurnWindow) -> int:
    """Minutes until the long window is full and the `for:` has passed, plus a margin, on the
    5-minute grid the burn cases evaluate on."""
    minutes = (rules.seconds(window.long) + rules.seconds(rules.PENDING[window.long])) // 60 + 1
    return -(-minutes // 5) * 5


PAGE_CASES = {
    "pages at 14.4x over 1h and 5m": BurnCase(FAST_1H, 1.05, evaluate_after(FAST_1H), (FAST_1H, FAST_6H)),
    "only the 6x tier just below 14.4x": BurnCase(FAST_1H, 0.95, evaluate_after(FAST_1H), (FAST_6H,)),
    "pages at 6x over 6h and 30m": BurnCase(FAST_6H, 1.05, evaluate_after(FAST_6H), (FAST_6H,)),
    "silent just below 6x": BurnCase(FAST_6H, 0.95, evaluate_after(FAST_6H), ()),
}


def burn_test(objective: slo.Objective, case: BurnCase) -> dict[str, Any]:
    bad = round(case.factor * rules.threshold(objective, case.tier) * EVENTS_PER_MINUTE)
    ratio = bad / EVENTS_PER_MINUTE
    severity = case.tier.severity
    return {
        "interval": "1m",
        "input_series": sli_series(objective, EVENTS_PER_MINUTE, bad, case.minutes + 5),
        "alert_rule_test": [
            {
                "eval_time": f"{case.minutes}m",
                "alertname": rules.alert_name(objective.sli, severity),
                "exp_alerts": burn_expected(objective, ratio, *case.fire),
            }
        ],
    }


def write_tests(tmp_path: Path, rule_file: Path, tests: list[dict[str, Any]], every: str = "1m") -> Path:
    """A promtool test file; burn cases span hours of samples and evaluate `every` 5m to stay quick."""
    path = tmp_path / "tests.yaml"
    document = {"rule_files": [str(rule_file)], "evaluation_interval": every, "tests": tests}
    path.write_text(yaml.safe_dump(document))
    return path


def assert_passes(promtool: str, test_file: Path) -> None:
    result = run_promtool(promtool, "test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the tests -----------------------------------------------------------------------------------


def test_generated_rule_file_passes_promtool_check(promtool: str) -> None:
    result = run_promtool(
        promtool, "check", "rules", str(generate.ROOT / "manifests" / "prometheus-rules.yaml")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"SUCCESS: {sum(len(group['rules']) for group in rules.rule_groups())} rules found" in result.stdout
    )


def test_prometheusrule_spec_passes_promtool_check(promtool: str, tmp_path: Path) -> None:
    document = yaml.safe_load((generate.ROOT / "manifests" / "prometheusrule.yaml").read_text())
    assert document["kind"] == "PrometheusRule"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(document["spec"]))
    result = run_promtool(promtool, "check", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_page_alert_fires_at_its_burn_rate_and_stays_silent_just_below(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    tests = [
        burn_test(objective, case) for objective in slo.DEFAULT_OBJECTIVES for case in PAGE_CASES.values()
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))


def test_each_ticket_alert_fires_at_its_burn_rate_and_stays_silent_just_below(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    objective = OBJECTIVES[slo.SLI.ERRORS]
    cases = [
        BurnCase(SLOW_1D, 1.05, evaluate_after(SLOW_1D), (SLOW_1D, SLOW_3D)),
        BurnCase(SLOW_1D, 0.95, evaluate_after(SLOW_1D), (SLOW_3D,)),
        BurnCase(SLOW_3D, 0.95, evaluate_after(SLOW_1D), ()),
    ]
    tests = [burn_test(objective, case) for case in cases]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))


def test_the_same_model_and_revision_in_two_namespaces_are_judged_apart(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """The same artifact is the same revision everywhere: summed over namespaces, a staging canary
    failing 10% of its requests was diluted by prod's ten times as many good ones, and paged nobody."""
    objective = OBJECTIVES[slo.SLI.ERRORS]
    minutes = evaluate_after(FAST_1H)
    staging, prod = ({**MODEL, slo.NAMESPACE: namespace} for namespace in ("staging", "prod"))
    page = rules.alert_name(objective.sli, "page")
    tests = [
        {
            "interval": "1m",
            "input_series": [
                *sli_series(objective, 100, 10, minutes + 5, staging),
                *sli_series(objective, 1000, 0, minutes + 5, prod),
            ],
            "alert_rule_test": [
                {
                    "eval_time": f"{minutes}m",
                    "alertname": page,
                    "exp_alerts": [
                        expected(page, staging, 0.1, long_window=window.long) for window in (FAST_1H, FAST_6H)
                    ],
                }
            ],
        }
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))
    assert expand(rule(page, long_window="1h")["annotations"]["summary"], staging, 0.1).startswith(
        "staging/digits: "
    )


def test_each_model_burns_its_own_budget_and_a_model_without_one_the_default(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """One model name in three namespaces: `tight` (spec.slos.maxErrorRate 0.0001) pages at a 0.5%
    error ratio, under the default budget's 6x; `loose` (0.05) stays quiet at 10%, 100x the default;
    `plain`, whose budget the operator does not report (served without it), is judged by the default
    at 10% too. The budgets carry the scrape's own labels besides (job, instance)."""
    objective = OBJECTIVES[slo.SLI.ERRORS]
    minutes = evaluate_after(FAST_6H)
    tight, loose, plain = ({**MODEL, slo.NAMESPACE: namespace} for namespace in ("tight", "loose", "plain"))
    scrape = {"job": "quantship-operator", "instance": "10.0.0.9:8000"}
    own = {"tight": 0.0001, "loose": 0.05}
    assert own["tight"] * FAST_6H.factor < 0.005 < objective.budget * FAST_6H.factor
    assert objective.budget * FAST_1H.factor < 0.1 < own["loose"] * FAST_6H.factor
    budgets = [
        series(
            str(slo.Metric.SLO_BUDGET),
            {slo.NAMESPACE: namespace, "model": "digits", "slo": objective.sli.value, **scrape},
            f"{budget}x{minutes + 5}",
        )
        for namespace, budget in own.items()
    ]
    page = rules.alert_name(objective.sli, "page")
    tests = [
        {
            "interval": "1m",
            "input_series": [
                *budgets,
                *sli_series(objective, EVENTS_PER_MINUTE, EVENTS_PER_MINUTE // 200, minutes + 5, tight),
                *sli_series(objective, EVENTS_PER_MINUTE, EVENTS_PER_MINUTE // 10, minutes + 5, loose),
                *sli_series(objective, EVENTS_PER_MINUTE, EVENTS_PER_MINUTE // 10, minutes + 5, plain),
            ],
            "alert_rule_test": [
                {
                    "eval_time": f"{minutes}m",
                    "alertname": page,
                    "exp_alerts": [
                        *(
                            expected(page, tight, 0.005, own["tight"], long_window=window.long)
                            for window in (FAST_1H, FAST_6H)
                        ),
                        *(
                            expected(page, plain, 0.1, long_window=window.long)
                            for window in (FAST_1H, FAST_6H)
                        ),
                    ],
                }
            ],
        }
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))
    description = rule(page, long_window="1h")["annotations"]["description"]
    assert "above 14.4x the 0.0001 budget" in expand(description, tight, 0.005, own["tight"])
    assert "above 14.4x the 0.001 budget" in expand(description, plain, 0.1)
    # the days left at the burn seen (30 x budget / ratio), not at the tier's factor (30 / 14.4)
    assert "a 30-day budget lasts 0.6 days" in expand(description, tight, 0.005, own["tight"])
    assert "a 30-day budget lasts 0.3 days" in expand(description, plain, 0.1)


def test_a_models_own_budget_holds_while_the_operator_restarts_then_the_default_with_a_ticket(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """`loose` (maxErrorRate 0.05) fails 10% of its requests. Its operator's scrape fails at `down`
    (a stale marker ends the budget series at once): for BUDGET_HELD its own budget still holds, so
    it stays quiet; after that the default budget judges it (it pages) and QuantshipSloBudgetMissing
    says so. `kept`, whose budget the operator goes on reporting, opens no such ticket."""
    objective = OBJECTIVES[slo.SLI.ERRORS]
    down = evaluate_after(FAST_6H)
    held = rules.seconds(rules.BUDGET_HELD) // 60
    after = held + rules.seconds(rules.BUDGET_MISSING_FOR) // 60 + 10
    end = down + after + 5
    loose, kept = ({**MODEL, slo.NAMESPACE: namespace} for namespace in ("loose", "kept"))
    scrape = {"job": "quantship-operator", "instance": "10.0.0.9:8000"}

    def budget(namespace: str, values: str) -> dict[str, str]:
        labels = {slo.NAMESPACE: namespace, "model": "digits", "slo": objective.sli.value, **scrape}
        return series(str(slo.Metric.SLO_BUDGET), labels, values)

    def info(labels: dict[str, str]) -> dict[str, str]:
        return series(str(slo.Metric.MODEL_INFO), {**labels, "precision": "int8"}, f"1x{end}")

    page, missing = rules.alert_name(objective.sli, "page"), "QuantshipSloBudgetMissing"
    unjudged = {slo.NAMESPACE: "loose", "model": "digits"}
    tests = [
        {
            "interval": "1m",
            "input_series": [
                budget("loose", f"0.05x{down} stale"),
                budget("kept", f"0.05x{end}"),
                info(loose),
                info(kept),
                *sli_series(objective, EVENTS_PER_MINUTE, EVENTS_PER_MINUTE // 10, end, loose),
                *sli_series(objective, EVENTS_PER_MINUTE, EVENTS_PER_MINUTE // 10, end, kept),
            ],
            "alert_rule_test": [
                *(
                    {"eval_time": f"{minutes}m", "alertname": alert, "exp_alerts": []}
                    for minutes in (down, down + 10, down + held - 5)
                    for alert in (page, missing)
                ),
                {
                    "eval_time": f"{down + after}m",
                    "alertname": page,
                    "exp_alerts": [
                        expected(page, loose, 0.1, long_window=window.long) for window in (FAST_1H, FAST_6H)
                    ],
                },
                {
                    "eval_time": f"{down + after}m",
                    "alertname": missing,
                    "exp_alerts": [expected(missing, unjudged, 1.0)],
                },
            ],
        }
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))


def test_a_low_traffic_model_does_not_page_but_opens_a_ticket(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    # Half of all events bad, 2 events a minute: 120 an hour, below the 360 a page needs.
    minutes = evaluate_after(FAST_6H)
    tests = [
        {
            "interval": "1m",
            "input_series": sli_series(objective, 2, 1, minutes + 5),
            "alert_rule_test": [
                {
                    "eval_time": f"{minutes}m",
                    "alertname": rules.alert_name(objective.sli, "page"),
                    "exp_alerts": [],
                },
                {
                    "eval_time": f"{minutes}m",
                    "alertname": rules.alert_name(objective.sli, "ticket"),
                    "exp_alerts": burn_expected(objective, 0.5, SLOW_1D, SLOW_3D),
                },
            ],
        }
        for objective in slo.DEFAULT_OBJECTIVES
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))


def test_the_same_burn_pages_once_traffic_reaches_the_minimum(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    # 8 events a minute: 480 in the last hour (enough for the 1h tier), 520 in 6h (not for the 6h tier).
    minutes = evaluate_after(FAST_1H)
    tests = [
        {
            "interval": "1m",
            "input_series": sli_series(objective, 8, 4, minutes + 5),
            "alert_rule_test": [
                {
                    "eval_time": f"{minutes}m",
                    "alertname": rules.alert_name(objective.sli, "page"),
                    "exp_alerts": burn_expected(objective, 0.5, FAST_1H),
                }
            ],
        }
        for objective in slo.DEFAULT_OBJECTIVES
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))


SAMPLED = (OBJECTIVES[slo.SLI.CLIP_RATE], OBJECTIVES[slo.SLI.ACCURACY_DELTA])
VALUES_A_ROW = 1640
"""Activation values the clip rate counts for one digits row (measured): a single request is
thousands of the clip SLI's events."""
BAD_A_ROW = 164
"""10% of them bad: above every page tier of both sampled SLOs (14.4 x 0.5% = 7.2%)."""


def test_one_odd_request_of_a_sampled_sli_does_not_page(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """One request in the hour, its clip sample 164 of 1640 values out of range (100x the budget), or
    its 1640 rows compared with 10% disagreeing: thousands of the SLI's own events, but one request."""
    tests = [
        {
            "interval": "1m",
            "input_series": [
                {**entry, "values": entry["values"].replace("0+", "0 ")}  # one step, then flat
                for entry in sli_series(objective, VALUES_A_ROW, BAD_A_ROW, 20, requests=1)
            ],
            "alert_rule_test": [
                {
                    "eval_time": f"{minutes}m",
                    "alertname": rules.alert_name(objective.sli, "page"),
                    "exp_alerts": [],
                }
                for minutes in (3, 4, 5)
            ],
        }
        for objective in SAMPLED
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))


def test_sustained_bad_samples_of_few_large_requests_still_page(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """8 requests a minute (480 over the hour: enough for the 1h tier, not for 6h), each 1640 values
    or rows, 10% of them bad."""
    minutes = evaluate_after(FAST_1H)
    tests = [
        {
            "interval": "1m",
            "input_series": sli_series(objective, 8 * VALUES_A_ROW, 8 * BAD_A_ROW, minutes + 5, requests=8),
            "alert_rule_test": [
                {
                    "eval_time": f"{minutes}m",
                    "alertname": rules.alert_name(objective.sli, "page"),
                    "exp_alerts": burn_expected(objective, BAD_A_ROW / VALUES_A_ROW, FAST_1H),
                }
            ],
        }
        for objective in SAMPLED
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))


SAMPLED_SHARE = QualitySettings().shadow_rate
"""The share of requests a server samples by default, for each sampled SLI."""
MODEST_PER_MINUTE = 12
"""0.2 req/s: twice what the page tiers need in requests, and 36 sampled an hour."""
BUSY_PER_MINUTE = 60
"""1 req/s: 180 sampled an hour."""


def stepped(per_minute: float, odd: float, at: int, minutes: int) -> str:
    """promtool values: a counter growing by `per_minute`, and by `odd` more at minute `at`."""
    return f"0+{per_minute:g}x{at - 1} {at * per_minute + odd:g}+{per_minute:g}x{minutes - at}"


def test_one_odd_request_among_few_sampled_ones_does_not_page(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """0.2 req/s of clean one-row requests, the default share sampled; at minute 30 one odd sampled
    request: a 1640-row batch, a tenth of whose rows disagree with FP32, or one row half of whose
    1640 activation values are clipped. For the 5 minutes it lasts, the bad ratio is several times
    the page threshold and the requests answered are above the page minimum, but the ratio stands
    on some twenty sampled requests, under rules.MINIMUM_SAMPLED_REQUESTS."""
    assert QualitySettings().clip_sample_rate == SAMPLED_SHARE
    odd_at, minutes, p = 30, 40, slo.PREFIX
    sampled = MODEST_PER_MINUTE * SAMPLED_SHARE
    assert rules.minimum_requests(FAST_1H) <= MODEST_PER_MINUTE * 60
    assert sampled * (odd_at + 5) + 1 < rules.MINIMUM_SAMPLED_REQUESTS
    rows = {  # events of a sampled request, of the odd one, bad ones of the odd one; the counters
        slo.SLI.ACCURACY_DELTA: (1, VALUES_A_ROW, BAD_A_ROW, "shadow_comparisons", "shadow_disagreements"),
        slo.SLI.CLIP_RATE: (
            VALUES_A_ROW,
            VALUES_A_ROW,
            VALUES_A_ROW // 2,
            "activations_observed",
            "activations_clipped",
        ),
    }
    tests = []
    for objective in SAMPLED:
        each, odd_events, odd_bad, total, bad = rows[objective.sli]
        kind = {"kind": slo.SAMPLED_SLIS[objective.sli]}
        tests.append(
            {
                "interval": "1m",
                "input_series": [
                    series(
                        f"{p}requests_total", {**MODEL, "code": "200"}, f"0+{MODEST_PER_MINUTE}x{minutes}"
                    ),
                    series(f"{p}{total}_total", MODEL, stepped(sampled * each, odd_events, odd_at, minutes)),
                    series(f"{p}{bad}_total", MODEL, stepped(0, odd_bad, odd_at, minutes)),
                    series(
                        str(slo.Metric.SAMPLES_PROCESSED_TOTAL),
                        {**MODEL, **kind},
                        stepped(sampled, 1, odd_at, minutes),
                    ),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": f"{at}m",
                        "alertname": rules.alert_name(objective.sli, "page"),
                        "exp_alerts": [],
                    }
                    for at in range(odd_at + 2, odd_at + 6)
                ],
            }
        )
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))


def test_sustained_bad_samples_at_1_request_a_second_and_the_default_sampling_still_page(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """1 req/s of one-row requests, the default share sampled (3 a minute): every minute one
    compared row in three disagrees, or every sampled row has a tenth of its activation values
    clipped. Both page tiers see it: 180 sampled requests an hour clear MINIMUM_SAMPLED_REQUESTS."""
    sampled = BUSY_PER_MINUTE * SAMPLED_SHARE
    assert sampled.is_integer()
    events = {  # a minute: (events, bad events)
        slo.SLI.ACCURACY_DELTA: (sampled, 1),
        slo.SLI.CLIP_RATE: (sampled * VALUES_A_ROW, sampled * BAD_A_ROW),
    }
    minutes = evaluate_after(FAST_1H)
    tests = []
    for objective in SAMPLED:
        total, bad = events[objective.sli]
        tests.append(
            {
                "interval": "1m",
                "input_series": sli_series(
                    objective, total, bad, minutes + 5, requests=BUSY_PER_MINUTE, sampled=sampled
                ),
                "alert_rule_test": [
                    {
                        "eval_time": f"{minutes}m",
                        "alertname": rules.alert_name(objective.sli, "page"),
                        "exp_alerts": burn_expected(objective, bad / total, FAST_1H, FAST_6H),
                    }
                ],
            }
        )
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests, every="5m"))


def test_recording_rules_hold_each_slis_bad_ratio(promtool: str, rule_file: Path, tmp_path: Path) -> None:
    # 1 bad of 4 events a minute: every window's ratio is exactly 0.25.
    tests = [
        {
            "interval": "1m",
            "input_series": sli_series(objective, 4, 1, 30),
            "promql_expr_test": [
                {
                    "expr": slo.recording_rule(objective.sli, "5m"),
                    "eval_time": "10m",
                    "exp_samples": [
                        {
                            "labels": series(slo.recording_rule(objective.sli, "5m"), MODEL, "")["series"],
                            "value": 0.25,
                        }
                    ],
                }
            ],
        }
        for objective in slo.DEFAULT_OBJECTIVES
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))


def test_operational_alerts_fire_on_their_conditions_and_only_then(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    p = slo.PREFIX
    prod, staging = ({slo.NAMESPACE: namespace, "model": "digits"} for namespace in ("prod", "staging"))
    rolled_back = {**staging, "result": "rolled_back"}
    stable = {**MODEL, "revision": "r1", "track": "stable"}

    pod_a, pod_b = {"instance": "10.0.0.1:8080"}, {"instance": "10.0.0.2:8080"}
    starved_for = rules.seconds(rules.SLI_STARVED_FOR) // 60

    def dropped(labels: dict[str, str], values: str) -> dict[str, str]:
        return series(f"{p}samples_dropped_total", labels, values)

    tests = [
        {  # fallback ops: 2 Conv in float on the canary, none on stable
            "interval": "1m",
            "input_series": [
                series(f"{p}fallback_ops", {**MODEL, "op_type": "Conv"}, "2x30"),
                series(f"{p}fallback_ops", {**MODEL, "track": "stable", "op_type": "Conv"}, "0x30"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "QuantshipFallbackOps", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "QuantshipFallbackOps",
                    "exp_alerts": [expected("QuantshipFallbackOps", MODEL, 2.0)],
                },
            ],
        },
        {  # a load failure: the counter is born at 1 at minute 10, and notifies for 15 minutes
            "interval": "1m",
            "input_series": [
                series(f"{p}model_load_failures_total", {**MODEL, "reason": "hash_mismatch"}, "_x9 1x60"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "QuantshipModelLoadFailures", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "QuantshipModelLoadFailures",
                    "exp_alerts": [
                        expected("QuantshipModelLoadFailures", {**MODEL, "reason": "hash_mismatch"}, 1.0)
                    ],
                },
                {"eval_time": "40m", "alertname": "QuantshipModelLoadFailures", "exp_alerts": []},
            ],
        },
        {  # promotions say nothing; a rollback (a new series) and a second one (an increase) notify,
            # naming the namespace whose rollout it was (a namesake in prod promotes meanwhile)
            "interval": "1m",
            "input_series": [
                series(f"{p}rollouts_total", {**prod, "result": "promoted"}, "1+1x90"),
                series(f"{p}rollouts_total", {**prod, "result": "rolled_back"}, "0x90"),
                series(f"{p}rollouts_total", rolled_back, "_x29 1x30 2x30"),
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "QuantshipRolloutRolledBack", "exp_alerts": []},
                {
                    "eval_time": "31m",
                    "alertname": "QuantshipRolloutRolledBack",
                    "exp_alerts": [expected("QuantshipRolloutRolledBack", rolled_back, 1.0)],
                },
                {"eval_time": "55m", "alertname": "QuantshipRolloutRolledBack", "exp_alerts": []},
                {
                    "eval_time": "65m",
                    "alertname": "QuantshipRolloutRolledBack",
                    "exp_alerts": [expected("QuantshipRolloutRolledBack", rolled_back, 1.0)],
                },
            ],
        },
        {  # one canary stuck at 25% on step 1 (staging's); its namesake in prod advancing every
            # 10 minutes, at a larger weight
            "interval": "1m",
            "input_series": [
                series(f"{p}rollout_weight", staging, "25x120"),
                series(f"{p}rollout_step", staging, "1x120"),
                series(f"{p}rollout_weight", prod, "50x120"),
                series(f"{p}rollout_step", prod, "1 " * 10 + "2 " * 50 + "3 " * 61),
            ],
            "alert_rule_test": [
                {"eval_time": "50m", "alertname": "QuantshipRolloutStuck", "exp_alerts": []},
                {
                    "eval_time": "80m",
                    "alertname": "QuantshipRolloutStuck",
                    "exp_alerts": [expected("QuantshipRolloutStuck", staging, 25.0)],
                },
            ],
        },
        {  # a model reported for 30 minutes, then vanished; another keeps reporting
            "interval": "1m",
            "input_series": [
                series(f"{p}model_info", {**MODEL, "precision": "int8"}, "1x30"),
                series(f"{p}model_info", {**MODEL, "model": "steady", "precision": "int8"}, "1x90"),
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "QuantshipModelMetricsMissing", "exp_alerts": []},
                {
                    "eval_time": "50m",
                    "alertname": "QuantshipModelMetricsMissing",
                    "exp_alerts": [expected("QuantshipModelMetricsMissing", {"model": "digits"}, 1.0)],
                },
            ],
        },
        {  # a canary one of whose servers has its shadow lane starved (~250 drops a second, as
            # measured); its clip lanes drop under a second each (over one together); the stable
            # drops only for budget, and a fresh pod's probe drops a few dozen once
            "interval": "1m",
            "input_series": [
                dropped({**MODEL, **pod_a, "kind": "shadow", "reason": "behind"}, "0+15000x60"),
                dropped({**MODEL, **pod_b, "kind": "shadow", "reason": "behind"}, "0+0x60"),
                dropped({**MODEL, **pod_a, "kind": "clip", "reason": "behind"}, "0+50x60"),
                dropped({**MODEL, **pod_b, "kind": "clip", "reason": "behind"}, "0+50x60"),
                dropped({**stable, **pod_a, "kind": "shadow", "reason": "budget"}, "0+15000x60"),
                dropped({**stable, **pod_a, "kind": "shadow", "reason": "behind"}, "0 40x60"),
            ],
            "alert_rule_test": [  # shadow's rate is over the threshold from its first minute on
                {"eval_time": f"{starved_for}m", "alertname": "QuantshipSliStarved", "exp_alerts": []},
                *(
                    {
                        "eval_time": f"{minutes}m",
                        "alertname": "QuantshipSliStarved",
                        "exp_alerts": [expected("QuantshipSliStarved", {**MODEL, "kind": "shadow"}, 250.0)],
                    }
                    for minutes in (starved_for + 2, 50)  # by 50m, clip's would have fired if summed
                ),
            ],
        },
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))


def test_lasting_load_shedding_opens_a_ticket_but_a_trickle_a_small_share_or_a_burst_does_not(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    """`shedding` answers a quarter of its 40 requests a minute with 429 (the queue full); `busy`
    sheds 4 of 100 a minute, under SHED_RATIO; `quiet` sheds half of 2 a minute, under the
    minimum of requests; `bursting` serves 60 a minute and sheds 240 a minute for 3 minutes (from
    minute 40): 29% of its half hour, but over well before SHED_FOR. No SLO counts a 429: this
    alert alone says clients are refused."""
    shedding, busy, quiet, bursting = (
        {**MODEL, "model": model} for model in ("shedding", "busy", "quiet", "bursting")
    )
    assert 4 / 100 < rules.SHED_RATIO < 10 / 40
    assert 2 * rules.seconds(rules.SHED_WINDOW) // 60 < rules.TICKET_MINIMUM_REQUESTS
    burst_at, burst_minutes, shed_for = 40, 3, rules.seconds(rules.SHED_FOR) // 60
    assert burst_minutes < shed_for

    def answered(labels: dict[str, str], ok: int, shed: int) -> list[dict[str, str]]:
        return [
            series(str(slo.Metric.REQUESTS_TOTAL), {**labels, "code": "200"}, f"0+{ok}x90"),
            series(str(slo.Metric.REQUESTS_TOTAL), {**labels, "code": "429"}, f"0+{shed}x90"),
        ]

    burst = series(
        str(slo.Metric.REQUESTS_TOTAL),
        {**bursting, "code": "429"},
        f"0x{burst_at} 240+240x{burst_minutes - 1} {240 * burst_minutes}x{90 - burst_at - burst_minutes}",
    )
    alert = "QuantshipRequestsShed"
    tests = [
        {
            "interval": "1m",
            "input_series": [
                *answered(shedding, 30, 10),
                *answered(busy, 96, 4),
                *answered(quiet, 1, 1),
                answered(bursting, 60, 0)[0],
                burst,
            ],
            "alert_rule_test": [
                {"eval_time": f"{shed_for - 5}m", "alertname": alert, "exp_alerts": []},
                *(
                    {
                        "eval_time": f"{minutes}m",
                        "alertname": alert,
                        "exp_alerts": [expected(alert, shedding, 0.25)],
                    }
                    # after the burst, while its share of the half hour is still above SHED_RATIO
                    for minutes in (shed_for + 5, burst_at + shed_for, 60, 70, 80)
                ),
            ],
        }
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))


# -- quantization health: drift, hardware, determinism -------------------------------------------

SHIFTED, CALM = 0.09375, 0.015625
"""Exact binary fractions (3/32, 1/64) either side of rules.DRIFT_THRESHOLD: an average of equal
values is then exact, and promtool compares $value exactly. Near the measured digits figures
(0.087 darkened, 0.010 held-out)."""


def drift_series(
    labels: dict[str, str], drift: dict[str, float], values_per_minute: int
) -> list[dict[str, str]]:
    """Drift gauges by tensor, held for two hours, and the evidence counter growing by the minute."""
    return [
        *(
            series(f"{slo.PREFIX}activation_drift", {**labels, "tensor": t}, f"{v}x120")
            for t, v in drift.items()
        ),
        series(f"{slo.PREFIX}activation_drift_values_total", labels, f"0+{values_per_minute}x120"),
    ]


def test_drift_thresholds_lie_between_the_cases() -> None:
    assert CALM < rules.DRIFT_THRESHOLD < SHIFTED
    assert 0.0625 < rules.DRIFT_TENSOR_THRESHOLD < 0.25


def test_drift_alerts_fire_on_shifted_traffic_with_evidence_and_stay_silent_on_calm(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    enough = rules.DRIFT_MINIMUM_VALUES // 60 * 2  # twice the minimum over the hour
    scarce = rules.DRIFT_MINIMUM_VALUES // 60 // 2  # half of it
    calm = {**MODEL, "model": "calm"}
    idle = {**MODEL, "model": "idle"}
    wide = {**MODEL, "model": "wide"}  # per-tensor series: a calm mean, one tensor shifted
    quiet = {**MODEL, "model": "quiet"}  # per-tensor series, all below the tensor threshold
    eval_at = (rules.seconds(rules.DRIFT_WINDOW) + rules.seconds(rules.DRIFT_FOR)) // 60 + 5
    tests = [
        {
            "interval": "1m",
            "input_series": [
                *drift_series(MODEL, {"all": SHIFTED}, enough),
                *drift_series(calm, {"all": CALM}, enough),
                *drift_series(idle, {"all": SHIFTED}, scarce),
                *drift_series(wide, {"all": CALM, "conv1": 0.25, "conv2": CALM}, enough),
                *drift_series(quiet, {"all": CALM, "conv1": 0.0625, "conv2": CALM}, enough),
            ],
            "alert_rule_test": [
                {"eval_time": "40m", "alertname": "QuantshipActivationDrift", "exp_alerts": []},
                {
                    "eval_time": f"{eval_at}m",
                    "alertname": "QuantshipActivationDrift",
                    "exp_alerts": [expected("QuantshipActivationDrift", MODEL, SHIFTED)],
                },
                {
                    "eval_time": f"{eval_at}m",
                    "alertname": "QuantshipActivationDriftTensor",
                    "exp_alerts": [expected("QuantshipActivationDriftTensor", wide, 0.25)],
                },
            ],
            "promql_expr_test": [
                {
                    "expr": rules.drift_rule(),
                    "eval_time": f"{eval_at}m",
                    "exp_samples": [
                        {"labels": series(rules.drift_rule(), labels, "")["series"], "value": value}
                        for labels, value in (
                            (MODEL, SHIFTED),
                            (calm, CALM),
                            (idle, SHIFTED),
                            (wide, CALM),
                            (quiet, CALM),
                        )
                    ],
                },
                {
                    "expr": rules.drift_tensor_rule(),
                    "eval_time": f"{eval_at}m",
                    "exp_samples": [
                        {"labels": series(rules.drift_tensor_rule(), wide, "")["series"], "value": 0.25},
                        {"labels": series(rules.drift_tensor_rule(), quiet, "")["series"], "value": 0.0625},
                    ],
                },
            ],
        }
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))


def test_models_with_their_own_drift_thresholds_are_judged_by_them_and_the_rest_by_the_defaults(
    promtool: str, tmp_path: Path
) -> None:
    """`strict` alerts on calm traffic, `lenient` stays silent on shifted traffic and a shifted tensor,
    the model without thresholds keeps the defaults (as the chart's alerts.driftThresholds renders)."""
    own = {"strict": {"overall": 0.0078125}, "lenient": {"overall": 0.125, "tensor": 0.5}}
    rule_file = tmp_path / "rules.yaml"
    groups = [*rules.rule_groups(), {"name": rules.THRESHOLD_GROUP, "rules": rules.threshold_rules(own)}]
    rule_file.write_text(rules.dump({"groups": groups}))
    enough = rules.DRIFT_MINIMUM_VALUES // 60 * 2
    strict = {**MODEL, "model": "strict"}
    lenient = {**MODEL, "model": "lenient"}
    eval_at = (rules.seconds(rules.DRIFT_WINDOW) + rules.seconds(rules.DRIFT_FOR)) // 60 + 5
    tests = [
        {
            "interval": "1m",
            "input_series": [
                *drift_series(MODEL, {"all": SHIFTED}, enough),
                *drift_series(strict, {"all": CALM}, enough),
                *drift_series(lenient, {"all": SHIFTED, "conv1": 0.25}, enough),
            ],
            "alert_rule_test": [
                {
                    "eval_time": f"{eval_at}m",
                    "alertname": "QuantshipActivationDrift",
                    "exp_alerts": [
                        expected("QuantshipActivationDrift", MODEL, SHIFTED),
                        expected("QuantshipActivationDrift", strict, CALM),
                    ],
                },
                {"eval_time": f"{eval_at}m", "alertname": "QuantshipActivationDriftTensor", "exp_alerts": []},
            ],
        }
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))


def test_hardware_mismatch_and_nondeterminism_fire_naming_what_differs(
    promtool: str, rule_file: Path, tmp_path: Path
) -> None:
    p = slo.PREFIX
    other = {**MODEL, "model": "matching"}
    aspects = {"int8_flags": 1, "onnxruntime": 0, "provider": 0}
    tests = [
        {
            "interval": "1m",
            "input_series": [
                *(
                    series(f"{p}hardware_mismatch", {**MODEL, "aspect": a}, f"{v}x30")
                    for a, v in aspects.items()
                ),
                *(series(f"{p}hardware_mismatch", {**other, "aspect": a}, "0x30") for a in aspects),
                series(f"{p}nondeterministic_outputs", MODEL, "1x30"),
                series(f"{p}nondeterministic_outputs", other, "0x30"),
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "QuantshipHardwareMismatch", "exp_alerts": []},
                {"eval_time": "2m", "alertname": "QuantshipNondeterministicOutputs", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "QuantshipHardwareMismatch",
                    "exp_alerts": [
                        expected("QuantshipHardwareMismatch", {**MODEL, "aspect": "int8_flags"}, 1.0)
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "QuantshipNondeterministicOutputs",
                    "exp_alerts": [expected("QuantshipNondeterministicOutputs", MODEL, 1.0)],
                },
            ],
        }
    ]
    assert_passes(promtool, write_tests(tmp_path, rule_file, tests))
