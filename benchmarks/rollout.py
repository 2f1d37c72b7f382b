"""Rollout benchmark: how fast a breach becomes a rollback, and a resource becomes its children.

1. Breach to rollback, with real parts: `quantship serve` processes of the good sample artifact
   (stable and canary), real traffic from the load generator, a real Prometheus (the direct
   scraper where none is installed), the real engine. During the canary's second step, at a
   random moment, the canary's traffic starts drifting (inputs x DRIFT, far outside calibration),
   so it clips; the clock runs from that moment to the engine's rollback decision.
   Goal: at most 2 step intervals.
2. Resource to children: the real operator (kopf) against kmock; the clock runs from the
   QuantizedModel's creation (POST answered) until its Deployment and Service exist. Measured in
   fresh clusters, and for many resources in one: kmock looks objects up by scanning them all,
   so its answers slow down as objects (and Events) pile up, which a real API server's do not.
   Goal: at most 1 s.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from quantship import slo, zoo
from quantship.local.prometheus import PrometheusProcess, find_binary
from quantship.local.scrape import ScrapeSource
from quantship.local.traffic import LoadGenerator
from quantship.local.workloads import LocalWorkloads
from quantship.quantize import QuantizeConfig
from quantship.quantize import run as quantize
from quantship.rollout import (
    Action,
    AnalysisSpec,
    Decision,
    MetricsSource,
    Phase,
    PrometheusSource,
    RolloutSpec,
    RolloutStatus,
    run_rollout,
)

STEP_INTERVAL = 6.0
TRIALS = 3
DRIFT = 3.0
RESOURCES = 20
FRESH_CLUSTERS = 10
MODEL = "digits"
OBJECTIVES = slo.default_objectives(latency_threshold=1.0)  # a loaded 2-core machine


def run(workdir: Path) -> None:
    console = Console(width=150)
    root = workdir / "rollout"
    table = Table(title="rollout engine and operator")
    for column in ("measure", "runs", "median", "max", "goal", "met"):
        table.add_column(column, justify="left" if column == "measure" else "right")

    delays, source = asyncio.run(_breach_to_rollback(root, console))
    worst = max(delays)
    table.add_row(
        f"breach -> rollback decision ({source}, step {STEP_INTERVAL:g} s)",
        str(len(delays)),
        f"{statistics.median(delays):.1f} s = {statistics.median(delays) / STEP_INTERVAL:.2f} steps",
        f"{worst:.1f} s = {worst / STEP_INTERVAL:.2f} steps",
        "<= 2 steps",
        "yes" if worst <= 2 * STEP_INTERVAL else "NO",
    )
    fresh = [asyncio.run(_resource_to_children(1))[0] for _ in range(FRESH_CLUSTERS)]
    table.add_row(
        "QuantizedModel created -> Deployment + Service (kopf vs kmock, empty cluster)",
        str(len(fresh)),
        f"{statistics.median(fresh) * 1000:.0f} ms",
        f"{max(fresh) * 1000:.0f} ms",
        "<= 1 s",
        "yes" if max(fresh) <= 1.0 else "NO",
    )
    crowded = asyncio.run(_resource_to_children(RESOURCES))
    table.add_row(
        f"  the same, {RESOURCES} one after another in one cluster (kmock lookups are O(objects))",
        str(len(crowded)),
        f"{statistics.median(crowded) * 1000:.0f} ms",
        f"{max(crowded) * 1000:.0f} ms",
        "<= 1 s",
        "yes" if max(crowded) <= 1.0 else "NO",
    )
    console.print(table)


# -- 1. breach to rollback -------------------------------------------------------------------------


async def _breach_to_rollback(root: Path, console: Console) -> tuple[list[float], str]:
    console.print("building the sample model and the good INT8 artifact ...")
    sample = zoo.build_digits(root / "zoo")
    good = quantize(
        sample.model, root / "artifacts" / "good", QuantizeConfig(), calibration=sample.calibration
    ).artifact
    prometheus = (
        PrometheusProcess(root / "prometheus", scrape_interval="1s") if find_binary("prometheus") else None
    )
    workloads = LocalWorkloads(
        model=MODEL,
        workdir=root / "servers",
        server_args=["--shadow-rate", "1.0", "--clip-sample-rate", "1.0", "--sli-cpu-budget", "4"],
        on_change=(lambda: prometheus.set_targets(workloads.targets())) if prometheus else None,
    )
    scraper = ScrapeSource(workloads.targets) if prometheus is None else None
    metrics: MetricsSource
    if prometheus is not None:
        prometheus.start()
        await prometheus.wait_ready()
        metrics, source = PrometheusSource(prometheus.url), "Prometheus"
    else:
        assert scraper is not None
        await scraper.start()
        metrics, source = scraper, "direct scrape"
    load = LoadGenerator(workloads.endpoints, sample.requests, model=MODEL, rate=50.0)
    delays: list[float] = []
    chance = random.Random(0)
    try:
        async with load:
            workloads.add("v1", good.root)
            status = await run_rollout(
                _spec("v1"), RolloutStatus(), workloads=workloads, router=load, metrics=metrics, interval=0.5
            )
            for trial in range(TRIALS):
                revision = f"v2-{trial}"
                workloads.add(revision, good.root)
                onset: list[float] = []
                decided: list[float] = []

                def watch(
                    decision: Decision,
                    revision: str = revision,
                    onset: list[float] = onset,
                    decided: list[float] = decided,
                ) -> None:
                    if decision.action is Action.SET_WEIGHT and decision.status.step == 1:
                        delay = chance.uniform(0, STEP_INTERVAL)
                        asyncio.get_running_loop().call_later(delay, _drift, load, revision, onset)
                    if decision.action is Action.ROLL_BACK:
                        decided.append(time.monotonic())

                status = await asyncio.wait_for(
                    run_rollout(
                        _spec(revision),
                        status,
                        workloads=workloads,
                        router=load,
                        metrics=metrics,
                        interval=0.5,
                        on_decision=watch,
                    ),
                    timeout=180,
                )
                if status.phase is not Phase.ROLLED_BACK or not onset or not decided:
                    raise RuntimeError(
                        f"trial {trial}: expected a rollback after the drift, got {status.phase}: "
                        + status.message
                    )
                delays.append(decided[0] - onset[0])
                console.print(
                    f"trial {trial + 1}: drift during step 2, rolled back {delays[-1]:.1f} s later: "
                    + status.message
                )
    finally:
        if isinstance(metrics, PrometheusSource):
            await metrics.aclose()
        if scraper is not None:
            await scraper.aclose()
        await workloads.aclose()
        if prometheus is not None:
            prometheus.stop()
    return delays, source


def _drift(load: LoadGenerator, revision: str, onset: list[float]) -> None:
    load.drift(revision, DRIFT)
    onset.append(time.monotonic())


def _spec(revision: str) -> RolloutSpec:
    return RolloutSpec(
        model=MODEL,
        revision=revision,
        objectives=OBJECTIVES,
        steps=(10, 20, 50, 100),
        step_interval=STEP_INTERVAL,
        progress_deadline=60.0,
        analysis=AnalysisSpec(short_window=5, long_window=10, min_samples=20),
    )


# -- 2. resource to children -----------------------------------------------------------------------


async def _resource_to_children(count: int) -> list[float]:
    """Create `count` resources one by one in a fresh cluster; seconds until each has its children."""
    # kmock plus what a real API server fills in: the operator tests' own fixture
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "operator"))
    import kmock
    import kopf
    from kmock_cluster import Cluster, declare  # type: ignore[import-not-found]
    from kubernetes.aio import client

    from quantship.operator import OperatorSettings, crd
    from quantship.operator import run as run_operator
    from quantship.operator.kube import MERGE_PATCH
    from quantship.operator.spec import ModelSpec

    async with Cluster() as cluster, kmock.Server(cluster):
        declare(cluster)
        url = str(cluster.url).rstrip("/")
        stop, ready = threading.Event(), threading.Event()
        settings = OperatorSettings(tick_interval=1.0, metrics_port=0, health_port=0, standalone=True)
        operator = run_operator(
            settings,
            api_config=client.Configuration(host=url),
            login=lambda **_: kopf.ConnectionInfo(server=url, insecure=True),
            registry=kopf.OperatorRegistry(),
            stop_flag=stop,
            ready_flag=ready,
        )
        thread = threading.Thread(target=asyncio.run, args=(operator,), daemon=True)
        thread.start()
        await asyncio.to_thread(ready.wait, 30)
        timings = []
        async with client.ApiClient(client.Configuration(host=url)) as api:
            custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
            for index in range(count):
                name = f"model-{index}"
                body = {
                    "apiVersion": crd.API_VERSION,
                    "kind": crd.KIND,
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"artifact": {"uri": f"https://models.example.com/{name}.tar.gz"}},
                }
                child = f"{name}-{ModelSpec.from_resource(body).revision}"
                await custom.create_namespaced_custom_object(
                    crd.GROUP, crd.VERSION, "default", crd.PLURAL, body
                )
                started = time.monotonic()
                while not _exists(cluster, "apps/v1/deployments", child) or not _exists(
                    cluster, "v1/services", child
                ):
                    if time.monotonic() - started > 30:
                        raise RuntimeError(f"{name}: no children after 30 s")
                    await asyncio.sleep(0.002)
                timings.append(time.monotonic() - started)
                # what the kubelet would do: the pods pass readiness, the model settles
                passing = {"status": {"readyReplicas": 2}}
                await apps.patch_namespaced_deployment_status(
                    child, "default", passing, _content_type=MERGE_PATCH
                )
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    return timings


def _exists(cluster: Any, resource: str, name: str) -> bool:
    try:
        return not cluster.objects[resource, "default", name].deleted
    except KeyError:
        return False
