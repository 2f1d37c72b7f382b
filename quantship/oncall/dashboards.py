"""The three Grafana dashboards, built with grafana-foundation-sdk from quantship/slo.py.

`make generate` (quantship/generate.py) writes dashboards/{executive,oncall,debug}.json and their
copies in helm/quantship/files/dashboards/, which the chart ships as ConfigMaps for Grafana's
dashboard sidecar. Every SLI query comes from `slo.ratio` / `slo.recording_rule` / `slo.counters`,
so a panel shows the number the alerts and the rollout engine judge.

  executive  accuracy delta per model, latency p95, error budget spent, size saving of INT8 over
             FP32, rollout status and history
  oncall     burn rate per SLO and window, the four SLIs by track, p95/p99 latency, fallback ops,
             SLI samples dropped as behind, requests shed (429),
             activation drift against its alert threshold, hardware mismatch and info,
             nondeterministic outputs, canary weight and the operator's judgements; promotions and
             rollbacks as annotations
  debug      per-tensor clip rates and activation drift, fallback ops by type, batch size and
             queue time, shadow volume, per-pod latency, load time and failures, model info
             (quantization config, calibration hash)

Each dashboard has a `datasource` variable (never a hard-coded uid) and a multi-value `model`
variable; queries match models with `=~"$model"`. Needs the dev extras (grafana-foundation-sdk).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from quantship import slo
from quantship.oncall import links, rules

M = slo.Metric
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
MODEL: Mapping[str, str] = {slo.NAMESPACE: slo.Regex("$namespace"), "model": slo.Regex("$model")}
"""A model is namespace and name, as the rules group: the servers' series (the scrape adds `namespace`)
and the operator's (it labels them with the QuantizedModel's namespace; the scrape honors it)."""
RATE = "$__rate_interval"
RANGE = "$__range"
NAMED = (slo.NAMESPACE, "model")
TRACKS = (*NAMED, "revision", "track")
REVISION = "{{namespace}}/{{model}} {{track}} {{revision}}"
"""Legend of a series grouped by TRACKS: two revisions of one track (before and after a promotion)
are two lines, told apart by their revision."""
TAGS = ["quantship"]
OBJECTIVES = {objective.sli: objective for objective in slo.DEFAULT_OBJECTIVES}
PER_TENSOR = "{{namespace}}/{{model}} {{track}} {{revision}} {{tensor}}"
"""Legend of the per-tensor panels (a tensor of each revision and track)."""
BURN_COLORS = {1.0: "yellow", 3.0: "orange", 6.0: "red", 14.4: "dark-red"}
"""Burn-rate thresholds drawn on the burn panels: the factors of slo.BURN_WINDOWS."""


# -- queries that are not SLI ratios -------------------------------------------------------------


def latency_quantile(quantile: float, by: Sequence[str], labels: Mapping[str, str] = MODEL) -> str:
    series = slo.with_labels(M.REQUEST_DURATION_SECONDS.buckets, labels)
    return f"histogram_quantile({quantile}, sum by ({', '.join((*by, 'le'))}) (rate({series}[{RATE}])))"


def histogram_quantile(metric: slo.Metric, quantile: float, by: Sequence[str]) -> str:
    series = slo.with_labels(metric.buckets, MODEL)
    return f"histogram_quantile({quantile}, sum by ({', '.join((*by, 'le'))}) (rate({series}[{RATE}])))"


def per_second(metric: str, by: Sequence[str], labels: Mapping[str, str] = MODEL) -> str:
    """Rate of a series of `slo.Metric` (a name from the table, or one of a histogram's series)."""
    return f"sum by ({', '.join(by)}) (rate({slo.with_labels(metric, labels)}[{RATE}]))"


def burn_rate(objective: slo.Objective, window: str) -> str:
    """An SLO's burn rate over a window, from the recording rule the alerts read, over each model's
    own budget or the default, as the alerts judge it."""
    return rules.burn_rate(objective, slo.with_labels(slo.recording_rule(objective.sli, window), MODEL))


def per_tensor_clip_rate(window: str) -> str:
    """The clip-rate SLI per activation tensor (servers run with --per-tensor-metrics), of each
    revision and track: a canary's clipping is not diluted by the stable's."""
    by = (*TRACKS, "tensor")
    clipped = slo.increase(M.TENSOR_ACTIVATIONS_CLIPPED_TOTAL, window, MODEL, by)
    observed = slo.increase(M.TENSOR_ACTIVATIONS_OBSERVED_TOTAL, window, MODEL, by)
    return f"topk(20, {clipped} / ({observed} > 0))"


def hardware_mismatch() -> str:
    return f"max by ({', '.join((*TRACKS, 'aspect'))}) ({slo.with_labels(M.HARDWARE_MISMATCH, MODEL)})"


def overall_drift() -> str:
    """The overall drift gauge now (the server's sliding window), per revision and track."""
    series = slo.with_labels(rules.drift_series(per_tensor=False), MODEL)
    return f"max by ({', '.join(TRACKS)}) ({series})"


def per_tensor_drift(top: int | None = 20) -> str:
    """Drift per activation tensor (servers run with --per-tensor-metrics) of each revision and track,
    its replicas averaged: the `top` most drifted, or every tensor."""
    by = ", ".join((*TRACKS, "tensor"))
    series = f"avg by ({by}) ({slo.with_labels(rules.drift_series(per_tensor=True), MODEL)})"
    return series if top is None else f"topk({top}, {series})"


def size_bytes(variant: str) -> str:
    series = slo.with_labels(M.MODEL_SIZE_BYTES, {**MODEL, "variant": variant})
    return f"max by (namespace, model, revision) ({series})"


def rollouts(window: str, result: str = "") -> str:
    """Rollouts that ended in `window`, by result; `result` narrows them (a regex). Whole numbers:
    increase() extrapolates to the window's edges, and one rollback read 1.00958."""
    labels = {**MODEL, "result": slo.Regex(result)} if result else MODEL
    series = slo.with_labels(M.ROLLOUTS_TOTAL, labels)
    return f"round(sum by (namespace, model, result) (increase({series}[{window}])))"


def rollouts_ended(window: str, result: str) -> str:
    """Rollouts that ended in `window` with `result`: an annotation per marker, a first rollback
    of a model (its counter series is new) included."""
    series = slo.with_labels(M.ROLLOUTS_TOTAL, {**MODEL, "result": slo.Regex(result)})
    return (
        rules.appeared_or_increased(series, f"{rules.MODEL_KEY}, result", window).strip().replace("\n", " ")
    )


# -- building blocks -----------------------------------------------------------------------------


def query(
    expr: str, legend: str = "", *, instant: bool = False, as_table: bool = False
) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    if legend:
        target = target.legend_format(legend)
    if instant:
        target = target.instant()
    if as_table:
        target = target.format(prometheus_models.PromQueryFormat.TABLE)
    return target


def thresholds(steps: dict[float, str], base: str = "green") -> builders.ThresholdsConfig:
    levels = [models.Threshold(value=None, color=base)]
    levels += [models.Threshold(value=value, color=color) for value, color in steps.items()]
    return builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(levels)


Panel = timeseries.Panel | stat.Panel | table.Panel | heatmap.Panel


def _labels_variable(label: str, title: str, series: str, *, every: str) -> builders.QueryVariable:
    """A multi-value variable of `label`'s values in `series`; "All" stands for the regex `every`."""
    return (
        builders.QueryVariable(label)
        .label(title)
        .datasource(DATASOURCE)
        .query(f"label_values({series}, {label})")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(every)
    )


class Board:
    """One dashboard under construction: numbers its panels and their queries as Grafana expects."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self._ids: Iterator[int] = itertools.count(1)
        self._annotation_titles: dict[str, str] = {}
        self.builder = (
            builders.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(TAGS)
            .editable()
            .refresh("30s")
            .time("now-6h", "now")
            .timezone("browser")
            .with_variable(builders.DatasourceVariable("datasource").label("Data source").type("prometheus"))
            # "All" is .* for namespaces: it also matches series without the label (no Kubernetes scrape)
            .with_variable(_labels_variable(slo.NAMESPACE, "Namespace", M.MODEL_INFO, every=".*"))
            .with_variable(
                _labels_variable(
                    "model", "Model", f'{M.MODEL_INFO}{{{slo.NAMESPACE}=~"$namespace"}}', every=".+"
                )
            )
            .link(
                builders.DashboardLink("quantship")
                .type(models.DashboardLinkType.DASHBOARDS)
                .tags(TAGS)
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )

    def row(self, title: str) -> None:
        self.builder = self.builder.with_row(builders.Row(title).id(next(self._ids)))

    def add(
        self, panel: Panel, targets: Sequence[prometheus.Dataquery], *, span: int = 12, height: int = 8
    ) -> None:
        panel = panel.id(next(self._ids)).datasource(DATASOURCE).span(span).height(height)
        for ref, target in zip(_ref_ids(), targets, strict=False):
            panel = panel.with_target(target.ref_id(ref))
        self.builder = self.builder.with_panel(panel)

    def graph(
        self,
        title: str,
        description: str,
        targets: Sequence[prometheus.Dataquery],
        *,
        unit: str,
        span: int = 12,
        steps: dict[float, str] | None = None,
    ) -> None:
        panel = timeseries.Panel().title(title).description(description).unit(unit).min(0)
        if steps:
            panel = panel.thresholds(thresholds(steps)).thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
            )
        self.add(panel, targets, span=span)

    def number(
        self,
        title: str,
        description: str,
        targets: Sequence[prometheus.Dataquery],
        *,
        unit: str,
        span: int = 6,
        steps: dict[float, str] | None = None,
    ) -> None:
        panel = stat.Panel().title(title).description(description).unit(unit)
        if steps:
            panel = panel.thresholds(thresholds(steps))
        self.add(panel, targets, span=span, height=5)

    def heat_map(
        self, title: str, description: str, targets: Sequence[prometheus.Dataquery], *, unit: str, top: float
    ) -> None:
        """Series as rows (their legend names), time across, value as colour from 0 to `top` (and
        beyond, in the darkest): Grafana's heatmap with calculation off."""
        colours = (
            heatmap.HeatmapColorOptions()
            .mode(heatmap_models.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(heatmap_models.HeatmapColorScale.LINEAR)
            .exponent(0.5)
            .steps(64)
            .min(0)
            .max(top)
        )
        panel = (
            heatmap.Panel()
            .title(title)
            .description(description)
            .calculate(False)
            .color(colours)
            .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.UNKNOWN))
            .cell_values(heatmap.CellValues().unit(unit))
            .show_tooltip()
        )
        self.add(panel, targets, span=24, height=12)

    def table(
        self, title: str, description: str, targets: Sequence[prometheus.Dataquery], *, span: int = 24
    ) -> None:
        self.add(table.Panel().title(title).description(description), targets, span=span)

    def annotate(self, name: str, color: str, expr: str, title: str) -> None:
        self.builder = self.builder.annotation(
            builders.AnnotationQuery()
            .name(name)
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color(color)
            .expr(expr)
        )
        self._annotation_titles[name] = title

    def render(self) -> str:
        document = json.loads(json.dumps(self.builder.build(), cls=JSONEncoder))
        for panel in document["panels"]:
            if panel.get("options") is None:
                panel.pop("options", None)  # Grafana fills in the plugin's defaults; null trips some versions
        # The SDK's AnnotationQuery has no Prometheus fields: name each marker after its series.
        for annotation in document.get("annotations", {}).get("list", []):
            title = self._annotation_titles.get(annotation["name"])
            if title:
                annotation.update(titleFormat=title, tagKeys="model,result", useValueForTime=False)
        return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _ref_ids() -> Iterator[str]:
    return (chr(ord("A") + index) for index in range(26))


