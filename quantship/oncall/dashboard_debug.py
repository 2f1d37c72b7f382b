"""The debug dashboard: why an SLI moved. Per-tensor clip rates and drift, fallback ops by type,
shadow volume and dropped samples, batching, per-pod latency and load, model info.
"""

from __future__ import annotations

from quantship import slo
from quantship.oncall import links, rules
from quantship.oncall.dashboard_board import Board, query
from quantship.oncall.dashboard_promql import (
    MODEL,
    NAMED,
    PER_TENSOR,
    RANGE,
    RATE,
    REVISION,
    TRACKS,
    M,
    histogram_quantile,
    latency_quantile,
    per_second,
    per_tensor_clip_rate,
    per_tensor_drift,
)


def debug() -> Board:
    board = Board(
        links.DEBUG_UID,
        "quantship / debug",
        "Why an SLI moved: which tensors clip, which ops fell back, how the batcher and pods behave.",
    )
    board.row("Quantization")
    board.graph(
        "Clip rate per tensor (top 20)",
        "Share of each activation tensor's values outside its calibrated range, per revision and "
        "track. Needs servers run with --per-tensor-metrics.",
        [query(per_tensor_clip_rate(RATE), PER_TENSOR)],
        unit="percentunit",
    )
    board.graph(
        "Activation drift per tensor (top 20)",
        "Jensen-Shannon divergence (bits) of each activation tensor's sampled values from its "
        "calibration histogram, per revision and track. Needs servers run with --per-tensor-metrics. "
        "Dashed: the "
        f"per-tensor alert threshold ({rules.DRIFT_TENSOR_THRESHOLD:g}).",
        [query(per_tensor_drift(), PER_TENSOR)],
        unit="none",
        steps={rules.DRIFT_TENSOR_THRESHOLD: "orange"},
    )
    board.heat_map(
        "Activation drift heat map (every tensor)",
        "One row per activation tensor of each revision and track: where in the network traffic "
        "moved away from calibration, and when. Darkest at and above twice the per-tensor alert threshold "
        f"({rules.DRIFT_TENSOR_THRESHOLD:g} bits). Needs servers run with --per-tensor-metrics.",
        [query(per_tensor_drift(top=None), PER_TENSOR)],
        unit="none",
        top=2 * rules.DRIFT_TENSOR_THRESHOLD,
    )
    board.graph(
        "Fallback ops by type",
        "Ops meant to run quantized that run in float or off the preferred provider, by op type.",
        [
            query(
                f"max by (namespace, model, revision, op_type) ({slo.with_labels(M.FALLBACK_OPS, MODEL)})",
                "{{namespace}}/{{model}} {{revision}} {{op_type}}",
            )
        ],
        unit="none",
    )
    board.graph(
        "Shadow comparison volume",
        "Rows per second also run through the FP32 reference, and those that disagreed.",
        [
            query(per_second(M.SHADOW_COMPARISONS_TOTAL, TRACKS), f"compared {REVISION}"),
            query(
                per_second(M.SHADOW_DISAGREEMENTS_TOTAL, TRACKS),
                f"disagreed {REVISION}",
            ),
        ],
        unit="reqps",
    )
    board.graph(
        "Sampled work dropped",
        "Samples the SLIs skipped: the background worker was behind (it runs on idle CPU only), the SLI "
        "CPU budget (--sli-cpu-budget; a canary's --canary-sli-cpu-budget where set) was spent, or a "
        "capture row had another shape. Budget drops are by design at high traffic, and on a canary (which "
        "offers every request to the shadow lane) at any; the SLIs then rest on fewer samples a minute. "
        f"Behind drops over {slo.STARVED_BEHIND_PER_S:g} a second from one server mean its CPU is busy "
        "serving (alert QuantshipSliStarved, on the on-call dashboard): more CPU or replicas help; a "
        "larger budget does not.",
        [
            query(
                per_second(M.SAMPLES_DROPPED_TOTAL, (*NAMED, "track", "kind", "reason")),
                "{{namespace}}/{{model}} {{track}} {{kind}} {{reason}}",
            )
        ],
        unit="reqps",
    )
    board.row("Batching and pods")
    board.graph(
        "Batch size",
        "Rows per onnxruntime call: mean and p95.",
        [
            query(
                f"{per_second(f'{M.BATCH_SIZE}_sum', TRACKS)} / "
                f"{per_second(M.BATCH_SIZE.observations, TRACKS)}",
                f"mean {REVISION}",
            ),
            # interpolated inside the first bucket (0, 1], p95 could read 0.97 rows: a call has one at least
            query(
                f"clamp_min({histogram_quantile(M.BATCH_SIZE, 0.95, TRACKS)}, 1)",
                f"p95 {REVISION}",
            ),
        ],
        unit="none",
        span=8,
    )
    board.graph(
        "Queue time p95",
        "Time a request waits in the batcher before its batch starts.",
        [
            query(
                histogram_quantile(M.QUEUE_DURATION_SECONDS, 0.95, TRACKS),
                REVISION,
            )
        ],
        unit="s",
        span=8,
    )
    board.graph(
        "Latency p95 per pod",
        "Successful inference requests, per pod (scrape instance).",
        [
            query(
                latency_quantile(0.95, (*NAMED, "pod", "instance")),
                "{{namespace}}/{{model}} {{pod}} {{instance}}",
            )
        ],
        unit="s",
        span=8,
    )
    board.graph(
        "Requests per second by status",
        "Inference requests answered, by HTTP status code.",
        [
            query(
                per_second(M.REQUESTS_TOTAL, (*NAMED, "track", "code")),
                "{{namespace}}/{{model}} {{track}} {{code}}",
            )
        ],
        unit="reqps",
        span=12,
    )
    board.graph(
        "Requests in flight",
        "Inference requests being decoded, queued or run now, per pod.",
        [
            query(
                f"sum by (namespace, model, instance) ({slo.with_labels(M.REQUESTS_IN_FLIGHT, MODEL)})",
                "{{namespace}}/{{model}} {{instance}}",
            )
        ],
        unit="short",
        span=12,
    )
    board.row("Model")
    board.table(
        "Model info",
        "What each pod loaded: precision, quantization mode, calibration method and data hash, runtime.",
        [query(slo.with_labels(M.MODEL_INFO, MODEL), instant=True, as_table=True)],
    )
    board.number(
        "Cold start",
        "Seconds to verify, load and analyse the artifact.",
        [
            query(
                f"max by (namespace, model, revision) ({slo.with_labels(M.MODEL_LOAD_SECONDS, MODEL)})",
                "{{namespace}}/{{model}} {{revision}}",
                instant=True,
            )
        ],
        unit="s",
        span=12,
    )
    failures = slo.with_labels(M.MODEL_LOAD_FAILURES_TOTAL, MODEL)
    board.number(
        "Load failures over the time range",
        "Artifacts refused (hash, signature, format) or unloadable, by reason.",
        [
            query(
                f"sum by (namespace, model, reason) (increase({failures}[{RANGE}]))",
                "{{namespace}}/{{model}} {{reason}}",
                instant=True,
            )
        ],
        unit="short",
        span=12,
        steps={1: "red"},
    )
    return board
