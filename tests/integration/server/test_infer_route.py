"""The inference path answered before FastAPI's layers (infer_route.InferRoute): what FastAPI gave it
must still hold there, for faults no request can cause."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact
from quantship.server import protocol
from quantship.server.service import ModelService


class _BuggyService(ModelService):
    """A bug of ours after the body was read: every third request fails with a plain exception."""

    calls = 0

    async def infer(self, request: protocol.InferRequest) -> protocol.InferResponse:
        type(self).calls += 1
        if self.calls % 3 == 0:
            raise KeyError("a bug of ours")
        return await super().infer(request)


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
