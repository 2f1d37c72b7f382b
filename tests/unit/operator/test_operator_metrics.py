"""The operator's gauges follow the resources that record them: a deleted model's go, a namesake's
(the same model name in another namespace: the series are keyed by name) stay."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from quantship.operator.metrics import OperatorMetrics
from quantship.rollout import Action, Decision
from quantship.rollout.state import Phase, RolloutStatus

CANARY = RolloutStatus(
    phase=Phase.PROGRESSING, stable="a1", canary="b2", step=0, weight=50, achieved_weight=50.0
)


def weight(registry: CollectorRegistry, model: str = "digits") -> float | None:
    return registry.get_sample_value("quantship_rollout_weight", {"model": model})


def test_a_forgotten_resource_takes_its_gauges_unless_a_namesake_still_records_them() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.record("digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"), owner=("prod", "digits"))
    metrics.record("digits", Decision(Action.WAIT, CANARY, "waiting"), owner=("staging", "digits"))

    metrics.forget(("staging", "digits"))
    assert weight(registry) == 50
    metrics.forget(("prod", "digits"))
    assert weight(registry) is None
    assert registry.get_sample_value("quantship_rollout_step", {"model": "digits"}) is None
    assert (
        registry.get_sample_value("quantship_rollouts_total", {"model": "digits", "result": "promoted"}) == 0
    )
    metrics.forget(("prod", "digits"))  # a second DELETED event: nothing to do


def test_a_namesake_left_shows_its_own_figures_not_the_gone_resources_frozen_ones() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    settled = RolloutStatus(phase=Phase.PROMOTED, stable="a1")
    metrics.record("digits", Decision(Action.WAIT, settled, "serving"), owner=("staging", "digits"))
    metrics.record("digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"), owner=("prod", "digits"))

    metrics.forget(("prod", "digits"))

    assert weight(registry) == 0  # staging's, until its next tick; not prod's 50% canary


def test_a_renamed_model_leaves_no_gauge_under_its_old_name() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.record("digits", Decision(Action.SET_WEIGHT, CANARY, "step 1"), owner=("prod", "digits"))

    metrics.record("digits-v2", Decision(Action.WAIT, CANARY, "waiting"), owner=("prod", "digits"))

    assert weight(registry) is None and weight(registry, "digits-v2") == 50
