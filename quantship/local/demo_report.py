"""The demo's HTML report: the rollouts over time, every decision, and the numbers behind them.

Plots (matplotlib, embedded): canary weight with the decision points, each revision's accuracy
delta, clip rate, activation drift (against the drift alert's threshold) and client latency over
time, and the burn rates of each judgement against the threshold; the drift loop's figures. Then
the decision log with every reason as the engine wrote it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from quantship import reporting, slo
from quantship.local.recalibration import DriftLoop
from quantship.local.timeline import SAMPLE_INTERVAL_S, DecisionRecord, Timeline
from quantship.rollout import Action, RolloutSpec, Verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PASS_COLOR, FAIL_COLOR = "#16794c", "#b42318"
_MARKS = {
    Action.PROMOTE: (PASS_COLOR, "promoted"),
    Action.ROLL_BACK: (FAIL_COLOR, "rolled back"),
    Action.FAIL: (FAIL_COLOR, "failed"),
}
_PALETTE = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
"""Revisions' and objectives' colours: no green or red, which in these figures say passed and failed
(matplotlib's third colour, green, drew the rolled-back v3-int8-skewed as if it had passed)."""
SHORT_OF_DATA_COLOR = "#d08c00"
"""An inconclusive judgement (short of samples): drawn red, the recalibrated canary's wait for shadow
samples read as a failed step."""
_VERDICT_COLORS = {
    Verdict.PASS: PASS_COLOR,
    Verdict.FAIL: FAIL_COLOR,
    Verdict.INCONCLUSIVE: SHORT_OF_DATA_COLOR,
}
LIMIT_COLOR = "#1d2330"
"""Budgets and thresholds: dark, dotted or dashed, apart from any revision's colour."""

DECISION_ROW_PT = 11
"""Points between the two rows of decision names: a line of 8-point text and a little air."""
SLOT_SHARE = 0.7
"""Of a judgement's slot in the burn-rate figure, the share its points spread over: the rest keeps
neighbours apart."""
MARKER_AREA = 24
"""Points² (matplotlib's default is 36): eight points side by side in a judgement's slot, apart."""
LATENCY_AXIS_QUANTILE = 0.98
LATENCY_AXIS_HEADROOM = 1.5
"""The latency axis ends at 1.5x the 98th percentile of the plotted points when a point lies higher:
the rare spike is marked at the top with its value, the rest keeps the axis' height."""
CUT_PEAK_NEAR_SHARE = 0.05
"""Cut-off peaks closer than this share of the time axis have their values in rows, one under another."""
BURN_RATE_LINEAR_UP_TO = 0.01
"""The burn-rate axis is linear up to this, logarithmic past it: 0 and the calm 0.01-0.05 both show."""


def render(
    timeline: Timeline,
    spec: RolloutSpec,
    outcomes: Sequence[dict[str, Any]],
    drift: DriftLoop,
    settings: str,
) -> str:
    sections = [
        ("Outcome", _outcome(outcomes)),
        ("Drift loop: drifted traffic, recalibration from the capture, canary", _drift_loop(drift)),
        ("Canary weight and decisions", _weight(timeline)),
        ("Accuracy delta (shadow top-1 disagreement vs FP32)", _sli(timeline, slo.SLI.ACCURACY_DELTA)),
        ("Clipped-activation rate", _sli(timeline, slo.SLI.CLIP_RATE)),
        ("Activation drift (Jensen-Shannon divergence from calibration)", _drift(timeline, drift)),
        (
            f"Latency (client side: p50 and p95 of the requests of each {SAMPLE_INTERVAL_S:g} s)",
            _latency(timeline),
        ),
        ("Burn rates at each judgement", _burn_rates(timeline, spec)),
        ("Decision log", _log(timeline)),
    ]
    return reporting.page("quantship demo: canary rollouts and a recalibration", settings, sections)


def _outcome(outcomes: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            o["revision"],
            o["artifact"],
            reporting.verdict(o["phase"] == o["expected"], _result(o["phase"], o["expected"])),
            reporting.quantity(f"{o['seconds']:.0f}", "s"),
            o["judgements"],
            o["reason"],
        )
        for o in outcomes
    ]
    return reporting.table(["revision", "artifact", "result", "took", "judgements", "why"], rows)


def _result(phase: str, expected: str) -> str:
    """A rollout's end beside the demo's plan for it: the skewed canary's "RolledBack" in the passing
    colour, alone, read as a rollback that had gone well, or as a colour gone wrong."""
    return f"{phase} (as planned)" if phase == expected else f"{phase} (planned: {expected})"


