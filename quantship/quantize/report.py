"""`quantship report`: one HTML page that says whether an artifact is fit to ship, and why.

Everything comes from the verified manifest: accuracy and size, the fallback trials, per-tensor
SQNR, calibrated ranges, the hardware the gate ran on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantship import artifact, artifact_format, reporting
from quantship.activations import ActivationRange
from quantship.quantize import gate_metrics, ranges
from quantship.quantize.tuner import Stage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_MAX_BARS = 40
_NARROW_BAND = 0.2
"""Trials' values (and the gate) within this share of the largest get an axis that does not start at 0."""


def render(loaded: artifact.Artifact, given: Path | None = None, *, signature_checked: bool = False) -> str:
    """`given`: the path the user named (a .tar.gz is read from a scratch copy, gone once done).
    `signature_checked`: `loaded` was verified against a public key, so its signature is valid."""
    location = given if given is not None else loaded.root
    manifest = loaded.manifest
    validation = manifest.get("validation", {})
    passed = validation.get("gate") == "passed"
    files = manifest["files"]
    fp32_bytes = files.get(artifact.REFERENCE_FILE, {}).get("size")
    int8_bytes = files[artifact.MODEL_FILE]["size"]
    trials = manifest.get("trials", [])
    if loaded.baseline:
        sections = [("Verdict", _baseline_verdict(int8_bytes))]
    else:
        sections = [
            ("Verdict", _verdict(manifest, passed, fp32_bytes, int8_bytes)),
            ("FP32 vs INT8", _comparison(validation, fp32_bytes, int8_bytes)),
            ("Tuning trials", _trials(trials, manifest.get("tuning", {}))),
            ("Per-tensor SQNR", _sqnr(manifest.get("sensitivity", []))),
            ("Calibrated activation ranges", _ranges(loaded.activation_ranges)),
        ]
    sections += [
        ("Configuration", _config(manifest, _signature(loaded, signature_checked))),
        (
            "Files",
            reporting.table(
                ["file", "bytes", "sha256"],
                [(name, e["size"], e["sha256"]) for name, e in sorted(files.items())],
            ),
        ),
    ]
    source = manifest.get("model", {}).get("source", loaded.root.name)
    created = manifest.get("created", "?")
    subtitle = f"{source} -> {location}  ·  created {created}  ·  manifest {loaded.digest[:12]}"
    named = location.resolve().name or str(location.resolve())  # `report .` names the directory
    return reporting.page(f"quantship artifact report: {named}", subtitle, sections)


