"""The artifact report's verdict cards and metrics: each says what its number is."""

from __future__ import annotations

import html
import re
from typing import Any

from quantship import reporting
from quantship.quantize import report

EMBEDDING: dict[str, Any] = {
    "task": {"name": "embedding", "why": "rows are unit vectors"},
    "validation": {
        "metric": "cosine_agreement",
        "value": 1.0,
        "threshold": 0.995,
        "agreement": None,
        "shadow_disagreement": 0.0,
        "metrics": {"cosine_agreement": 1.0, "cosine_mean": 0.993, "cosine_min": 0.985},
    },
}


def _cards(page: str) -> dict[str, str]:
    return {
        html.unescape(label): html.unescape(value)
        for label, value in re.findall(r'<div class="card">(.*?)<b>(.*?)</b></div>', page)
    }


def test_an_embedding_verdict_shows_its_gate_metric_and_no_empty_top1_card() -> None:
    """MiniLM's verdict read "top-1 agreement -": an embedding has no top-1."""
    cards = _cards(report._verdict(EMBEDDING, True, 1024, 256))
    assert "top-1 agreement" not in cards and cards["cosine_agreement"] == "1"


def test_a_classifier_verdict_keeps_its_top1_agreement() -> None:
    validation = {**EMBEDDING["validation"], "metric": "top1_agreement", "agreement": 0.99}
    cards = _cards(report._verdict({**EMBEDDING, "validation": validation}, True, 1024, 256))
    assert cards["top-1 agreement"] == reporting.percent(0.99)


def _meanings(validation: dict[str, Any]) -> dict[str, str]:
    section = report._comparison(validation, 1024, 256)
    table = re.findall(r"<tr>(.*?)</tr>", section, re.S)
    cells = [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in table]
    return {row[0]: row[2] for row in cells if row}


def test_every_measure_an_embedding_records_is_described() -> None:
    """cosine_min stood in the metrics table with "-" for what it measures."""
    meanings = _meanings(EMBEDDING["validation"])
    assert "-" not in meanings.values() and "lowest cosine" in meanings["cosine_min"]


def test_the_kl_divergence_bar_names_its_unit() -> None:
    """The KL panel's axis said "lower is better" and no unit: a reader could not tell nats from bits."""
    section = report._comparison({"metrics": {"kl_divergence": 0.0027, "top1_agreement": 1.0}}, 1024, 256)
    alt = re.search(r'alt="([^"]*)"', section)
    assert alt
    assert "kl_divergence (nats)" in html.unescape(alt.group(1)) and "top1_agreement (" not in html.unescape(
        alt.group(1)
    )
