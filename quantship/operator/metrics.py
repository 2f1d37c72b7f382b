"""The operator's own metrics (DESIGN.md), on a registry passed in: weight, step, rollouts,
judgements, burn rates and SLO budgets per model (namespace and name), and how late the judgements
ran. `reconcile` records each tick's spec and decision here; the operator serves the registry on its
/metrics port."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from quantship.rollout import Action, Decision, Verdict
from quantship.slo import NAMESPACE, Metric, Objective

# No `*_created` series beside each counter and histogram: a third of a server's series, and no rule,
# dashboard or analysis reads them (process-wide: prometheus_client keeps it as a module flag).
disable_created_metrics()

RESULTS = {Action.PROMOTE: "promoted", Action.ROLL_BACK: "rolled_back", Action.FAIL: "failed"}
Owner = tuple[str, str]
"""A QuantizedModel: (namespace, name)."""
Model = tuple[str, str]
"""The labels a QuantizedModel's series carry: (namespace, spec.modelName)."""
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds a judgement ran after it was due. Below the tick interval (5 s) is the schedule's own
granularity; above it, the operator is falling behind (it did, at 200 canaries, before issue 15)."""


class OperatorMetrics:
    """Every series is keyed by the QuantizedModel's namespace and model name (spec.modelName), as
    the servers' are once scraped: two teams' "resnet" are two series. The scrape must keep our
    `namespace` (honor_labels), not put the operator pod's own in its place."""

    def __init__(self, registry: CollectorRegistry) -> None:
        model = [NAMESPACE, "model"]
        self.weight = Gauge(
            Metric.ROLLOUT_WEIGHT.declared, "Canary weight achieved, percent", model, registry=registry
        )
        self.step = Gauge(
            Metric.ROLLOUT_STEP.declared,
            "Canary step, 1-based; 0 without a canary",
            model,
            registry=registry,
        )
        self.rollouts = Counter(
            Metric.ROLLOUTS_TOTAL.declared,
            "Finished canaries by result",
            [*model, "result"],
            registry=registry,
        )
        self.analyses = Counter(
            Metric.ANALYSIS_TOTAL.declared,
            "Canary judgements by verdict",
            [*model, "result"],
            registry=registry,
        )
        self.burn_rate = Gauge(
            Metric.BURN_RATE.declared,
            "Canary burn rate at the last judgement, per SLO and window",
            [*model, "slo", "window"],
            registry=registry,
        )
        self.slo_budget = Gauge(
            Metric.SLO_BUDGET.declared,
            "Error budget of each SLO in the model's spec.slos: the bad ratio it may reach",
            [*model, "slo"],
            registry=registry,
        )
        self.analysis_lag = Histogram(
            Metric.ANALYSIS_LAG_SECONDS.declared,
            "Seconds each canary judgement ran after it was due (step start + step interval); "
            "one operator-wide distribution: a late schedule is the operator's, not a model's",
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self._seen: set[Model] = set()
        self._models: dict[Owner, Model] = {}
        """The (namespace, model name) each resource's series were recorded under."""
        self._burn_labels: dict[Model, set[tuple[str, str]]] = {}
        self._budget_labels: dict[Model, set[str]] = {}

    def record(self, owner: Owner, model: str, decision: Decision) -> None:
        """A tick's decision for the resource `owner` (namespace, name), whose spec names `model`."""
        key = self._recorded_as(owner, model)
        if key not in self._seen:
            # Every result starts at 0 when a model is first seen: `increase()` cannot count the
            # first rollback of a model whose counter appears already at 1.
            self._seen.add(key)
            for result in RESULTS.values():
                self.rollouts.labels(*key, result)
            for verdict in Verdict:
                self.analyses.labels(*key, verdict.value)
        status = decision.status
        weight, step = (status.achieved_weight, status.step + 1) if status.canary else (0.0, 0)
        self.weight.labels(*key).set(weight)
        self.step.labels(*key).set(step)
        if decision.analysis is not None:
            self.analyses.labels(*key, decision.analysis.verdict.value).inc()
            for (sli, window), rate in decision.analysis.burn_rates().items():
                self.burn_rate.labels(*key, sli, window).set(rate)
                self._burn_labels.setdefault(key, set()).add((sli, window))
        if decision.action in RESULTS:
            self.rollouts.labels(*key, RESULTS[decision.action]).inc()

    def budgets(self, owner: Owner, model: str, objectives: Iterable[Objective]) -> None:
        """The error budgets of the resource's spec.slos, as read: what its burn alerts judge."""
        key = self._recorded_as(owner, model)
        set_now = set()
        for objective in objectives:
            self.slo_budget.labels(*key, objective.sli.value).set(objective.budget)
            set_now.add(objective.sli.value)
        for gone in self._budget_labels.get(key, set()) - set_now:
            with contextlib.suppress(KeyError):
                self.slo_budget.remove(*key, gone)
        self._budget_labels[key] = set_now

    def forget(self, owner: Owner) -> None:
        """The resource `owner` is gone: its gauges go too. Frozen mid-canary, its weight would read as
        a rollout stuck for ever (QuantshipRolloutStuck). Counters stay: they only ever count."""
        key = self._models.pop(owner, None)
        if key is not None:
            self._remove_gauges(key)

    def judged_late(self, seconds: float) -> None:
        """A judgement ran `seconds` after it was due."""
        self.analysis_lag.observe(max(seconds, 0.0))

    def _recorded_as(self, owner: Owner, model: str) -> Model:
        """The series key of `owner`'s model; a renamed model's gauges under its old name go."""
        key = (owner[0], model)
        previous = self._models.get(owner)
        self._models[owner] = key
        if previous is not None and previous != key:
            self._remove_gauges(previous)
        return key

    def _remove_gauges(self, key: Model) -> None:
        for gauge in (self.weight, self.step):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
        for sli, window in self._burn_labels.pop(key, set()):
            with contextlib.suppress(KeyError):
                self.burn_rate.remove(*key, sli, window)
        for sli in self._budget_labels.pop(key, set()):
            with contextlib.suppress(KeyError):
                self.slo_budget.remove(*key, sli)
