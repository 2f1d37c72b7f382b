"""The table printed after quantizing: what a person checks before shipping an artifact."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from quantship import artifact, reporting
from quantship.quantize import evaluate


def table(rows: list[tuple[str, artifact.Artifact]], title: str = "quantization summary") -> Table:
    out = Table(title=title)
    out.add_column("artifact")
    out.add_column("size FP32→INT8", justify="right")
    out.add_column("top-1 FP32→INT8", justify="right")
    out.add_column("gate metric", justify="right")
    out.add_column("top-1 agree", justify="right")
    out.add_column("gate")
    out.add_column("trials", justify="right")
    out.add_column("in float")
    for name, loaded in rows:
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
        out.add_row(
            name,
            size,
            accuracy,
            _gated(validation),
            reporting.percent(validation.get("agreement")),
            f"[green]{gate}[/]" if gate == "passed" else f"[red]{gate}[/]",
            str(len(loaded.manifest.get("trials") or loaded.manifest.get("fallback_trials", []))),
            _in_float(loaded.quantization.get("excluded_nodes", [])),
        )
    return out


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
