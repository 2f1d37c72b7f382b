"""The operator's own metrics (DESIGN.md), on a registry passed in: weight, step, rollouts,
judgements and burn rates per model, and how late the judgements ran. `reconcile` records each
tick's decision here; the operator serves the registry on its /metrics port."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from quantship.rollout import Action, Decision, Verdict
from quantship.slo import Metric

# No `*_created` series beside each counter and histogram: a third of a server's series, and no rule,
# dashboard or analysis reads them (process-wide: prometheus_client keeps it as a module flag).
disable_created_metrics()

RESULTS = {Action.PROMOTE: "promoted", Action.ROLL_BACK: "rolled_back", Action.FAIL: "failed"}
Owner = tuple[str, str]
"""A QuantizedModel: (namespace, name)."""
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds a judgement ran after it was due. Below the tick interval (5 s) is the schedule's own
granularity; above it, the operator is falling behind (it did, at 200 canaries, before issue 15)."""


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.weight = Gauge(
            Metric.ROLLOUT_WEIGHT.declared, "Canary weight achieved, percent", ["model"], registry=registry
        )
        self.step = Gauge(
            Metric.ROLLOUT_STEP.declared,
            "Canary step, 1-based; 0 without a canary",
            ["model"],
            registry=registry,
        )
        self.rollouts = Counter(
            Metric.ROLLOUTS_TOTAL.declared,
            "Finished canaries by result",
            ["model", "result"],
            registry=registry,
        )
        self.analyses = Counter(
            Metric.ANALYSIS_TOTAL.declared,
            "Canary judgements by verdict",
            ["model", "result"],
            registry=registry,
        )
        self.burn_rate = Gauge(
            Metric.BURN_RATE.declared,
            "Canary burn rate at the last judgement, per SLO and window",
            ["model", "slo", "window"],
            registry=registry,
        )
        self.analysis_lag = Histogram(
            Metric.ANALYSIS_LAG_SECONDS.declared,
            "Seconds each canary judgement ran after it was due (step start + step interval); "
            "one operator-wide distribution: a late schedule is the operator's, not a model's",
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self._seen: set[str] = set()
        self._models: dict[Owner, str] = {}
        """The model name (spec.modelName) each resource's series were recorded under."""
        self._burn_labels: dict[str, set[tuple[str, str]]] = {}
        self._last: dict[Owner, tuple[float, float]] = {}
        """Each resource's last (weight, step): a namesake's, once the other resource is gone."""

    def record(self, model: str, decision: Decision, owner: Owner | None = None) -> None:
        """A tick's decision for `model`, ticked for the resource `owner` (namespace, name)."""
        if owner is not None:
            renamed = self._models.get(owner)
            self._models[owner] = model
            if renamed is not None and renamed != model:
                self._forget_unowned(renamed)
        if model not in self._seen:
            # Every result starts at 0 when a model is first seen: `increase()` cannot count the
            # first rollback of a model whose counter appears already at 1.
            self._seen.add(model)
            for result in RESULTS.values():
                self.rollouts.labels(model, result)
            for verdict in Verdict:
                self.analyses.labels(model, verdict.value)
        status = decision.status
        weight, step = (status.achieved_weight, status.step + 1) if status.canary else (0.0, 0)
        self.weight.labels(model).set(weight)
        self.step.labels(model).set(step)
        if owner is not None:
            self._last[owner] = (weight, step)
        if decision.analysis is not None:
            self.analyses.labels(model, decision.analysis.verdict.value).inc()
            for (sli, window), rate in decision.analysis.burn_rates().items():
                self.burn_rate.labels(model, sli, window).set(rate)
                self._burn_labels.setdefault(model, set()).add((sli, window))
        if decision.action in RESULTS:
            self.rollouts.labels(model, RESULTS[decision.action]).inc()

    def forget(self, owner: Owner) -> None:
        """The resource `owner` is gone: its gauges go too, unless another resource (of another
        namespace) records the same model name. Frozen mid-canary, its weight would read as a
        rollout stuck for ever (QuantshipRolloutStuck). Counters stay: they only ever count."""
        model = self._models.pop(owner, None)
        self._last.pop(owner, None)
        if model is not None:
            self._forget_unowned(model)

    def _forget_unowned(self, model: str) -> None:
        namesakes = [owner for owner, name in self._models.items() if name == model]
        if namesakes:  # the survivor's own figures, not the gone resource's frozen ones
            weight, step = self._last.get(namesakes[0], (0.0, 0))
            self.weight.labels(model).set(weight)
            self.step.labels(model).set(step)
            return
        for gauge in (self.weight, self.step):
            with contextlib.suppress(KeyError):
                gauge.remove(model)
        for sli, window in self._burn_labels.pop(model, set()):
            with contextlib.suppress(KeyError):
                self.burn_rate.remove(model, sli, window)

    def judged_late(self, seconds: float) -> None:
        """A judgement ran `seconds` after it was due."""
        self.analysis_lag.observe(max(seconds, 0.0))