SLI_MEANING = {
    slo.SLI.ACCURACY_DELTA: "Share of shadow comparisons where INT8 disagrees with FP32",
    slo.SLI.LATENCY: "Share of requests slower than the latency SLO's threshold",
    slo.SLI.ERRORS: "Share of requests answered 5xx",
    slo.SLI.CLIP_RATE: "Share of activation values outside their calibrated range",
}


def _sli_title(sli: slo.SLI) -> str:
    return sli.value.replace("_", " ")


# -- executive -----------------------------------------------------------------------------------


def executive() -> Board:
    board = Board(
        links.EXECUTIVE_UID,
        "quantship / executive",
        "Is quantization paying off? Accuracy kept, latency, error budgets, size saved, rollouts.",
    )
    accuracy = OBJECTIVES[slo.SLI.ACCURACY_DELTA]
    board.row("Quality")
    board.graph(
        "Accuracy delta per model",
        "Share of shadow comparisons where the INT8 output disagrees with the FP32 reference. "
        f"Dashed: the default budget ({accuracy.budget:.1%}); a model's spec.slos may set its own.",
        [query(slo.ratio(accuracy, RATE, MODEL, NAMED), "{{namespace}}/{{model}}")],
        unit="percentunit",
        steps={accuracy.budget: "red"},
    )
    board.graph(
        "Latency p95 per model",
        "95th percentile of successful inference requests, end to end.",
        [query(latency_quantile(0.95, NAMED), "{{namespace}}/{{model}}")],
        unit="s",
    )
    board.number(
        f"Error budget spent, last {slo.SLO_PERIOD}",
        f"Share of each SLO's error budget spent over its period ({slo.SLO_PERIOD}, or as far back as "
        "Prometheus keeps data): the bad ratio over the period / the model's own budget (its spec.slos, "
        "as the operator reports it), or the default where none is reported, as the burn alerts judge "
        "it. 100% is the whole budget; the burn rate panels of the on-call dashboard show how fast it "
        "goes now.",
        [
            query(
                rules.burn_rate(objective, slo.ratio(objective, slo.SLO_PERIOD, MODEL, NAMED)),
                f"{{{{namespace}}}}/{{{{model}}}} {_sli_title(objective.sli)}",
                instant=True,
            )
            for objective in slo.DEFAULT_OBJECTIVES
        ],
        unit="percentunit",
        span=24,
        steps={0.5: "yellow", 1.0: "red"},
    )
    board.row("Cost")
    board.number(
        "Size saving of INT8",
        "1 - INT8 model bytes / FP32 reference bytes: memory, image and transfer cost saved.",
        [
            query(
                f"1 - {size_bytes('quantized')} / {size_bytes('reference')}",
                "{{namespace}}/{{model}} {{revision}}",
                instant=True,
            )
        ],
        unit="percentunit",
        span=8,
    )
    board.graph(
        "Model size, INT8 vs FP32",
        "Bytes of the served INT8 model and of its FP32 reference, from the artifact's manifest.",
        [
            query(
                f"max by (namespace, model, variant) ({slo.with_labels(M.MODEL_SIZE_BYTES, MODEL)})",
                "{{namespace}}/{{model}} {{variant}}",
            )
        ],
        unit="bytes",
        span=16,
    )
    board.row("Rollouts")
    board.number(
        "Canary weight",
        "Share of traffic on the canary now: 0 when no rollout is in progress.",
        [
            query(
                f"max by (namespace, model) ({slo.with_labels(M.ROLLOUT_WEIGHT, MODEL)})",
                "{{namespace}}/{{model}}",
                instant=True,
            )
        ],
        unit="percent",
        span=8,
    )
    board.table(
        "Rollouts over the time range",
        "Rollouts that ended in the dashboard's time range, by result (promoted, rolled_back, failed).",
        [query(rollouts(RANGE), instant=True, as_table=True)],
        span=16,
    )
    board.table(
        "What serves now",
        "Each revision and track loaded, with its precision and quantization.",
        [query(slo.with_labels(M.MODEL_INFO, MODEL), instant=True, as_table=True)],
    )
    return board


