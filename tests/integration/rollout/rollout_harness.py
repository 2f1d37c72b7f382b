"""Helpers of the rollout integration tests: the model name, the sampling flags, and waiting for
servers and Prometheus. The fixtures are in conftest.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from quantship.local.prometheus import PrometheusProcess
from quantship.local.traffic import LoadGenerator
from quantship.local.workloads import LocalWorkloads

MODEL = "digits"
SAMPLED = ["--shadow-rate", "1.0", "--clip-sample-rate", "1.0", "--sli-cpu-budget", "4"]
"""Every request shadowed and clip-checked (and no CPU budget to skip any), so windows of seconds hold
enough samples."""


@dataclass
class Served:
    """Both artifacts served side by side for a while, then traffic stopped."""

    workloads: LocalWorkloads
    load: LoadGenerator
    prometheus: PrometheusProcess


async def wait_ready(workloads: LocalWorkloads, *revisions: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for revision in revisions:
        while not await workloads.ready(revision):
            if loop.time() > deadline:
                raise AssertionError(f"revision {revision} not ready after {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def scraped(prometheus: PrometheusProcess, *revisions: str, timeout: float = 30.0) -> None:
    """Until Prometheus has scraped every server of these revisions: a counter it first sees
    after traffic began has no increase to show for that traffic."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for revision in revisions:
        while not await prometheus.query(f'up{{model="{MODEL}",revision="{revision}"}} == 1'):
            if loop.time() > deadline:
                raise AssertionError(f"Prometheus did not scrape revision {revision} within {timeout:.0f} s")
            await asyncio.sleep(0.2)
