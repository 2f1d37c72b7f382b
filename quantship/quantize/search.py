"""Accuracy-aware fallback: leave the most sensitive nodes in float until the gate passes.

Given a ranking of quantized nodes (most sensitive first) and a way to try a set of exclusions,
the search tries, within a budget of trials:

1. each of the top-ranked nodes alone (any pass keeps all other nodes quantized: stop there);
2. growing prefixes of the ranking, re-ordered by what step 1 measured, until one passes.

The passing trial with the most nodes still quantized wins (ties: the smaller delta). With none
passing, the trial with the smallest delta is the best effort. Every trial is kept for the record.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantship.quantize.evaluate import Evaluation


class Phase(enum.StrEnum):
    BASELINE = "baseline"
    SINGLE = "single"
    CUMULATIVE = "cumulative"


@dataclass(frozen=True)
class Trial:
    number: int
    phase: Phase
    excluded: tuple[str, ...]
    """Nodes this trial left in float, beyond those the user excluded."""
    quantized_nodes: int
    evaluation: Evaluation
    passed: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "phase": self.phase.value,
            "excluded": list(self.excluded),
            "quantized_nodes": self.quantized_nodes,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            **{k: v for k, v in self.evaluation.to_json().items() if k in ("delta", "int8", "agreement")},
        }


TryFn = Callable[[Phase, tuple[str, ...]], Trial]


def search(baseline: Trial, ranking: list[str], try_exclusions: TryFn, budget: int) -> list[Trial]:
    """All trials run, the baseline first. `budget` counts trials after the baseline."""
    trials = [baseline]
    if baseline.passed or not ranking or budget <= 0:
        return trials

    singles_budget = min(len(ranking), max(1, budget // 2))
    measured: dict[str, float] = {}
    for node in ranking[:singles_budget]:
        trial = try_exclusions(Phase.SINGLE, (node,))
        trials.append(trial)
        measured[node] = trial.evaluation.delta
        if trial.passed:
            return trials

    # Measured single-node deltas know better than SQNR which nodes hurt most; unmeasured
    # nodes keep their SQNR order behind the measured ones.
    order = sorted(measured, key=measured.__getitem__) + [n for n in ranking if n not in measured]
    for size in range(2, len(order) + 1):
        if len(trials) - 1 >= budget:
            break
        trial = try_exclusions(Phase.CUMULATIVE, tuple(order[:size]))
        trials.append(trial)
        if trial.passed:
            break
    return trials


def best(trials: list[Trial]) -> Trial:
    passing = [t for t in trials if t.passed]
    if passing:
        return max(passing, key=lambda t: (t.quantized_nodes, -t.evaluation.delta))
    return min(trials, key=lambda t: (t.evaluation.delta, -t.quantized_nodes))
