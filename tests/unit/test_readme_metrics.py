"""The README's metrics table names every series quantship exports: a user reading /metrics found
`quantship_shadow_comparisons_total` and the clip rate's counters nowhere in it."""

from __future__ import annotations

import re
from pathlib import Path

from quantship.slo import Metric

README = Path(__file__).resolve().parents[2] / "README.md"


def metrics_section() -> str:
    text = README.read_text()
    start = text.index("### Metrics\n")
    return text[start : text.index("\n#", start + 1)]


def test_the_readme_metrics_table_names_every_exported_metric() -> None:
    section = metrics_section()
    missing = [metric.value for metric in Metric if f"`{metric.value}`" not in section]
    assert missing == []


def test_the_readme_metrics_table_names_nothing_that_is_not_exported() -> None:
    exported = {metric.value for metric in Metric}
    named = set(re.findall(r"`(quantship_[a-z_]+)`", metrics_section()))
    assert len(named) >= len(exported)
    assert named - exported == set()
