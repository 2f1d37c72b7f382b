"""`MetricsSource` that scrapes the servers' /metrics itself: the demo's path where no Prometheus runs.

A background task polls every target (`host:port` and labels, e.g. `LocalWorkloads.targets`)
every `interval` seconds, parses the text exposition with prometheus_client's parser and keeps a
short history of snapshots. `counts` computes what PromQL's `sum(increase(...[window]))` would
over that history, counter resets included, for the series `quantship.slo` names: the SLI
definitions stay in one place, only their evaluation is done here instead of in Prometheus.
A series first seen inside the window counts from 0, as a server's counters start at 0: start
the source together with the servers (the demo does), not long after them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from quantship import slo
from quantship.rollout import Counts, GaugeMeasurement, Measurement, NoData, Unreachable, Value
from quantship.rollout.prometheus import transport_fault

log = logging.getLogger(__name__)

Labels = frozenset[tuple[str, str]]
Targets = Callable[[], Sequence[tuple[str, Mapping[str, str]]]]
_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<matchers>.*)\})?$")
_MATCHER = re.compile(r'(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Selector:
    """A series as `quantship.slo` writes it (`name{label="v",code=~"5.."}`), matchable in Python."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]

    @classmethod
    def parse(cls, series: str) -> Selector:
        match = _SERIES.match(series.strip())
        if match is None:
            raise ValueError(f"not a plain series selector: {series!r}")
        matchers = tuple(
            (m["label"], m["op"], m["value"].encode().decode("unicode_escape"))
            for m in _MATCHER.finditer(match["matchers"] or "")
        )
        return cls(match["name"], matchers)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if name != self.name:
            return False
        for label, op, value in self.matchers:
            actual = labels.get(label, "")
            if (op == "=" and actual != value) or (op == "!=" and actual == value):
                return False
            if op == "=~" and re.fullmatch(value, actual) is None:
                return False
        return True


@dataclass
class Target:
    address: str
    labels: dict[str, str]
    history: collections.deque[tuple[float, dict[tuple[str, Labels], float]]] = field(
        default_factory=lambda: collections.deque()
    )
    error: str | None = None
    """Why the last scrape failed; None after a good one."""