# -- on-call -------------------------------------------------------------------------------------


def oncall() -> Board:
    board = Board(
        links.ONCALL_UID,
        "quantship / on-call",
        "Which SLO burns, how fast, on which revision; what the rollout did about it.",
    )
    board.annotate(
        "Promotions", "green", rollouts_ended(RATE, "promoted"), "{{namespace}}/{{model}} promoted"
    )
    board.annotate(
        "Rollbacks", "red", rollouts_ended(RATE, "rolled_back|failed"), "{{namespace}}/{{model}} {{result}}"
    )
    board.row("Error budget burn (recording rules; dashed: the alert tiers)")
    for objective in slo.DEFAULT_OBJECTIVES:
        board.graph(
            f"Burn rate: {_sli_title(objective.sli)}",
            "Bad ratio over each window divided by the model's own budget (its spec.slos, as the "
            f"operator reports it) or the default ({objective.budget:g}), as the alerts judge it. "
            "Pages at 14.4x (1h and 5m) and 6x (6h and 30m); tickets at 3x (1d and 2h) and 1x (3d and 6h).",
            [
                query(
                    burn_rate(objective, window),
                    f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {window}",
                )
                for window in slo.RULE_WINDOWS
            ],
            unit="suffix:x",
            steps=BURN_COLORS,
        )
    board.row("SLIs by revision")
    for objective in slo.DEFAULT_OBJECTIVES:
        board.graph(
            f"{_sli_title(objective.sli).capitalize()}: bad ratio",
            f"{SLI_MEANING[objective.sli]}, per revision and track. Dashed: the default budget (a model's "
            "spec.slos may set its own: the burn rates divide by it).",
            [
                query(
                    slo.ratio(objective, RATE, MODEL, TRACKS),
                    "{{namespace}}/{{model}} {{track}} {{revision}}",
                )
            ],
            unit="percentunit",
            span=6,
            steps={objective.budget: "red"},
        )
    board.graph(
        "Latency p95 and p99",
        "Successful inference requests, end to end, per revision and track.",
        [
            query(latency_quantile(0.95, TRACKS), "p95 {{namespace}}/{{model}} {{track}} {{revision}}"),
            query(latency_quantile(0.99, TRACKS), "p99 {{namespace}}/{{model}} {{track}} {{revision}}"),
        ],
        unit="s",
    )
    board.number(
        "Fallback ops",
        "Ops meant to run quantized that run in float, per revision: any is a ticket.",
        [
            query(
                slo.fallback_ops_or_zero(MODEL, TRACKS),
                "{{namespace}}/{{model}} {{track}} {{revision}}",
                instant=True,
            )
        ],
        unit="none",
        steps={1: "red"},
    )
    board.graph(
        "SLI samples dropped as behind",
        "Samples a second each revision's most starved server drops because its SLI worker, which "
        f"runs on idle CPU only, is behind, averaged over {rules.SLI_STARVED_WINDOW} as "
        "QuantshipSliStarved judges it. Dashed: the alert threshold "
        f"({slo.STARVED_BEHIND_PER_S:g} a second). Over it, the server's cores are busy serving and its "
        "SLIs see few samples: more CPU or replicas help, a budget does not. Budget drops, by design, "
        "are on the debug dashboard (Sampled work dropped).",
        [query(rules.sli_starved(MODEL), "{{namespace}}/{{model}} {{track}} {{revision}} {{kind}}")],
        unit="reqps",
        span=6,
        steps={slo.STARVED_BEHIND_PER_S: "orange"},
    )
    board.graph(
        "Requests shed (429)",
        "Share of each revision's requests answered 429 because its batcher's queue was full, over "
        f"{rules.SHED_WINDOW} and {rules.SHED_SHORT_WINDOW} as QuantshipRequestsShed judges it (both "
        f"above the dashed threshold, {rules.SHED_RATIO:.0%}, for {rules.SHED_FOR}). No SLO counts them: "
        "nothing was done for them, so neither the errors nor the latency SLI sees them. Lasting "
        "shedding wants replicas.",
        [
            query(
                rules.shed_ratio(MODEL, window),
                f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {window}",
            )
            for window in (rules.SHED_WINDOW, rules.SHED_SHORT_WINDOW)
        ],
        unit="percentunit",
        span=6,
        steps={rules.SHED_RATIO: "orange"},
    )
    board.row("Quantization health")
    overall, largest = (
        slo.with_labels(rule, MODEL) for rule in (rules.drift_rule(), rules.drift_tensor_rule())
    )
    board.graph(
        "Activation drift",
        "Jensen-Shannon divergence (bits) of sampled activations from the calibration histograms, "
        f"mean over tensors: now, and averaged over {rules.DRIFT_WINDOW} as QuantshipActivationDrift "
        "judges it, against each model's threshold (its own where the chart's alerts.driftThresholds "
        f"sets one). Dashed: the default threshold ({rules.DRIFT_THRESHOLD:g}).",
        [
            query(
                overall,
                f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {rules.DRIFT_WINDOW}",
            ),
            query(overall_drift(), "{{namespace}}/{{model}} {{track}} {{revision}} now"),
            query(rules.model_threshold(overall, rules.DRIFT_THRESHOLD, tensor=False), "{{model}} threshold"),
        ],
        unit="none",
        span=12,
        steps={rules.DRIFT_THRESHOLD: "orange"},
    )
    board.graph(
        "Activation drift, most drifted tensor",
        f"The drift of the most drifted activation tensor, each averaged over {rules.DRIFT_WINDOW}, as "
        "QuantshipActivationDriftTensor judges it, against each model's threshold. Dashed: the default "
        f"({rules.DRIFT_TENSOR_THRESHOLD:g}). Needs servers run with --per-tensor-metrics; which tensor: "
        "the debug dashboard.",
        [
            query(
                largest,
                f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {rules.DRIFT_WINDOW}",
            ),
            query(
                rules.model_threshold(largest, rules.DRIFT_TENSOR_THRESHOLD, tensor=True),
                "{{model}} threshold",
            ),
        ],
        unit="none",
        span=12,
        steps={rules.DRIFT_TENSOR_THRESHOLD: "orange"},
    )
    board.number(
        "Hardware mismatch",
        "1 where a revision serves on hardware unlike the gate's, by aspect (int8_flags, "
        "onnxruntime, provider): a ticket.",
        [
            query(
                hardware_mismatch(), "{{namespace}}/{{model}} {{track}} {{revision}} {{aspect}}", instant=True
            )
        ],
        unit="none",
        steps={1: "orange"},
    )
    board.number(
        "Nondeterministic outputs",
        "1 where a fixed probe input run twice at load gave different outputs: a ticket.",
        [
            query(
                f"max by ({', '.join(TRACKS)}) ({slo.with_labels(M.NONDETERMINISTIC_OUTPUTS, MODEL)})",
                "{{namespace}}/{{model}} {{track}} {{revision}}",
                instant=True,
            )
        ],
        unit="none",
        steps={1: "red"},
    )
    board.table(
        "Hardware: serving and gate",
        "Per side (serving, gate): CPU, its int8 features, onnxruntime version, execution provider.",
        [query(slo.with_labels(M.HARDWARE_INFO, MODEL), instant=True, as_table=True)],
        span=12,
    )
    board.row("Rollout")
    board.graph(
        "Canary weight",
        "Share of traffic the operator sends to the canary.",
        [
            query(
                f"max by (namespace, model) ({slo.with_labels(M.ROLLOUT_WEIGHT, MODEL)})",
                "{{namespace}}/{{model}}",
            )
        ],
        unit="percent",
        span=8,
    )
    board.graph(
        "Canary burn rates the operator judged",
        "Burn rate of each SLO on the analysis windows at the last judgement.",
        [
            query(
                f"max by (namespace, model, slo, window) ({slo.with_labels(M.BURN_RATE, MODEL)})",
                "{{namespace}}/{{model}} {{slo}} {{window}}",
            )
        ],
        unit="suffix:x",
        span=8,
    )
    analyses = slo.with_labels(M.ANALYSIS_TOTAL, MODEL)
    board.graph(
        "Analysis verdicts",
        "Judgements per interval: pass, fail, inconclusive.",
        [
            query(
                f"sum by (namespace, model, result) (increase({analyses}[{RATE}]))",
                "{{namespace}}/{{model}} {{result}}",
            )
        ],
        unit="short",
        span=8,
    )
    board.table(
        "Recent promotions and rollbacks",
        "Rollouts that ended in the dashboard's time range, by result.",
        [query(rollouts(RANGE), instant=True, as_table=True)],
    )
    return board


