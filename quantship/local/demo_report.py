"""The demo's HTML report: the rollouts over time, every decision, and the numbers behind them.

Plots (matplotlib, embedded): canary weight with the decision points, each revision's accuracy
delta, clip rate, activation drift (against the drift alert's threshold) and client latency over
time, and the burn rates of each judgement against the threshold; the drift loop's figures. Then
the decision log with every reason as the engine wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quantship import reporting, slo
from quantship.local.recalibration import DriftLoop
from quantship.local.timeline import DecisionRecord, Timeline
from quantship.rollout import Action, RolloutSpec

_MARKS = {
    Action.PROMOTE: ("#16794c", "promoted"),
    Action.ROLL_BACK: ("#b42318", "rolled back"),
    Action.FAIL: ("#b42318", "failed"),
}
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]


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
        ("Latency (client side)", _latency(timeline)),
        ("Burn rates at each judgement", _burn_rates(timeline, spec)),
        ("Decision log", _log(timeline)),
    ]
    return reporting.page("quantship demo: canary rollouts and a recalibration", settings, sections)


def _outcome(outcomes: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            o["revision"],
            o["artifact"],
            reporting.verdict(o["phase"] == o["expected"], o["phase"]),
            f"{o['seconds']:.0f} s",
            o["judgements"],
            o["reason"],
        )
        for o in outcomes
    ]
    return reporting.table(["revision", "artifact", "result", "took", "judgements", "why"], rows)


def _drift_loop(loop: DriftLoop) -> str:
    def bits(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} bits"

    rows = [
        ("stable whose traffic drifted", loop.revision or "-"),
        ("traffic", f"inputs x{loop.scale:g}"),
        ("drift alert threshold", f"{loop.threshold:g} bits"),
        ("drift before", bits(loop.calm)),
        ("drift once drifted", bits(loop.drifted)),
        ("rose over the threshold in", "-" if loop.rose_in is None else f"{loop.rose_in:.0f} s"),
        ("capture recalibrated from", "-" if loop.captured is None else f"{loop.captured} rows"),
        ("recalibrated revision", loop.recalibrated or "-"),
        ("its drift on the same traffic", bits(loop.after)),
        ("its rollout", reporting.verdict(loop.ok, loop.phase or "not run")),
    ]
    return reporting.table(["", ""], rows)


def _decision_lines(ax: Any, decisions: Sequence[DecisionRecord]) -> None:
    for record in decisions:
        mark = _MARKS.get(record.decision.action)
        if mark:
            ax.axvline(record.at, color=mark[0], linestyle="--", linewidth=1)
            ax.annotate(
                f"{record.rollout}: {mark[1]}",
                (record.at, ax.get_ylim()[1]),
                rotation=90,
                va="top",
                ha="right",
                fontsize=8,
                color=mark[0],
            )


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
        c=[
            "#16794c" if r.decision.analysis and r.decision.analysis.verdict.value == "pass" else "#b42318"
            for r in judged
        ],
        label="judgement of the step (green pass, red fail)",
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
    fig, ax = reporting.new_figure(10, 3)
    plotted = False
    for color, (revision, points) in zip(_COLORS, _series(timeline).items(), strict=False):
        xs = [at for at, data in points if data.ratios.get(sli) is not None]
        ys = [data.ratios[sli] * 100 for at, data in points if data.ratios.get(sli) is not None]
        if xs:
            ax.plot(xs, ys, label=revision, color=color)
            plotted = True
    ax.axhline(objective.budget * 100, color="#1d2330", linestyle=":", label=f"budget {objective.budget:.2%}")
    ax.set_ylabel(f"{sli.value} (%, {timeline.window}s window)")
    ax.set_xlabel("seconds since start")
    ax.legend(fontsize=8, loc="upper left")
    _decision_lines(ax, timeline.decisions)
    note = (
        "" if plotted else "<p>No revision reported this SLI (an FP32 stable has no reference or ranges).</p>"
    )
    return reporting.figure(fig, f"{sli.value} over time") + note


def _drift(timeline: Timeline, loop: DriftLoop) -> str:
    fig, ax = reporting.new_figure(10, 3)
    plotted = False
    for color, (revision, points) in zip(_COLORS, _series(timeline).items(), strict=False):
        drift = [(at, data.drift) for at, data in points if data.drift is not None]
        if drift:
            ax.plot(*zip(*drift, strict=True), label=revision, color=color)
            plotted = True
    ax.axhline(loop.threshold, color="#b42318", linestyle="--", label=f"alert threshold {loop.threshold:g}")
    ax.set_ylabel("drift (bits, tensor=all)")
    ax.set_xlabel("seconds since start")
    ax.legend(fontsize=8, loc="upper left")
    _decision_lines(ax, timeline.decisions)
    note = (
        ""
        if plotted
        else "<p>No revision reported drift (an FP32 artifact has no calibration histograms).</p>"
    )
    return reporting.figure(fig, "activation drift over time") + note


def _latency(timeline: Timeline) -> str:
    fig, ax = reporting.new_figure(10, 3)
    for color, (revision, points) in zip(_COLORS, _series(timeline).items(), strict=False):
        p95 = [(at, d.latency_p95 * 1000) for at, d in points if d.latency_p95 is not None]
        p50 = [(at, d.latency_p50 * 1000) for at, d in points if d.latency_p50 is not None]
        if p95:
            ax.plot(*zip(*p95, strict=True), color=color, label=f"{revision} p95")
            ax.plot(*zip(*p50, strict=True), color=color, linestyle=":", label=f"{revision} p50")
    ax.set_ylabel("latency (ms), per second")
    ax.set_xlabel("seconds since start")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    _decision_lines(ax, timeline.decisions)
    return reporting.figure(fig, "latency over time")


def _burn_rates(timeline: Timeline, spec: RolloutSpec) -> str:
    judged = [r for r in timeline.decisions if r.decision.analysis is not None]
    if not judged:
        return "<p>No judgement was made.</p>"
    fig, ax = reporting.new_figure(10, 3.5)
    for color, objective in zip(_COLORS, timeline.objectives, strict=False):
        for window, marker in zip(spec.analysis.windows, ("o", "s"), strict=False):
            points = [
                (record.at, w.burn_rate)
                for record in judged
                for result in record.decision.analysis.slos  # type: ignore[union-attr]
                if result.sli is objective.sli
                for w in result.windows
                if w.window == window and w.burn_rate is not None
            ]
            if points:
                ax.scatter(
                    *zip(*points, strict=True),
                    color=color,
                    marker=marker,
                    label=f"{objective.sli.value} {window}s",
                )
    ax.axhline(
        spec.analysis.burn_rate_threshold,
        color="#b42318",
        linestyle="--",
        label=f"threshold {spec.analysis.burn_rate_threshold:g}",
    )
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(0, _headroom(max([spec.analysis.burn_rate_threshold, *_plotted_values(ax)])))
    ax.set_ylabel("burn rate (ratio / budget)")
    ax.set_xlabel("seconds since start")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: over it hid failing points
    return reporting.figure(fig, "burn rates at judgements")


def _plotted_values(ax: Any) -> list[float]:
    return [float(y) for collection in ax.collections for _, y in collection.get_offsets()]


def _headroom(top: float) -> float:
    """An upper limit that leaves the highest point whole, above its marker's size (on a symlog axis)."""
    return top * 2 if top > 1 else top + 1


def _log(timeline: Timeline) -> str:
    rows = [
        (
            f"{record.at:.1f} s",
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
