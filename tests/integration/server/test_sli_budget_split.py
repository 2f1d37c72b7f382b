"""`--sli-cpu-budget` is split between the SLI lanes that run (evenly on the stable track, mostly to the
shadow lane on a canary), each paying from its own part:
shared first come, first served, an image model's clip samples (~4x a reference run) took most of it
and left the accuracy SLO a dozen comparisons a minute. Real service, real digits artifact."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry
from server_harness import settings_for

from quantship import artifact
from quantship.server.background import CpuBudget, Lane
from quantship.server.metrics import ServerMetrics
from quantship.server.service import Model, ModelService, Phase
from quantship.server.settings import QualitySettings, Track


@asynccontextmanager
async def loaded(good_artifact: artifact.Artifact, quality: QualitySettings) -> AsyncIterator[Model]:
    settings = settings_for(good_artifact, "budget", quality=quality)
    service = ModelService(settings, ServerMetrics(CollectorRegistry(), settings.labels))
    await service.load()
    try:
        assert service.phase is Phase.READY and service.model is not None
        yield service.model
    finally:
        await service.close(1)


def budget(lane: Lane[object] | None) -> CpuBudget:
    assert lane is not None and lane.budget is not None
    return lane.budget


async def test_the_shadow_and_clip_lanes_each_pay_from_their_own_half(
    good_artifact: artifact.Artifact,
) -> None:
    async with loaded(good_artifact, QualitySettings(sli_cpu_budget=0.02)) as model:
        assert budget(model.shadow) is not budget(model.clip)
        assert budget(model.shadow).share == budget(model.clip).share == pytest.approx(0.01)


async def test_a_canary_gives_the_shadow_lane_most_of_its_budget(good_artifact: artifact.Artifact) -> None:
    """The analysis needs FP32 comparisons; one clip sample counts every activation value."""
    canary = QualitySettings.for_track(Track.CANARY)
    async with loaded(good_artifact, canary) as model:
        assert budget(model.shadow).share == pytest.approx(canary.sli_cpu_budget * canary.shadow_budget_share)
        assert budget(model.clip).share == pytest.approx(
            canary.sli_cpu_budget * (1 - canary.shadow_budget_share)
        )
        assert budget(model.shadow).share > budget(model.clip).share


@pytest.mark.parametrize(
    ("off", "running"),
    [
        (
            lambda total: QualitySettings(sli_cpu_budget=total, clip_sample_rate=0, shadow_budget_share=0.8),
            "shadow",
        ),
        (lambda total: QualitySettings(sli_cpu_budget=total, shadow_rate=0, shadow_budget_share=0.8), "clip"),
    ],
    ids=["clip off", "shadow off"],
)
async def test_a_lone_lane_gets_the_whole_budget(
    good_artifact: artifact.Artifact, off: Callable[[float], QualitySettings], running: str
) -> None:
    """The artifact has a reference and ranges either way: what counts is the lanes that run."""
    async with loaded(good_artifact, off(0.02)) as model:
        lanes = {"shadow": model.shadow, "clip": model.clip}
        assert [name for name, lane in lanes.items() if lane is not None] == [running]
        assert budget(lanes[running]).share == pytest.approx(0.02)
