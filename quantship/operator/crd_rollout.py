"""The sections of the QuantizedModel's spec that drive the canary: spec.traffic (how it is
split), spec.rollout (its steps), spec.slos (its error budgets) and spec.analysis (how each step is
judged). Their defaults are the rollout engine's (AnalysisSpec, RolloutSpec) and slo.py's.
"""

from __future__ import annotations

from typing import Any

from quantship import slo
from quantship.operator import crd_fields, crd_rules, names
from quantship.rollout import AnalysisSpec, OnInconclusive, RolloutSpec, format_duration


def traffic_schema() -> dict[str, Any]:
    """spec.traffic: how traffic is split."""
    return crd_fields.object_of(
        "How traffic is split between the stable and the canary revision.",
        {
            "router": {
                "type": "string",
                "enum": ["gateway-api", "replicas"],
                "default": "replicas",
                "description": "gateway-api: set the weights of this model's backendRefs in an HTTPRoute. "
                "replicas: one Service over both revisions, split by replica ratio (coarse; status shows "
                "the achieved weight).",
            },
            "httpRoute": crd_fields.name_of(
                "gateway-api only: the HTTPRoute (same namespace) whose rules reference the "
                "Service named like this resource; only those backendRefs are rewritten."
            ),
            "port": crd_fields.integer("Service port of the model servers.", 1, 65535, 8080),
        },
        # The API server evaluates every rule against `default: {}` too, before nested defaults:
        # each rule must hold where a field it reads is absent.
        **{"x-kubernetes-validations": [crd_rules.GATEWAY_NEEDS_ROUTE, crd_rules.PORT_NOT_GRPC]},
    )


def rollout_schema() -> dict[str, Any]:
    """spec.rollout: the canary steps (defaults: the engine's RolloutSpec)."""
    return crd_fields.object_of(
        "The canary steps.",
        {
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": crd_rules.MAX_STEPS,
                "items": {"type": "integer", "minimum": 1, "maximum": 100},
                "x-kubernetes-validations": [crd_rules.STEPS_INCREASE],
                "default": list(crd_fields.default_of(RolloutSpec, "steps")),
                "description": "Canary weights in percent, increasing. Passing the last step promotes; "
                "edited mid-canary, a step passed goes on to the first weight above the canary's.",
            },
            "stepInterval": crd_fields.duration(
                "rollout.stepInterval",
                "How long each step lasts before it is judged.",
                format_duration(crd_fields.default_of(RolloutSpec, "step_interval")),
            ),
            "progressDeadline": crd_fields.duration(
                "rollout.progressDeadline",
                "How long a new revision may take to become ready.",
                format_duration(crd_fields.default_of(RolloutSpec, "progress_deadline")),
            ),
        },
    )


def slos_schema() -> dict[str, Any]:
    """spec.slos: the error budgets (defaults: slo.DEFAULT_OBJECTIVES, as the generated rules)."""
    # Defaults are the SLOs the generated alert rules and dashboards use: one source, slo.py.
    default = {objective.sli: objective for objective in slo.DEFAULT_OBJECTIVES}
    latency_default = default[slo.SLI.LATENCY]
    latency = crd_fields.object_of(
        "Latency SLO: `objective` of requests finish within `thresholdSeconds`.",
        {
            "thresholdSeconds": {
                "type": "number",
                "enum": list(slo.LATENCY_BUCKETS),
                "default": latency_default.latency_threshold,
                "description": "A bucket of quantship_request_duration_seconds.",
            },
            "objective": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "exclusiveMaximum": True,
                "default": round(1 - latency_default.budget, 12),
                "description": "Share of requests that must be faster; 1 - objective is the error budget.",
            },
        },
    )
    return crd_fields.object_of(
        "Error budgets of the canary. Burn rate = measured bad ratio / budget.",
        {
            "maxAccuracyDelta": crd_fields.ratio(
                "Share of shadow comparisons whose top-1 may disagree with FP32.",
                default[slo.SLI.ACCURACY_DELTA].budget,
            ),
            "latency": {**latency, "default": {}},
            "maxErrorRate": crd_fields.ratio(
                "Share of requests that may fail with 5xx.", default[slo.SLI.ERRORS].budget
            ),
            "maxClipRate": crd_fields.ratio(
                "Share of activation values that may fall outside calibration.",
                default[slo.SLI.CLIP_RATE].budget,
            ),
            "maxFallbackOps": crd_fields.integer(
                "Ops that may run in float instead of quantized (a hard gate).",
                0,
                10000,
                crd_fields.default_of(AnalysisSpec, "max_fallback_ops"),
            ),
        },
    )


def analysis_schema() -> dict[str, Any]:
    """spec.analysis: how each step is judged (defaults: the engine's AnalysisSpec)."""
    return crd_fields.object_of(
        "How each step is judged: multi-window burn rates from Prometheus.",
        {
            "prometheusUrl": {
                "type": "string",
                "pattern": r"^https?://.+",
                "default": "http://prometheus-operated.monitoring.svc:9090",
                "description": "Prometheus that scrapes the model servers.",
            },
            "shortWindow": crd_fields.duration(
                "analysis.shortWindow",
                "Recent window: is the burn still going on?",
                format_duration(crd_fields.default_of(AnalysisSpec, "short_window")),
            ),
            "longWindow": crd_fields.duration(
                "analysis.longWindow",
                "Longer window, longer than shortWindow: is the burn significant?",
                format_duration(crd_fields.default_of(AnalysisSpec, "long_window")),
            ),
            "burnRateThreshold": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 1000,
                "default": crd_fields.default_of(AnalysisSpec, "burn_rate_threshold"),
                "description": "A breach is a burn rate above this on both windows.",
            },
            "maxBurnRateIncrease": {
                "type": "number",
                "minimum": 0,
                "maximum": 1000,
                "default": crd_fields.default_of(AnalysisSpec, "max_burn_rate_increase"),
                "description": "The canary's burn rate may exceed the stable revision's by at most this "
                "much on both windows (catches a regression inside the absolute SLO).",
            },
            "minSamples": crd_fields.integer(
                "Events an SLI needs on a window to be judged; fewer is inconclusive.",
                1,
                10**9,
                crd_fields.default_of(AnalysisSpec, "min_samples"),
            ),
            "failureLimit": crd_fields.integer(
                "Failed judgements that roll the canary back.",
                1,
                100,
                crd_fields.default_of(AnalysisSpec, "failure_limit"),
            ),
            "inconclusiveLimit": crd_fields.integer(
                "Inconclusive judgements in a row before onInconclusive.",
                1,
                100,
                crd_fields.default_of(AnalysisSpec, "inconclusive_limit"),
            ),
            "onInconclusive": {
                "type": "string",
                "enum": [choice.value for choice in OnInconclusive],
                "default": crd_fields.default_of(AnalysisSpec, "on_inconclusive").value,
                "description": "rollback: without data a canary cannot be shown safe. hold: stay at the "
                "current weight and keep judging.",
            },
            "labels": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Extra label matchers for every query, e.g. {cluster: eu-1}. Names are "
                "Prometheus label names, not model or revision (the operator sets those). Every query "
                f"matches {names.NAMESPACE_LABEL} = the model's namespace unless set here (to '' where "
                "the scrape adds no namespace label, or to the namespace the series carry).",
            },
        },
        **{"x-kubernetes-validations": [crd_rules.WINDOWS_IN_ORDER]},
    )
