"""The inference path answered before FastAPI's layers (infer_route.InferRoute): what FastAPI gave it
must still hold there, for faults no request can cause."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading

import httpx
import numpy as np
import pytest
from server_harness import MODEL, LocalServer, settings_for, wait_until

from quantship import artifact
from quantship.server import protocol
from quantship.server.batcher import Gone
from quantship.server.byte_budget import ByteBudget
from quantship.server.infer_route import INLINE_DECODE_BYTES
from quantship.server.service import ModelService


class _BuggyService(ModelService):
    """A bug of ours after the body was read: every third request fails with a plain exception."""

    calls = 0

    async def infer(self, request: protocol.InferRequest, gone: Gone | None = None) -> protocol.InferResponse:
        type(self).calls += 1
        if self.calls % 3 == 0:
            raise KeyError("a bug of ours")
        return await super().infer(request, gone)


def test_a_bug_in_the_inference_path_is_a_logged_500_and_the_server_serves_on(
    good_artifact: artifact.Artifact, caplog: pytest.LogCaptureFixture
) -> None:
    server = LocalServer(settings_for(good_artifact, "buggy"), service=_BuggyService).start()
    body = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": np.zeros(64).tolist()}]}
    try:
        with caplog.at_level(logging.ERROR, logger="quantship.server"):
            codes = [httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body) for _ in range(6)]
        assert [answer.status_code for answer in codes] == [200, 200, 500, 200, 200, 500]
        failed = codes[2]
        assert failed.headers["content-type"] == "application/json"
        assert failed.json() == {"error": "internal server error"}  # no traceback for the client
        assert server.metric("quantship_requests_total", code="500") == 2
        assert server.metric("quantship_requests_in_flight") == 0
        logged = [r for r in caplog.records if r.exc_info and "a bug of ours" in str(r.exc_info[1])]
        assert len(logged) == 2  # ... but one in the log, with the request named
        assert f"POST /v2/models/{MODEL}/infer: failed" in logged[0].getMessage()
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    finally:
        server.stop()


def test_large_json_bodies_decode_within_the_budget_in_turn_and_all_answer(
    good_artifact: artifact.Artifact,
) -> None:
    """JSON costs 11-17x its size while it decodes: at most --json-decode-budget-bytes of it decode at
    once. The test holds most of the budget itself: the requests wait, none decoded past the budget,
    then all answer as they do alone."""
    budget_bytes = 400_000
    server = LocalServer(settings_for(good_artifact, "json-budget", json_decode_budget_bytes=budget_bytes))
    server.start()
    rng = np.random.default_rng(7)
    bodies = [
        {"inputs": [{"name": "X", "shape": [400, 64], "datatype": "FP32",
                     "data": rng.normal(size=(400, 64)).round(3).tolist()}]}
        for _ in range(4)
    ]  # fmt: skip
    sizes = [len(json.dumps(body)) for body in bodies]
    assert all(INLINE_DECODE_BYTES < size < budget_bytes // 2 for size in sizes)
    url, release = f"{server.url}/v2/models/{MODEL}/infer", threading.Event()
    try:
        alone = [httpx.post(url, json=body, timeout=60).json()["outputs"] for body in bodies]
        budget = server.app.infer_route.json_budget
        loop = server.service.loop
        assert loop is not None
        held = asyncio.run_coroutine_threadsafe(_hold(budget, budget_bytes - 1000, release), loop)
        wait_until(lambda: budget.in_flight == budget_bytes - 1000, what="the test to hold the budget")
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = [pool.submit(httpx.post, url, json=body, timeout=60) for body in bodies]
            wait_until(lambda: budget.waiting == len(bodies), what="every request to wait for the budget")
            assert budget.in_flight == budget_bytes - 1000  # nothing decoded past it
            release.set()
            held.result(timeout=30)
            together = [answer.result() for answer in answers]
        assert [answer.status_code for answer in together] == [200] * len(bodies)
        assert [answer.json()["outputs"] for answer in together] == alone
        assert budget.in_flight == 0 and budget.waiting == 0
    finally:
        release.set()
        server.stop()


async def _hold(budget: ByteBudget, size: int, release: threading.Event) -> None:
    async with budget.hold(size):
        await asyncio.to_thread(release.wait, 60)
