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
