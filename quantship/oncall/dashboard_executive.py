"""The executive dashboard: is quantization paying off? Accuracy kept, latency, error budgets
spent, size saved by INT8, rollouts and what serves now.
"""

from __future__ import annotations

from quantship import slo
from quantship.oncall import links, rules
from quantship.oncall.dashboard_board import Board, query
from quantship.oncall.dashboard_promql import (
    MODEL,
    NAMED,
    RANGE,
    RATE,
    M,
    latency_quantile,
    rollouts,
    size_bytes,
    sli_title,
)

OBJECTIVES = {objective.sli: objective for objective in slo.DEFAULT_OBJECTIVES}


def executive() -> Board:
    board = Board(
        links.EXECUTIVE_UID,
        "quantship / executive",
        "Is quantization paying off? Accuracy kept, latency, error budgets, size saved, rollouts.",
    )
    accuracy = OBJECTIVES[slo.SLI.ACCURACY_DELTA]
    board.row("Quality")
    board.graph(
        "Accuracy delta per model",
        "Share of shadow comparisons where the INT8 output disagrees with the FP32 reference. "
        f"Dashed: the default budget ({accuracy.budget:.1%}); a model's spec.slos may set its own.",
        [query(slo.ratio(accuracy, RATE, MODEL, NAMED), "{{namespace}}/{{model}}")],
        unit="percentunit",
        steps={accuracy.budget: "red"},
    )
    board.graph(
        "Latency p95 per model",
        "95th percentile of successful inference requests, end to end.",
        [query(latency_quantile(0.95, NAMED), "{{namespace}}/{{model}}")],
        unit="s",
    )
    board.number(
        f"Error budget spent, last {slo.SLO_PERIOD}",
        f"Share of each SLO's error budget spent over its period ({slo.SLO_PERIOD}, or as far back as "
        "Prometheus keeps data): the bad ratio over the period / the model's own budget (its spec.slos, "
        "as the operator reports it), or the default where none is reported, as the burn alerts judge "
        "it. 100% is the whole budget; the burn rate panels of the on-call dashboard show how fast it "
        "goes now.",
        [
            query(
                rules.burn_rate(objective, slo.ratio(objective, slo.SLO_PERIOD, MODEL, NAMED)),
                f"{{{{namespace}}}}/{{{{model}}}} {sli_title(objective.sli)}",
                instant=True,
            )
            for objective in slo.DEFAULT_OBJECTIVES
        ],
        unit="percentunit",
        span=24,
        steps={0.5: "yellow", 1.0: "red"},
    )
    board.row("Cost")
    board.number(
        "Size saving of INT8",
        "1 - INT8 model bytes / FP32 reference bytes: memory, image and transfer cost saved.",
        [
            query(
                f"1 - {size_bytes('quantized')} / {size_bytes('reference')}",
                "{{namespace}}/{{model}} {{revision}}",
                instant=True,
            )
        ],
        unit="percentunit",
        span=8,
    )
    board.graph(
        "Model size, INT8 vs FP32",
        "Bytes of the served INT8 model and of its FP32 reference, from the artifact's manifest.",
        [
            query(
                f"max by (namespace, model, variant) ({slo.with_labels(M.MODEL_SIZE_BYTES, MODEL)})",
                "{{namespace}}/{{model}} {{variant}}",
            )
        ],
        unit="bytes",
        span=16,
    )
    board.row("Rollouts")
    board.number(
        "Canary weight",
        "Share of traffic on the canary now: 0 when no rollout is in progress.",
        [
            query(
                f"max by (namespace, model) ({slo.with_labels(M.ROLLOUT_WEIGHT, MODEL)})",
                "{{namespace}}/{{model}}",
                instant=True,
            )
        ],
        unit="percent",
        span=8,
    )
    board.table(
        "Rollouts over the time range",
        "Rollouts that ended in the dashboard's time range, by result (promoted, rolled_back, failed).",
        [query(rollouts(RANGE), instant=True, as_table=True)],
        span=16,
    )
    board.table(
        "What serves now",
        "Each revision and track loaded, with its precision and quantization.",
        [query(slo.with_labels(M.MODEL_INFO, MODEL), instant=True, as_table=True)],
    )
    return board


# -- on-call -------------------------------------------------------------------------------------
