"""Condition EvaluationWithinAccuracySLO from a spec as the operator reads it: the served artifact's
share of evaluation rows the shadow SLI's rule counts, against the accuracy-delta SLO the canary's
analysis judges by. The operator posts it (and its Warning) in
tests/integration/operator/test_shadow_disagreement.py."""

from __future__ import annotations

from typing import Any

import pytest

from quantship import slo
from quantship.operator import status
from quantship.operator.spec import ModelSpec

SLO = next(o.budget for o in slo.DEFAULT_OBJECTIVES if o.sli is slo.SLI.ACCURACY_DELTA)


def model(share: Any, **spec: Any) -> ModelSpec:
    quantize = {"model": "https://models.example.com/m.onnx", "calibration": "pvc://data/c.npz"}
    produced = {"uri": "pvc://models/int8/digits/j", "job": "j", "shadowDisagreement": share}
    return ModelSpec.from_resource(
        {
            "metadata": {"name": "digits"},
            "spec": {
                "artifact": {"uri": "https://models.example.com/v1.tar.gz"},
                "quantize": quantize,
                **spec,
            },
            "status": {"quantizedArtifact": produced},
        }
    )


def test_a_share_right_at_the_slo_is_within_it() -> None:
    """The digits sample: 99.50% top-1 agreement, 0.5% of rows flipped, at the default 0.5%."""
    found = status.evaluation_condition(model(SLO).rollout, SLO)
    assert found is not None and found[0] == "True"


@pytest.mark.parametrize(("share", "fits"), [(0.043144, "0.0432"), (0.0051, "0.0051"), (1.0, "1")])
def test_the_slo_that_fits_is_never_below_the_share(share: float, fits: str) -> None:
    spec = model(share, analysis={"burnRateThreshold": 2})
    found = status.evaluation_condition(spec.rollout, spec.shadow_disagreement)
    assert found is not None and found[:2] == ("False", status.OVER_SLO)
    assert f"Raise spec.slos.maxAccuracyDelta to at least {fits}," in found[2]
    assert f"burns that budget at ~{share / SLO:.1f}x (a step fails above 2, " in found[2]
    assert float(fits) >= share


def test_the_share_is_known_only_for_an_artifact_spec_quantize_serves() -> None:
    """spec.quantize removed: spec.artifact serves again, whose evaluation the operator never read."""
    assert model(0.2).shadow_disagreement == 0.2
    served_again = model(0.2, quantize=None)
    assert served_again.shadow_disagreement is None
    assert status.evaluation_condition(served_again.rollout, served_again.shadow_disagreement) is None
