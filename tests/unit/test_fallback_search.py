"""The fallback search's order and choice, on scripted trial outcomes.

Which nodes hurt is scripted here; the pipeline tests run the same search on real quantizations.
"""

from __future__ import annotations

from quantship.quantize import search
from quantship.quantize.evaluate import Evaluation, Metric

LIMIT = 0.005


def _trier(harm: dict[str, float], base: float, log: list[tuple[str, ...]]) -> search.TryFn:
    """Each excluded node removes its harm from the baseline delta."""

    def attempt(phase: search.Phase, excluded: tuple[str, ...]) -> search.Trial:
        log.append(excluded)
        delta = max(0.0, base - sum(harm.get(n, 0.0) for n in excluded))
        evaluation = Evaluation(Metric.TOP1_AGREEMENT, 100, delta, None, None, 1 - delta, None)
        return search.Trial(len(log), phase, excluded, 10 - len(excluded), evaluation, delta <= LIMIT, 0.0)

    return attempt


def _baseline(delta: float) -> search.Trial:
    evaluation = Evaluation(Metric.TOP1_AGREEMENT, 100, delta, None, None, 1 - delta, None)
    return search.Trial(0, search.Phase.BASELINE, (), 10, evaluation, delta <= LIMIT, 0.0)


def test_a_passing_baseline_needs_no_trials() -> None:
    log: list[tuple[str, ...]] = []
    trials = search.search(_baseline(0.001), ["a", "b"], _trier({}, 0.001, log), budget=10)
    assert trials == [_baseline(0.001)] and log == []


def test_one_bad_node_is_found_alone_in_ranking_order() -> None:
    log: list[tuple[str, ...]] = []
    trials = search.search(_baseline(0.03), ["a", "b", "c"], _trier({"b": 0.03}, 0.03, log), budget=10)
    assert log == [("a",), ("b",)]
    assert search.best(trials).excluded == ("b",)


def test_cumulative_phase_orders_by_measured_harm_not_by_sqnr() -> None:
    # SQNR ranks a first, but measuring shows c and b do the damage together.
    log: list[tuple[str, ...]] = []
    harm = {"a": 0.0, "b": 0.01, "c": 0.015}
    trials = search.search(_baseline(0.03), ["a", "b", "c", "d"], _trier(harm, 0.03, log), budget=10)
    assert log[:4] == [("a",), ("b",), ("c",), ("d",)]
    assert log[4:] == [("c", "b")]
    assert search.best(trials).excluded == ("c", "b")


def test_the_budget_is_respected_and_the_best_effort_is_the_smallest_delta() -> None:
    log: list[tuple[str, ...]] = []
    harm = {n: 0.001 for n in "abcdefgh"}
    trials = search.search(_baseline(0.1), list("abcdefgh"), _trier(harm, 0.1, log), budget=5)
    assert len(log) == 5
    assert not any(t.passed for t in trials)
    best = search.best(trials)
    assert best.evaluation.delta == min(t.evaluation.delta for t in trials)


def test_best_prefers_more_quantized_nodes_among_passing_trials() -> None:
    def trial(number: int, excluded: tuple[str, ...], delta: float) -> search.Trial:
        evaluation = Evaluation(Metric.TOP1_AGREEMENT, 100, delta, None, None, 1 - delta, None)
        return search.Trial(
            number, search.Phase.CUMULATIVE, excluded, 10 - len(excluded), evaluation, True, 0.0
        )

    chosen = search.best([trial(1, ("a", "b", "c"), 0.0), trial(2, ("a",), 0.004), trial(3, ("b",), 0.002)])
    assert chosen.number == 3
