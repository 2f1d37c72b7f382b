"""Every failure talking to the API server, not only an HTTP error status, becomes a PortError
(a Degraded condition and a retry upstream), never an aiohttp error or a bare timeout: a
refused connection and a server that accepts and never answers, through every adapter call,
and a whole tick, which kopf then retries: after retry_backoff, or the API server's Retry-After,
longer at each failure in a row."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kopf
import pytest
from kubernetes.aio import client
from prometheus_client import CollectorRegistry

from quantship.operator import handlers, kube
from quantship.operator.kube import Kube
from quantship.operator.metrics import OperatorMetrics
from quantship.operator.reconcile import Context, reconcile
from quantship.operator.routers import GatewayRouter, ReplicaRouter
from quantship.operator.settings import RETRY_BACKOFF_MAX_S
from quantship.operator.spec import ModelSpec
from quantship.operator.workloads import KubeWorkloads
from quantship.rollout import PortError, Track

RESOURCE = {
    "apiVersion": "serving.quantship.io/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "1"},
    "spec": {
        "artifact": {"uri": "https://models.example.com/digits.tar.gz"},
        "traffic": {"router": "gateway-api", "httpRoute": "digits"},
    },
}
SPEC = ModelSpec.from_resource(RESOURCE)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def calls(api: Kube) -> dict[str, Callable[[], Awaitable[Any]]]:
    workloads = KubeWorkloads(api, SPEC, RESOURCE)
    return {
        "patch_model_status": lambda: api.patch_model_status("ml", "digits", {"phase": "Pending"}),
        "patch_model_metadata": lambda: api.patch_model_metadata("ml", "digits", {"annotations": {}}),
        "run": lambda: workloads.run(SPEC.revision, Track.STABLE),
        "ready": lambda: workloads.ready(SPEC.revision),
        "scale": lambda: workloads.scale(SPEC.revision, 2),
        "remove": lambda: workloads.remove(SPEC.revision),
        "gateway route": lambda: GatewayRouter(api, SPEC).route(SPEC.revision, None, 0),
        "replicas route": lambda: ReplicaRouter(api, SPEC, workloads).route(SPEC.revision, None, 0),
    }


async def assert_port_errors(port: int, timeout: float, expected: str) -> None:
    async with client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}")) as api_client:
        api = Kube(api_client, timeout=timeout)
        for name, call in calls(api).items():
            with pytest.raises(PortError) as caught:
                await call()
            assert caught.value.reason == kube.UNREACHABLE, name
            assert expected in str(caught.value), (name, str(caught.value))


async def test_a_refused_connection_is_a_port_error_from_every_call() -> None:
    await assert_port_errors(closed_port(), 5.0, "Kubernetes API unreachable")


async def test_an_api_server_that_never_answers_is_a_port_error_after_the_timeout(silent_server: int) -> None:
    await assert_port_errors(silent_server, 0.2, "no answer within 0.2 s")


async def test_a_tick_against_an_unreachable_api_is_a_temporary_error_kopf_retries() -> None:
    async with client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{closed_port()}")) as api_client:
        ctx = Context(Kube(api_client, timeout=5.0), OperatorMetrics(CollectorRegistry()), retry_backoff=7.0)
        with pytest.raises(kopf.TemporaryError) as caught:
            await reconcile(ctx, "ml", "digits", logging.getLogger("test"), seen=RESOURCE)
    assert caught.value.delay == 7.0 and kube.UNREACHABLE in str(caught.value)
    assert isinstance(caught.value.__cause__, PortError)


def test_an_error_answer_keeps_the_api_servers_own_words() -> None:
    """A Status body's reason and message (the cause), else the start of whatever body came."""
    status = json.dumps(
        {
            "kind": "Status",
            "reason": "InternalError",
            "message": "failed to allocate a serviceIP: range is full",
        }
    ).encode()
    assert kube._answer(500, "Internal Server Error", status) == (
        "500 Internal Server Error (InternalError: failed to allocate a serviceIP: range is full)"
    )
    assert (
        kube._answer(502, "Bad Gateway", b"<html>Bad Gateway</html>")
        == "502 Bad Gateway: <html>Bad Gateway</html>"
    )
    assert kube._answer(503, "Service Unavailable", b"") == "503 Service Unavailable"
    assert kube._answer(500, None, '{"kind": "Status"}') == "500"


def test_the_api_servers_retry_after_is_read_from_its_header_else_its_status() -> None:
    throttled = json.dumps(
        {"kind": "Status", "reason": "TooManyRequests", "details": {"retryAfterSeconds": 3}}
    )
    assert kube._retry_after({"Retry-After": "2"}, throttled) == 2.0
    assert kube._retry_after({}, throttled) == 3.0
    assert kube._retry_after(None, b"Too many requests, please try again later.") is None
    for nonsense in ("Wed, 21 Oct 2015 07:28:00 GMT", "-1", "0", "nan", "inf"):
        assert kube._retry_after({"Retry-After": nonsense}, None) is None, nonsense


async def test_a_failed_tick_waits_retry_backoff_or_the_retry_after_then_twice_as_long_each_time() -> None:
    async with client.ApiClient(client.Configuration()) as api_client:
        ctx = Context(Kube(api_client), OperatorMetrics(CollectorRegistry()), retry_backoff=10.0)
    assert ctx.retry_delay(PortError("refused")) == 10.0
    assert ctx.retry_delay(PortError("throttled", retry_after=1)) == 10.0
    assert ctx.retry_delay(PortError("throttled", retry_after=25)) == 25.0
    assert ctx.retry_delay(PortError("throttled", retry_after=86400)) == RETRY_BACKOFF_MAX_S
    grown = [handlers.retry_delay(10.0, failures) for failures in range(1, 6)]
    assert grown == [10, 20, 40, RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_MAX_S]
    assert handlers.retry_delay(10.0, 10_000) == RETRY_BACKOFF_MAX_S, "no overflow, however long it fails"
    longer = 2 * RETRY_BACKOFF_MAX_S  # a retry_backoff set above the cap is kept
    assert handlers.retry_delay(longer, 3) == longer
