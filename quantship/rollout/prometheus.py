"""MetricsSource over Prometheus's HTTP API: the production path of the rollout engine.

Instant queries of `/api/v1/query`; the PromQL text comes from `quantship.slo`, the same place
the alert rules and dashboards take theirs from. Every way an answer can go wrong has its own
outcome, and none ever turns into a zero:

  no series, or NaN (0/0)                    -> NoData        (nothing counted yet)
  connection refused, timeout, 5xx           -> Unreachable   (an outage: may end by itself)
  query refused (4xx: bad PromQL or label),
  a body that is not Prometheus's JSON,
  more than one series, an infinite count    -> Misconfigured (a configuration error: will not)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from quantship import slo
from quantship.rollout.ports import (
    Counts,
    GaugeMeasurement,
    Measurement,
    Misconfigured,
    NoData,
    Unreachable,
    Value,
)
from quantship.rollout.spec import format_duration


class _Failed(Exception):
    """A query that produced no measurement; `outcome` is what to report instead."""

    def __init__(self, outcome: Unreachable | Misconfigured) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class PrometheusSource:
    """`MetricsSource` reading a Prometheus server at `url` (e.g. http://prometheus:9090)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
        in_flight: asyncio.Semaphore | None = None,
        outage_memory: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = client
        self._in_flight = in_flight
        """Bounds the queries in flight (PrometheusSources: one bound for every source of a process)."""
        self.outage_memory = outage_memory
        """Seconds a failed connection counts for the queries after it (0: each query connects)."""
        self._clock = clock
        self._outage: tuple[float, Unreachable] | None = None

    async def counts(
        self, objective: slo.Objective, window_seconds: int, labels: Mapping[str, str]
    ) -> Measurement:
        bad_query, total_query = slo.bad_and_total(objective, format_duration(window_seconds), labels)
        try:
            total = await self._scalar(total_query)
            if isinstance(total, NoData):
                return total
            bad = await self._scalar(bad_query)
        except _Failed as exc:
            return exc.outcome
        if isinstance(bad, NoData):
            return bad
        return Counts(bad=bad, total=total)

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        query = slo.fallback_ops_or_zero(labels)
        try:
            value = await self._scalar(query)
        except _Failed as exc:
            return exc.outcome
        return value if isinstance(value, NoData) else Value(value)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _down(self, outcome: Unreachable) -> _Failed:
        self._outage = (self._clock(), outcome)
        return _Failed(outcome)

    async def _scalar(self, query: str) -> float | NoData:
        """The one value of an instant query's vector; NoData for an empty vector or NaN (0/0)."""
        body = await self._query(query)
        data = body.get("data")
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list):
            raise _Failed(
                Misconfigured(f"Prometheus at {self.url} answered without a result vector: {query}")
            )
        if not result:
            return NoData(f"no series for {query}")
        if len(result) > 1:
            labelsets = ", ".join(
                str(series.get("metric", {}) if isinstance(series, dict) else series) for series in result[:3]
            )
            raise _Failed(
                Misconfigured(
                    f"expected one series, got {len(result)} (the label selector matches more than it "
                    f"should: {labelsets}): {query}"
                )
            )
        try:
            sample = result[0]["value"][1]
            value = float(sample)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise _Failed(
                Misconfigured(f"Prometheus at {self.url} answered a malformed sample: {exc}")
            ) from exc
        if math.isnan(value):
            return NoData(f"NaN (0/0: nothing counted) for {query}")
        if math.isinf(value):  # every query here counts something; a total of +Inf made any ratio 0
            raise _Failed(
                Misconfigured(f"Prometheus at {self.url} answered {sample!r}, not a count: {query}")
            )
        # A count under 0 is let pass: total - good, as the latency SLI counts its bad events, can come
        # out a little under 0 from increase()'s extrapolation of two series.
        return value

    async def _query(self, query: str) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        where = f"Prometheus at {self.url}"
        async with self._in_flight or contextlib.nullcontext():
            if self._outage is not None and self._clock() - self._outage[0] < self.outage_memory:
                since = self._clock() - self._outage[0]
                raise _Failed(  # a moment ago it could not be reached: not again so soon
                    Unreachable(f"{self._outage[1].reason} ({since:.1f} s ago; not retried yet for {query})")
                )
            try:
                response = await self._client.get(f"{self.url}/api/v1/query", params={"query": query})
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # down: no connection at all
                raise self._down(Unreachable(f"{where}: {transport_fault(exc)}, to {query}")) from exc
            except httpx.TimeoutException as exc:  # e.g. a Prometheus stopped (SIGSTOP), or one slow query
                raise _Failed(
                    Unreachable(
                        f"{where}: {transport_fault(exc)}, no answer within {self.timeout:g} s, to {query}"
                    )
                ) from exc
            except httpx.HTTPError as exc:
                raise _Failed(Unreachable(f"{where}: {transport_fault(exc)}, to {query}")) from exc
        self._outage = None
        if response.status_code >= 500:
            raise _Failed(Unreachable(f"{where} answered {response.status_code}: {_error(response)}"))
        try:
            body = response.json()
        except ValueError as exc:
            raise _Failed(
                Misconfigured(
                    f"{where} answered {response.status_code} with a body that is not JSON: is it Prometheus?"
                )
            ) from exc
        if not isinstance(body, dict):
            raise _Failed(Misconfigured(f"{where} answered JSON that is not Prometheus's API"))
        if body.get("status") != "success":  # Prometheus's 400 (bad_data) and 422 (execution) say so
            raise _Failed(
                Misconfigured(
                    f"{where} refused the query ({response.status_code}: {_error(response)}): {query}"
                )
            )
        return body


