"""The operator's gauges follow the resources that record them: a deleted model's go, a namesake's
(the same model name in another namespace: its own series, by the `namespace` label) stay."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from quantship import slo
from quantship.operator.metrics import OperatorMetrics
from quantship.rollout import Action, Decision
from quantship.rollout.state import Phase, RolloutStatus

CANARY = RolloutStatus(
    phase=Phase.PROGRESSING, stable="a1", canary="b2", step=0, weight=50, achieved_weight=50.0
)
SETTLED = RolloutStatus(phase=Phase.PROMOTED, stable="a1")


def sample(registry: CollectorRegistry, metric: slo.Metric, namespace: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric.value, {slo.NAMESPACE: namespace, "model": "digits", **labels})


def weight(registry: CollectorRegistry, namespace: str, model: str = "digits") -> float | None:
    return sample(registry, slo.Metric.ROLLOUT_WEIGHT, namespace, model=model)


def test_the_same_model_name_in_two_namespaces_is_two_series() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.record(("prod", "digits"), "digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"))
    metrics.record(("staging", "digits"), "digits", Decision(Action.WAIT, SETTLED, "serving"))

    assert weight(registry, "prod") == 50 and weight(registry, "staging") == 0


def test_a_forgotten_resource_takes_exactly_its_own_gauges() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.record(("prod", "digits"), "digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"))
    metrics.record(("staging", "digits"), "digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"))
    metrics.budgets(("staging", "digits"), "digits", slo.DEFAULT_OBJECTIVES)

    metrics.forget(("staging", "digits"))

    assert weight(registry, "prod") == 50, "the namesake in another namespace is untouched"
    assert weight(registry, "staging") is None
    assert sample(registry, slo.Metric.ROLLOUT_STEP, "staging") is None
    assert sample(registry, slo.Metric.SLO_BUDGET, "staging", slo="errors") is None
    assert sample(registry, slo.Metric.ROLLOUTS_TOTAL, "staging", result="promoted") == 0, "counters stay"
    metrics.forget(("staging", "digits"))  # a second DELETED event: nothing to do


def test_a_renamed_model_leaves_no_gauge_under_its_old_name() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.record(("prod", "digits"), "digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"))
    metrics.budgets(("prod", "digits"), "digits", slo.DEFAULT_OBJECTIVES)

    metrics.record(("prod", "digits"), "digits-v2", Decision(Action.WAIT, CANARY, "waiting"))

    assert weight(registry, "prod") is None and weight(registry, "prod", "digits-v2") == 50
    assert sample(registry, slo.Metric.SLO_BUDGET, "prod", slo="errors") is None


def test_the_budgets_are_the_specs_and_follow_its_changes() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    tight = slo.Objective(slo.SLI.ERRORS, budget=0.0001)
    metrics.budgets(("prod", "digits"), "digits", slo.DEFAULT_OBJECTIVES)

    metrics.budgets(("prod", "digits"), "digits", [tight])

    assert sample(registry, slo.Metric.SLO_BUDGET, "prod", slo="errors") == 0.0001
    assert sample(registry, slo.Metric.SLO_BUDGET, "prod", slo="clip_rate") is None
