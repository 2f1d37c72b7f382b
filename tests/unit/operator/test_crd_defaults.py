"""The CRD's defaults are the rollout engine's: a QuantizedModel that sets nothing is rolled out by
exactly the `RolloutSpec` and `AnalysisSpec` defaults (one place: rollout/spec.py)."""

from __future__ import annotations

import dataclasses

from quantship.operator import names
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
    # but for the namespace every query matches (names.NAMESPACE_LABEL), which the engine cannot know
    assert rollout.analysis == AnalysisSpec(labels={names.NAMESPACE_LABEL: "default"})


def test_every_query_matches_the_models_namespace_unless_its_labels_say_otherwise() -> None:
    def labels(namespace: str, analysis: dict[str, object]) -> object:
        spec = {"artifact": {"uri": "file:///models/digits"}, "analysis": analysis}
        body = {"metadata": {"name": "digits", "namespace": namespace}, "spec": spec}
        return ModelSpec.from_resource(body).rollout.analysis.labels

    assert labels("prod", {}) == {"namespace": "prod"}
    assert labels("prod", {"labels": {"cluster": "eu-1"}}) == {"namespace": "prod", "cluster": "eu-1"}
    assert labels("prod", {"labels": {"namespace": ""}}) == {"namespace": ""}  # a scrape without it
