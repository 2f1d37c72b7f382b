"""MetricsSource over Prometheus's HTTP API: the production path of the rollout engine.

Instant queries of `/api/v1/query` at the time of asking; the PromQL text comes from `quantship.slo`,
the same place the alert rules and dashboards take theirs from. Every way an answer can go wrong has its own
outcome, and none ever turns into a zero:

  no series, or NaN (0/0)                    -> NoData        (nothing counted yet)
  connection refused, timeout, 5xx, 429, 408,
  a partial answer (warnings)                -> Unreachable   (an outage: may end by itself)
  query refused (4xx: bad PromQL or label),
  a body that is not Prometheus's JSON (or
  over MAX_ANSWER_BYTES), not a vector, more
  than one series, an infinite or negative
  count                                      -> Misconfigured (a configuration error: will not)

Each query, from its turn on, ends within QUERY_DEADLINE_TIMEOUTS times the source's timeout however
the server dribbles its answer, and one that times out answers the queries queued behind it for the
outage memory: a judgement's time is bounded whatever Prometheus does.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
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
        window = format_duration(window_seconds)
        bad_query, total_query = slo.bad_and_total(objective, window, labels)
        whole_query = slo.whole_bad(objective, window, labels)
        at = _now()  # bad and total counted over the same window
        try:
            total = await self._scalar(total_query, at)
            if isinstance(total, NoData):
                return total
            bad = await self._scalar(bad_query, at)
            whole = None if whole_query is None else await self._scalar(whole_query, at)
        except _Failed as exc:
            return exc.outcome
        if isinstance(bad, NoData):
            return bad
        if bad < 0:  # total - good (the latency SLI's bad events) can come out a little under 0
            if bad < -NEGATIVE_SLACK * max(total, 1.0):  # from increase()'s extrapolation of two series
                return Misconfigured(
                    f"Prometheus at {self.url} counted {bad:g} bad events of {total:g}: {bad_query}"
                )
            bad = 0.0
        return Counts(bad=bad, total=total, whole_bad=whole if isinstance(whole, float) else None)

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        query = slo.fallback_ops_or_zero(labels)
        try:
            value = await self._scalar(query, _now())
        except _Failed as exc:
            return exc.outcome
        if isinstance(value, NoData):
            return value
        if value < 0:
            return Misconfigured(f"Prometheus at {self.url} counted {value:g} ops: {query}")
        return Value(value)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _down(self, outcome: Unreachable) -> _Failed:
        self._outage = (self._clock(), outcome)
        return _Failed(outcome)

    async def _scalar(self, query: str, asked: float) -> float | NoData:
        """The one value of an instant query's vector, evaluated at `asked`; NoData for an empty
        vector or NaN (0/0)."""
        body = await self._query(query, asked)
        data = body.get("data")
        result = data.get("result") if isinstance(data, dict) else None
        if isinstance(data, dict) and data.get("resultType", "vector") != "vector":  # a matrix, a scalar
            raise _Failed(
                Misconfigured(
                    f"Prometheus at {self.url} answered a {data.get('resultType')!r}, not a vector: {query}"
                )
            )
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
            if isinstance(sample, bool):  # float(True) is 1.0; Prometheus writes a sample as a string
                raise TypeError(f"{sample!r} is not a number")
            value = float(sample)
        except (KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
            raise _Failed(
                Misconfigured(f"Prometheus at {self.url} answered a malformed sample: {exc}")
            ) from exc
        if math.isnan(value):
            return NoData(f"NaN (0/0: nothing counted) for {query}")
        if math.isinf(value):  # every query here counts something; a total of +Inf made any ratio 0
            raise _Failed(
                Misconfigured(f"Prometheus at {self.url} answered {sample!r}, not a count: {query}")
            )
        return value  # under 0 only for a bad count a little under 0: `counts` and `fallback_ops` judge

    async def _query(self, query: str, at: float) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        where = f"Prometheus at {self.url}"
        async with self._in_flight or contextlib.nullcontext():
            if self._outage is not None and self._clock() - self._outage[0] < self.outage_memory:
                since = self._clock() - self._outage[0]
                raise _Failed(  # a moment ago it could not be reached: not again so soon
                    Unreachable(f"{self._outage[1].reason} ({since:.1f} s ago; not retried yet for {query})")
                )
            deadline = QUERY_DEADLINE_TIMEOUTS * self.timeout
            try:  # from its turn on: the connection and the whole answer (httpx bounds each read only)
                async with asyncio.timeout(deadline):
                    status, body = await self._get(query, at, where)
            except TimeoutError as exc:  # an answer dribbled a byte at a time
                raise self._down(
                    Unreachable(f"{where}: no whole answer within {deadline:g} s, to {query}")
                ) from exc
        self._outage = None
        if status >= 500 or status in (408, 429):  # a proxy or query frontend under load says 429
            raise _Failed(Unreachable(f"{where} answered {status}: {_error(body, status)}"))
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError) as exc:  # a JSONDecodeError is a ValueError; so is 4300+ digits
            raise _Failed(
                Misconfigured(f"{where} answered {status} with a body that is not JSON: is it Prometheus?")
            ) from exc
        if not isinstance(answer, dict):
            raise _Failed(Misconfigured(f"{where} answered JSON that is not Prometheus's API"))
        if answer.get("status") != "success" or status != 200:  # Prometheus's 400 and 422 say so
            raise _Failed(
                Misconfigured(f"{where} refused the query ({status}: {_error(body, status)}): {query}")
            )
        if answer.get("warnings"):  # a partial answer (a store down behind Thanos, say): not all counted
            raise _Failed(Unreachable(f"{where} answered in part ({answer['warnings']!r:.200}): {query}"))
        return answer

    async def _get(self, query: str, at: float, where: str) -> tuple[int, bytes]:
        """The status and body (at most MAX_ANSWER_BYTES) of the query, evaluated at `at`."""
        assert self._client is not None
        try:
            asking = self._client.stream(
                "GET",
                f"{self.url}/api/v1/query",
                params={"query": query, "time": f"{at:.3f}"},
                headers=_IDENTITY,
            )
            async with asking as response:
                body = bytearray()
                async for chunk in response.aiter_raw():  # identity asked: a compressed answer is refused
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise _Failed(
                            Misconfigured(f"{where} answered over {MAX_ANSWER_BYTES} bytes to {query}")
                        )
                if response.headers.get("content-encoding", "identity") != "identity":
                    raise _Failed(
                        Misconfigured(
                            f"{where} answered {response.headers['content-encoding']}-encoded: {query}"
                        )
                    )
                return response.status_code, bytes(body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # down: no connection at all
            raise self._down(Unreachable(f"{where}: {transport_fault(exc)}, to {query}")) from exc
        except (
            httpx.TimeoutException
        ) as exc:  # e.g. a Prometheus stopped (SIGSTOP): the queries behind wait not
            raise self._down(
                Unreachable(
                    f"{where}: {transport_fault(exc)}, no answer within {self.timeout:g} s, to {query}"
                )
            ) from exc
        except httpx.HTTPError as exc:
            raise _Failed(Unreachable(f"{where}: {transport_fault(exc)}, to {query}")) from exc


def _now() -> float:
    """The time a query asks for, to the millisecond, as Argo Rollouts' Prometheus provider asks for
    its own: asked without one, every judgement's query was the same URL, which a cache in front (a
    proxy's, a query frontend's) could answer with the first judgement's counts for every step after.
    The time of the answer's sample is not held to it: VictoriaMetrics may answer an instant query
    near now as of now minus its -search.latencyOffset (30 s by default; its issue 720), and every
    judgement would be refused."""
    return round(time.time(), 3)


def transport_fault(exc: httpx.HTTPError) -> str:
    """The kind of transport fault, with httpx's words where it has any (a ReadTimeout has none)."""
    text = str(exc).strip()
    return f"{type(exc).__name__} ({text})" if text else type(exc).__name__


