"""The CRD's defaults are the rollout engine's: a QuantizedModel that sets nothing is rolled out by
exactly the `RolloutSpec` and `AnalysisSpec` defaults (one place: rollout/spec.py)."""

from __future__ import annotations

import dataclasses

from quantship.operator.spec import ModelSpec
from quantship.rollout import AnalysisSpec, RolloutSpec


def test_an_empty_spec_takes_the_engines_defaults() -> None:
    body = {"metadata": {"name": "digits"}, "spec": {"artifact": {"uri": "file:///models/digits"}}}

    rollout = ModelSpec.from_resource(body).rollout

    defaults = {
        f.name: f.default
        for f in dataclasses.fields(RolloutSpec)
        if f.name in ("steps", "step_interval", "progress_deadline")
    }
    assert {name: getattr(rollout, name) for name in defaults} == defaults
    assert rollout.analysis == AnalysisSpec()
