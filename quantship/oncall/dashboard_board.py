"""One Grafana dashboard under construction (`Board`) and the pieces every panel is made of: a
Prometheus query on the dashboard's `datasource` variable, threshold steps, the namespace and model
variables. The boards (dashboard_executive, dashboard_oncall, dashboard_debug) build on it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from quantship import slo

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["quantship"]


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
            .with_variable(_labels_variable(slo.NAMESPACE, "Namespace", slo.Metric.MODEL_INFO, every=".*"))
            .with_variable(
                _labels_variable(
                    "model", "Model", f'{slo.Metric.MODEL_INFO}{{{slo.NAMESPACE}=~"$namespace"}}', every=".+"
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