_IDENTITY = {"Accept-Encoding": "identity"}
"""An answer is a few hundred bytes: uncompressed, its size is known before it is inflated."""
QUERY_DEADLINE_TIMEOUTS = 2
"""A query's whole time, in timeouts: its turn, its connection and every read of its answer."""
MAX_ANSWER_BYTES = 4 * 2**20
"""The largest answer read: one series is ~150 bytes, so 4 MiB is a selector matching tens of thousands
(Misconfigured) long before the operator's memory, with IN_FLIGHT answers at once, is at stake."""
NEGATIVE_SLACK = 0.01
"""How far under 0 a bad count may come, as a share of its total, before it is a misconfiguration
rather than increase()'s extrapolation; within it, it counts as 0."""

IN_FLIGHT = 20
"""Queries one process (the operator) has in flight to Prometheus at most, and its connections."""
OUTAGE_MEMORY = 1.0
"""Seconds the operator's queries take a failed connection to Prometheus (refused, no connection
within the timeout, or no whole answer in time) as the answer, without connecting: a judgement asks
17 queries, and 200 canaries judged during an outage would open ~700 doomed connections a second,
or each wait out its timeout behind the hung ones. The next judgement (a step later) tries again."""


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


def _error(body: bytes, status: int) -> str:
    """Prometheus's own `errorType: error` when the body has one, else the start of the body."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return body[:200].decode(errors="replace").strip() or _reason(status)
    if isinstance(answer, dict) and answer.get("error"):
        return f"{answer.get('errorType', 'error')}: {answer['error']}"
    return _reason(status)


def _reason(status: int) -> str:
    with contextlib.suppress(ValueError):
        return http.HTTPStatus(status).phrase
    return f"HTTP {status}"
