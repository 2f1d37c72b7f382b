"""Both MetricsSources against real servers: Prometheus over its HTTP API, and the direct scrape.

The servers are the good and the skewed sample artifact, each taking half of the same real
traffic, every request shadowed and clip-checked. Both sources must see the skewed one clip and
disagree far more, count exactly what was answered, and say "no data" or "unreachable" rather
than zero when that is the truth.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from rollout_harness import MODEL, Served

from quantship import slo
from quantship.local.prometheus import free_port
from quantship.local.scrape import ScrapeSource
from quantship.rollout import Counts, MetricsSource, NoData, PrometheusSource, Unreachable, Value

pytestmark = [pytest.mark.prometheus, pytest.mark.asyncio(loop_scope="module")]

CLIP = slo.Objective(slo.SLI.CLIP_RATE, budget=0.001)
ACCURACY = slo.Objective(slo.SLI.ACCURACY_DELTA, budget=0.005)
ERRORS = slo.Objective(slo.SLI.ERRORS, budget=0.001)
LATENCY = slo.Objective(slo.SLI.LATENCY, budget=0.01, latency_threshold=0.25)
WINDOW = 120  # holds all of the traffic


def labels(revision: str) -> dict[str, str]:
    return {"model": MODEL, "revision": revision}


async def counted(source: MetricsSource, objective: slo.Objective, revision: str) -> Counts:
    answer = await source.counts(objective, WINDOW, labels(revision))
    assert isinstance(answer, Counts), answer
    return answer


async def settled(prometheus: PrometheusSource, revision: str, answered: int, timeout: float = 30.0) -> None:
    """Until Prometheus has scraped the servers after the traffic stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = await prometheus.counts(ERRORS, WINDOW, labels(revision))
        if isinstance(answer, Counts) and answer.total >= 0.9 * answered:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus never counted ~{answered} requests of {revision}")


async def check_skew_is_visible(source: MetricsSource) -> None:
    good_clip, skewed_clip = await counted(source, CLIP, "good"), await counted(source, CLIP, "skewed")
    assert good_clip.total > 10_000 and skewed_clip.total > 10_000  # hundreds of values per request
    assert skewed_clip.ratio is not None and good_clip.ratio is not None
    assert skewed_clip.ratio > 0.003 > 10 * good_clip.ratio, (good_clip, skewed_clip)
    good_shadow, skewed_shadow = (
        await counted(source, ACCURACY, "good"),
        await counted(source, ACCURACY, "skewed"),
    )
    assert good_shadow.total > 100 and skewed_shadow.total > 100
    assert skewed_shadow.bad >= good_shadow.bad
    # A classifier's rows disagree whole: the rows with a disagreement are the disagreements (within
    # what a scrape between the two counters' increments and increase()'s extrapolation move).
    assert skewed_shadow.whole_bad == pytest.approx(skewed_shadow.bad, rel=0.05)
    latency = await counted(source, LATENCY, "skewed")
    assert latency.total > 100 and 0 <= latency.bad < latency.total
    assert await source.fallback_ops(labels("good")) == Value(0)


async def test_prometheus_source_sees_the_skewed_artifact_clip_and_counts_the_traffic(served: Served) -> None:
    source = PrometheusSource(served.prometheus.url)
    try:
        for revision in ("good", "skewed"):
            await settled(source, revision, served.load.sent[revision].ok)
        await check_skew_is_visible(source)
        errors = await counted(source, ERRORS, "good")
        assert errors.bad == 0
        # increase() extrapolates to the window's edges: close to, not exactly, what was answered
        assert errors.total == pytest.approx(served.load.sent["good"].ok, rel=0.2)
        assert isinstance(await source.counts(CLIP, WINDOW, labels("never-deployed")), NoData)
        assert isinstance(await source.fallback_ops(labels("never-deployed")), NoData)
    finally:
        await source.aclose()


async def test_prometheus_that_does_not_answer_is_unreachable_not_zero() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    try:
        answer = await source.counts(CLIP, WINDOW, labels("good"))
        assert isinstance(answer, Unreachable) and "ConnectError" in answer.reason
        assert isinstance(await source.fallback_ops(labels("good")), Unreachable)
    finally:
        await source.aclose()


async def test_direct_scrape_counts_exactly_what_the_servers_answered(served: Served) -> None:
    source = ScrapeSource(served.workloads.targets)
    await source.scrape_once()

    await check_skew_is_visible(source)
    for revision in ("good", "skewed"):
        answered = served.load.sent[revision]
        errors = await counted(source, ERRORS, revision)
        assert (errors.bad, errors.total) == (0, answered.ok + answered.errors)
        assert answered.ok > 100 and answered.errors == 0
    assert isinstance(await source.counts(CLIP, WINDOW, labels("never-deployed")), NoData)


async def test_direct_scrape_of_servers_that_are_gone_is_unreachable() -> None:
    address = f"127.0.0.1:{free_port()}"
    source = ScrapeSource(lambda: [(address, {"model": MODEL, "revision": "gone"})], timeout=1.0)
    await source.scrape_once()

    answer = await source.counts(CLIP, WINDOW, labels("gone"))

    assert isinstance(answer, Unreachable) and address in answer.reason
