"""SLIs and SLOs of quantized serving: what each one counts, burn-rate math, and the PromQL text.

The one place these live. The rollout engine judges canaries with them, the rule generator writes
recording and alert rules from them, the dashboards plot them, and the server names its
histogram buckets after them, so none of those can drift from another. Imports nothing of ours.

`Metric` is the table of every metric name quantship exports (server and operator, DESIGN.md):
the server's and the operator's metrics declare theirs from it, and the PromQL here, in the rules
and in the dashboards selects from it. `Track` is the `track` label's values.

Every SLI is a ratio of two counters, bad / total, over a window:

    accuracy_delta  shadow_disagreements_total / shadow_comparisons_total
    clip_rate       activations_clipped_total  / activations_observed_total
    errors          requests_total{code=~"5.."} / requests_total
    latency         (requests slower than the threshold) / requests, from the duration histogram

An SLO gives each an error budget (the bad ratio it may reach). Burn rate = ratio / budget: at 1
the budget lasts exactly the SLO period; at 14.4 a 30-day budget is gone in 2 days.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from prometheus_client.utils import floatToGoString

PREFIX = "quantship_"
LABELS = ("model", "revision", "track")
"""Labels on every server metric (DESIGN.md)."""
NAMESPACE = "namespace"
"""The label a scrape gives a pod's namespace (the chart's PodMonitor; Prometheus' kubernetes_sd
examples relabel to it), not the server's own: the same model and revision in two namespaces are
two deployments, which rules and canary analysis keep apart by it (locally absent: harmless)."""


class Track(enum.StrEnum):
    """Which side of a rollout a revision's servers are: the `track` label on every server metric."""

    STABLE = "stable"
    CANARY = "canary"


class SampleKind(enum.StrEnum):
    """Which background lane a sampled request goes to: the `kind` label of
    quantship_samples_processed_total and quantship_samples_dropped_total."""

    SHADOW = "shadow"
    """Run through the FP32 reference (the accuracy delta SLI)."""
    CLIP = "clip"
    """Checked against the calibrated activation ranges (the clip rate SLI, activation drift)."""
    CAPTURE = "capture"
    """Kept in the reservoir of production inputs (`--capture-dir`)."""


class DropReason(enum.StrEnum):
    """Why a server skipped a sample: the `reason` label of quantship_samples_dropped_total."""

    BEHIND = "behind"
    """The background worker's queue was full, or a hand-off's worth already waits while a lane
    prices its first sample. At a steady rate: the worker gets too little CPU (it runs on idle CPU
    only)."""
    BUDGET = "budget"
    """The SLI CPU budget (shadow and clip) was spent."""
    SHAPE = "shape"
    """A capture row's shape differs from the captured samples'."""
    FAILED = "failed"
    """The lane's work failed on the hand-off that held the sample (a reference or observer session
    that cannot run on what the served model took): each of its samples is lost, and counted, so a
    rollout reads why it has no data rather than nothing at all."""


STARVED_BEHIND_PER_S = 1.0
"""Samples a second, at least, that a server's lane drops as behind for its SLI worker to count as
starved of CPU (the server's log, server/starvation.py, and the QuantshipSliStarved alert). A fresh
pod drops a few while its lanes price their first sample; a starved canary dropped ~250 a second
(EfficientNet-Lite0 INT8, back to back at --canary-sli-cpu-budget 0.2, 2026-12-05)."""


