"""The operator under test: the real kopf runtime in its own thread and loop, against kmock.

kopf runs in a thread of its own, as `kopf.testing.KopfRunner` does: at exit `kopf.operator`
cancels every task created after it started, which in the test's loop would include the test's
own. The API is kmock with the gaps a real API server fills done by `kmock_cluster.Cluster`,
which also writes QuantizedModels by the CRD's rules (`apiserver_rules`). What kmock cannot do
at all — run pods, collect garbage by owner reference — the tests do by hand (`make_ready`) or
check only the inputs of (ownerReferences).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kopf
import pytest
from kmock_cluster import Cluster, declare
from kubernetes.aio import client
from operator_harness import TESTS_USER_AGENT, Kubectl, Operator, StartOperator, lost_writes
from prometheus_client import CollectorRegistry

from quantship.operator import OperatorSettings, run
from quantship.rollout import MetricsSource


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": Cluster}


@pytest.fixture
def cluster(kmock: Cluster) -> Iterator[Cluster]:
    """The API. Afterwards: nothing the operator wrote was refused or pruned by the API server's
    rules (a status field the CRD does not know would be lost silently)."""
    declare(kmock)
    yield kmock
    assert lost_writes(kmock) == []


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[client.ApiClient]:
    """The tests' own client: what kubectl and the kubelet do goes through the API too."""
    async with client.ApiClient(client.Configuration(host=str(cluster.url).rstrip("/"))) as api_client:
        api_client.user_agent = TESTS_USER_AGENT  # tells the tests' requests from the operator's
        yield api_client


# -- the operator ----------------------------------------------------------------------------------


@pytest.fixture
async def start_operator(cluster: Cluster) -> AsyncIterator[StartOperator]:
    running: list[Operator] = []
    url = str(cluster.url).rstrip("/")

    async def start(
        metrics: MetricsSource | None = None,
        *,
        tick_interval: float = 0.2,
        resync_interval: float = 60.0,
        metrics_port: int = 0,
        namespaces: tuple[str, ...] = (),
        ready_within: float = 30,
        server_bind_address: str = OperatorSettings.server_bind_address,
    ) -> Operator:
        stop, ready = threading.Event(), threading.Event()
        registry = CollectorRegistry()
        settings = OperatorSettings(
            namespaces=namespaces,  # empty: cluster-wide
            tick_interval=tick_interval,
            resync_interval=resync_interval,
            retry_backoff=0.5,
            bind_address="127.0.0.1",
            server_bind_address=server_bind_address,
            metrics_port=metrics_port,
            health_port=0,
            standalone=True,
        )
        operator_run = run(
            settings,
            api_config=client.Configuration(host=url),
            login=lambda **_: kopf.ConnectionInfo(server=url, insecure=True),
            registry=kopf.OperatorRegistry(),
            metrics_registry=registry,
            stop_flag=stop,
            ready_flag=ready,
            metrics_source=(lambda spec: metrics) if metrics is not None else None,
        )
        thread = threading.Thread(target=asyncio.run, args=(operator_run,), name="operator", daemon=True)
        thread.start()
        operator = Operator(thread, stop, registry, ready)
        running.append(operator)
        started = await asyncio.to_thread(ready.wait, ready_within)
        assert started or not ready_within, f"the operator did not start within {ready_within} s"
        return operator

    yield start
    for operator in running:
        if operator.thread.is_alive():
            await operator.shutdown()


@pytest.fixture
def kubectl(api: client.ApiClient, cluster: Cluster) -> Kubectl:
    return Kubectl(api, cluster)
