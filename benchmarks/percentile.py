"""The suites' own latency percentiles, one definition for every table."""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values: the smallest one with at least `fraction` of them
    at or below it (rank ceil(fraction * n)). ordered[int(n * 0.99)] read one rank high: of 100
    latencies it took the highest, a p100."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