# -- debug ---------------------------------------------------------------------------------------


def debug() -> Board:
    board = Board(
        links.DEBUG_UID,
        "quantship / debug",
        "Why an SLI moved: which tensors clip, which ops fell back, how the batcher and pods behave.",
    )
    board.row("Quantization")
    board.graph(
        "Clip rate per tensor (top 20)",
        "Share of each activation tensor's values outside its calibrated range, per revision and "
        "track. Needs servers run with --per-tensor-metrics.",
        [query(per_tensor_clip_rate(RATE), PER_TENSOR)],
        unit="percentunit",
    )
    board.graph(
        "Activation drift per tensor (top 20)",
        "Jensen-Shannon divergence (bits) of each activation tensor's sampled values from its "
        "calibration histogram, per revision and track. Needs servers run with --per-tensor-metrics. "
        "Dashed: the "
        f"per-tensor alert threshold ({rules.DRIFT_TENSOR_THRESHOLD:g}).",
        [query(per_tensor_drift(), PER_TENSOR)],
        unit="none",
        steps={rules.DRIFT_TENSOR_THRESHOLD: "orange"},
    )
    board.heat_map(
        "Activation drift heat map (every tensor)",
        "One row per activation tensor of each revision and track: where in the network traffic "
        "moved away from calibration, and when. Darkest at and above twice the per-tensor alert threshold "
        f"({rules.DRIFT_TENSOR_THRESHOLD:g} bits). Needs servers run with --per-tensor-metrics.",
        [query(per_tensor_drift(top=None), PER_TENSOR)],
        unit="none",
        top=2 * rules.DRIFT_TENSOR_THRESHOLD,
    )
    board.graph(
        "Fallback ops by type",
        "Ops meant to run quantized that run in float or off the preferred provider, by op type.",
        [
            query(
                f"max by (namespace, model, revision, op_type) ({slo.with_labels(M.FALLBACK_OPS, MODEL)})",
                "{{namespace}}/{{model}} {{revision}} {{op_type}}",
            )
        ],
        unit="none",
    )
    board.graph(
        "Shadow comparison volume",
        "Rows per second also run through the FP32 reference, and those that disagreed.",
        [
            query(per_second(M.SHADOW_COMPARISONS_TOTAL, TRACKS), f"compared {REVISION}"),
            query(
                per_second(M.SHADOW_DISAGREEMENTS_TOTAL, TRACKS),
                f"disagreed {REVISION}",
            ),
        ],
        unit="reqps",
    )
    board.graph(
        "Sampled work dropped",
        "Samples the SLIs skipped: the background worker was behind (it runs on idle CPU only), the SLI "
        "CPU budget (--sli-cpu-budget; a canary's --canary-sli-cpu-budget where set) was spent, or a "
        "capture row had another shape. Budget drops are by design at high traffic, and on a canary (which "
        "offers every request to the shadow lane) at any; the SLIs then rest on fewer samples a minute. "
        f"Behind drops over {slo.STARVED_BEHIND_PER_S:g} a second from one server mean its CPU is busy "
        "serving (alert QuantshipSliStarved, on the on-call dashboard): more CPU or replicas help; a "
        "larger budget does not.",
        [
            query(
                per_second(M.SAMPLES_DROPPED_TOTAL, (*NAMED, "track", "kind", "reason")),
                "{{namespace}}/{{model}} {{track}} {{kind}} {{reason}}",
            )
        ],
        unit="reqps",
    )
    board.row("Batching and pods")
    board.graph(
        "Batch size",
        "Rows per onnxruntime call: mean and p95.",
        [
            query(
                f"{per_second(f'{M.BATCH_SIZE}_sum', TRACKS)} / "
                f"{per_second(M.BATCH_SIZE.observations, TRACKS)}",
                f"mean {REVISION}",
            ),
            # interpolated inside the first bucket (0, 1], p95 could read 0.97 rows: a call has one at least
            query(
                f"clamp_min({histogram_quantile(M.BATCH_SIZE, 0.95, TRACKS)}, 1)",
                f"p95 {REVISION}",
            ),
        ],
        unit="none",
        span=8,
    )
    board.graph(
        "Queue time p95",
        "Time a request waits in the batcher before its batch starts.",
        [
            query(
                histogram_quantile(M.QUEUE_DURATION_SECONDS, 0.95, TRACKS),
                REVISION,
            )
        ],
        unit="s",
        span=8,
    )
    board.graph(
        "Latency p95 per pod",
        "Successful inference requests, per pod (scrape instance).",
        [
            query(
                latency_quantile(0.95, (*NAMED, "pod", "instance")),
                "{{namespace}}/{{model}} {{pod}} {{instance}}",
            )
        ],
        unit="s",
        span=8,
    )
    board.graph(
        "Requests per second by status",
        "Inference requests answered, by HTTP status code.",
        [
            query(
                per_second(M.REQUESTS_TOTAL, (*NAMED, "track", "code")),
                "{{namespace}}/{{model}} {{track}} {{code}}",
            )
        ],
        unit="reqps",
        span=12,
    )
    board.graph(
        "Requests in flight",
        "Inference requests being decoded, queued or run now, per pod.",
        [
            query(
                f"sum by (namespace, model, instance) ({slo.with_labels(M.REQUESTS_IN_FLIGHT, MODEL)})",
                "{{namespace}}/{{model}} {{instance}}",
            )
        ],
        unit="short",
        span=12,
    )
    board.row("Model")
    board.table(
        "Model info",
        "What each pod loaded: precision, quantization mode, calibration method and data hash, runtime.",
        [query(slo.with_labels(M.MODEL_INFO, MODEL), instant=True, as_table=True)],
    )
    board.number(
        "Cold start",
        "Seconds to verify, load and analyse the artifact.",
        [
            query(
                f"max by (namespace, model, revision) ({slo.with_labels(M.MODEL_LOAD_SECONDS, MODEL)})",
                "{{namespace}}/{{model}} {{revision}}",
                instant=True,
            )
        ],
        unit="s",
        span=12,
    )
    failures = slo.with_labels(M.MODEL_LOAD_FAILURES_TOTAL, MODEL)
    board.number(
        "Load failures over the time range",
        "Artifacts refused (hash, signature, format) or unloadable, by reason.",
        [
            query(
                f"sum by (namespace, model, reason) (increase({failures}[{RANGE}]))",
                "{{namespace}}/{{model}} {{reason}}",
                instant=True,
            )
        ],
        unit="short",
        span=12,
        steps={1: "red"},
    )
    return board


DASHBOARDS: dict[str, Callable[[], Board]] = {"executive": executive, "oncall": oncall, "debug": debug}


def render(name: str) -> str:
    """dashboards/<name>.json."""
    return DASHBOARDS[name]().render()


def build(name: str) -> dict[str, Any]:
    return dict(json.loads(render(name)))
