"""One full canary on this machine: real servers, real traffic, a real Prometheus, the real engine.

The local adapters stand in for Kubernetes (processes for Deployments, the load generator for a
gateway); everything else is what production runs. The well calibrated artifact walks every step
and is promoted; the one calibrated on a single digit clips on real traffic and is rolled back,
with the burn rates that decided it.

What is asserted follows from the judgements, never from how fast live traffic happened to be:
a loaded machine may delay a scrape and make a judgement inconclusive (the step then repeats; it
never advances), so the good rollout is checked for "every step that advanced passed, none failed",
and the rollback for burn rates above the threshold its own reason names.
"""

from __future__ import annotations

import asyncio

import pytest
from rollout_harness import MODEL, SAMPLED

from quantship import artifact, slo, zoo
from quantship.local.prometheus import PrometheusProcess
from quantship.local.traffic import LoadGenerator
from quantship.local.workloads import LocalWorkloads
from quantship.rollout import (
    Action,
    AnalysisSpec,
    Decision,
    Phase,
    PrometheusSource,
    RolloutSpec,
    RolloutStatus,
    Track,
    Verdict,
    run_rollout,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.asyncio(loop_scope="module")]

# a loaded 2-core CI machine is no latency benchmark: a generous threshold keeps this about quality
OBJECTIVES = slo.default_objectives(latency_threshold=1.0)


def spec(revision: str) -> RolloutSpec:
    return RolloutSpec(
        model=MODEL,
        revision=revision,
        objectives=OBJECTIVES,
        steps=(50, 100),
        step_interval=8.0,
        progress_deadline=60.0,
        analysis=AnalysisSpec(short_window=10, long_window=20, min_samples=50, inconclusive_limit=5),
    )


async def test_the_good_artifact_is_promoted_and_the_skewed_one_rolled_back(
    prometheus: PrometheusProcess,
    good_artifact: artifact.Artifact,
    skewed_artifact: artifact.Artifact,
    sample: zoo.SampleModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workloads = LocalWorkloads(
        model=MODEL,
        workdir=tmp_path_factory.mktemp("canary"),
        server_args=SAMPLED,
        on_change=lambda: prometheus.set_targets(workloads.targets()),
    )
    for revision, served in (("v1", good_artifact), ("v2", good_artifact), ("v3", skewed_artifact)):
        workloads.add(revision, served.root)
    load = LoadGenerator(workloads.endpoints, sample.requests, model=MODEL, rate=50.0)
    metrics = PrometheusSource(prometheus.url)
    decisions: list[Decision] = []
    await prometheus.wait_ready()

    async def roll(revision: str, status: RolloutStatus) -> RolloutStatus:
        return await asyncio.wait_for(
            run_rollout(
                spec(revision),
                status,
                workloads=workloads,
                router=load,
                metrics=metrics,
                interval=0.5,
                on_decision=decisions.append,
            ),
            timeout=120,
        )

    try:
        async with load:
            first = await roll("v1", RolloutStatus())
            promoted = await roll("v2", first)
            good = [d for d in decisions if d.analysis is not None]
            rolled_back = await roll("v3", promoted)
            running = workloads.tracks()
    finally:
        await metrics.aclose()
        await workloads.aclose()

    assert first.phase is Phase.PROMOTED and first.stable == "v1"
    assert promoted.phase is Phase.PROMOTED and promoted.stable == "v2"
    verdicts = [d.analysis.verdict for d in good if d.analysis]
    advanced = [d.analysis.verdict for d in good if d.analysis and d.action is not Action.JUDGED]
    assert advanced == [Verdict.PASS, Verdict.PASS] and Verdict.FAIL not in verdicts, [d.reason for d in good]
    clip = next(r for r in good[-1].analysis.slos if r.sli is slo.SLI.CLIP_RATE)  # type: ignore[union-attr]
    assert all(w.burn_rate is not None and w.burn_rate < 1 for w in clip.windows), clip

    assert (
        rolled_back.phase is Phase.ROLLED_BACK and rolled_back.stable == "v2" and rolled_back.rejected == "v3"
    )
    rollback = decisions[-2]  # the last one is the idle tick that ended the loop
    assert rollback.action is Action.ROLL_BACK and rollback.analysis is not None
    assert "clip_rate burn rate above 1 on both windows" in rollback.reason, rollback.reason
    clipping = next(r for r in rollback.analysis.slos if r.sli is slo.SLI.CLIP_RATE)
    threshold = spec("v3").analysis.burn_rate_threshold
    assert all(w.burn_rate is not None and w.burn_rate > threshold for w in clipping.windows), clipping
    assert all(
        bad.burn_rate is not None and good.burn_rate is not None and bad.burn_rate > good.burn_rate
        for bad, good in zip(clipping.windows, clip.windows, strict=True)
    ), (clipping, clip)
    assert running == {"v2": Track.STABLE}, "the canary's servers are gone, the stable's serve on"
    assert load.sent["v3"].ok > 50, "the skewed canary really served traffic before it was judged"
