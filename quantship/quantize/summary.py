"""The table printed after quantizing: what a person checks before shipping an artifact."""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from quantship import artifact, reporting
from quantship.quantize import evaluate

HEADERS: tuple[tuple[str, JustifyMethod], ...] = (
    ("artifact", "left"),
    ("size FP32→INT8", "right"),
    ("top-1 FP32→INT8", "right"),
    ("gate metric", "right"),
    ("top-1 agree", "right"),
    ("gate", "left"),
    ("trials", "right"),
    ("in float", "left"),
)
UNBOUNDED = 100_000
"""Columns to measure a table's unwrapped width in (rich clamps a measurement to the width given)."""


def table(rows: list[tuple[str, artifact.Artifact]], title: str = "quantization summary") -> Summary:
    return Summary(title, [_cells(name, loaded) for name, loaded in rows])


class Summary:
    """The summary laid out for the width it is printed at: one row per artifact where that fits
    unwrapped (138 columns for the demo's artifacts), else one row per figure and one column per
    artifact. At 80 columns the eight columns of one row each were cut to `int8-g…` and `accura…`
    and folded into five-line rows that ran into each other."""

    def __init__(self, title: str, rows: list[list[str]]) -> None:
        self.title = title
        self.rows = rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = self._one_row_per_artifact()
        unwrapped = Measurement.get(console, options.update_width(UNBOUNDED), wide).maximum
        yield wide if unwrapped <= options.max_width else self._transposed()

    def _one_row_per_artifact(self) -> Table:
        out = Table(title=self.title)
        for header, justify in HEADERS:
            out.add_column(header, justify=justify)
        for row in self.rows:
            out.add_row(*row)
        return out

    def _transposed(self) -> Table:
        out = Table(title=self.title)
        out.add_column("")
        for row in self.rows:
            out.add_column(row[0], overflow="fold")  # a long name kept whole, folded, not cut
        for number, (header, _) in enumerate(HEADERS[1:], start=1):
            out.add_row(header, *(row[number] for row in self.rows))
        return out


def _cells(name: str, loaded: artifact.Artifact) -> list[str]:
    files = loaded.manifest["files"]
    fp32_bytes = files.get(artifact.REFERENCE_FILE, {}).get("size")
    int8_bytes = files[artifact.MODEL_FILE]["size"]
    validation = loaded.manifest.get("validation", {})
    gate = validation.get("gate", "?")
    size = f"{_kib(fp32_bytes)}→{_kib(int8_bytes)} KiB" + (
        f" ({reporting.size_change(fp32_bytes, int8_bytes, digits=1)})" if fp32_bytes else ""
    )
    accuracy = (
        f"{reporting.percent(validation['fp32'])}→{reporting.percent(validation['int8'])}"
        if validation.get("fp32") is not None
        else "-"
    )
    return [
        escape(name),
        size,
        accuracy,
        _gated(validation),
        reporting.percent(validation.get("agreement")),
        f"[green]{gate}[/]" if gate == "passed" else f"[red]{escape(str(gate))}[/]",
        str(len(loaded.manifest.get("trials") or loaded.manifest.get("fallback_trials", []))),
        _in_float(loaded.quantization.get("excluded_nodes", [])),
    ]


MAX_NAMED_IN_FLOAT = 3
"""Nodes kept in float named in the table; more are counted (the report lists them all): five of a
transformer's long module paths filled the column with `/lm/transformer/…` cut to the same start."""


def _in_float(nodes: list[str]) -> str:
    if not nodes:
        return "-"
    if len(nodes) > MAX_NAMED_IN_FLOAT:
        return f"{len(nodes)} nodes (the report lists them)"
    return escape(", ".join(map(reporting.shown_name, nodes)))


def _gated(validation: dict[str, Any]) -> str:
    value = validation.get("value")
    if value is None:
        return "-"
    metric = evaluate.known(validation.get("metric"))
    if metric is None:
        return f"{validation.get('metric')} {value:.4g}"
    threshold = validation.get("threshold")
    passing = f" ({evaluate.bound(metric, threshold)})" if isinstance(threshold, int | float) else ""
    return evaluate.stated(metric, value) + passing  # a bare `confident_agreement 1` said not against what


def _kib(size: int | None) -> str:
    return "?" if size is None else f"{size / 1024:.0f}"
