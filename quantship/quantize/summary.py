"""The table printed after quantizing: what a person checks before shipping an artifact."""

from __future__ import annotations

from typing import Any

from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from quantship import artifact, fitted, reporting
from quantship.quantize import gate_metrics

HEADERS: tuple[tuple[str, JustifyMethod], ...] = (
    ("artifact", "left"),
    ("size FP32→INT8", "right"),
    ("top-1 FP32→INT8", "right"),
    ("gate metric", "right"),
    ("top-1 agree", "right"),
    ("gate", "left"),
    ("trials", "right"),
    ("recipe", "left"),
    ("in float", "left"),
)


def table(rows: list[tuple[str, artifact.Artifact]], title: str = "quantization summary") -> fitted.Fitted:
    """One row per artifact where that fits unwrapped (about 170 columns for the demo's artifacts),
    else one row per figure and one column per artifact (fitted.py: at 80 columns rich cut the
    cells to `int8-g…` and `accura…` and folded each row into five lines)."""
    cells = [_cells(name, loaded) for name, loaded in rows]
    wide = Table(title=title)
    for header, justify in HEADERS:
        wide.add_column(header, justify=justify)
    for row in cells:
        wide.add_row(*row)
    return fitted.Fitted(wide, fitted.transposed(title, [header for header, _ in HEADERS], cells))


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
        _recipe(loaded.manifest),
        _in_float(loaded.quantization.get("excluded_nodes", [])),
    ]


def _recipe(manifest: dict[str, Any]) -> str:
    """The chosen trial's recipe: all-MiniLM-L6-v2's summary said 8 trials and warned of its static
    ones' attention masks, never that the artifact it wrote was dynamic (one row per call, unbatched)."""
    trials, chosen = manifest.get("trials") or [], (manifest.get("tuning") or {}).get("chosen")
    if not isinstance(chosen, int) or not 0 <= chosen < len(trials):
        return "-"
    return escape(reporting.shown_name(str(trials[chosen].get("recipe", "-"))))


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
    metric = gate_metrics.known(validation.get("metric"))
    if metric is None:
        return f"{validation.get('metric')} {value:.4g}"
    threshold = validation.get("threshold")
    passing = f" ({gate_metrics.bound(metric, threshold)})" if isinstance(threshold, int | float) else ""
    # a bare `confident_agreement 1` said not against what
    return gate_metrics.stated(metric, value) + passing


def _kib(size: int | None) -> str:
    return "?" if size is None else f"{size / 1024:.0f}"
