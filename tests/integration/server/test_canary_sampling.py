"""`quantship serve --track canary` with no sampling flags compares every request it can afford with
FP32, as the rollout analysis needs; a stable server keeps sampling 5%. Real processes, the real CLI,
real digits traffic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from server_harness import MODEL, wait_until
from test_server_process import sample_value

from quantship import artifact, zoo
from quantship.local.processes import ServerProcess
from quantship.server import QualitySettings, Track
from quantship.slo import DropReason, Metric, SampleKind

REQUESTS = 40
DROPPED = Metric.SAMPLES_DROPPED_TOTAL.value


def send(server: ServerProcess, rows: np.ndarray) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for row in rows:
            body = {"inputs": [{"name": zoo.INPUT_NAME, "shape": [1, row.size], "datatype": "FP32",
                                "data": row.tolist()}]}  # fmt: skip
            assert client.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 200


def comparisons(server: ServerProcess) -> float:
    return sample_value(server.url, "quantship_shadow_comparisons_total") or 0.0


@contextlib.contextmanager
def on_both_tracks(root: Path, logs: Path, *flags: str) -> Iterator[dict[Track, ServerProcess]]:
    """A ready `quantship serve` process on each track, with the same flags (as the operator gives
    every revision the same spec.server)."""
    servers = {
        track: ServerProcess(
            root,
            model=MODEL,
            revision=track.value,
            track=track.value,
            extra_args=flags,
            log_path=logs / f"{track.value}.log",
        )
        for track in Track
    }
    for server in servers.values():
        server.start()
    try:
        for server in servers.values():
            asyncio.run(server.wait_ready())
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_a_canary_compares_every_request_its_budget_affords_by_default(
    good_artifact: artifact.Artifact, traffic: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    with on_both_tracks(good_artifact.root, tmp_path) as servers:
        canary = servers[Track.CANARY]
        # One request first: until its lane knows a sample's price, only a hand-off's worth may wait.
        send(canary, traffic[0][:1])
        wait_until(lambda: comparisons(canary) == 1, what="the canary's first comparison")
        for server in servers.values():
            send(server, traffic[0][1 : REQUESTS + 1])
        # digits' gate had labels, so its rule compares every row; digits' runs cost ~0.1 ms, so the
        # canary's budget affords them all
        wait_until(lambda: comparisons(canary) == REQUESTS + 1, what="the canary's comparisons")
        for reason in (DropReason.BEHIND, DropReason.BUDGET):
            dropped = sample_value(canary.url, DROPPED, kind=SampleKind.SHADOW, reason=reason)
            assert dropped == 0, reason
        for track, server in servers.items():
            quality = QualitySettings.for_track(track)
            said = f"shadow {quality.shadow_rate:.0%}, clip {quality.clip_sample_rate:.0%}"
            assert said in server.log_tail(), server.log_tail()
            assert f"SLI CPU budget {quality.sli_cpu_budget:g} CPU seconds a second" in server.log_tail()
        # The stable server samples 5%: 40 requests give it two comparisons on average, 20 or more
        # with a chance of 5e-16. Whatever is still queued can only add to that count.
        assert comparisons(servers[Track.STABLE]) < REQUESTS / 2


def test_the_canary_budget_is_spent_by_a_canary_and_ignored_by_a_stable_server(
    good_artifact: artifact.Artifact, traffic: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """The same flags on both tracks, as the operator passes spec.server to every revision: no SLI
    budget for the stable, a canary's own (not its default). The stable compares nothing; the
    canary everything."""
    canary_budget = 0.07
    assert canary_budget != QualitySettings.default("sli_cpu_budget", Track.CANARY)
    flags = ("--shadow-rate", "1", "--sli-cpu-budget", "0", "--canary-sli-cpu-budget", str(canary_budget))
    with on_both_tracks(good_artifact.root, tmp_path, *flags) as servers:
        canary, stable = servers[Track.CANARY], servers[Track.STABLE]
        send(canary, traffic[0][:1])  # the lane prices its first sample alone
        wait_until(lambda: comparisons(canary) == 1, what="the canary's first comparison")
        for server in servers.values():
            send(server, traffic[0][1 : REQUESTS + 1])
        wait_until(lambda: comparisons(canary) == REQUESTS + 1, what="the canary's comparisons")
        assert sample_value(canary.url, DROPPED, kind=SampleKind.SHADOW, reason=DropReason.BUDGET) == 0
        assert f"SLI CPU budget {canary_budget:g} CPU seconds a second" in canary.log_tail()
        assert "SLI CPU budget 0 CPU seconds a second" in stable.log_tail()
        # every request was offered (rate 1) and refused by the empty budget, none compared
        wait_until(
            lambda: (
                sample_value(stable.url, DROPPED, kind=SampleKind.SHADOW, reason=DropReason.BUDGET)
                == REQUESTS
            ),
            what="the stable's budget drops",
        )
        assert comparisons(stable) == 0