def _drift_loop(loop: DriftLoop) -> str:
    def bits(value: float | None) -> str:
        return "-" if value is None else reporting.quantity(f"{value:.3f}", "bits")

    rows = [
        ("stable whose traffic drifted", loop.revision or "-"),
        ("traffic", f"inputs x{loop.scale:g}"),
        ("drift alert threshold", reporting.quantity(f"{loop.threshold:g}", "bits")),
        ("drift before", bits(loop.calm)),
        ("drift once drifted", bits(loop.drifted)),
        (
            "rose over the threshold in",
            "-" if loop.rose_in is None else reporting.quantity(f"{loop.rose_in:.0f}", "s"),
        ),
        (
            "capture recalibrated from",
            "-" if loop.captured is None else reporting.quantity(str(loop.captured), "rows"),
        ),
        ("recalibrated revision", loop.recalibrated or "-"),
        ("its drift on the same traffic", bits(loop.after)),
        ("its rollout", reporting.verdict(loop.ok, loop.phase or "not run")),
    ]
    return reporting.facts(rows)


def _decision_lines(ax: Any, decisions: Sequence[DecisionRecord]) -> None:
    """A dashed line at each promotion, rollback or failure, named above the axes, where the name
    crosses no curve (written down the line inside the axes, it ran across the curves it named);
    the names alternate between two rows, so that close decisions do not write over each other."""
    marked = [
        (record, _MARKS[record.decision.action]) for record in decisions if record.decision.action in _MARKS
    ]
    for row, (record, (color, what)) in enumerate(marked):
        ax.axvline(record.at, color=color, linestyle="--", linewidth=1)
        ax.annotate(
            f"{record.rollout}: {what}",
            xy=(record.at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3 + DECISION_ROW_PT * (row % 2)),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            color=color,
        )


def _revisions(timeline: Timeline) -> dict[str, tuple[str, str]]:
    """Each revision's colour and legend label, the same in every figure: one whose rollout was
    rolled back or failed in the failure colour, its label saying so; the others from _PALETTE."""
    ended = {
        record.rollout: _MARKS[record.decision.action]
        for record in timeline.decisions
        if record.decision.action in (Action.ROLL_BACK, Action.FAIL)
    }
    palette = itertools.cycle(_PALETTE)
    return {
        revision: (FAIL_COLOR, f"{revision} ({ended[revision][1]})")
        if revision in ended
        else (next(palette), revision)
        for revision in _series(timeline)
    }


def _weight(timeline: Timeline) -> str:
    fig, ax = reporting.new_figure(10, 3)
    ax.step(
        [s.at for s in timeline.samples], [s.weight for s in timeline.samples], where="post", color="#1d2330"
    )
    judged = [r for r in timeline.decisions if r.decision.analysis is not None]
    ax.scatter(
        [r.at for r in judged],
        [_weight_at(timeline, r.at) for r in judged],
        zorder=3,
        c=[_VERDICT_COLORS[r.decision.analysis.verdict] for r in judged if r.decision.analysis],
        label="judgement of the step (green pass, red fail, amber short of data)",
    )
    ax.set_ylim(-5, 105)
    ax.set_ylabel("canary weight (%)")
    ax.set_xlabel("seconds since start")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside: over it hid v2's 50% step
    _decision_lines(ax, timeline.decisions)
    return reporting.figure(fig, "canary weight over time")


def _weight_at(timeline: Timeline, at: float) -> int:
    """The canary weight in force just before `at`: the step a judgement at `at` judged."""
    before = [sample.weight for sample in timeline.samples if sample.at < at]
    return before[-1] if before else 0


def _series(timeline: Timeline) -> dict[str, list[tuple[float, Any]]]:
    series: dict[str, list[tuple[float, Any]]] = {}
    for sample in timeline.samples:
        for revision, data in sample.revisions.items():
            series.setdefault(revision, []).append((sample.at, data))
    return series


def _sli(timeline: Timeline, sli: slo.SLI) -> str:
    objective = next((o for o in timeline.objectives if o.sli is sli), None)
    if objective is None:
        return "<p>Not an objective of this run.</p>"
    fig, plotted = _sli_figure(timeline, objective)
    note = (
        "" if plotted else "<p>No revision reported this SLI (an FP32 stable has no reference or ranges).</p>"
    )
    return reporting.figure(fig, f"{sli.value} over time") + note