def _value(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _baseline_verdict(model_bytes: int) -> str:
    items = [
        ("precision", artifact_format.FP32_PRECISION),
        ("verdict", "unquantized baseline, no gate"),
        ("size", f"{model_bytes / 1024:.0f} KiB"),
    ]
    return reporting.cards(items) + (
        "<p>This artifact holds the FP32 model as given (<code>quantship package</code>): nothing was "
        "quantized, so there is no accuracy gate, no INT8 comparison and no calibration to report.</p>"
    )


COUNTS = {  # values a validation records beside its metrics: counts, not scores
    "confident_rows": "rows (positions, per position) where FP32 is confident (a count)",
    "positions": "positions judged, without the padding the shadow rule's mask_input marks, if it names "
    "one (a count: each is a row of the metrics above)",
}


def _gated_value(metric: str, value: float | None) -> str:
    """top1_accuracy's number is a relative loss, as a percentage; other metrics in their own units."""
    if value is not None and gate_metrics.known(metric) is gate_metrics.Metric.TOP1_ACCURACY:
        return reporting.percent(value)
    if value is not None and metric in COUNTS:
        return f"{value:.0f}"
    return _value(value)


def _named(metric: str) -> str:
    known = gate_metrics.known(metric)
    return gate_metrics.loss_name(known) if known else metric


def _gate(validation: dict[str, Any]) -> str:
    metric, threshold = gate_metrics.known(validation.get("metric")), validation.get("threshold")
    if metric is None or threshold is None:
        return f"{validation.get('metric', '?')} threshold {_value(threshold)}"
    return gate_metrics.condition(metric, threshold)


def _verdict(manifest: dict[str, Any], passed: bool, fp32_bytes: int | None, int8_bytes: int) -> str:
    validation = manifest.get("validation", {})
    task = manifest.get("task", {})
    metric, agreement = validation.get("metric", "?"), validation.get("agreement")
    items = [
        ("accuracy gate", "passed" if passed else "FAILED"),
        (_named(metric), _gated_value(metric, validation.get("value"))),
        ("gate", _gate(validation)),
        # None for a task without a top-1 (embeddings): "top-1 agreement -" read as a number missing
        *([("top-1 agreement", reporting.percent(agreement))] if agreement is not None else []),
        ("shadow disagreement", reporting.percent(validation.get("shadow_disagreement"))),
        ("size", reporting.size_change(fp32_bytes, int8_bytes) if fp32_bytes else "-"),
    ]
    hardware = validation.get("hardware", {})
    note = reporting.fill(
        "<p>Task: <b>{}</b> ({}). Gate: {} ({}), measured on {} with the fused int8 kernels of "
        "onnxruntime {} on {} (int8 flags: {}; VNNI: {}). The verdict holds for that hardware: int8 "
        "kernels differ between CPUs.</p>",
        task.get("name", "?"),
        task.get("why", ""),
        metric,
        validation.get("gate_reason", ""),
        _samples(validation),
        hardware.get("onnxruntime", "?"),
        hardware.get("cpu", "?"),
        ", ".join(hardware.get("int8_flags", [])) or "none",
        hardware.get("vnni"),
    )
    if validation.get("on_calibration_data"):
        note += (
            "<p class='fail'>No evaluation data was given: the gate compared FP32 and INT8 "
            "on the calibration data.</p>"
        )
    advice = manifest.get("tuning", {}).get("advice")
    if advice:
        note += reporting.fill("<p class='fail'>No trial passed. {}</p>", advice)
    for warning in manifest.get("warnings", []):
        if not advice or advice not in warning:  # older manifests noted the advice as a warning too
            note += reporting.fill("<p>Warning: {}</p>", warning)
    return reporting.cards(items) + note


def _comparison(validation: dict[str, Any], fp32_bytes: int | None, int8_bytes: int) -> str:
    metrics = validation.get("metrics") or {}
    plotted = {
        _with_unit(name, known): (known, value)
        for name, value in metrics.items()
        if value is not None and (known := gate_metrics.known(name)) is not None
    }
    # Shares and cosines read on a 0-1 axis where 1 is FP32; losses (relative error, KL in nats)
    # are 0 when identical and unbounded, so they get an axis of their own.
    higher = {n: v for n, (m, v) in plotted.items() if gate_metrics.METRICS[m].higher_is_better}
    lower = {
        n: v
        for n, (m, v) in plotted.items()
        if not gate_metrics.METRICS[m].higher_is_better and m is not gate_metrics.Metric.TOP1_ACCURACY
    }
    with_accuracy = validation.get("fp32") is not None and validation.get("int8") is not None
    panels = int(with_accuracy) + int(bool(higher)) + int(bool(lower)) + 1
    fig, axes = reporting.pyplot().subplots(1, panels, figsize=(3.2 * panels, 3), layout="constrained")
    axes = list(np.atleast_1d(axes))
    if with_accuracy:
        _accuracy_panel(axes.pop(0), validation)
    if higher:
        _metric_panel(axes.pop(0), higher, "INT8 vs FP32, higher is better (1 = identical)", (0, 1.05))
    if lower:
        _metric_panel(axes.pop(0), lower, "INT8 vs FP32, lower is better (0 = identical)", None)
    _size_panel(axes.pop(0), fp32_bytes, int8_bytes)
    rows = [(name, _gated_value(name, v), _meaning(name)) for name, v in metrics.items()]
    table = reporting.table(["metric", "INT8 vs FP32", "what it measures"], rows)
    return reporting.figure(fig, "; ".join(map(_panel_text, fig.axes))) + table


def _with_unit(name: str, metric: gate_metrics.Metric) -> str:
    """A bar's name with its unit: the KL divergence's axis said no more than "lower is better"."""
    unit = gate_metrics.METRICS[metric].unit
    return f"{name} ({unit})" if unit else name


def _panel_text(ax: Any) -> str:
    """A panel's title and bars in words, for the image's alt text (and readers without images)."""
    names = ax.xaxis.get_major_formatter().format_ticks(ax.get_xticks())  # tick labels are set at draw
    return f"{ax.get_title()}: {', '.join(names)}"


def _accuracy_panel(ax: Any, validation: dict[str, Any]) -> None:
    values = [validation["fp32"] * 100, validation["int8"] * 100]
    bars = ax.bar(["FP32", "INT8"], values, color=["#8da0cb", "#fc8d62"])
    ax.bar_label(bars, fmt="%.2f%%")
    ax.set_ylim(max(0, min(values) - 5), 100)
    _room_for_bar_labels(ax)
    ax.set_title("top-1 accuracy (%)")


def _metric_panel(ax: Any, values: dict[str, float], title: str, ylim: tuple[float, float] | None) -> None:
    bars = ax.bar(list(values), list(values.values()), color="#fc8d62")
    ax.bar_label(bars, fmt="%.3g")
    if ylim is not None:
        ax.set_ylim(*ylim)
    _room_for_bar_labels(ax)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.set_title(title, fontsize=9)


def _size_panel(ax: Any, fp32_bytes: int | None, int8_bytes: int) -> None:
    bars = ax.bar(
        ["FP32", "INT8"], [(fp32_bytes or 0) / 1024, int8_bytes / 1024], color=["#8da0cb", "#fc8d62"]
    )
    ax.bar_label(bars, fmt="%.0f KiB")
    _room_for_bar_labels(ax)
    ax.set_title("model file size (KiB)")


def _room_for_bar_labels(ax: Any) -> None:
    """Room above the tallest bar for its label: with the axes ending at the bar (an agreement of 1
    under a limit of 1.05, the autoscaled FP32 size), labels sat on the frame or ran through it."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + BAR_LABEL_ROOM * (high - low))


BAR_LABEL_ROOM = 0.15
"""Share of the axis' span added above it: a line of 10-point text on the 3-inch panels, and air."""


def _samples(validation: dict[str, Any]) -> str:
    """How many samples the gate measured; for an answer per position, the positions of them too,
    which its metrics count as rows."""
    samples, positions = validation.get("samples", "?"), validation.get("metrics", {}).get("positions")
    counted = f" ({positions:.0f} positions)" if isinstance(positions, int | float) else ""
    return f"{samples} samples{counted}"


def _meaning(name: str) -> str:
    metric = gate_metrics.known(name)
    spec = gate_metrics.METRICS[metric] if metric is not None else gate_metrics.UNGATED.get(name)
    if spec is None:
        return COUNTS.get(name, "-")
    better = "higher is better, 1 = identical" if spec.higher_is_better else "lower is better, 0 = identical"
    return f"{spec.meaning} ({better})"


def _trials(trials: list[dict[str, Any]], tuning: dict[str, Any]) -> str:
    if not trials:
        return "<p>No trials recorded.</p>"
    metric = trials[0].get("metric", "?")
    rows = [
        (
            t["number"],
            reporting.breakable_words(str(t["stage"])),
            t.get("recipe", "-"),
            reporting.Raw(
                ", ".join(reporting.breakable(reporting.shown_name(name)) for name in t["excluded"][:6])
                + (f" (+{len(t['excluded']) - 6})" if len(t["excluded"]) > 6 else "")
                or "-"
            ),
            f"{t['quantized_nodes']} ({t.get('quantized_share', 0):.0%})",
            _gated_value(metric, t.get("value")),
            reporting.verdict(t["passed"], "pass" if t["passed"] else (t.get("error") or "fail")),
            "-" if t.get("latency_ms") is None else f"{t['latency_ms']:.3f}",
            t["seconds"],
            t.get("peak_rss_mb", "-"),
        )
        for t in trials
    ]
    why = (
        "the most quantized passing trial with what onnxruntime ran in float between Q/DQ kept in "
        "float, of the fewest such ops left"
        if tuning.get("stage") == Stage.UNFUSED.value
        else "the most quantized passing trial, then the fastest batch-1 latency measured on this machine"
        if any(t["passed"] for t in trials)
        else "no trial passed the gate: the one that came closest to it, written as a best effort "
        "marked gate: failed"
    )
    summary = reporting.fill(
        "<p>Strategy {}: {} trials in {} s, peak RSS {} MB; chose trial {} ({}): {}.</p>",
        tuning.get("strategy", "?"),
        len(trials),
        tuning.get("seconds", "?"),
        tuning.get("peak_rss_mb", "?"),
        tuning.get("chosen", "?"),
        tuning.get("stage", "?"),
        why,
    )
    return (
        _trials_figure(trials, metric)
        + summary
        + reporting.table(
            [
                "trial",
                "stage",
                "recipe",
                "left in float",
                "quantized nodes",
                reporting.breakable_words(_named(metric)),
                "gate",
                "b1 ms",
                "seconds",
                "peak RSS MB",
            ],
            rows,
        )
    )


def _trials_figure(trials: list[dict[str, Any]], metric: str) -> str:
    fig, said = _trials_plot(trials, metric)
    return reporting.figure(fig, "; ".join(said))


def _trials_plot(trials: list[dict[str, Any]], metric: str) -> tuple[Figure, list[str]]:
    """One bar per trial, in the unit the page states the metric in (top1_accuracy: percent); an
    errored trial has no value: a hatched column, not a zero bar (which reads perfect for a loss).
    With the figure, what it shows in words (the image's alt text)."""
    percent = gate_metrics.known(metric) is gate_metrics.Metric.TOP1_ACCURACY
    scale, unit = (100.0, " (%)") if percent else (1.0, "")

    def shown(value: float) -> str:
        return f"{value * scale:.2f}%" if percent else f"{value:.3g}"

    fig, ax = reporting.new_figure(9, 3)
    measured = [t for t in trials if t.get("value") is not None]
    errored = [t for t in trials if t.get("value") is None]
    bars = ax.bar(
        [t["number"] for t in measured],
        [t["value"] * scale for t in measured],
        color=["#16794c" if t["passed"] else "#b42318" for t in measured],
    )
    ax.bar_label(bars, labels=[f"{t['stage'][:1]} {shown(t['value'])}" for t in measured], fontsize=8)
    ax.scatter(  # a cap at each bar's value, in its colour: a value of 0 has no bar to see (MiniLM's
        # static trials, cosine agreement 0, were blank columns beside the dynamic trials' bars)
        [t["number"] for t in measured],
        [t["value"] * scale for t in measured],
        marker="_",
        s=ZERO_BAR_CAP_PT**2,
        linewidths=2.5,
        color=["#16794c" if t["passed"] else "#b42318" for t in measured],
        zorder=3,
    )
    for i, t in enumerate(errored):  # a hatched column the height of the axes: no value to draw
        ax.axvspan(
            t["number"] - 0.4,
            t["number"] + 0.4,
            fill=False,
            hatch="xx",
            edgecolor="#b42318",
            linewidth=0,
            label="errored: no value" if i == 0 else None,
        )
        ax.annotate(
            f"{t['stage'][:1]} error",
            (t["number"], 0.5),
            xycoords=("data", "axes fraction"),
            ha="center",
            fontsize=8,
            backgroundcolor="white",
        )
    threshold = trials[0].get("threshold")
    if threshold is not None:
        gate = f"gate {shown(threshold)}"
        ax.axhline(threshold * scale, color="#1d2330", linestyle="--", linewidth=1, label=gate)
    if threshold is not None or errored:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the bars, never on them
    ax.set_xlabel(
        "trial (r: recipe, o: op-type fallback, n: node fallback, u: unfused ops in float; "
        "green passed, red failed)"
    )
    ylabel = _named(metric) + unit
    ax.set_xticks([t["number"] for t in trials])
    ax.margins(y=0.12)  # room for the labels above the tallest bar
    band = [t["value"] * scale for t in measured] + ([threshold * scale] if threshold is not None else [])
    if band and min(band) > 0 and max(band) - min(band) < _NARROW_BAND * max(band):
        # agreement of 0.999 against a gate of 0.995, on an axis from 0: one bar height, one line
        spread = max(max(band) - min(band), _NARROW_BAND * max(band) / 10)
        ax.set_ylim(max(0.0, min(band) - spread), max(band) + spread)
        ylabel += ", axis not from 0"
    ax.set_ylabel(reporting.literal(ylabel))
    said = [f"tuning trials: {ylabel} by trial"]
    said += [f"gate {shown(threshold)}"] if threshold is not None else []
    said += [f"errored (no value): trial {', '.join(str(t['number']) for t in errored)}"] if errored else []
    return fig, said


ZERO_BAR_CAP_PT = 16
"""Width of the cap marking a trial's value, in points: narrower than a bar among 17 trials (27 points)."""


def _sqnr(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return "<p>No per-tensor sensitivity: dynamic quantization has no activation ranges to debug.</p>"
    sections = []
    for kind in ("activation", "weight"):
        of_kind = [e for e in errors if e["kind"] == kind]
        chosen = of_kind[:_MAX_BARS]
        if not chosen:
            continue
        named = [_sqnr_label(e) for e in chosen]
        fig = _sqnr_figure(kind, chosen, len(of_kind))
        sections.append(reporting.figure(fig, f"{kind} SQNR, worst first: {', '.join(named)}"))
    return "".join(sections) + (
        "<p>Measured with onnxruntime.quantization.qdq_loss_debug on the QDQ simulation (exposing tensors "
        "stops kernel fusion); the gate above measured the fused kernels. A weight is named by the node "
        "that reads it (what <code>--exclude</code> takes), its own name after the op type.</p>"
    )


def _sqnr_figure(kind: str, chosen: list[dict[str, Any]], of_kind: int) -> Figure:
    """A bar a tensor, each on its own row: bars placed by their labels share a row where two names
    draw alike (MiniLM's two LayerNorms of a layer: …/layer.0/…/LayerNormalization_output_0), and
    the later bar hid the other."""
    fig, ax = reporting.new_figure(9, 0.8 + 0.28 * len(chosen))
    y = np.arange(len(chosen))
    values = [e["sqnr_db"] if e["sqnr_db"] is not None else 100.0 for e in chosen]
    ax.barh(y, values, color=["#b42318" if v < 20 else "#e6a23c" if v < 30 else "#16794c" for v in values])
    ax.set_yticks(y, [reporting.literal(label) for label in _short_sqnr_labels(chosen)])
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB, higher is better; below 20 dB is lossy)")
    ax.set_title(
        f"{kind}s, worst first"
        + (f", the {len(chosen)} worst of {of_kind}" if len(chosen) < of_kind else "")
        + (" (xmodel_err: INT8 vs FP32 model)" if kind == "activation" else "")
    )
    return fig


def _sqnr_label(error: dict[str, Any]) -> str:
    """An activation: its tensor (and the op writing it). A weight: the node reading it, as exporters
    name weights anything (`onnx::Conv_971`); an older manifest names no node: the weight alone."""
    return _labelled(error, error["tensor"], error.get("node"))


def _short_sqnr_labels(errors: list[dict[str, Any]]) -> list[str]:
    """`_sqnr_label` of each as the figure draws it: each name shortened, names that would draw alike
    kept apart (reporting.names_apart); the image's alt text has them whole."""
    tensors = [e["tensor"] for e in errors]
    by_node = [i for i, e in enumerate(errors) if e["kind"] == "weight" and e.get("node")]
    alone = [i for i in range(len(errors)) if i not in by_node]
    for group, chars in ((by_node, WEIGHT_NAME_CHARS), (alone, reporting.FIGURE_NAME_CHARS)):
        for i, short in zip(group, reporting.names_apart([tensors[i] for i in group], chars), strict=True):
            tensors[i] = short
    nodes = reporting.names_apart([e.get("node") or "" for e in errors], WEIGHT_NODE_CHARS)
    return [_labelled(e, tensor, node) for e, tensor, node in zip(errors, tensors, nodes, strict=True)]


def _labelled(error: dict[str, Any], tensor: str, node: str | None) -> str:
    op_type = error.get("op_type")
    if error["kind"] == "weight" and error.get("node"):
        return f"{node}  ({op_type}: {tensor})"
    return tensor + (f"  ({op_type})" if op_type else "")


WEIGHT_NODE_CHARS, WEIGHT_NAME_CHARS = 36, 18
"""A weight's label in the figure: its node's name, which says where it is (…/layer.0/…/dense/MatMul),
and its own, which says only which it is (onnx::MatMul_747), each cut to these many characters."""


def _ranges(activations: list[ActivationRange]) -> str:
    if not activations:
        return "<p>No static activation ranges (dynamic quantization computes them per request).</p>"
    shown = activations[:_MAX_BARS]
    fig, ax = reporting.new_figure(9, 0.8 + 0.3 * len(shown))
    y = np.arange(len(shown))
    ax.barh(
        y,
        [r.high - r.low for r in shown],
        left=[r.low for r in shown],
        color="#c6dbef",
        label="representable (values outside saturate)",
    )
    cal = [(i, r) for i, r in enumerate(shown) if r.calibrated_min is not None]
    ax.scatter(
        [r.calibrated_min for _, r in cal],
        [i for i, _ in cal],
        marker="|",
        s=200,
        color="#08519c",
        label="calibrated min/max",
    )
    ax.scatter([r.calibrated_max for _, r in cal], [i for i, _ in cal], marker="|", s=200, color="#08519c")
    ax.set_yticks(
        y, [reporting.literal(n) for n in reporting.names_apart([ranges.model_tensor(r) for r in shown])]
    )
    ax.invert_yaxis()
    ax.use_sticky_edges = False  # bars set the x limits at their very ends, cutting the end ticks in half
    ax.margins(x=0.03)
    linear_up_to = _symlog_threshold(shown)
    if linear_up_to is not None:
        ax.set_xscale("symlog", linthresh=linear_up_to)
    scale = "" if linear_up_to is None else f"; symmetric log scale past ±{linear_up_to:g}"
    ax.set_xlabel(f"activation value (float, in the tensor's own units{scale})")
    cut = (
        f" (the first {len(shown)} of {len(activations)}; the table has all)"
        if len(shown) < len(activations)
        else ""
    )
    ax.set_title(f"what each quantized activation can represent, and what calibration saw{cut}", fontsize=10)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)  # under the axes: never on a bar
    rows = [
        (
            ranges.model_tensor(r),
            r.low,
            r.high,
            r.calibrated_min,
            r.calibrated_max,
            _range_note(r),
            "-" if r.tensor == ranges.model_tensor(r) else r.tensor,
        )
        for r in activations
    ]
    headers = [
        "tensor",
        "low",
        "high",
        "calibrated min",
        "calibrated max",
        "note",
        "INT8 model's name, if other",
    ]
    return reporting.figure(fig, f"activation ranges: {ax.get_title()}, {ax.get_xlabel()}") + (
        reporting.table(headers, rows)
        + "<p>Tensors are named as in the FP32 model; the server's per-tensor metrics "
        "(<code>--per-tensor-metrics</code>) label them with the INT8 model's name.</p>"
    )


