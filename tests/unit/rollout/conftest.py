"""Fixtures of the engine's unit tests: in-memory ports (memory_ports.py) and a spec factory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from memory_ports import OBJECTIVES, MemoryMetrics, MemoryRouter, MemoryWorkloads

from quantship.rollout import AnalysisSpec, RolloutSpec


@pytest.fixture
def workloads() -> MemoryWorkloads:
    return MemoryWorkloads()


@pytest.fixture
def router() -> MemoryRouter:
    return MemoryRouter()


@pytest.fixture
def metrics() -> MemoryMetrics:
    return MemoryMetrics()


@pytest.fixture
def make_spec() -> Callable[..., RolloutSpec]:
    """A spec for revision `v2` with 60 s steps, 30 s / 120 s windows and 50 samples minimum."""

    def make(revision: str = "v2", **overrides: object) -> RolloutSpec:
        analysis = {
            "short_window": 30,
            "long_window": 120,
            "min_samples": 50,
            **dict(overrides.pop("analysis", {})),  # type: ignore[call-overload]
        }
        fields: dict[str, object] = {
            "model": "digits",
            "revision": revision,
            "objectives": OBJECTIVES,
            "steps": (5, 25, 50, 100),
            "step_interval": 60.0,
            "progress_deadline": 300.0,
            **overrides,
        }
        return RolloutSpec(analysis=AnalysisSpec(**analysis), **fields)  # type: ignore[arg-type]

    return make