def _sli_figure(timeline: Timeline, objective: slo.Objective) -> tuple[Figure, bool]:
    """The SLI's ratio of each revision over time, and whether any revision had one."""
    sli = objective.sli
    fig, ax = reporting.new_figure(10, 3)
    plotted = False
    styles = _revisions(timeline)
    for revision, points in _series(timeline).items():
        xs = [at for at, data in points if data.ratios.get(sli) is not None]
        ys = [data.ratios[sli] * 100 for at, data in points if data.ratios.get(sli) is not None]
        if xs:
            color, label = styles[revision]
            ax.plot(xs, ys, label=label, color=color)
            plotted = True
    ax.axhline(
        objective.budget * 100, color=LIMIT_COLOR, linestyle=":", label=f"budget {objective.budget:.2%}"
    )
    ax.set_ylabel(f"{sli.value} (%, {timeline.window}s window)")
    ax.set_xlabel("seconds since start")
    _legend_beside(ax)
    _decision_lines(ax, timeline.decisions)
    return fig, plotted


def _drift(timeline: Timeline, loop: DriftLoop) -> str:
    fig, plotted = _drift_figure(timeline, loop)
    note = (
        ""
        if plotted
        else "<p>No revision reported drift (an FP32 artifact has no calibration histograms).</p>"
    )
    return reporting.figure(fig, "activation drift over time") + note


def _drift_figure(timeline: Timeline, loop: DriftLoop) -> tuple[Figure, bool]:
    """Each revision's activation drift over time, and whether any revision had one."""
    fig, ax = reporting.new_figure(10, 3)
    plotted = False
    styles = _revisions(timeline)
    for revision, points in _series(timeline).items():
        drift = [(at, data.drift) for at, data in points if data.drift is not None]
        if drift:
            color, label = styles[revision]
            ax.plot(*zip(*drift, strict=True), label=label, color=color)
            plotted = True
    ax.axhline(loop.threshold, color=LIMIT_COLOR, linestyle="--", label=f"alert threshold {loop.threshold:g}")
    ax.set_ylabel("drift (bits, tensor=all)")
    ax.set_xlabel("seconds since start")
    _legend_beside(ax)
    _decision_lines(ax, timeline.decisions)
    return fig, plotted


def _latency(timeline: Timeline) -> str:
    return reporting.figure(_latency_figure(timeline), "latency over time")


def _latency_figure(timeline: Timeline) -> Figure:
    fig, ax = reporting.new_figure(10, 3)
    styles = _revisions(timeline)
    curves: list[tuple[str, list[tuple[float, float]]]] = []
    for revision, points in _series(timeline).items():
        p95 = [(at, d.latency_p95 * 1000) for at, d in points if d.latency_p95 is not None]
        p50 = [(at, d.latency_p50 * 1000) for at, d in points if d.latency_p50 is not None]
        if p95:
            color, label = styles[revision]
            ax.plot(*zip(*p95, strict=True), color=color, label=f"{label} p95")
            ax.plot(*zip(*p50, strict=True), color=color, linestyle=":", label=f"{label} p50")
            curves += [(color, p95), (color, p50)]
    top = _latency_cut([ms for _, curve in curves for _, ms in curve])
    # "(ms), per second" read as a rate: the heading says what a point is
    ax.set_ylabel("latency (ms)" if top is None else "latency (ms; axis cut:\n▲ a higher point)")
    if top is not None:
        ax.set_ylim(0, top)
        _mark_cut_peaks(
            ax, [(peak, color) for color, curve in curves for peak in _peaks_over(curve, top)], top
        )
    ax.set_xlabel("seconds since start")
    _legend_beside(ax)
    _decision_lines(ax, timeline.decisions)
    return fig


def _latency_cut(values: Sequence[float]) -> float | None:
    """Where to cut the latency axis, or None to show every point: one 2 s spike under load drew
    every other latency (20-200 ms) into the axis' bottom tenth."""
    if not values:
        return None
    top = float(np.quantile(values, LATENCY_AXIS_QUANTILE)) * LATENCY_AXIS_HEADROOM
    return top if max(values) > top else None


def _peaks_over(curve: Sequence[tuple[float, float]], top: float) -> list[tuple[float, float]]:
    """The highest point of each run of a curve's points over `top`."""
    runs = itertools.groupby(curve, key=lambda point: point[1] > top)
    return [max(run, key=lambda point: point[1]) for over, run in runs if over]


