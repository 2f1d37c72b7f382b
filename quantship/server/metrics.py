"""Every metric of the model server (DESIGN.md, "Metrics (server)"), on a registry passed in.

`create_app` builds one ServerMetrics per app on its own CollectorRegistry and serves it at
/metrics; the service, batcher and SLI workers record through its methods (prometheus_client is
thread-safe, so the background threads record directly). Every series carries `model`,
`revision` and `track` (`quantship.slo.LABELS`). The counters the SLIs read start at 0, so
Prometheus' `increase()` counts the first events after a scrape of the fresh server too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from quantship import slo
from quantship.server import errors, hardware
from quantship.server.settings import SPLIT_MOST_ROWS

# No `*_created` series beside each counter and histogram: a third of a server's series, and no rule,
# dashboard or analysis reads them (process-wide: prometheus_client keeps it as a module flag).
disable_created_metrics()

M = slo.Metric
LABELS = list(slo.LABELS)
QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOAD_FAILURE_REASONS = (
    "missing", "format", "hash_mismatch", "signature", "key", "io", "unsafe_archive", "reference", "model",
    "hardware", "internal",
)  # fmt: skip
"""ArtifactError reasons (quantship/artifact.py) plus the server's own: a reference that does not fit
the model, a model onnxruntime cannot load or serve, serving hardware that differs from the gate's
under `--require-gate-hardware`, and a failure of the server's own code while
loading (a bug, logged with its traceback: not the artifact's fault). Each starts at 0."""
FEEDBACK_VARIANTS = ("quantized", "reference")
MODEL_INFO_LABELS = ("precision", "quant_mode", "calibration_method", "calibration_sha256", "runtime_version")
DRIFT_OVERALL = "all"
"""The `tensor` label of the overall drift series (the mean over tensors), exported always; the
per-tensor series only with --per-tensor-metrics. Select per-tensor series with tensor!="all"."""
HARDWARE_INFO_LABELS = ("side", "cpu", "int8_flags", "onnxruntime", "provider")


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to the first one that holds the largest call the server makes of any model: a
    merged batch (`max_batch_size`), or a call of a request split into calls, which may take more
    rows (SPLIT_MOST_ROWS: batch_policy.BatchPolicy.split_rows). Only a large request that must run
    in one call (an output without the batch dimension) lands past them, in +Inf."""
    largest = max(max_batch_size, SPLIT_MOST_ROWS)
    buckets, size = [], 1
    while True:
        buckets.append(float(size))
        if size >= largest:
            return tuple(buckets)
        size *= 2


@dataclass(frozen=True)
class Series:
    """One metric of the server: its attribute on ServerMetrics, its name, type and help."""

    attribute: str
    metric: slo.Metric
    kind: type[Counter] | type[Gauge] | type[Histogram]
    doc: str
    extra: tuple[str, ...] = ()
    """Labels beyond model/revision/track; with none, the attribute is the bound child."""
    unbound: bool = False
    """Keep the family even without extra labels: its one series appears only when first set."""
    per_tensor: bool = False
    """Only with --per-tensor-metrics (one series per quantized tensor)."""


SERIES = (
    Series("requests", M.REQUESTS_TOTAL, Counter, "Inference requests by HTTP status.", ("code",)),
    Series(
        "request_duration",
        M.REQUEST_DURATION_SECONDS,
        Histogram,
        "End-to-end latency of successful inference requests, from the first byte read to the answer.",
    ),
    Series("batch_size", M.BATCH_SIZE, Histogram, "Rows per onnxruntime call of the served model."),
    Series(
        "queue_duration",
        M.QUEUE_DURATION_SECONDS,
        Histogram,
        "Time a request waited in the batcher before its batch started.",
    ),
    Series(
        "shadow_comparisons",
        M.SHADOW_COMPARISONS_TOTAL,
        Counter,
        "Rows also run through the FP32 reference and compared (where the manifest's rule judges an "
        "answer per position, a token model's: the rows with a position judged, not padding, and "
        "confident where the gate judged confident answers only).",
    ),
    Series(
        "shadow_disagreements",
        M.SHADOW_DISAGREEMENTS_TOTAL,
        Counter,
        "Compared rows that disagree with the reference by the gate's rule from the manifest (top-1, "
        "on confident rows only where the gate judged those; cosine below the tolerance for embeddings; "
        "relative error above it otherwise; per position, each row by the share of its positions "
        "that disagree).",
    ),
    Series(
        "shadow_disagreeing_rows",
        M.SHADOW_DISAGREEING_ROWS_TOTAL,
        Counter,
        "Compared rows that disagree at all: the disagreements as whole events (per position, the rows "
        "with a position that disagrees), which the canary analysis needs a few of before it may fail "
        "a canary.",
    ),
    Series(
        "feedback",
        M.FEEDBACK_TOTAL,
        Counter,
        "Ground-truth labels fed back, by variant and correctness.",
        ("variant", "correct"),
    ),
    Series(
        "activations_observed",
        M.ACTIVATIONS_OBSERVED_TOTAL,
        Counter,
        "Activation values checked against their calibrated ranges.",
    ),
    Series(
        "activations_clipped",
        M.ACTIVATIONS_CLIPPED_TOTAL,
        Counter,
        "Checked activation values outside their calibrated range.",
    ),
    Series(
        "fallback_ops",
        M.FALLBACK_OPS,
        Gauge,
        "Ops meant to run quantized that run in float or off the preferred provider, by op type.",
        ("op_type",),
    ),
    Series("model_info", M.MODEL_INFO, Gauge, "1 for the loaded model, with what it is.", MODEL_INFO_LABELS),
    Series(
        "model_size_bytes",
        M.MODEL_SIZE_BYTES,
        Gauge,
        "File size of the served model (variant quantized) and of its FP32 reference (variant "
        "reference; an unquantized artifact's model counts as the reference).",
        ("variant",),
    ),
    Series(
        "model_load_seconds",
        M.MODEL_LOAD_SECONDS,
        Gauge,
        "Cold-start time of the loaded model: verify, load, analyse.",
    ),
    Series(
        "model_load_failures",
        M.MODEL_LOAD_FAILURES_TOTAL,
        Counter,
        "Refused or broken artifacts, by reason.",
        ("reason",),
    ),
    Series(
        "requests_in_flight",
        M.REQUESTS_IN_FLIGHT,
        Gauge,
        "Inference requests being answered now (decoding, queued or running).",
    ),
    Series(
        "samples_dropped",
        M.SAMPLES_DROPPED_TOTAL,
        Counter,
        "Sampled requests (shadow, clip, capture) not processed, by reason: behind (the background "
        "worker was), budget (the SLI CPU budget was spent), failed (the lane's session could not run "
        "them), shape (capture only: their shape differs from the captured samples').",
        ("kind", "reason"),
    ),
    Series(
        "samples_processed",
        M.SAMPLES_PROCESSED_TOTAL,
        Counter,
        "Sampled requests (shadow, clip, capture) their background lane processed, by kind: the requests "
        "behind the accuracy delta's comparisons and the clip rate's activation values.",
        ("kind",),
    ),
    Series(
        "activation_drift",
        M.ACTIVATION_DRIFT,
        Gauge,
        "Jensen-Shannon divergence (bits, 0..1) of sampled production activations over the sliding "
        'window from the calibration histograms: per tensor, and tensor="all" for the mean.',
        ("tensor",),
    ),
    Series(
        "activation_drift_values",
        M.ACTIVATION_DRIFT_VALUES_TOTAL,
        Counter,
        "Activation values binned into the drift window: the evidence behind the drift gauge.",
    ),
    Series(
        "hardware_mismatch",
        M.HARDWARE_MISMATCH,
        Gauge,
        "1 when this node differs from where the accuracy gate measured the artifact, by aspect "
        "(int8_flags, onnxruntime, provider); 0 when it matches or the manifest records nothing.",
        ("aspect",),
    ),
    Series(
        "hardware_info",
        M.HARDWARE_INFO,
        Gauge,
        "1 per side (serving, gate): CPU, its int8 features, onnxruntime version and provider.",
        HARDWARE_INFO_LABELS,
    ),
    Series(
        "nondeterministic_outputs",
        M.NONDETERMINISTIC_OUTPUTS,
        Gauge,
        "1 when a fixed probe input run twice at load gave different outputs.",
        unbound=True,
    ),
    Series(
        "tensor_observed",
        M.TENSOR_ACTIVATIONS_OBSERVED_TOTAL,
        Counter,
        "Activation values checked, per tensor.",
        ("tensor",),
        per_tensor=True,
    ),
    Series(
        "tensor_clipped",
        M.TENSOR_ACTIVATIONS_CLIPPED_TOTAL,
        Counter,
        "Activation values clipped, per tensor.",
        ("tensor",),
        per_tensor=True,
    ),
)
"""Every metric the server exports, as data: ServerMetrics declares each on its registry."""


class ServerMetrics:
    """The server's metrics on one registry; attributes are named by SERIES (typed below)."""

    requests: Counter
    request_duration: Histogram
    batch_size: Histogram
    queue_duration: Histogram
    shadow_comparisons: Counter
    shadow_disagreements: Counter
    shadow_disagreeing_rows: Counter
    feedback: Counter
    activations_observed: Counter
    activations_clipped: Counter
    fallback_ops: Gauge
    model_info: Gauge
    model_size_bytes: Gauge
    model_load_seconds: Gauge
    model_load_failures: Counter
    requests_in_flight: Gauge
    samples_dropped: Counter
    samples_processed: Counter
    activation_drift: Gauge
    activation_drift_values: Counter
    hardware_mismatch: Gauge
    hardware_info: Gauge
    nondeterministic_outputs: Gauge
    tensor_observed: Counter
    tensor_clipped: Counter

    def __init__(
        self,
        registry: CollectorRegistry,
        labels: Mapping[str, str],
        *,
        max_batch_size: int = 32,
        per_tensor: bool = False,
    ) -> None:
        values = [labels[name] for name in LABELS]
        self.per_tensor = per_tensor
        buckets = {
            M.REQUEST_DURATION_SECONDS: slo.LATENCY_BUCKETS,
            M.BATCH_SIZE: batch_buckets(max_batch_size),
            M.QUEUE_DURATION_SECONDS: QUEUE_BUCKETS,
        }
        for series in SERIES:
            if series.per_tensor and not per_tensor:
                continue
            options: dict[str, Any] = {"registry": registry}
            if series.kind is Histogram:
                options["buckets"] = buckets[series.metric]
            family = series.kind(series.metric.declared, series.doc, [*LABELS, *series.extra], **options)
            bound = not series.extra and not series.unbound
            setattr(self, series.attribute, family.labels(*values) if bound else family)
        self._values = values
        # Counted in a plain int and read at scrape time: requests start and finish on the event loop,
        # and the gauge's own inc and dec take a lock each (two of a tiny request's ~10 metric updates).
        self._in_flight = 0
        self.requests_in_flight.set_function(lambda: self._in_flight)
        # The counters the SLIs and alerts read start at 0 (see the module docstring), every code the
        # server answers with: a series born at 3 errors shows Prometheus' increase() none of them.
        self._by_code = {code: self.requests.labels(*values, str(code)) for code in (200, *errors.statuses())}
        for variant in FEEDBACK_VARIANTS:
            for correct in ("true", "false"):
                self.feedback.labels(*values, variant, correct)
        for reason in LOAD_FAILURE_REASONS:
            self.model_load_failures.labels(*values, reason)
        # bound once: a canary counts a budget drop for most requests (labels() costs ~1 µs a call)
        self._dropped = {
            (kind, reason): self.samples_dropped.labels(*values, kind, reason)
            for kind in slo.SampleKind
            for reason in slo.DropReason
        }
        self._processed = {kind: self.samples_processed.labels(*values, kind) for kind in slo.SampleKind}

    def request_started(self) -> None:
        """An inference request is being answered (event loop thread only); `request_left` ends it."""
        self._in_flight += 1

    def request_left(self) -> None:
        self._in_flight -= 1

    def request_done(self, code: int, seconds: float) -> None:
        """One inference request answered. Only successes enter the latency histogram: a 429 or a
        400 is fast because nothing was done, and must not make the latency SLI look better."""
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self.requests.labels(*self._values, str(code))
        child.inc()
        if code == 200:
            self.request_duration.observe(seconds)

    def batch_ran(self, rows: int) -> None:
        self.batch_size.observe(rows)

    def waited(self, seconds: float) -> None:
        self.queue_duration.observe(seconds)

    def compared(self, rows: int, disagreeing: float, disagreeing_rows: int) -> None:
        self.shadow_comparisons.inc(rows)
        self.shadow_disagreements.inc(disagreeing)
        self.shadow_disagreeing_rows.inc(disagreeing_rows)

    def fed_back(self, variant: str, correct: int, incorrect: int) -> None:
        self.feedback.labels(*self._values, variant, "true").inc(correct)
        self.feedback.labels(*self._values, variant, "false").inc(incorrect)

    def activations(self, observed: int, clipped: int, per_tensor: Mapping[str, tuple[int, int]]) -> None:
        self.activations_observed.inc(observed)
        self.activations_clipped.inc(clipped)
        if self.per_tensor:
            for tensor, (seen, outside) in per_tensor.items():
                self.tensor_observed.labels(*self._values, tensor).inc(seen)
                self.tensor_clipped.labels(*self._values, tensor).inc(outside)

    def drifted(self, distances: Mapping[str, float], overall: float | None, binned: int) -> None:
        self.activation_drift_values.inc(binned)
        if overall is not None:
            self.activation_drift.labels(*self._values, DRIFT_OVERALL).set(overall)
        if self.per_tensor:
            for tensor, distance in distances.items():
                self.activation_drift.labels(*self._values, tensor).set(distance)

    def sample_dropped(self, kind: slo.SampleKind, reason: slo.DropReason) -> None:
        self._dropped[kind, reason].inc()

    def samples_done(self, kind: slo.SampleKind, count: int) -> None:
        """A lane processed a hand-off of `count` sampled requests."""
        self._processed[kind].inc(count)

    def model_loaded(
        self,
        info: Mapping[str, str],
        seconds: float,
        fallback: Mapping[str, int],
        sizes: Mapping[str, int],
    ) -> None:
        self.model_info.labels(*self._values, *(info[name] for name in MODEL_INFO_LABELS)).set(1)
        for variant, size in sizes.items():
            self.model_size_bytes.labels(*self._values, variant).set(size)
        self.model_load_seconds.set(seconds)
        for op_type, count in fallback.items():
            self.fallback_ops.labels(*self._values, op_type).set(count)

    def hardware_checked(self, check: hardware.HardwareCheck) -> None:
        for aspect in hardware.ASPECTS:
            self.hardware_mismatch.labels(*self._values, aspect).set(int(aspect in check.differs))
        sides = (
            {"serving": check.serving}
            if check.gate is None
            else {"serving": check.serving, "gate": check.gate}
        )
        for side, described in sides.items():
            self.hardware_info.labels(
                *self._values, side, *(described[n] for n in HARDWARE_INFO_LABELS[1:])
            ).set(1)

    def probed(self, deterministic: bool | None) -> None:
        """None (the probe could not run) exports nothing: unknown is not 'deterministic'."""
        if deterministic is not None:
            self.nondeterministic_outputs.labels(*self._values).set(int(not deterministic))

    def load_failed(self, reason: str) -> None:
        self.model_load_failures.labels(*self._values, reason).inc()
