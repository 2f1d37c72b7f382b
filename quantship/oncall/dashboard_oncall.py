"""The on-call dashboard: which SLO burns, how fast, on which revision, and what the rollout did
about it (burn rates against the alert tiers, the SLIs by track, shedding, drift, hardware,
canary weight and judgements; promotions and rollbacks as annotations).
"""

from __future__ import annotations

from quantship import slo
from quantship.oncall import links, rules
from quantship.oncall.dashboard_board import Board, query
from quantship.oncall.dashboard_promql import (
    MODEL,
    RANGE,
    RATE,
    TRACKS,
    M,
    burn_rate,
    hardware_mismatch,
    latency_quantile,
    overall_drift,
    rollouts,
    rollouts_ended,
    sli_title,
)

BURN_COLORS = {1.0: "yellow", 3.0: "orange", 6.0: "red", 14.4: "dark-red"}
"""Burn-rate thresholds drawn on the burn panels: the factors of slo.BURN_WINDOWS."""

SLI_MEANING = {
    slo.SLI.ACCURACY_DELTA: "Share of shadow comparisons where INT8 disagrees with FP32",
    slo.SLI.LATENCY: "Share of requests slower than the latency SLO's threshold",
    slo.SLI.ERRORS: "Share of requests answered 5xx",
    slo.SLI.CLIP_RATE: "Share of activation values outside their calibrated range",
}