def _mark_cut_peaks(ax: Any, peaks: Sequence[tuple[tuple[float, float], str]], top: float) -> None:
    """A marker at the top of the axes at each peak cut off, its value beside it; the values of peaks
    close in time (a spike's p95 and p50) stacked, not written over each other."""
    placed: list[float] = []
    near = (ax.get_xlim()[1] - ax.get_xlim()[0]) * CUT_PEAK_NEAR_SHARE
    for (at, ms), color in sorted(peaks, key=lambda peak: -peak[0][1]):
        row = sum(abs(at - other) < near for other in placed)
        placed.append(at)
        ax.plot(at, top, marker="^", color=color, clip_on=False, zorder=4)
        ax.annotate(
            f"{ms:.0f} ms",
            xy=(at, top),
            xytext=(6, -10 - DECISION_ROW_PT * row),
            textcoords="offset points",
            fontsize=8,
            color=color,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},  # legible over the spike's line
        )


def _legend_beside(ax: Any) -> None:
    """The legend right of the axes, never over them: in the upper left corner of the latency figure
    it hid v1-fp32's and v2-int8's p95 peaks (60-80 ms) of the first 30 s, and every figure over time
    starts with a revision's curve on that side."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _burn_rates(timeline: Timeline, spec: RolloutSpec) -> str:
    """Each judgement in a slot of its own, its SLIs' points side by side in the legend's order: drawn
    at the judgement's time, equal rates (every SLI at 0 on a calm step, both windows alike) lay on
    each other and only the last drawn showed, and judgements 10 s apart left no room to set them apart."""
    judged = [r for r in timeline.decisions if r.decision.analysis is not None]
    if not judged:
        return "<p>No judgement was made.</p>"
    fig, ax = reporting.new_figure(10, 3.5)
    series = [
        (f"{objective.sli.value} {window}s", color, marker, points)
        for color, objective in zip(_PALETTE, timeline.objectives, strict=False)
        for window, marker in zip(spec.analysis.windows, ("o", "s"), strict=False)
        if (points := _burn_points(judged, objective.sli, window))
    ]
    for number, (label, color, marker, points) in enumerate(series):
        shift = (number - (len(series) - 1) / 2) * SLOT_SHARE / len(series)
        ax.scatter(
            [slot + shift for slot, _ in points],
            [rate for _, rate in points],
            color=color,
            marker=marker,
            s=MARKER_AREA,
            label=label,
        )
    ax.axhline(
        spec.analysis.burn_rate_threshold,
        color=LIMIT_COLOR,
        linestyle="--",
        label=f"threshold {spec.analysis.burn_rate_threshold:g}",
    )
    ax.set_yscale("symlog", linthresh=BURN_RATE_LINEAR_UP_TO)
    top = _headroom(max([spec.analysis.burn_rate_threshold, *_plotted_values(ax)]))
    ax.set_ylim(-BURN_RATE_LINEAR_UP_TO / 4, top)  # a little below 0: a point at 0 whole, not cut in half
    ax.set_ylabel("burn rate (ratio / budget)")
    ax.set_xticks(range(len(judged)), [f"{r.rollout}\n{r.at:.0f} s" for r in judged], fontsize=7)
    ax.set_xlabel("judgement (rollout, seconds since start)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: over it hid failing points
    return reporting.figure(fig, "burn rates at judgements")


def _burn_points(judged: Sequence[DecisionRecord], sli: slo.SLI, window: int) -> list[tuple[int, float]]:
    """(slot, burn rate) of one SLI on one window at each judgement (numbered in order) that measured it."""
    return [
        (slot, w.burn_rate)
        for slot, record in enumerate(judged)
        for result in record.decision.analysis.slos  # type: ignore[union-attr]
        if result.sli is sli
        for w in result.windows
        if w.window == window and w.burn_rate is not None
    ]


def _plotted_values(ax: Any) -> list[float]:
    return [float(y) for collection in ax.collections for _, y in collection.get_offsets()]


def _headroom(top: float) -> float:
    """An upper limit that leaves the highest point whole, above its marker's size (on a symlog axis)."""
    return top * 2 if top > 1 else top + 1


def _log(timeline: Timeline) -> str:
    rows = [
        (
            reporting.quantity(f"{record.at:.1f}", "s"),
            record.rollout,
            record.decision.action.value,
            record.decision.status.phase.value,
            f"{record.decision.status.weight}%" if record.decision.status.canary is not None else "-",
            record.decision.reason,
        )
        for record in timeline.decisions
        if record.decision.action is not Action.WAIT
    ]
    return reporting.table(["at", "rollout", "action", "phase", "canary weight", "reason"], rows)
