"""The operator's gauges follow the resources that record them: a deleted model's go, a namesake's
(the same model name in another namespace: its own series, by the `namespace` label) stay, and so do
those another resource of the same namespace and model name shares (with its own figures)."""

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


def test_a_namesake_in_the_same_namespace_keeps_the_shared_series_with_its_own_figures() -> None:
    """Two QuantizedModels of prod (resnet-a, resnet-b) serve spec.modelName digits: one series
    set. Deleting resnet-a, which recorded last, leaves resnet-b's canary weight and budgets, not
    resnet-a's; deleting resnet-b too removes them."""
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    survivor, gone = ("prod", "resnet-b"), ("prod", "resnet-a")
    loose = [slo.Objective(slo.SLI.ERRORS, budget=0.05)]
    metrics.budgets(survivor, "digits", loose)
    metrics.record(survivor, "digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"))
    metrics.budgets(gone, "digits", slo.DEFAULT_OBJECTIVES)
    metrics.record(gone, "digits", Decision(Action.WAIT, SETTLED, "serving"))

    metrics.forget(gone)

    assert weight(registry, "prod") == 50, "the survivor's own weight, not the gone one's 0"
    assert sample(registry, slo.Metric.ROLLOUT_STEP, "prod") == 1
    assert sample(registry, slo.Metric.SLO_BUDGET, "prod", slo="errors") == 0.05
    assert sample(registry, slo.Metric.SLO_BUDGET, "prod", slo="clip_rate") is None, "only the gone one's"

    metrics.forget(survivor)

    assert weight(registry, "prod") is None
    assert sample(registry, slo.Metric.SLO_BUDGET, "prod", slo="errors") is None


def test_a_model_renamed_away_from_a_namesake_leaves_it_its_series() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.record(("prod", "digits-a"), "digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"))
    metrics.record(("prod", "digits-b"), "digits", Decision(Action.WAIT, SETTLED, "serving"))

    metrics.record(("prod", "digits-b"), "digits-v2", Decision(Action.WAIT, SETTLED, "serving"))

    assert weight(registry, "prod") == 50 and weight(registry, "prod", "digits-v2") == 0


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
