"""The three ports through which the rollout engine acts on the world, and what they answer.

The engine (`engine.tick`) calls them; adapters implement them: Kubernetes Deployments, Services
and HTTPRoutes in `quantship.operator`, local `quantship serve` processes and a weighted load
generator in `quantship.local`, Prometheus or direct scrapes for metrics. Every method is async
and idempotent, so a tick that failed half-way can simply run again.

A measurement is one of four outcomes, never a bare number: `Counts` (the window had events,
possibly zero of them), `NoData` (the source answered, but has no such series yet), `Unreachable`
(the source did not answer: an outage, which may end by itself) or `Misconfigured` (the source
answered, but the question was wrong: refused PromQL, several series where one was meant; it
will not end by itself). The engine judges the last three `inconclusive`; a misconfiguration that
persists fails the canary instead of holding it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from quantship import slo

Track = slo.Track
"""The role a revision plays; it becomes the `track` label of its servers' metrics (defined in slo)."""


class PortError(Exception):
    """An adapter could not do what it was asked (API refused, route missing, process died).

    The engine does not commit the decision whose effects failed; the next tick tries again.
    `reason` is a short CamelCase label for conditions and events, e.g. "HTTPRouteNotFound";
    `retry_after`, seconds the other side asked us to wait before trying again (an HTTP 429's
    Retry-After), None when it asked nothing.
    """

    def __init__(self, message: str, *, reason: str = "PortError", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Workloads(Protocol):
    """Runs the model servers of each revision (Deployments, or local processes)."""

    async def run(self, revision: str, track: Track) -> None:
        """Make sure `revision` runs, labelled as `track`. Creates it, or relabels an existing one
        (promotion turns the canary into the stable); never changes its replica count."""

    async def ready(self, revision: str) -> bool:
        """Whether `revision` has at least one server ready to take traffic."""

    async def all_ready(self, revision: str) -> bool:
        """Whether every server `revision` is asked to run is ready: it can take the traffic of a
        revision retiring in its favour without fewer servers than asked."""

    async def scale(self, revision: str, replicas: int) -> None:
        """Set how many servers `revision` runs."""

    async def remove(self, revision: str) -> None:
        """Stop and delete `revision`. Removing one that is gone is not an error."""


class TrafficRouter(Protocol):
    """Splits requests between the stable and the canary revision."""

    async def route(self, stable: str, canary: str | None, weight: int) -> float:
        """Send `weight` percent of requests to `canary` and the rest to `stable` (all to `stable`
        when `canary` is None). Returns the canary percentage actually achieved, which can differ
        from the asked one where the split is coarse (replica ratios)."""


@dataclass(frozen=True)
class Counts:
    """Events of an SLI over a window: `bad` of `total` (both may be 0: the source has the series)."""

    bad: float
    total: float
    whole_bad: float | None = None
    """The bad events counted whole where `bad` may count shares of them (slo.Counters.whole_bad);
    None where `bad` is whole, or the source has no such series."""

    @property
    def ratio(self) -> float | None:
        return self.bad / self.total if self.total > 0 else None


@dataclass(frozen=True)
class Value:
    """A gauge's current value (fallback ops)."""

    value: float


@dataclass(frozen=True)
class NoData:
    """The source answered but has no such series (no traffic yet, or the labels match nothing)."""

    reason: str


@dataclass(frozen=True)
class Unreachable:
    """The source did not answer usefully: refused connection, timeout, a 5xx. An outage."""

    reason: str


@dataclass(frozen=True)
class Misconfigured:
    """The source answered, but the question is wrong: it refused the query (bad PromQL, a bad
    label name) or matched more than one series. A configuration error, not an outage."""

    reason: str


Measurement = Counts | NoData | Unreachable | Misconfigured
GaugeMeasurement = Value | NoData | Unreachable | Misconfigured


class MetricsSource(Protocol):
    """Counts SLI events of the servers whose metrics carry the given labels."""

    async def counts(
        self, objective: slo.Objective, window_seconds: int, labels: Mapping[str, str]
    ) -> Measurement:
        """Bad and total events of `objective`'s SLI over the last `window_seconds`."""

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        """Ops meant to run quantized that run in float (`quantship_fallback_ops`, summed)."""
