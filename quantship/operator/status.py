"""The QuantizedModel's status as the operator writes it: the engine's RolloutStatus plus
Kubernetes conditions (Ready, Progressing, Degraded) and the printer-column figures.

Pure functions, called by `reconcile` after each tick. A condition keeps its lastTransitionTime
while its status stays the same, as `kubectl wait` and dashboards expect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from quantship import slo
from quantship.rollout import Phase, RolloutSpec, RolloutStatus, short_window_ratio
from quantship.rollout.state import to_timestamp

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
GATE_HARDWARE = "GateHardwareMatched"
"""spec.placement.matchGateHardware: whether a node with the gate's int8 CPU features took the pods."""
EVALUATION = "EvaluationWithinAccuracySLO"
"""Whether the served artifact's evaluation rows disagree with FP32, by the shadow SLI's rule, within
the accuracy-delta SLO its canary is judged by: written where the operator knows that share (an
artifact spec.quantize produced: its Job reads the manifest)."""
OVER_SLO = "ShadowDisagreementOverSLO"
"""EVALUATION's reason, and its Warning event's, while the share is over the SLO."""
STABLE_NOT_READY = "StableNotReady"
"""The Ready condition's reason while the stable revision has no ready server."""
WAITING_FOR_CANARY = "WaitingForCanaryReadiness"
"""The Progressing condition's reason while a new canary has no ready pod yet."""


def has_served(status: Mapping[str, Any]) -> bool:
    """Whether a revision of the model has served traffic: the status is past its first Pending
    (the shared Service exists, an HTTPRoute points at a revision)."""
    phase = status.get("phase")
    return bool(phase) and (phase != Phase.PENDING.value or bool(status.get("canaryRevision")))


def degraded_reason(status: Mapping[str, Any]) -> str | None:
    """Why the model is Degraded, as its status says; None while it is not."""
    found = next((c for c in status.get("conditions") or [] if c.get("type") == DEGRADED), None)
    return found.get("reason") if found and found.get("status") == "True" else None


Condition = tuple[str, str, str]
"""(status, reason, message) of a condition."""


def evaluation_condition(rollout: RolloutSpec, share: float | None) -> Condition | None:
    """EVALUATION for the revision `rollout` serves, whose evaluation rows the shadow's rule counted
    `share` of (None: not known, not written). Over the SLO the analysis judges by, its canary will
    burn the budget from the first step: said before the analysis windows say it, never refused (the
    analysis decides, as with Flagger or Argo Rollouts)."""
    if share is None:
        return None
    budget = next(o.budget for o in rollout.objectives if o.sli is slo.SLI.ACCURACY_DELTA)
    said = (
        f"{rollout.revision}'s evaluation rows (a token model's each by its share of positions): "
        f"{share:.2%} disagree with FP32 by the shadow SLI's rule (validation.shadow_disagreement)"
    )
    if share <= budget + 1e-12:  # as quantize's own warning: the digits sample is right at 0.5%
        return (
            "True",
            "ShadowDisagreementWithinSLO",
            f"{said}, within the accuracy-delta SLO's {budget:.2%}",
        )
    fits = math.ceil(round(share * 1e4, 6)) / 1e4  # rounded up: at least the share itself
    threshold = rollout.analysis.burn_rate_threshold
    return (
        "False",
        OVER_SLO,
        f"{said}, over the accuracy-delta SLO's {budget:.2%} (spec.slos.maxAccuracyDelta): on traffic "
        f"like them its canary burns that budget at ~{share / budget:.1f}x (a step fails above "
        f"{threshold:g}, spec.analysis.burnRateThreshold). Raise spec.slos.maxAccuracyDelta to at least "
        f"{fits:g}, or quantize again gating on what the shadow counts (spec.quantize.options.metric "
        "top1_agreement, or confident_agreement where the scores say how sure FP32 is) or with better "
        "calibration data",
    )


def conditions(
    previous: Sequence[Mapping[str, Any]],
    status: RolloutStatus,
    *,
    degraded: tuple[str, str] | None,
    generation: int | None,
    now: float,
    placed: Condition | None = None,
    stable_ready: bool | None = None,
    evaluation: Condition | None = None,
) -> list[dict[str, Any]]:
    """The three conditions for `status`; `degraded` is (reason, message) when something is wrong;
    `placed` the (status, reason, message) of GateHardwareMatched and `evaluation` of
    EvaluationWithinAccuracySLO, each written only when given; `stable_ready` whether the stable
    revision has a ready server (None: not known)."""
    serving = status.stable is not None and not (status.phase is Phase.PENDING and status.canary is None)
    old = {condition.get("type"): condition for condition in previous}
    was = old.get(READY, {})
    unread = stable_ready is None and status.stable is not None
    if (
        unread
        and was.get("reason") == STABLE_NOT_READY
        and was.get("message", "").startswith(f"{status.stable} ")
    ):
        stable_ready = False  # not read this time (a tick that failed): what was last known holds
    if serving and stable_ready is False:  # `kubectl wait --for=condition=Ready` means it serves
        ready = ("False", STABLE_NOT_READY, f"{status.stable} has no ready server")
    elif serving:
        share = 100 - round(status.achieved_weight) if status.canary else 100
        ready = ("True", "StableServing", f"{status.stable} serves {share}% of traffic")
    else:
        ready = ("False", "NotServing", status.message or "no revision is ready yet")
    if status.in_flight and status.canary and status.step < 0:
        progressing = ("True", WAITING_FOR_CANARY, status.message)
    elif status.in_flight and status.canary:
        progressing = ("True", status.phase.value, status.message)
    elif status.in_flight:
        progressing = ("True", "FirstRevision", status.message)
    else:
        progressing = ("False", status.phase.value, status.message)
    trouble = ("True", *degraded) if degraded else ("False", "AsExpected", "")
    built = []
    kinds = [(READY, ready), (PROGRESSING, progressing), (DEGRADED, trouble)]
    if placed is not None:
        kinds.append((GATE_HARDWARE, placed))
    if evaluation is not None:
        kinds.append((EVALUATION, evaluation))
    for kind, (state, reason, message) in kinds:
        before = old.get(kind, {})
        since = before.get("lastTransitionTime") if before.get("status") == state else None
        condition = {
            "type": kind,
            "status": state,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since or to_timestamp(now),
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        built.append(condition)
    return built


def status_body(
    previous: Mapping[str, Any],
    status: RolloutStatus,
    *,
    degraded: tuple[str, str] | None,
    generation: int | None,
    now: float,
    placed: Condition | None = None,
    stable_ready: bool | None = None,
    evaluation: Condition | None = None,
) -> dict[str, Any]:
    """The full `status` to merge-patch: keys that became None are removed by the merge."""
    body = status.to_dict()
    body["accuracyDelta"] = short_window_ratio(status.last_analysis, slo.SLI.ACCURACY_DELTA)
    body["observedGeneration"] = generation
    body["conditions"] = conditions(
        previous.get("conditions") or [],
        status,
        degraded=degraded,
        generation=generation,
        now=now,
        placed=placed,
        stable_ready=stable_ready,
        evaluation=evaluation,
    )
    return body


def changed(previous: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether writing `body` would change anything (ignoring timestamps of unchanged conditions)."""
    return any(previous.get(key) != value for key, value in body.items() if value is not None) or any(
        value is None and key in previous for key, value in body.items()
    )
