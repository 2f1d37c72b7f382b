"""The on-call kit, generated from quantship/slo.py: Prometheus recording and alert rules
(`rules`), the three Grafana dashboards (`dashboards`), and the links between them and the
runbooks (`links`). `make generate` (quantship/generate.py) writes them under manifests/,
dashboards/ and helm/quantship/files/; nothing at run time imports this package.
"""

from __future__ import annotations

from collections.abc import Callable


def generated_files() -> dict[str, Callable[[], str]]:
    """Path -> renderer for quantship/generate.py. Renderers import their module when called:
    the dashboards need grafana-foundation-sdk (a dev extra), the rules only PyYAML."""

    def rule_file() -> str:
        from quantship.oncall import rules

        return rules.render_rule_file()

    def prometheus_rule() -> str:
        from quantship.oncall import rules

        return rules.render_prometheus_rule()

    def threshold_template() -> str:
        from quantship.oncall import rules

        return rules.threshold_template()

    def dashboard(name: str) -> Callable[[], str]:
        def render() -> str:
            from quantship.oncall import dashboards

            return dashboards.render(name)

        return render

    files: dict[str, Callable[[], str]] = {
        "manifests/prometheus-rules.yaml": rule_file,
        "manifests/prometheusrule.yaml": prometheus_rule,
        "helm/quantship/files/prometheus-rules.yaml": rule_file,
        "helm/quantship/files/drift-thresholds.yaml": threshold_template,
    }
    for name in ("executive", "oncall", "debug"):
        files[f"dashboards/{name}.json"] = dashboard(name)
        files[f"helm/quantship/files/dashboards/{name}.json"] = dashboard(name)
    return files