class Metric(enum.StrEnum):
    """Every metric quantship exports, by its full name as Prometheus stores it (DESIGN.md)."""

    # the model server
    REQUESTS_TOTAL = f"{PREFIX}requests_total"
    REQUEST_DURATION_SECONDS = f"{PREFIX}request_duration_seconds"
    BATCH_SIZE = f"{PREFIX}batch_size"
    QUEUE_DURATION_SECONDS = f"{PREFIX}queue_duration_seconds"
    SHADOW_COMPARISONS_TOTAL = f"{PREFIX}shadow_comparisons_total"
    SHADOW_DISAGREEMENTS_TOTAL = f"{PREFIX}shadow_disagreements_total"
    SHADOW_DISAGREEING_ROWS_TOTAL = f"{PREFIX}shadow_disagreeing_rows_total"
    FEEDBACK_TOTAL = f"{PREFIX}feedback_total"
    ACTIVATIONS_OBSERVED_TOTAL = f"{PREFIX}activations_observed_total"
    ACTIVATIONS_CLIPPED_TOTAL = f"{PREFIX}activations_clipped_total"
    FALLBACK_OPS = f"{PREFIX}fallback_ops"
    MODEL_INFO = f"{PREFIX}model_info"
    MODEL_SIZE_BYTES = f"{PREFIX}model_size_bytes"
    MODEL_LOAD_SECONDS = f"{PREFIX}model_load_seconds"
    MODEL_LOAD_FAILURES_TOTAL = f"{PREFIX}model_load_failures_total"
    REQUESTS_IN_FLIGHT = f"{PREFIX}requests_in_flight"
    SAMPLES_DROPPED_TOTAL = f"{PREFIX}samples_dropped_total"
    SAMPLES_PROCESSED_TOTAL = f"{PREFIX}samples_processed_total"
    """Sampled requests a lane processed, by kind: how many requests a sampled SLI's ratio (over
    rows or activation values) stands on."""
    TENSOR_ACTIVATIONS_OBSERVED_TOTAL = f"{PREFIX}tensor_activations_observed_total"
    TENSOR_ACTIVATIONS_CLIPPED_TOTAL = f"{PREFIX}tensor_activations_clipped_total"
    ACTIVATION_DRIFT = f"{PREFIX}activation_drift"
    ACTIVATION_DRIFT_VALUES_TOTAL = f"{PREFIX}activation_drift_values_total"
    HARDWARE_MISMATCH = f"{PREFIX}hardware_mismatch"
    HARDWARE_INFO = f"{PREFIX}hardware_info"
    NONDETERMINISTIC_OUTPUTS = f"{PREFIX}nondeterministic_outputs"
    # the operator
    ROLLOUT_WEIGHT = f"{PREFIX}rollout_weight"
    ROLLOUT_STEP = f"{PREFIX}rollout_step"
    ROLLOUTS_TOTAL = f"{PREFIX}rollouts_total"
    ANALYSIS_TOTAL = f"{PREFIX}analysis_total"
    ANALYSIS_LAG_SECONDS = f"{PREFIX}analysis_lag_seconds"
    BURN_RATE = f"{PREFIX}burn_rate"
    SLO_BUDGET = f"{PREFIX}slo_budget"
    """Each QuantizedModel's own error budget per SLO (spec.slos), which its burn alerts judge."""

    @property
    def declared(self) -> str:
        """The name to give prometheus_client, which appends `_total` to a counter's name itself."""
        return self.value.removesuffix("_total")

    @property
    def buckets(self) -> str:
        """A histogram's bucket series."""
        return f"{self.value}_bucket"

    @property
    def observations(self) -> str:
        """A histogram's count series."""
        return f"{self.value}_count"


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of quantship_request_duration_seconds, in seconds. A latency SLO threshold must be one
of them: the SLI reads the bucket whose `le` equals the threshold."""


class SLI(enum.StrEnum):
    ACCURACY_DELTA = "accuracy_delta"
    LATENCY = "latency"
    ERRORS = "errors"
    CLIP_RATE = "clip_rate"


@dataclass(frozen=True)
class Objective:
    """One SLO: an SLI and the bad ratio it may reach (its error budget)."""

    sli: SLI
    budget: float
    """Allowed bad ratio, 0 < budget <= 1: 0.005 lets 0.5% of shadow comparisons disagree."""
    latency_threshold: float | None = None
    """Latency SLO only: a request slower than this many seconds is bad. One of LATENCY_BUCKETS."""

    def __post_init__(self) -> None:
        if not 0 < self.budget <= 1:
            raise ValueError(f"{self.sli} budget must be in (0, 1], got {self.budget}")
        on_a_bucket = self.latency_threshold is not None and any(
            math.isclose(self.latency_threshold, bucket) for bucket in LATENCY_BUCKETS
        )
        if self.sli is SLI.LATENCY and not on_a_bucket:
            raise ValueError(
                f"latency threshold {self.latency_threshold} s is not a histogram bucket; "
                f"choose one of {', '.join(map(str, LATENCY_BUCKETS))}"
            )

    def burn_rate(self, ratio: float) -> float:
        return ratio / self.budget


DEFAULT_OBJECTIVES = (
    Objective(SLI.ACCURACY_DELTA, budget=0.005),
    Objective(SLI.LATENCY, budget=0.01, latency_threshold=0.1),
    Objective(SLI.ERRORS, budget=0.001),
    Objective(SLI.CLIP_RATE, budget=0.001),
)
"""The SLOs the generated alert rules and dashboards use: at most 0.5% of shadow comparisons
disagree (the quantizer's default accuracy gate), 99% of requests finish within 100 ms, 99.9% do
not fail, and at most 0.1% of activation values fall outside their calibrated range (the skewed
sample artifact clips ~0.6%: a 6x burn)."""


def default_objectives(*, latency_threshold: float) -> tuple[Objective, ...]:
    """DEFAULT_OBJECTIVES with another latency threshold: for machines that are no latency benchmark
    (the demo and tests share two cores with servers and Prometheus), so that latency SLOs catch
    real regressions there, not scheduler noise."""
    return tuple(
        replace(objective, latency_threshold=latency_threshold) if objective.sli is SLI.LATENCY else objective
        for objective in DEFAULT_OBJECTIVES
    )


# -- the SRE Workbook's multi-window, multi-burn-rate alerting ---------------------------------


@dataclass(frozen=True)
class BurnWindow:
    """Alert when the burn rate exceeds `factor` over both the long and the short window: the long
    one proves the burn is significant, the short one that it is still going on."""

    severity: str
    factor: float
    long: str
    short: str


SLO_PERIOD = "30d"
"""The period an error budget is spent over: the burn factors below are the SRE Workbook's for 30 days
(14.4x for an hour spends 2% of it)."""
BURN_WINDOWS = (
    BurnWindow("page", 14.4, "1h", "5m"),
    BurnWindow("page", 6.0, "6h", "30m"),
    BurnWindow("ticket", 3.0, "1d", "2h"),
    BurnWindow("ticket", 1.0, "3d", "6h"),
)
RULE_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


# -- counters and PromQL -------------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    """The PromQL series whose increase counts bad and total events of an SLI."""

    bad: str
    total: str
    bad_is_complement: bool = False
    """True when `bad` counts the good events (the latency bucket): bad = total - bad series."""
    whole_bad: str | None = None
    """The bad events counted whole, where `bad` may count shares of them (a token model's shadowed
    row disagrees by its share of flipped positions): what the canary analysis' chance guard
    (MIN_BAD_EVENTS) counts. None: `bad` counts whole events."""


SAMPLED_SLIS: Mapping[SLI, SampleKind] = MappingProxyType(
    {SLI.ACCURACY_DELTA: SampleKind.SHADOW, SLI.CLIP_RATE: SampleKind.CLIP}
)
"""The SLIs that count only a sampled share of requests, with the lane that samples them."""


def counters(objective: Objective) -> Counters:
    match objective.sli:
        case SLI.ACCURACY_DELTA:
            return Counters(
                Metric.SHADOW_DISAGREEMENTS_TOTAL,
                Metric.SHADOW_COMPARISONS_TOTAL,
                whole_bad=Metric.SHADOW_DISAGREEING_ROWS_TOTAL,
            )
        case SLI.CLIP_RATE:
            return Counters(Metric.ACTIVATIONS_CLIPPED_TOTAL, Metric.ACTIVATIONS_OBSERVED_TOTAL)
        case SLI.ERRORS:
            return Counters(f'{Metric.REQUESTS_TOTAL}{{code=~"5.."}}', Metric.REQUESTS_TOTAL)
        case SLI.LATENCY:
            assert objective.latency_threshold is not None
            le = floatToGoString(objective.latency_threshold)
            return Counters(
                f'{Metric.REQUEST_DURATION_SECONDS.buckets}{{le="{le}"}}',
                Metric.REQUEST_DURATION_SECONDS.observations,
                bad_is_complement=True,
            )


class Regex(str):
    """A label value matched as a regular expression (`=~`), e.g. a Grafana variable: Regex("$model")."""


def selector(labels: Mapping[str, str]) -> str:
    """Label matchers, e.g. {"model": "digits", "track": "canary"} -> model="digits",track="canary"."""
    return ",".join(
        f'{name}{"=~" if isinstance(value, Regex) else "="}"{_escape(value)}"'
        for name, value in sorted(labels.items())
    )


def with_labels(series: str, labels: Mapping[str, str]) -> str:
    """Add label matchers to a series that may already carry some: a{x="1"} + {y: 2} -> a{x="1",y="2"}."""
    extra = selector(labels)
    if not extra:
        return series
    if series.endswith("}"):
        return f"{series[:-1]},{extra}}}"
    return f"{series}{{{extra}}}"


def dropped_samples(reason: DropReason, kind: SampleKind | None = None) -> str:
    """quantship_samples_dropped_total of one drop reason (and one kind of sample)."""
    labels = {"reason": reason} if kind is None else {"kind": kind, "reason": reason}
    return with_labels(Metric.SAMPLES_DROPPED_TOTAL, labels)


def increase(series: str, window: str, labels: Mapping[str, str], by: tuple[str, ...] = ()) -> str:
    grouping = f" by ({', '.join(by)})" if by else ""
    return f"sum{grouping}(increase({with_labels(series, labels)}[{window}]))"


def requests(window: str, labels: Mapping[str, str], by: tuple[str, ...] = ()) -> str:
    """Requests answered over `window`, whatever their code: the traffic behind every SLI, which the
    alerts' minimum-traffic guards count (the SLIs' own totals are values, rows or requests)."""
    return increase(Metric.REQUESTS_TOTAL, window, labels, by)


def sampled_requests(
    kind: SampleKind, window: str, labels: Mapping[str, str], by: tuple[str, ...] = ()
) -> str:
    """Sampled requests of `kind` processed over `window`: the requests a sampled SLI's ratio stands
    on, which its alerts' minimum counts (one request is many rows or activation values)."""
    return increase(with_labels(Metric.SAMPLES_PROCESSED_TOTAL, {"kind": kind}), window, labels, by)


