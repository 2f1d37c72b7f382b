"""`--sli-cpu-budget` is split evenly between the SLI lanes a model has, each paying from its own part:
shared first come, first served, an image model's clip samples (~4x a reference run) took most of it
and left the accuracy SLO a dozen comparisons a minute. Real service, real digits artifact."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from server_harness import settings_for

from quantship import artifact
from quantship.server.metrics import ServerMetrics
from quantship.server.service import ModelService, Phase
from quantship.server.settings import QualitySettings


async def loaded(good_artifact: artifact.Artifact, quality: QualitySettings) -> ModelService:
    settings = settings_for(good_artifact, "budget", quality=quality)
    service = ModelService(settings, ServerMetrics(CollectorRegistry(), settings.labels))
    await service.load()
    assert service.phase is Phase.READY and service.model is not None
    return service


async def test_the_shadow_and_clip_lanes_each_pay_from_their_own_half(
    good_artifact: artifact.Artifact,
) -> None:
    service = await loaded(good_artifact, QualitySettings(sli_cpu_budget=0.02))
    assert service.model is not None
    shadow, clip = service.model.shadow, service.model.clip
    assert shadow is not None and clip is not None
    assert shadow.budget is not None and clip.budget is not None
    assert shadow.budget is not clip.budget
    assert shadow.budget.share == clip.budget.share == pytest.approx(0.01)
    await service.close(1)


async def test_a_lone_lane_gets_the_whole_budget(good_artifact: artifact.Artifact) -> None:
    service = await loaded(good_artifact, QualitySettings(sli_cpu_budget=0.02, clip_sample_rate=0))
    assert service.model is not None and service.model.clip is None
    shadow = service.model.shadow
    assert shadow is not None and shadow.budget is not None
    assert shadow.budget.share == pytest.approx(0.02)
    await service.close(1)