def transport_fault(exc: httpx.HTTPError) -> str:
    """The kind of transport fault, with httpx's words where it has any (a ReadTimeout has none)."""
    text = str(exc).strip()
    return f"{type(exc).__name__} ({text})" if text else type(exc).__name__


IN_FLIGHT = 20
"""Queries one process (the operator) has in flight to Prometheus at most, and its connections."""
OUTAGE_MEMORY = 1.0
"""Seconds the operator's queries take a failed connection to Prometheus (refused, or no connection
within the timeout; a slow answer to one query is not an outage) as the answer, without
connecting: a judgement asks 17 queries, and 200 canaries judged during an outage would open
~700 doomed connections a second. The next judgement (a step later) tries again."""


class PrometheusSources:
    """One `PrometheusSource` per URL, all over one HTTP client: for a process that judges many
    canaries (the operator). Building an httpx.AsyncClient costs ~39 ms of CPU (its TLS context);
    one per judging tick per resource was the operator's largest cost at 200 canaries, and a
    shared client also keeps its connections to Prometheus alive between ticks. Close at shutdown.

    The queries wait their turn here, IN_FLIGHT at a time, not in the client's pool: httpcore
    matches every queued request against every connection at each change (quadratic), which
    cost the operator most of its CPU with 50 judgements of 17 queries each at once. A failed
    connection answers the queries of the next OUTAGE_MEMORY seconds to its URL."""

    def __init__(
        self, *, timeout: float = 5.0, in_flight: int = IN_FLIGHT, outage_memory: float = OUTAGE_MEMORY
    ) -> None:
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits)
        self.timeout = timeout
        self._in_flight = asyncio.Semaphore(in_flight)
        self.outage_memory = outage_memory
        self._sources: dict[str, PrometheusSource] = {}

    def __call__(self, url: str) -> PrometheusSource:
        source = self._sources.get(url)
        if source is None:
            source = self._sources[url] = PrometheusSource(
                url,
                timeout=self.timeout,
                client=self.client,
                in_flight=self._in_flight,
                outage_memory=self.outage_memory,
            )
        return source

    async def aclose(self) -> None:
        self._sources.clear()
        await self.client.aclose()


def _error(response: httpx.Response) -> str:
    """Prometheus's own `errorType: error` when the body has one, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict) and body.get("error"):
        return f"{body.get('errorType', 'error')}: {body['error']}"
    return response.reason_phrase
