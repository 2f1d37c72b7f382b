"""Real `quantship serve` processes of the good and the skewed sample artifacts, under real
traffic from the load generator, scraped by a real Prometheus. Shared by this folder's modules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from rollout_harness import MODEL, SAMPLED, Served, scraped, wait_ready

from quantship import artifact, zoo
from quantship.local.prometheus import PrometheusProcess
from quantship.local.traffic import LoadGenerator
from quantship.local.workloads import LocalWorkloads
from quantship.rollout import Track


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    process = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), scrape_interval="1s")
    process.start()
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    prometheus: PrometheusProcess,
    good_artifact: artifact.Artifact,
    skewed_artifact: artifact.Artifact,
    sample: zoo.SampleModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Served]:
    workloads = LocalWorkloads(
        model=MODEL,
        workdir=tmp_path_factory.mktemp("servers"),
        server_args=SAMPLED,
        on_change=lambda: prometheus.set_targets(workloads.targets()),
    )
    workloads.add("good", good_artifact.root)
    workloads.add("skewed", skewed_artifact.root)
    await prometheus.wait_ready()
    try:
        await workloads.run("good", Track.STABLE)
        await workloads.run("skewed", Track.CANARY)
        await wait_ready(workloads, "good", "skewed")
        await scraped(prometheus, "good", "skewed")  # counters seen at 0 before traffic
        load = LoadGenerator(workloads.endpoints, sample.requests, model=MODEL, rate=60.0)
        await load.route("good", "skewed", 50)
        async with load:
            await asyncio.sleep(8)
        yield Served(workloads, load, prometheus)
    finally:
        await workloads.aclose()
