"""The demo report's decision log and burn-rate figure, from decisions made by hand."""

from __future__ import annotations

import html
import re

from quantship.local import demo_report
from quantship.local.timeline import DecisionRecord, Timeline
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