def bad_and_total(
    objective: Objective, window: str, labels: Mapping[str, str], by: tuple[str, ...] = ()
) -> tuple[str, str]:
    """PromQL for the number of bad and of all events of an SLI over `window`.

    A bad-event series may not exist yet (no request has failed: no code="500" series), and an
    absent series would make the whole ratio "no data"; `or 0 * total` reads it as zero instead,
    keeping the grouping labels of the total.
    """
    series = counters(objective)
    total = increase(series.total, window, labels, by)
    bad = increase(series.bad, window, labels, by)
    if series.bad_is_complement:
        return f"({total} - {bad})", total
    return f"({bad} or 0 * {total})", total


def whole_bad(objective: Objective, window: str, labels: Mapping[str, str]) -> str | None:
    """PromQL for the bad events over `window` counted whole (`Counters.whole_bad`), or None where the
    bad events are whole already. Empty where a server exports no such series (one older than it)."""
    series = counters(objective).whole_bad
    return None if series is None else increase(series, window, labels)


def ratio(objective: Objective, window: str, labels: Mapping[str, str], by: tuple[str, ...] = ()) -> str:
    """PromQL for the SLI's bad ratio over `window`; empty (no data) when nothing was counted."""
    bad, total = bad_and_total(objective, window, labels, by)
    return f"{bad} / ({total} > 0)"


def fallback_ops(labels: Mapping[str, str], by: tuple[str, ...] = ()) -> str:
    """Ops meant to run quantized that run in float, summed over op types (a hard gate, not a ratio).
    Replicas of one revision report the same ops: the max per op type counts each op once."""
    grouping = f" by ({', '.join(by)})" if by else ""
    per_op = ", ".join((*by, "op_type"))
    return f"sum{grouping}(max by ({per_op}) ({with_labels(Metric.FALLBACK_OPS, labels)}))"


def fallback_ops_or_zero(labels: Mapping[str, str], by: tuple[str, ...] = ()) -> str:
    """Like `fallback_ops`, but 0 (not "no data") where the servers are scraped (they export
    quantship_model_info) and simply list no fallback op; still empty where nothing is scraped."""
    grouping = f" by ({', '.join(by)})" if by else ""
    return f"{fallback_ops(labels, by)} or 0 * sum{grouping}({with_labels(Metric.MODEL_INFO, labels)})"


def recording_rule(sli: SLI, window: str) -> str:
    """Name of the recording rule holding an SLI's bad ratio per model, revision and track."""
    return f"model_revision_track:{PREFIX}{sli.value}:ratio_rate{window}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