class ScrapeSource:
    def __init__(
        self, targets: Targets, *, interval: float = 1.0, keep: float = 900.0, timeout: float = 2.0
    ) -> None:
        self.targets = targets
        self.interval = interval
        self.keep = keep
        """Seconds of history kept: the longest window judged must fit."""
        self.timeout = timeout
        self._known: dict[str, Target] = {}
        self._task: asyncio.Task[None] | None = None

    # -- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="direct scrape")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> ScrapeSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def scrape_once(self) -> None:
        """Scrape every current target once (the poller does this every `interval`)."""
        wanted = {address: dict(labels) for address, labels in self.targets()}
        for gone in set(self._known) - set(wanted):
            del self._known[gone]
        for address, labels in wanted.items():
            self._known.setdefault(address, Target(address, labels)).labels = labels
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            await asyncio.gather(*(self._scrape(client, target) for target in list(self._known.values())))

    async def _poll(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.scrape_once()
            except Exception:  # a poller that dies silently would turn every judgement into no data
                log.exception("direct scrape failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def _scrape(self, client: httpx.AsyncClient, target: Target) -> None:
        now = time.monotonic()
        try:
            response = await client.get(f"http://{target.address}/metrics")
            response.raise_for_status()
            samples = {
                (sample.name, frozenset(sample.labels.items())): float(sample.value)
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples
            }
        except httpx.TimeoutException as exc:  # a ReadTimeout has no words of its own
            target.error = f"{target.address}: {transport_fault(exc)}, no answer within {self.timeout:g} s"
            return
        except httpx.HTTPError as exc:
            target.error = f"{target.address}: {transport_fault(exc)}"
            return
        except ValueError as exc:
            target.error = f"{target.address}: unreadable metrics: {exc}"
            return
        target.error = None
        target.history.append((now, samples))
        while target.history and target.history[0][0] < now - self.keep:
            target.history.popleft()

    # -- the MetricsSource port -----------------------------------------------------------------

    async def counts(
        self, objective: slo.Objective, window_seconds: int, labels: Mapping[str, str]
    ) -> Measurement:
        series = slo.counters(objective)
        scope = dict(labels)
        targets = self._targets_for(scope)
        if targets and all(target.error for target in targets):
            return Unreachable("; ".join(target.error or "" for target in targets))
        total = self._increase(Selector.parse(series.total), scope, window_seconds)
        if total is None:
            return NoData(f"no series {series.total} with {slo.selector(scope)} scraped")
        counted = self._increase(Selector.parse(series.bad), scope, window_seconds)
        bad = counted if counted is not None else 0.0  # no such series yet: none was bad
        if series.bad_is_complement:
            bad = total - bad
        whole = (
            None
            if series.whole_bad is None
            else self._increase(Selector.parse(series.whole_bad), scope, window_seconds)
        )
        return Counts(bad=max(bad, 0.0), total=total, whole_bad=whole)

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        scope = dict(labels)
        targets = self._targets_for(scope)
        if targets and all(target.error for target in targets):
            return Unreachable("; ".join(target.error or "" for target in targets))
        per_op: dict[str, float] = {}
        served = False
        fallback, info = (
            Selector.parse(f"{slo.PREFIX}fallback_ops"),
            Selector.parse(f"{slo.PREFIX}model_info"),
        )
        for target in self._known.values():
            if not target.history:
                continue
            for (name, frozen), value in target.history[-1][1].items():
                sample_labels = dict(frozen)
                if not _within(sample_labels, scope):
                    continue
                if fallback.matches(name, sample_labels):
                    op = sample_labels.get("op_type", "")
                    # replicas report the same ops; a NaN stays one (max() keeps whichever came first)
                    known = per_op.get(op, value)
                    per_op[op] = math.nan if math.isnan(known) or math.isnan(value) else max(known, value)
                served = served or info.matches(name, sample_labels)
        if per_op:
            return Value(sum(per_op.values()))
        return Value(0) if served else NoData(f"no server with {slo.selector(scope)} scraped")

    # -- gauges, for the demo's own figures (not part of the MetricsSource port) -----------------

    def latest(self, series: str, labels: Mapping[str, str]) -> float | None:
        """The largest value of a gauge `series` (`name{label="v"}`) within `labels` in each target's
        last scrape, as PromQL's `max(series{labels})` reads it now; None when no target has it."""
        selector, scope = Selector.parse(series), dict(labels)
        values = [
            value
            for target in self._known.values()
            if target.history
            for (name, frozen), value in target.history[-1][1].items()
            if selector.matches(name, dict(frozen)) and _within(dict(frozen), scope)
        ]
        return max(values) if values else None

    # -- inside ---------------------------------------------------------------------------------

    def _targets_for(self, scope: Mapping[str, str]) -> list[Target]:
        return [target for target in self._known.values() if _within(target.labels, scope, partial=True)]

    def _increase(self, selector: Selector, scope: Mapping[str, str], window: float) -> float | None:
        """sum(increase(selector{scope}[window])) over every target; None when no series matches."""
        found = False
        total = 0.0
        for target in self._known.values():
            if not target.history:
                continue
            end = target.history[-1][0]
            snapshots = [s for s in target.history if s[0] >= end - window]
            earlier = [s for s in target.history if s[0] < end - window]
            if earlier:
                snapshots.insert(0, earlier[-1])  # the value just before the window began
            keys = {
                key
                for _, samples in snapshots
                for key in samples
                if selector.matches(key[0], dict(key[1])) and _within(dict(key[1]), scope)
            }
            for key in keys:
                found = True
                values = [samples[key] for _, samples in snapshots if key in samples]
                if not earlier:
                    values.insert(0, 0.0)  # the series began inside the window: counters start at 0
                total += sum(b - a if b >= a else b for a, b in itertools.pairwise(values))
        return total if found else None


def _within(labels: Mapping[str, str], scope: Mapping[str, str], *, partial: bool = False) -> bool:
    """Whether `labels` carry every label of `scope` with its value (`partial`: ignore absent ones)."""
    return all(
        labels.get(name) == value if (name in labels or not partial) else True
        for name, value in scope.items()
    )