def oncall() -> Board:
    board = Board(
        links.ONCALL_UID,
        "quantship / on-call",
        "Which SLO burns, how fast, on which revision; what the rollout did about it.",
    )
    board.annotate(
        "Promotions", "green", rollouts_ended(RATE, "promoted"), "{{namespace}}/{{model}} promoted"
    )
    board.annotate(
        "Rollbacks", "red", rollouts_ended(RATE, "rolled_back|failed"), "{{namespace}}/{{model}} {{result}}"
    )
    board.row("Error budget burn (recording rules; dashed: the alert tiers)")
    for objective in slo.DEFAULT_OBJECTIVES:
        board.graph(
            f"Burn rate: {sli_title(objective.sli)}",
            "Bad ratio over each window divided by the model's own budget (its spec.slos, as the "
            f"operator reports it) or the default ({objective.budget:g}), as the alerts judge it. "
            "Pages at 14.4x (1h and 5m) and 6x (6h and 30m); tickets at 3x (1d and 2h) and 1x (3d and 6h).",
            [
                query(
                    burn_rate(objective, window),
                    f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {window}",
                )
                for window in slo.RULE_WINDOWS
            ],
            unit="suffix:x",
            steps=BURN_COLORS,
        )
    board.row("SLIs by revision")
    for objective in slo.DEFAULT_OBJECTIVES:
        board.graph(
            f"{sli_title(objective.sli).capitalize()}: bad ratio",
            f"{SLI_MEANING[objective.sli]}, per revision and track. Dashed: the default budget (a model's "
            "spec.slos may set its own: the burn rates divide by it).",
            [
                query(
                    slo.ratio(objective, RATE, MODEL, TRACKS),
                    "{{namespace}}/{{model}} {{track}} {{revision}}",
                )
            ],
            unit="percentunit",
            span=6,
            steps={objective.budget: "red"},
        )
    board.graph(
        "Latency p95 and p99",
        "Successful inference requests, end to end, per revision and track.",
        [
            query(latency_quantile(0.95, TRACKS), "p95 {{namespace}}/{{model}} {{track}} {{revision}}"),
            query(latency_quantile(0.99, TRACKS), "p99 {{namespace}}/{{model}} {{track}} {{revision}}"),
        ],
        unit="s",
    )
    board.number(
        "Fallback ops",
        "Ops meant to run quantized that run in float, per revision: any is a ticket.",
        [
            query(
                slo.fallback_ops_or_zero(MODEL, TRACKS),
                "{{namespace}}/{{model}} {{track}} {{revision}}",
                instant=True,
            )
        ],
        unit="none",
        steps={1: "red"},
    )
    board.graph(
        "SLI samples dropped as behind",
        "Samples a second each revision's most starved server drops because its SLI worker, which "
        f"runs on idle CPU only, is behind, averaged over {rules.SLI_STARVED_WINDOW} as "
        "QuantshipSliStarved judges it. Dashed: the alert threshold "
        f"({slo.STARVED_BEHIND_PER_S:g} a second). Over it, the server's cores are busy serving and its "
        "SLIs see few samples: more CPU or replicas help, a budget does not. Budget drops, by design, "
        "are on the debug dashboard (Sampled work dropped).",
        [query(rules.sli_starved(MODEL), "{{namespace}}/{{model}} {{track}} {{revision}} {{kind}}")],
        unit="reqps",
        span=6,
        steps={slo.STARVED_BEHIND_PER_S: "orange"},
    )
    board.graph(
        "Requests shed (429)",
        "Share of each revision's requests answered 429 because its batcher's queue was full, over "
        f"{rules.SHED_WINDOW} and {rules.SHED_SHORT_WINDOW} as QuantshipRequestsShed judges it (both "
        f"above the dashed threshold, {rules.SHED_RATIO:.0%}, for {rules.SHED_FOR}). No SLO counts them: "
        "nothing was done for them, so neither the errors nor the latency SLI sees them. Lasting "
        "shedding wants replicas.",
        [
            query(
                rules.shed_ratio(MODEL, window),
                f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {window}",
            )
            for window in (rules.SHED_WINDOW, rules.SHED_SHORT_WINDOW)
        ],
        unit="percentunit",
        span=6,
        steps={rules.SHED_RATIO: "orange"},
    )
    board.row("Quantization health")
    overall, largest = (
        slo.with_labels(rule, MODEL) for rule in (rules.drift_rule(), rules.drift_tensor_rule())
    )
    board.graph(
        "Activation drift",
        "Jensen-Shannon divergence (bits) of sampled activations from the calibration histograms, "
        f"mean over tensors: now, and averaged over {rules.DRIFT_WINDOW} as QuantshipActivationDrift "
        "judges it, against each model's threshold (its own where the chart's alerts.driftThresholds "
        f"sets one). Dashed: the default threshold ({rules.DRIFT_THRESHOLD:g}).",
        [
            query(
                overall,
                f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {rules.DRIFT_WINDOW}",
            ),
            query(overall_drift(), "{{namespace}}/{{model}} {{track}} {{revision}} now"),
            query(rules.model_threshold(overall, rules.DRIFT_THRESHOLD, tensor=False), "{{model}} threshold"),
        ],
        unit="none",
        span=12,
        steps={rules.DRIFT_THRESHOLD: "orange"},
    )
    board.graph(
        "Activation drift, most drifted tensor",
        f"The drift of the most drifted activation tensor, each averaged over {rules.DRIFT_WINDOW}, as "
        "QuantshipActivationDriftTensor judges it, against each model's threshold. Dashed: the default "
        f"({rules.DRIFT_TENSOR_THRESHOLD:g}). Needs servers run with --per-tensor-metrics; which tensor: "
        "the debug dashboard.",
        [
            query(
                largest,
                f"{{{{namespace}}}}/{{{{model}}}} {{{{track}}}} {{{{revision}}}} {rules.DRIFT_WINDOW}",
            ),
            query(
                rules.model_threshold(largest, rules.DRIFT_TENSOR_THRESHOLD, tensor=True),
                "{{model}} threshold",
            ),
        ],
        unit="none",
        span=12,
        steps={rules.DRIFT_TENSOR_THRESHOLD: "orange"},
    )
    board.number(
        "Hardware mismatch",
        "1 where a revision serves on hardware unlike the gate's, by aspect (int8_flags, "
        "onnxruntime, provider): a ticket.",
        [
            query(
                hardware_mismatch(), "{{namespace}}/{{model}} {{track}} {{revision}} {{aspect}}", instant=True
            )
        ],
        unit="none",
        steps={1: "orange"},
    )
    board.number(
        "Nondeterministic outputs",
        "1 where a fixed probe input run twice at load gave different outputs: a ticket.",
        [
            query(
                f"max by ({', '.join(TRACKS)}) ({slo.with_labels(M.NONDETERMINISTIC_OUTPUTS, MODEL)})",
                "{{namespace}}/{{model}} {{track}} {{revision}}",
                instant=True,
            )
        ],
        unit="none",
        steps={1: "red"},
    )
    board.table(
        "Hardware: serving and gate",
        "Per side (serving, gate): CPU, its int8 features, onnxruntime version, execution provider.",
        [query(slo.with_labels(M.HARDWARE_INFO, MODEL), instant=True, as_table=True)],
        span=12,
    )
    board.row("Rollout")
    board.graph(
        "Canary weight",
        "Share of traffic the operator sends to the canary.",
        [
            query(
                f"max by (namespace, model) ({slo.with_labels(M.ROLLOUT_WEIGHT, MODEL)})",
                "{{namespace}}/{{model}}",
            )
        ],
        unit="percent",
        span=8,
    )
    board.graph(
        "Canary burn rates the operator judged",
        "Burn rate of each SLO on the analysis windows at the last judgement.",
        [
            query(
                f"max by (namespace, model, slo, window) ({slo.with_labels(M.BURN_RATE, MODEL)})",
                "{{namespace}}/{{model}} {{slo}} {{window}}",
            )
        ],
        unit="suffix:x",
        span=8,
    )
    analyses = slo.with_labels(M.ANALYSIS_TOTAL, MODEL)
    board.graph(
        "Analysis verdicts",
        "Judgements per interval: pass, fail, inconclusive.",
        [
            query(
                f"sum by (namespace, model, result) (increase({analyses}[{RATE}]))",
                "{{namespace}}/{{model}} {{result}}",
            )
        ],
        unit="short",
        span=8,
    )
    board.table(
        "Recent promotions and rollbacks",
        "Rollouts that ended in the dashboard's time range, by result.",
        [query(rollouts(RANGE), instant=True, as_table=True)],
    )
    return board


# -- debug ---------------------------------------------------------------------------------------
