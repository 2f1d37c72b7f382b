"""LocalWorkloads' readiness, as a kubelet's readiness probe judges it: the rollout engine rolls a canary
that is not ready back at once, so a server that answers one check slowly on a loaded machine must
not count as dead, while one that stopped answering or exited must."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from rollout_harness import MODEL, wait_ready

from quantship import artifact
from quantship.local.workloads import READY_FAILURES, LocalWorkloads
from quantship.rollout import Track


async def test_a_stalled_server_stays_ready_for_a_few_checks_and_an_exited_one_is_not_ready_at_once(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    workloads = LocalWorkloads(model=MODEL, workdir=tmp_path)
    workloads.add("good", good_artifact.root)
    try:
        await workloads.run("good", Track.STABLE)
        await wait_ready(workloads, "good")
        (server,) = workloads._processes["good"]
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # answers nothing: each check times out
        try:
            checks = [await workloads.ready("good") for _ in range(READY_FAILURES)]
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert checks == [True] * (READY_FAILURES - 1) + [False]
        assert await workloads.ready("good")  # answering again: ready again
        os.kill(server.pid, signal.SIGKILL)
        while server.running():
            await asyncio.sleep(0.05)
        assert not await workloads.ready("good")  # exited: not ready on the first check
    finally:
        await workloads.aclose()
