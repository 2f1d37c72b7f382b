"""The demo's live terminal view (rich): the rollout as it happens, from the Timeline's last record.

Top: which rollout, phase, step and canary weight. Middle: traffic per revision and each SLO's
ratio, burn rates on both windows and verdict at the last judgement. Bottom: the decision log.
"""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from quantship.local.timeline import Timeline
from quantship.rollout import Action, RolloutSpec

_VERDICT_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}
_LOG_LINES = 8


def render(timeline: Timeline, spec: RolloutSpec | None) -> Group:
    status = timeline.status
    header = Table.grid(padding=(0, 2))
    header.add_row(
        Text(f"t={timeline.now():5.0f}s", style="dim"),
        Text(timeline.rollout or "starting", style="bold"),
        Text(f"phase {status.phase.value}", style="cyan"),
        Text(f"stable {status.stable or '-'}"),
        Text(f"canary {status.canary or '-'}"),
    )
    steps = spec.steps if spec else ()
    step = f"step {status.step + 1}/{len(steps)}" if status.canary and status.step >= 0 else "no canary"
    weight = Table.grid(padding=(0, 2))
    weight.add_row(
        Text(step),
        Text(f"canary weight {status.weight if status.canary else 0:3d}%"),
        ProgressBar(total=100, completed=status.weight if status.canary else 0, width=40),
    )
    return Group(
        Panel(Group(header, weight), title="quantship demo"),
        _traffic(timeline),
        _slos(timeline, spec),
        _log(timeline),
    )


def _traffic(timeline: Timeline) -> Table:
    table = Table(title="traffic and SLIs per revision (short window; drift in bits)", expand=True)
    slis = [objective.sli.value for objective in timeline.objectives]
    for column in ("revision", "track", "ok", "failed", "p50 ms", "p95 ms", *slis, "drift"):
        table.add_column(column, justify="left" if column in ("revision", "track") else "right")
    last = timeline.samples[-1] if timeline.samples else None
    for revision, sample in last.revisions.items() if last else []:
        table.add_row(
            revision,
            sample.track,
            str(sample.requests_ok),
            str(sample.requests_failed),
            _ms(sample.latency_p50),
            _ms(sample.latency_p95),
            *(_pct(sample.ratios.get(objective.sli)) for objective in timeline.objectives),
            "-" if sample.drift is None else f"{sample.drift:.3f}",
        )
    return table


def _slos(timeline: Timeline, spec: RolloutSpec | None) -> Table:
    analysis = next(
        (
            r.decision.analysis
            for r in reversed(timeline.decisions)
            if r.decision.analysis is not None and r.rollout == timeline.rollout
        ),
        None,
    )
    title = "last judgement of the canary" + (f": {analysis.verdict.value}" if analysis else ": none yet")
    table = Table(title=title, expand=True)
    spans = spec.analysis.windows if spec else ()
    table.add_column("SLO")
    table.add_column("budget", justify="right")
    for span in spans:
        table.add_column(f"ratio {span}s", justify="right")
        table.add_column(f"burn {span}s", justify="right")
    table.add_column("verdict")
    if analysis is None:
        return table
    for result in analysis.slos:
        cells = []
        for window in result.windows:
            cells += [_pct(window.ratio), "-" if window.burn_rate is None else f"{window.burn_rate:.2f}"]
        verdict = result.verdict.value
        table.add_row(result.sli.value, _pct(result.budget), *cells, Text(verdict, _VERDICT_STYLE[verdict]))
    gate = analysis.fallback_ops
    table.add_row(
        "fallback ops",
        f"≤{gate.limit}",
        *[""] * (2 * len(spans)),
        Text(gate.verdict.value, _VERDICT_STYLE[gate.verdict.value]),
    )
    return table


def _log(timeline: Timeline) -> Panel:
    acted = [record for record in timeline.decisions if record.decision.action is not Action.WAIT]
    lines = [
        Text(
            f"{record.at:5.0f}s  {record.rollout:<16} {record.decision.action.value:<12} "
            f"{record.decision.reason}",
            overflow="ellipsis",
            no_wrap=True,
        )
        for record in acted[-_LOG_LINES:]
    ]
    return Panel(Group(*lines) if lines else Text("no decisions yet", style="dim"), title="decisions")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3%}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"