_WIDE_SPREAD = 100.0
"""Ranges whose magnitudes differ by more than this share a symmetric log axis: on a linear one, a
GPT-2's Pow output ([-720, 289]) left every other bar a sliver."""


def _symlog_threshold(shown: list[ActivationRange]) -> float | None:
    """Where a symmetric log axis should stop being linear (the power of ten under the smallest
    tensor's magnitude: decade ticks), or None when every range is of a similar size and a linear
    axis reads best."""
    magnitudes = [m for r in shown if (m := max(abs(r.low), abs(r.high))) > 0]
    if not magnitudes or max(magnitudes) <= _WIDE_SPREAD * min(magnitudes):
        return None
    return float(10 ** math.floor(math.log10(min(magnitudes))))


def _range_note(activation: ActivationRange) -> str:
    if activation.requantized_by in ranges.OUTPUT_BOUNDS:  # QLinearSoftmax: [0, 1] is what it computes
        low, high = ranges.OUTPUT_BOUNDS[activation.requantized_by]
        return f"{activation.requantized_by}'s own output bound [{low:g}, {high:g}]"
    if activation.activation_low is not None or activation.activation_high is not None:
        return "relu/clip folded"
    return "-"


def _signature(loaded: artifact.Artifact, checked: bool) -> str:
    """A signature's presence proves nothing until a key checks it (anyone can add one)."""
    if not loaded.signed:
        return "no"
    if checked:
        return "yes (ed25519), valid for the public key given"
    return "yes (ed25519), not checked: pass --public-key to check it"


def _config(manifest: dict[str, Any], signed: str) -> str:
    quantization = manifest.get("quantization", {})
    calibration = manifest.get("calibration") or {}
    runtime = manifest.get("runtime", {})
    rows = [
        (key, _plain(list(map(reporting.shown_name, value)) if key == "excluded_nodes" else value))
        for key, value in sorted(quantization.items())
    ]
    rows += [(f"calibration.{key}", _plain(value)) for key, value in sorted(calibration.items())]
    rows += [(f"runtime.{key}", _plain(value)) for key, value in sorted(runtime.items())]
    rows += [("fallback ops at quantize time", _plain(manifest.get("fallback_ops") or "none"))]
    rows += [("signed", signed)]
    return reporting.table(["setting", "value"], rows)


def _plain(value: Any) -> str:
    if value is None:  # a setting the recipe has none of (a dynamic one's calibration): not Python's "None"
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)
