"""What the dashboards' panels plot beyond SLI ratios (which slo.ratio gives): PromQL for
latency quantiles, rates, burn rates, drift, sizes and rollouts, over the label sets every panel
matches (MODEL) and groups by (NAMED, TRACKS), and the legends and titles that name the series.
The boards (dashboard_executive, dashboard_oncall, dashboard_debug) and the tests read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from quantship import slo
from quantship.oncall import rules

M = slo.Metric
MODEL: Mapping[str, str] = {slo.NAMESPACE: slo.Regex("$namespace"), "model": slo.Regex("$model")}
"""A model is namespace and name, as the rules group: the servers' series (the scrape adds `namespace`)
and the operator's (it labels them with the QuantizedModel's namespace; the scrape honors it)."""
RATE = "$__rate_interval"
RANGE = "$__range"
NAMED = (slo.NAMESPACE, "model")
TRACKS = (*NAMED, "revision", "track")
REVISION = "{{namespace}}/{{model}} {{track}} {{revision}}"
"""Legend of a series grouped by TRACKS: two revisions of one track (before and after a promotion)
are two lines, told apart by their revision."""
PER_TENSOR = "{{namespace}}/{{model}} {{track}} {{revision}} {{tensor}}"
"""Legend of the per-tensor panels (a tensor of each revision and track)."""


def sli_title(sli: slo.SLI) -> str:
    """An SLI's name in panel titles and legends."""
    return sli.value.replace("_", " ")


# -- queries that are not SLI ratios -------------------------------------------------------------


def latency_quantile(quantile: float, by: Sequence[str], labels: Mapping[str, str] = MODEL) -> str:
    series = slo.with_labels(M.REQUEST_DURATION_SECONDS.buckets, labels)
    return f"histogram_quantile({quantile}, sum by ({', '.join((*by, 'le'))}) (rate({series}[{RATE}])))"


def histogram_quantile(metric: slo.Metric, quantile: float, by: Sequence[str]) -> str:
    series = slo.with_labels(metric.buckets, MODEL)
    return f"histogram_quantile({quantile}, sum by ({', '.join((*by, 'le'))}) (rate({series}[{RATE}])))"


def per_second(metric: str, by: Sequence[str], labels: Mapping[str, str] = MODEL) -> str:
    """Rate of a series of `slo.Metric` (a name from the table, or one of a histogram's series)."""
    return f"sum by ({', '.join(by)}) (rate({slo.with_labels(metric, labels)}[{RATE}]))"


def burn_rate(objective: slo.Objective, window: str) -> str:
    """An SLO's burn rate over a window, from the recording rule the alerts read, over each model's
    own budget or the default, as the alerts judge it."""
    return rules.burn_rate(objective, slo.with_labels(slo.recording_rule(objective.sli, window), MODEL))


def per_tensor_clip_rate(window: str) -> str:
    """The clip-rate SLI per activation tensor (servers run with --per-tensor-metrics), of each
    revision and track: a canary's clipping is not diluted by the stable's."""
    by = (*TRACKS, "tensor")
    clipped = slo.increase(M.TENSOR_ACTIVATIONS_CLIPPED_TOTAL, window, MODEL, by)
    observed = slo.increase(M.TENSOR_ACTIVATIONS_OBSERVED_TOTAL, window, MODEL, by)
    return f"topk(20, {clipped} / ({observed} > 0))"


def hardware_mismatch() -> str:
    return f"max by ({', '.join((*TRACKS, 'aspect'))}) ({slo.with_labels(M.HARDWARE_MISMATCH, MODEL)})"


def overall_drift() -> str:
    """The overall drift gauge now (the server's sliding window), per revision and track."""
    series = slo.with_labels(rules.drift_series(per_tensor=False), MODEL)
    return f"max by ({', '.join(TRACKS)}) ({series})"


def per_tensor_drift(top: int | None = 20) -> str:
    """Drift per activation tensor (servers run with --per-tensor-metrics) of each revision and track,
    its replicas averaged: the `top` most drifted, or every tensor."""
    by = ", ".join((*TRACKS, "tensor"))
    series = f"avg by ({by}) ({slo.with_labels(rules.drift_series(per_tensor=True), MODEL)})"
    return series if top is None else f"topk({top}, {series})"


def size_bytes(variant: str) -> str:
    series = slo.with_labels(M.MODEL_SIZE_BYTES, {**MODEL, "variant": variant})
    return f"max by (namespace, model, revision) ({series})"


def rollouts(window: str, result: str = "") -> str:
    """Rollouts that ended in `window`, by result; `result` narrows them (a regex). Whole numbers:
    increase() extrapolates to the window's edges, and one rollback read 1.00958."""
    labels = {**MODEL, "result": slo.Regex(result)} if result else MODEL
    series = slo.with_labels(M.ROLLOUTS_TOTAL, labels)
    return f"round(sum by (namespace, model, result) (increase({series}[{window}])))"


def rollouts_ended(window: str, result: str) -> str:
    """Rollouts that ended in `window` with `result`: an annotation per marker, a first rollback
    of a model (its counter series is new) included."""
    series = slo.with_labels(M.ROLLOUTS_TOTAL, {**MODEL, "result": slo.Regex(result)})
    return (
        rules.appeared_or_increased(series, f"{rules.MODEL_KEY}, result", window).strip().replace("\n", " ")
    )
