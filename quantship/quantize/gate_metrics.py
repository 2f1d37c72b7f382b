"""The accuracy gate's metrics: what each number means and which way it points, its loss form, its
wording for people; the gate a run chose and a candidate's verdict (Evaluation).

Every metric also has a loss form (0 = identical to FP32, the gate's `delta`), so trials on one
metric compare and rank alike whichever way the metric points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from quantship import agreement
from quantship.agreement import RowRule
from quantship.choices import DOMAIN_OF_METRIC, Metric, domain_in_words
from quantship.quantize.errors import QuantizeInputError


@dataclass(frozen=True)
class MetricSpec:
    """What a metric's number means (its task: choices.TASK_OF_METRIC)."""

    higher_is_better: bool
    meaning: str
    default_threshold: float | None = None
    """None: derived from --max-accuracy-delta (a share of rows that may disagree, or the relative
    accuracy loss)."""
    needs_labels: bool = False
    needs_scores: bool = False
    unit: str = ""
    """Where the number has one ("" for shares and ratios): said beside its bar in the report."""


METRICS: dict[Metric, MetricSpec] = {
    Metric.TOP1_ACCURACY: MetricSpec(
        False, "relative top-1 accuracy loss against the labels", needs_labels=True
    ),
    Metric.TOP1_AGREEMENT: MetricSpec(True, "share of rows with FP32's top-1"),
    Metric.CONFIDENT_AGREEMENT: MetricSpec(
        True,
        f"share of rows where FP32 is > {agreement.CONFIDENT_PROBABILITY:.0%} sure that keep its top-1",
        needs_scores=True,
    ),
    Metric.TOP5_OVERLAP: MetricSpec(
        True,
        "mean share of FP32's top-5 classes in INT8's top-5",
        0.8,
        needs_scores=True,
    ),
    Metric.KL_DIVERGENCE: MetricSpec(
        False,
        "mean KL(FP32 || INT8) of the softmax, in nats",
        0.05,
        needs_scores=True,
        unit="nats",
    ),
    Metric.COSINE_AGREEMENT: MetricSpec(True, "share of rows with cosine to FP32 at least the row tolerance"),
    Metric.COSINE_MEAN: MetricSpec(True, "mean cosine similarity to FP32", 0.98),
    Metric.COSINE_P5: MetricSpec(True, "5th percentile of cosine similarity to FP32", 0.95),
    Metric.NN_AGREEMENT: MetricSpec(
        True, "share of rows whose nearest neighbour in the set stays the same", 0.8
    ),
    Metric.RELATIVE_ERROR: MetricSpec(False, "||INT8 - FP32|| / ||FP32|| of the output"),
}

COSINE_MIN = "cosine_min"
UNGATED: dict[str, MetricSpec] = {
    COSINE_MIN: MetricSpec(True, "lowest cosine similarity to FP32 of any row (no gate reads it)"),
}
"""Measures an evaluation records beside the gate's metrics, for people to read."""


def loss(metric: Metric, value: float) -> float:
    """The metric as a distance from FP32 (0 = identical): what the gate and the ranking compare."""
    spec = METRICS[metric]
    return 1.0 - value if spec.higher_is_better else value


def known(name: Any) -> Metric | None:
    """A manifest's metric name as a Metric; None for one this quantship does not know."""
    try:
        return Metric(name)
    except ValueError:
        return None


def loss_name(metric: Metric) -> str:
    """What the metric's number is called where people read it. top1_accuracy's number is the
    relative accuracy loss: shown as `top1_accuracy 0` a 97.75% model read as 0% accurate."""
    return "relative accuracy loss" if metric is Metric.TOP1_ACCURACY else metric.value


def stated(metric: Metric, value: float) -> str:
    """A gated number in words, for the console summary and the report."""
    if metric is Metric.TOP1_ACCURACY:
        # A negative relative loss is INT8 doing better than FP32 on the labels.
        return f"accuracy {'gain' if value < 0 else 'loss'} {abs(value):.2%}"
    return f"{metric.value} {value:.4g}"


def condition(metric: Metric, threshold: float) -> str:
    """The gate's condition in words: `top1_accuracy: relative accuracy loss <= 0.50%`."""
    if metric is Metric.TOP1_ACCURACY:
        return f"{metric.value}: {loss_name(metric)} {bound(metric, threshold)}"
    return f"{metric.value} {bound(metric, threshold)}"


def bound(metric: Metric, threshold: float) -> str:
    """The side of `threshold` that passes: `>= 0.99`, `<= 0.50%` (top1_accuracy's relative loss)."""
    if metric is Metric.TOP1_ACCURACY:
        return f"<= {threshold:.2%}"
    return f"{'>=' if METRICS[metric].higher_is_better else '<='} {threshold:g}"


def check_in_domain(metric: Metric, threshold: float) -> None:
    low, high = DOMAIN_OF_METRIC[metric]
    if low <= threshold <= high:
        return
    passes = "every" if (threshold < low) == METRICS[metric].higher_is_better else "no"
    raise QuantizeInputError(
        f"--threshold {threshold:g}: {metric.value} is {domain_in_words(metric)}, so the gate would "
        f"pass {passes} model"
    )


@dataclass(frozen=True)
class Gate:
    metric: Metric
    threshold: float
    """In the metric's own units: the least value accepted (higher is better) or the most."""
    rule: RowRule
    """Per row, for the server's shadow SLI: the same notion of disagreement."""
    reason: str
    """Why this metric, in a sentence, for the manifest and the console."""

    @property
    def limit(self) -> float:
        return loss(self.metric, self.threshold)

    def describe(self) -> str:
        return condition(self.metric, self.threshold)


@dataclass(frozen=True)
class Evaluation:
    metric: Metric
    value: float
    threshold: float
    samples: int
    values: dict[str, float | None] = field(default_factory=dict)
    """Every metric of the task on this candidate."""
    fp32: float | None = None
    """Top-1 accuracy of FP32 and INT8, with labels."""
    int8: float | None = None
    shadow: tuple[float, int] | None = None
    """(disagreeing, compared) evaluation rows by the shadow SLI's rule (per position: each row by its
    share of disagreeing positions, RowRule.judge); None where it cannot judge."""

    @property
    def delta(self) -> float:
        return loss(self.metric, self.value)

    @property
    def limit(self) -> float:
        return loss(self.metric, self.threshold)

    @property
    def passed(self) -> bool:
        return self.delta <= self.limit + 1e-12

    @property
    def agreement(self) -> float | None:
        return self.values.get(Metric.TOP1_AGREEMENT.value)

    @property
    def shadow_disagreement(self) -> float | None:
        """The share of the compared evaluation rows the shadow SLI's rule counts as disagreeing (per
        position: the rows' shares of disagreeing positions, averaged), as the server will count."""
        if self.shadow is None or not self.shadow[1]:
            return None
        return self.shadow[0] / self.shadow[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric.value,
            "value": _finite(self.value),
            "threshold": _finite(self.threshold),
            "delta": _finite(self.delta),
            "limit": _finite(self.limit),
            "samples": self.samples,
            "fp32": self.fp32,
            "int8": self.int8,
            "agreement": self.agreement,
            "shadow_disagreement": self.shadow_disagreement,
            "metrics": {name: _finite(value) for name, value in self.values.items()},
        }


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a candidate that could not run reads as None."""
    return value if value is None or math.isfinite(value) else None
