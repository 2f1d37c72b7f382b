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
Sample = tuple[Gauge, tuple[str, ...]]
"""One series of a model's gauge: the gauge and its labels after namespace and model."""
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
        self._figures: dict[Owner, dict[Sample, float]] = {}
        """Each resource's last figure of every gauge series it set. Two resources of one namespace
        may name one model (workloads are named by metadata.name): their series are shared, and
        when one goes, the other's own figures come back rather than the series going."""

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
        self._set(owner, self.weight, (), weight)
        self._set(owner, self.step, (), step)
        if decision.analysis is not None:
            self.analyses.labels(*key, decision.analysis.verdict.value).inc()
            for (sli, window), rate in decision.analysis.burn_rates().items():
                self._set(owner, self.burn_rate, (sli, window), rate)
        if decision.action in RESULTS:
            self.rollouts.labels(*key, RESULTS[decision.action]).inc()

    def budgets(self, owner: Owner, model: str, objectives: Iterable[Objective]) -> None:
        """The error budgets of the resource's spec.slos, as read: what its burn alerts judge."""
        key = self._recorded_as(owner, model)
        set_now = set()
        for objective in objectives:
            self._set(owner, self.slo_budget, (objective.sli.value,), objective.budget)
            set_now.add((self.slo_budget, (objective.sli.value,)))
        figures = self._figures[owner]
        dropped = [sample for sample in figures if sample[0] is self.slo_budget and sample not in set_now]
        for sample in dropped:
            del figures[sample]
        self._withdraw(key, dropped)

    def forget(self, owner: Owner) -> None:
        """The resource `owner` is gone: its gauges go too, unless another resource of its namespace
        records the same model name (that one's own figures come back). Frozen mid-canary, its
        weight would read as a rollout stuck for ever (QuantshipRolloutStuck). Counters stay: they
        only ever count."""
        key = self._models.pop(owner, None)
        figures = self._figures.pop(owner, {})
        if key is not None:
            self._withdraw(key, figures)

    def judged_late(self, seconds: float) -> None:
        """A judgement ran `seconds` after it was due."""
        self.analysis_lag.observe(max(seconds, 0.0))

    def _recorded_as(self, owner: Owner, model: str) -> Model:
        """The series key of `owner`'s model; a renamed model's gauges under its old name go
        (those a namesake also set take its figures)."""
        key = (owner[0], model)
        previous = self._models.get(owner)
        self._models[owner] = key
        if previous is not None and previous != key:
            self._withdraw(previous, self._figures.pop(owner, {}))
        return key

    def _set(self, owner: Owner, gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
        """Set `gauge` of `owner`'s model (`labels` after namespace and model) and remember it."""
        gauge.labels(*self._models[owner], *labels).set(value)
        self._figures.setdefault(owner, {})[(gauge, labels)] = value

    def _withdraw(self, key: Model, samples: Iterable[Sample]) -> None:
        """`samples` of the model `key` no longer stand for the resource that set them: each takes
        the figure a namesake (another resource recording `key`) last set, or goes where none did."""
        namesakes = [self._figures.get(owner, {}) for owner, model in self._models.items() if model == key]
        for sample in samples:
            gauge, labels = sample
            figure = next((figures[sample] for figures in namesakes if sample in figures), None)
            if figure is not None:
                gauge.labels(*key, *labels).set(figure)
                continue
            with contextlib.suppress(KeyError):
                gauge.remove(*key, *labels)
