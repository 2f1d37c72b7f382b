"""The QuantizedModel's status schema: what the operator writes (status.py, reconcile.py) and
resumes from after a restart, with the phases and quantize states it names.
"""

from __future__ import annotations

from typing import Any

from quantship.operator import crd_fields

GATE_FAILED = "GateFailed"
"""status.phase when spec.quantize's Job failed its accuracy gate: no canary, the stable serves on."""
QUANTIZE_STATES = ("Running", "Passed", GATE_FAILED, "Error")
"""status.quantize.state: the Job runs; its gate passed; its gate failed; it failed otherwise."""


def status_schema() -> dict[str, Any]:
    condition = crd_fields.object_of(
        "A metav1.Condition.",
        {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
        required=["type", "status"],
    )
    nullable_string = {"type": "string", "nullable": True}
    return crd_fields.object_of(
        "Where the rollout stands. Written by the operator only; it resumes from here after a restart.",
        {
            "phase": {
                "type": "string",
                "enum": ["Pending", "Progressing", "Promoted", "RolledBack", "Failed", GATE_FAILED],
                "description": "The rollout's phase; GateFailed: spec.quantize's Job failed its "
                "accuracy gate (status.quantize has the numbers) and the stable serves on.",
            },
            "quantize": crd_fields.object_of(
                "spec.quantize's last Job and its gate verdict.",
                {
                    "job": {"type": "string"},
                    "hash": {"type": "string", "description": "Of the spec.quantize the Job runs."},
                    "state": {"type": "string", "enum": list(QUANTIZE_STATES)},
                    "metric": nullable_string,
                    "value": {"type": "number", "nullable": True},
                    "threshold": {"type": "number", "nullable": True},
                    "artifact": {**nullable_string, "description": "The artifact it produced."},
                    "message": {"type": "string"},
                    "startedAt": nullable_string,
                    "finishedAt": nullable_string,
                    "waiting": {
                        **nullable_string,
                        "description": "Why the running Job's pod has not started (ImagePullBackOff, "
                        "Unschedulable, CreateContainerConfigError); the message has the details.",
                    },
                    "found": {
                        "type": "boolean",
                        "nullable": True,
                        "description": "The Job was there already, finished (the section was reverted to): "
                        "its outcome is recorded without an event.",
                    },
                    "rolloutPhase": {
                        **nullable_string,
                        "description": "The rollout engine's phase while phase reads GateFailed.",
                    },
                },
                nullable=True,
            ),
            "quantizedArtifact": crd_fields.object_of(
                "The artifact of the last Job whose gate passed: served instead of spec.artifact while "
                "spec.quantize is set.",
                {
                    "uri": {"type": "string"},
                    "job": {"type": "string"},
                    "target": {
                        "type": "string",
                        "description": "The spec.quantize.target.uri it was published to.",
                    },
                    "pullSecret": {
                        "type": "string",
                        "description": "That target's pullSecret: the servers fetch the artifact with it.",
                    },
                    "int8Flags": {
                        "type": "array",
                        "items": {"type": "string"},
                        "nullable": True,
                        "description": "The int8 CPU features of the machine its gate ran on (its manifest's "
                        "validation.hardware), for spec.placement.matchGateHardware.",
                    },
                    "shadowDisagreement": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 1,
                        "nullable": True,
                        "description": "The share of its evaluation rows the servers' shadow SLI counts as "
                        "disagreeing with FP32 (its manifest's validation.shadow_disagreement): over "
                        "spec.slos.maxAccuracyDelta, condition EvaluationWithinAccuracySLO is False.",
                    },
                },
                nullable=True,
            ),
            "stableRevision": nullable_string,
            "canaryRevision": nullable_string,
            "rejectedRevision": nullable_string,
            "retiringRevisions": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Revisions whose Deployments are being removed: once the status naming "
                "their successor is saved, and once the stable has all its servers ready (a rollback "
                "keeps the canary's servers until then; past spec.rollout.progressDeadline from "
                "retiringSince, once it has one).",
            },
            "retiringSince": {
                **nullable_string,
                "description": "When the last decision that retired a revision was taken.",
            },
            "step": {"type": "integer", "description": "Index into spec.rollout.steps; -1 before the first."},
            "weight": {"type": "integer", "description": "Canary weight asked, percent."},
            "achievedWeight": {
                "type": "number",
                "description": "Canary weight the router achieved, percent.",
            },
            "accuracyDelta": {
                "type": "number",
                "nullable": True,
                "description": "Canary's share of shadow disagreements on the short window, last judgement.",
            },
            "startedAt": nullable_string,
            "stepStartedAt": nullable_string,
            "failures": {"type": "integer"},
            "inconclusive": {"type": "integer"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "lastAnalysis": {
                "type": "object",
                "nullable": True,
                "description": "The last judgement: verdict, reason, and per SLO and window the counts, "
                "burn rates, budget and threshold that decided it.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "history": {
                "type": "array",
                "description": "The last decisions (steps, promotions, rollbacks) with their reasons. A "
                "held judgement that finds what the one before it found is counted in that one's entry "
                "(count; firstAt: when the first of them was).",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "kopf": {
                "type": "object",
                "description": "The kopf framework's handler progress.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    )
