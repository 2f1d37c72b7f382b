"""What a rollout is asked to do: the canary steps, the SLOs and how to judge them.

Built by the operator from a QuantizedModel's spec (`quantship.operator.spec`) and by the local
demo directly. Plain frozen dataclasses: `decide` reads them, nothing mutates them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from quantship import slo

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """Seconds in a Prometheus-style duration with h, m and s parts: "90s", "5m", "1h30m" -> 5400."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"not a duration: {text!r} (write e.g. 30s, 5m, 1h30m)")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float) -> str:
    """The PromQL range for a window: 300 -> "5m", 90 -> "90s"."""
    whole = int(seconds)
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"


class OnInconclusive(enum.StrEnum):
    """What `inconclusive_limit` consecutive inconclusive judgements do."""

    ROLLBACK = "rollback"
    """Give up on the canary: without data it can never be shown to be safe."""
    HOLD = "hold"
    """Keep the canary at its weight and keep judging until the data comes back."""


@dataclass(frozen=True)
class AnalysisSpec:
    """How a canary is judged at the end of each step."""

    short_window: int = 60
    """Seconds. The recent window: shows that a burn is still going on."""
    long_window: int = 300
    """Seconds. The longer window: shows that a burn is significant, not a blip."""
    burn_rate_threshold: float = 1.0
    """A breach is a burn rate above this on both windows. 1 means "spends its error budget faster
    than the SLO allows"; a canary has no reason to do that, so the default is strict."""
    max_burn_rate_increase: float = 0.5
    """Canary vs baseline: the canary's burn rate may exceed the stable revision's, measured on the
    same windows, by at most this much. Catches a regression that is still inside the absolute SLO
    (INT8 slower than FP32 while both meet the latency objective)."""
    min_samples: int = 100
    """Fewer events than this in an SLI's denominator on a window make its verdict inconclusive
    (never pass): 3 shadow comparisons say nothing about a 0.5% budget."""
    failure_limit: int = 1
    """Failed judgements that roll back. A breach already holds on two windows; raise this for noisy
    SLIs at the cost of slower rollbacks."""
    inconclusive_limit: int = 3
    """Consecutive inconclusive judgements before `on_inconclusive` applies."""
    on_inconclusive: OnInconclusive = OnInconclusive.ROLLBACK
    max_fallback_ops: int = 0
    """Hard gate: more ops than this running in float instead of quantized fails the canary."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra label matchers for every query (e.g. {"namespace": "prod"} where the scrape adds it)."""

    def __post_init__(self) -> None:
        if not 0 < self.short_window < self.long_window:
            raise ValueError(
                f"windows must satisfy 0 < short < long, got short {self.short_window} s and "
                f"long {self.long_window} s"
            )
        if self.burn_rate_threshold <= 0:
            raise ValueError(f"burn rate threshold must be > 0, got {self.burn_rate_threshold}")
        if self.max_burn_rate_increase < 0:
            raise ValueError(f"max burn rate increase must be >= 0, got {self.max_burn_rate_increase}")
        if self.min_samples < 1 or self.failure_limit < 1 or self.inconclusive_limit < 1:
            raise ValueError("min_samples, failure_limit and inconclusive_limit must be >= 1")

    @property
    def windows(self) -> tuple[int, int]:
        return (self.short_window, self.long_window)


@dataclass(frozen=True)
class RolloutSpec:
    """One model's rollout policy and the revision it is asked to serve."""

    model: str
    """The model name: the `model` label of every series the servers export."""
    revision: str
    """The revision the user asks for. A different one than the stable starts a canary."""
    objectives: tuple[slo.Objective, ...]
    steps: tuple[int, ...] = (5, 25, 50, 100)
    """Canary weights in percent, strictly increasing. Passing the last one promotes."""
    step_interval: float = 60.0
    """Seconds each step lasts before it is judged."""
    progress_deadline: float = 600.0
    """Seconds a new revision may take to become ready before the rollout fails."""
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a rollout needs at least one step")
        if any(not 0 < weight <= 100 for weight in self.steps):
            raise ValueError(f"step weights must be in 1..100, got {list(self.steps)}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"step weights must increase, got {list(self.steps)}")
        if self.step_interval <= 0 or self.progress_deadline <= 0:
            raise ValueError("step interval and progress deadline must be > 0")
        if len({objective.sli for objective in self.objectives}) != len(self.objectives):
            raise ValueError("at most one objective per SLI")
