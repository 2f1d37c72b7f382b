"""MetricsSource over Prometheus's HTTP API: the production path of the rollout engine.

Instant queries of `/api/v1/query`; the PromQL text comes from `quantship.slo`, the same place
the alert rules and dashboards take theirs from. An empty answer is `NoData`, a failed request or
a refused query `Unreachable`: neither ever turns into a zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

from quantship import slo
from quantship.rollout.ports import Counts, GaugeMeasurement, Measurement, NoData, Unreachable, Value
from quantship.rollout.spec import format_duration


class _QueryFailed(Exception):
    pass


class PrometheusSource:
    """`MetricsSource` reading a Prometheus server at `url` (e.g. http://prometheus:9090)."""

    def __init__(self, url: str, *, timeout: float = 5.0, client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = client

    async def counts(
        self, objective: slo.Objective, window_seconds: int, labels: Mapping[str, str]
    ) -> Measurement:
        bad_query, total_query = slo.bad_and_total(objective, format_duration(window_seconds), labels)
        try:
            total = await self._scalar(total_query)
            if total is None:
                return NoData(f"no series for {total_query}")
            bad = await self._scalar(bad_query)
        except _QueryFailed as exc:
            return Unreachable(str(exc))
        if bad is None:
            return NoData(f"no series for {bad_query}")
        return Counts(bad=bad, total=total)

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        query = slo.fallback_ops_or_zero(labels)
        try:
            value = await self._scalar(query)
        except _QueryFailed as exc:
            return Unreachable(str(exc))
        return NoData(f"no series for {query}") if value is None else Value(value)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _scalar(self, query: str) -> float | None:
        """The one value of an instant query's vector; None for an empty vector (or NaN: 0/0)."""
        body = await self._query(query)
        result = body.get("data", {}).get("result", [])
        if not result:
            return None
        if len(result) > 1:
            raise _QueryFailed(f"expected one series, got {len(result)}: {query}")
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    async def _query(self, query: str) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        try:
            response = await self._client.get(f"{self.url}/api/v1/query", params={"query": query})
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _QueryFailed(f"Prometheus at {self.url}: {type(exc).__name__}: {exc}") from exc
        if body.get("status") != "success":
            raise _QueryFailed(f"Prometheus refused the query ({body.get('error', response.status_code)})")
        return dict(body)
