"""The demo report's decision log, burn-rate and drift figures, from decisions and samples made by hand."""

from __future__ import annotations

import html
import re

from quantship import reporting
from quantship.local import demo_report
from quantship.local.timeline import DecisionRecord, RevisionSample, Sample, Timeline
from quantship.rollout import Action
from quantship.rollout.engine import Decision
from quantship.rollout.state import Phase, RolloutStatus


def rows(table: str) -> list[list[str]]:
    return [
        [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
    ]


def test_the_log_gives_a_canary_weight_only_where_a_canary_serves() -> None:
    """A promoted revision serves all traffic: its row must not read "0%" beside that."""
    canary = RolloutStatus(phase=Phase.PROGRESSING, stable="v1", canary="v2", weight=20, step=0)
    promoted = RolloutStatus(phase=Phase.PROMOTED, stable="v2", message="v2 serves all traffic")
    records = [
        DecisionRecord(10.0, "v2", Decision(Action.SET_WEIGHT, canary, "canary at 20%")),
        DecisionRecord(20.0, "v2", Decision(Action.PROMOTE, promoted, "v2 serves all traffic")),
    ]
    logged = [row for row in rows(demo_report._log(_timeline(records))) if row]
    assert [row[4] for row in logged] == ["20%", "-"]


def _timeline(records: list[DecisionRecord]) -> Timeline:
    return Timeline(objectives=(), window=10, model="digits", decisions=records)


def test_a_revisions_drift_is_dotted_until_its_window_has_its_first_half_of_requests() -> None:
    """The recalibrated canary's first reading, over a few requests, was 0.17 bits: drawn like the
    rest, it stood over the drifted stable's 0.13 and told the opposite of what followed (0.03)."""
    readings = {"v2": [(500, 0.13), (560, 0.13), (620, 0.13)], "v4": [(10, 0.17), (70, 0.034), (130, 0.03)]}
    samples = [
        Sample(float(second), "v4", 20, {r: _sample(*readings[r][second]) for r in readings})
        for second in range(3)
    ]
    timeline = Timeline(objectives=(), window=10, model="digits", samples=samples)
    fig, ax = reporting.new_figure()

    assert demo_report._plot_drift(ax, timeline, filling=64)

    solid = {line.get_label(): list(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "-"}
    assert solid == {"v2": [0.13, 0.13, 0.13], "v4": [0.034, 0.03]}
    dotted = [
        list(line.get_ydata()) for line in ax.lines if line.get_linestyle() == ":" and len(line.get_ydata())
    ]
    assert dotted == [[0.17, 0.034]]
    assert "a revision's first 64 requests" in [line.get_label() for line in ax.lines]
    reporting.pyplot().close(fig)


def _sample(requests_ok: int, drift: float) -> RevisionSample:
    return RevisionSample("canary", requests_ok, 0, {}, None, None, drift)
