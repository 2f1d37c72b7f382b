"""The artifact's own evaluation against the SLO its canary is judged by, on kmock with the real kopf
runtime: spec.quantize's Job reports the share of evaluation rows the shadow SLI's rule counts as
disagreeing (the manifest's validation.shadow_disagreement; read from a real manifest in
tests/unit/operator/test_quantize_job_command.py). Over the model's accuracy-delta SLO, a Warning
event and condition EvaluationWithinAccuracySLO say the burn to expect and what to change, and the
canary still rolls out: the analysis decides."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from kubernetes.aio import client
from operator_harness import Kubectl, ScriptedMetrics, StartOperator, eventually, spec_of
from test_operator_lifecycle import V1, condition, events, phase_is, posted, serving
from test_operator_quantize_job import PRODUCED, finish, quantizing

from quantship import slo
from quantship.operator import status as conditions
from quantship.operator.quantize_job import Verdict

SAID = "evaluation rows (a token model's each by its share of positions):"
"""How the condition names what the share is of."""

SLO = next(o.budget for o in slo.DEFAULT_OBJECTIVES if o.sli is slo.SLI.ACCURACY_DELTA)
"""The accuracy-delta SLO a model that sets none is judged by."""
FLIPPED = 0.043
"""A T5 encoder gated on accuracy against labels flipped 4.3% of its rows (README)."""


async def quantized(kubectl: Kubectl, api: client.ApiClient, verdict: dict[str, Any]) -> str:
    """A passing Job with this verdict on the serving model: its canary, once it started."""
    job = await quantizing(kubectl)
    await finish(api, job["metadata"]["name"], exit_code=0, message=json.dumps(verdict))
    canary: str = (await phase_is(kubectl, "Progressing"))["canaryRevision"]
    await eventually(lambda: kubectl.deployment(f"digits-{canary}"), what="the canary Deployment")
    return canary


def passed(shadow_disagreement: float | None) -> dict[str, Any]:
    verdict = Verdict(True, "top1_accuracy", -0.01, 0.01, PRODUCED, shadow_disagreement=shadow_disagreement)
    return verdict.to_json()


def evaluation(kubectl: Kubectl, state: str | None = None) -> dict[str, Any] | None:
    """Condition EvaluationWithinAccuracySLO (in this state, when given), or None."""
    status = (kubectl.get() or {}).get("status") or {}
    found = [c for c in status.get("conditions") or [] if c["type"] == conditions.EVALUATION]
    return next((c for c in found if state is None or c["status"] == state), None)


async def test_an_artifact_whose_evaluation_burns_the_slo_warns_before_its_analysis_and_still_rolls_out(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    canary = await quantized(kubectl, api, passed(FLIPPED))

    (warning,) = await posted(kubectl, conditions.OVER_SLO)
    assert warning["type"] == "Warning"
    said = warning["message"]
    assert said.startswith(f"{canary}'s {SAID} 4.30% disagree with FP32 by the shadow SLI's rule")
    assert f"over the accuracy-delta SLO's {SLO:.2%} (spec.slos.maxAccuracyDelta)" in said
    assert f"its canary burns that budget at ~{FLIPPED / SLO:.1f}x" in said
    assert "Raise spec.slos.maxAccuracyDelta to at least 0.043, or quantize again" in said
    found = evaluation(kubectl)
    assert found is not None
    assert (found["status"], found["reason"], found["message"]) == ("False", conditions.OVER_SLO, said)
    status = (kubectl.get() or {})["status"]
    assert status["quantizedArtifact"]["shadowDisagreement"] == FLIPPED
    assert condition(status, conditions.DEGRADED)["status"] == "False", "a warning, not a fault"

    # a warning, not a refusal: the analysis decides (it reads no disagreement here), and promotes
    await kubectl.make_ready(f"digits-{canary}", 1)
    assert (await phase_is(kubectl, "Promoted"))["stableRevision"] == canary

    # the SLO the warning asked for: within it, said once more as a condition, and no new warning
    await kubectl.patch({"spec": {"slos": {"maxAccuracyDelta": FLIPPED}}})
    within = await eventually(lambda: evaluation(kubectl, "True"), what="within the SLO")
    assert within["message"] == (
        f"{canary}'s {SAID} 4.30% disagree with FP32 by the shadow SLI's rule "
        "(validation.shadow_disagreement), within the accuracy-delta SLO's 4.30%"
    )
    assert len(events(kubectl, conditions.OVER_SLO)) == 1


async def test_an_evaluation_within_the_models_own_slo_posts_no_warning(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """Over the default SLO, within the one spec.slos sets: the one the analysis judges by."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1, slos={"maxAccuracyDelta": 0.05}))
    canary = await quantized(kubectl, api, passed(FLIPPED))

    await posted(kubectl, "GatePassed")  # posted after a warning of the same tick would be
    found = evaluation(kubectl)
    assert found is not None and (found["status"], found["reason"]) == ("True", "ShadowDisagreementWithinSLO")
    assert found["message"] == (
        f"{canary}'s {SAID} 4.30% disagree with FP32 by the shadow SLI's rule "
        "(validation.shadow_disagreement), within the accuracy-delta SLO's 5.00%"
    )
    await kubectl.make_ready(f"digits-{canary}", 1)
    await phase_is(kubectl, "Promoted")
    assert not events(kubectl, conditions.OVER_SLO)


@pytest.mark.parametrize(
    "share",
    [
        "absent",  # a Job of an older quantship
        None,  # a manifest with no rule that could judge the rows
        "0.9",
        math.nan,
        -0.5,
        1.5,
        "1" + "0" * 400,  # a 400-digit integer: a float overflows
    ],
)
async def test_a_share_that_is_none_or_no_share_warns_of_nothing_and_the_rollout_goes_on(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator, share: Any
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl, spec_of(V1))
    verdict = passed(None)
    if share == "absent":
        del verdict["shadowDisagreement"]
    else:
        verdict["shadowDisagreement"] = share
    message = json.dumps(verdict)
    if isinstance(share, str) and share.isdigit():  # a JSON number, not a string
        message = message.replace(f'"{share}"', share)
    job = await quantizing(kubectl)
    await finish(api, job["metadata"]["name"], exit_code=0, message=message)

    canary = (await phase_is(kubectl, "Progressing"))["canaryRevision"]
    await posted(kubectl, "GatePassed")
    status = (kubectl.get() or {})["status"]
    assert "shadowDisagreement" not in status["quantizedArtifact"]
    assert evaluation(kubectl) is None
    assert condition(status, conditions.DEGRADED)["status"] == "False"
    await eventually(lambda: kubectl.deployment(f"digits-{canary}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{canary}", 1)
    await phase_is(kubectl, "Promoted")
    assert not events(kubectl, conditions.OVER_SLO)
