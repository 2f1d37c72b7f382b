"""Everything `quantship serve` can be told, as dataclasses: the CLI builds them, `create_app` reads them.

Each attribute's docstring gives its unit and why the default is what it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from quantship.choices import ONNXRUNTIME_SPINNING
from quantship.slo import Track  # which side of a rollout this server is: the `track` label

MiB = 1 << 20

SPLIT_MOST_ROWS = 1024
"""The most rows a call of a request split into calls takes where --max-batch-size is fewer
(SPLIT_CALL_S: a row of ~1 µs would make calls of 10,000): written once here, as the
batch-size histogram's buckets reach it (metrics.batch_buckets). 1024 rows of a microsecond or more
each take a millisecond or more: a call's fixed cost is a few percent of that at most."""

SPLIT_CALL_S = 0.01
"""A request split into calls (BatchPolicy.split_rows) runs calls of at least about this long, by the
measured cost of a row, where the batch size is fewer rows: a call's fixed cost would otherwise
dominate. Digits INT8 at --max-batch-size 1 ran a 32768-row request in 32768 calls, seconds instead
of the ~20 ms of one call; 10 ms of a row's work is memory of the same order as a batch's. At most
SPLIT_MOST_ROWS rows, though, where that is more than the batch. A request whose rows mix
(batch_policy.ROWS_MIX) makes its one-row calls in turns of about this long, each one hand-off to the
inference thread (`runner.SplitRun.step`): a hand-off a row cost 3 to 5 times the calls (digits, 4000
rows: 0.28-0.54 s through the batcher, 0.09 s of calls)."""


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int = 32
    """Most rows merged into one onnxruntime call. 32 amortizes the per-call cost of small models
    (a 32-row call of the digits MLP costs 3.5x a 1-row call, not 32x) while keeping one batch's
    latency within a millisecond on a CPU. A single request with more rows runs in calls of about a
    batch (batch_policy.BatchPolicy.split_rows)."""
    max_queue_delay_ms: float = 0.0
    """How long a request may wait for others to join its batch, in milliseconds. 0, as in Triton:
    batch only what is already waiting. Under load requests pile up while the previous batch runs,
    so batches form anyway; a delay only adds latency when the server is idle."""
    max_queue_size: int = 128
    """Requests waiting for the model, at most, a request split into calls counted until it is
    answered; one more is answered 429 at once. Bounds memory (each waiting request holds its decoded
    tensors) and the queueing delay a client can be made to suffer."""

    def __post_init__(self) -> None:
        delay = self.max_queue_delay_ms  # NaN: requests would wait for batch-mates forever
        if self.max_batch_size < 1 or self.max_queue_size < 1 or not (_finite(delay) and delay >= 0):
            raise ValueError("max batch size and queue size must be >= 1, queue delay finite and >= 0")


MAX_SLI_CPU_BUDGET = 64.0
"""The most an SLI CPU budget may be, in CPU seconds a second: a guard against typos. The SLI work
runs on one thread, which cannot spend more than one core's time, so any budget from 1 up means
"unlimited" (what tests and the demo ask for, to judge every request)."""


@dataclass(frozen=True)
class QualitySettings:
    """The quantization SLIs: how much traffic they sample and how much memory they may hold."""

    shadow_rate: float = 0.05
    """Share of requests (0..1) also run through the FP32 reference, in the background. 5% gives a
    few hundred comparisons a minute at modest traffic, enough for a 0.5% budget, at ~5% extra CPU."""
    clip_sample_rate: float = 0.05
    """Share of requests (0..1) whose activations are checked against the calibrated ranges. The
    observing session cannot use fused int8 kernels, so it costs more than a served request."""
    sli_cpu_budget: float = 0.01
    """CPU seconds per second of wall time the shadow and clip lanes may spend, together (a share
    of one core), split between the lanes that run (`shadow_budget_share`; a lone lane gets all
    of it): each pays from its own part, so that the clip lane's dearer samples cannot crowd out
    the accuracy SLO's comparisons. Sampling by rate alone costs a share of the model's compute,
    and more than that on a large network (EfficientNet-Lite0: +60% server CPU a request at the
    default rates); the budget bounds what the SLIs take from serving at any traffic. Past it,
    samples are dropped and counted (`quantship_samples_dropped_total{reason="budget"}`). 1%,
    not the 5% it was: requests served while the SLI thread works in the gaps run slower
    although it yields the CPU at once, and at 5% it worked through almost every request of
    EfficientNet-Lite0 at c=1, p99 1.4-3.1 ms over the SLIs off; at 1%, level with them
    (docs/performance-history.md, session 19). A small model's samples are cheap, so there 1%
    still buys dozens a second; a large one's SLIs get a few dozen a minute unless a deployer
    raises it. A canary, to be judged, has its own: `CANARY_QUALITY`."""
    shadow_budget_share: float = 0.5
    """Share (0..1) of the SLI CPU budget the shadow lane pays from when the clip lane runs too; the
    clip lane pays from the rest. Half on the stable track, where both SLIs matter alike. A canary's
    shadow lane gets more (`CANARY_QUALITY`): the analysis wants 100 FP32 comparisons a window, and
    there one clip sample of an image model counts millions of activation values."""
    per_tensor_metrics: bool = False
    """Also export clip counts per activation tensor (`quantship_tensor_activations_*`): one series
    per quantized tensor, hundreds for a real network, so only for the debug dashboard."""
    drift_window: int = 512
    """Clip-sampled requests the activation drift SLI compares with calibration, at most (it slides by
    halves: the gauge covers the last 256 to 512). 512 is minutes of traffic at 5% sampling of a few
    requests a second: drift is slow, and a longer window keeps sampling noise of a calm model near 0.
    Memory does not grow with it: two 66-bin histograms per tensor."""
    disagreement_tolerance: float = 0.01
    """Relative error (L2, per row) above which a non-classifier output disagrees with the reference.
    1%: well above int8 rounding noise of a healthy model, well below a broken range."""
    background_queue_size: int = 64
    """Sampled requests waiting for the background worker, per SLI, at most; beyond that, samples are
    dropped (and counted) so that sampling never holds much memory or slows the response path. 64:
    a worker that far behind is saturated anyway, and 64 sampled requests of 16 MiB bodies stay
    within a pod's memory limit."""
    feedback_capacity: int = 10_000
    """Recent requests kept for label feedback, at most. Labels usually arrive seconds to minutes
    after the answer; 10k covers a minute at 150 requests/s."""
    feedback_max_bytes: int = 64 * MiB
    """Bytes of request inputs kept for feedback, at most (the reference's answer is computed at
    feedback time from them, unless the request was shadow-sampled). Oldest entries go first."""

    @classmethod
    def for_track(
        cls, track: Track | str, *, canary_sli_cpu_budget: float | None = None, **given: Any
    ) -> QualitySettings:
        """The settings of a server on `track`: the fields `given` (None: not given), and the
        track's defaults for the rest (`CANARY_QUALITY` on a canary, the class's elsewhere).

        `canary_sli_cpu_budget`, where given, is a canary's `sli_cpu_budget` in place of the one
        given for both tracks. A stable server ignores it: promotion changes only a server's
        track, so a promoted canary's servers restart with the stable's budget."""
        canary = Track(track) is Track.CANARY
        if canary_sli_cpu_budget is not None:
            _check_budget("the canary's SLI CPU budget", canary_sli_cpu_budget)
            if canary:
                given = {**given, "sli_cpu_budget": canary_sli_cpu_budget}
        defaults = CANARY_QUALITY if canary else {}
        return cls(**{**defaults, **{name: value for name, value in given.items() if value is not None}})

    @classmethod
    def default(cls, name: str, track: Track | str) -> Any:
        """One field's default on `track` (for help texts and the CRD's descriptions)."""
        return getattr(cls.for_track(track), name)

    def __post_init__(self) -> None:
        for name in ("shadow_rate", "clip_sample_rate", "shadow_budget_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        _check_budget("the SLI CPU budget", self.sli_cpu_budget)
        if self.drift_window < 2:
            raise ValueError("drift window must be >= 2 sampled requests")
        if self.disagreement_tolerance < 0:
            raise ValueError("disagreement tolerance must be >= 0")


def _check_budget(what: str, budget: float) -> None:
    if not 0 <= budget <= MAX_SLI_CPU_BUDGET:  # NaN too
        raise ValueError(
            f"{what} must be within 0..{MAX_SLI_CPU_BUDGET:g} CPU seconds a second, got {budget}"
        )


def _finite(number: float) -> bool:
    return -float("inf") < number < float("inf")  # NaN compares false


CANARY_QUALITY: Mapping[str, Any] = MappingProxyType(
    {"shadow_rate": 1.0, "sli_cpu_budget": 0.05, "shadow_budget_share": 0.8}
)
"""A canary's defaults where they differ from the stable's: its SLIs exist to judge it, and the
analysis wants `minSamples` (100) FP32 comparisons in its 60 s window. At the stable's, a canary on
the first step (5% of the traffic) got those only from 667 requests a second, and an image model's
budget paid for ~30 reference runs a minute (EfficientNet-Lite0: ~10 ms of CPU each) whatever the
traffic, so such a canary was inconclusive, then rolled back. A canary offers every request (the
budget alone decides which run) and may spend 5% of a core, of which the shadow lane's 80% pays for
~240 runs a minute there: the analysis' 100 comparisons where the gate compares every row, or,
under the confident-agreement rule (only rows FP32 is sure of), where FP32 is sure of 42% of them.
The clip lane's 20% is twice the stable's part, and its SLI needs few samples. Given values
(flags, spec.server) apply on both tracks, except the canary's own budget
(`--canary-sli-cpu-budget`, spec.server.canarySliCpuBudget): a model whose reference runs cost more
than this budget pays for gets its canary more without raising the stable's. Promotion restarts
the pods as `stable`, with the stable's defaults. Figures: README, "A canary samples by budget";
docs/performance-history.md, sessions 21 and 22."""


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*")
"""What a model name and a revision may be: each is a path segment of the HTTP routes
(`/v2/models/{name}/versions/{revision}`), so only RFC 3986's unreserved characters, which every
client writes as they are, beginning with a letter or digit. A `/` can never be matched, not even
sent as %2F (uvicorn decodes it): `--revision r/1` was advertised as a version that every HTTP call
answered 404 while gRPC served it. An empty name has no route either, and `.` or `..` are dot
segments that clients resolve away. What the operator generates passes (spec.modelName is a
Kubernetes label value, a revision hex digits), and so do Triton's usual model directory names."""


def _check_name(what: str, value: str) -> None:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} does not fit a URL path (/v2/models/NAME/versions/REVISION): use "
            "letters, digits, '.', '_', '-' and '~', beginning with a letter or digit"
        )


@dataclass(frozen=True)
class ServerSettings:
    artifact: Path
    """The artifact directory or .tar.gz to serve (model.onnx, optional reference.onnx, manifest)."""
    model_name: str
    """The name clients address (`/v2/models/{model_name}`) and the `model` label of every metric."""
    revision: str
    """This artifact's revision: the model's only version in the protocol and the `revision` label."""
    track: Track = Track.STABLE
    """`stable` or `canary`: the `track` label, so burn rates can tell the two apart."""
    host: str = "127.0.0.1"
    """Address to listen on. Loopback by default: exposing a server is a decision, not an accident."""
    port: int = 8000
    """TCP port; 8000 is KServe's default HTTP port, so probes and Services need no change."""
    grpc_port: int | None = None
    """TCP port of the gRPC endpoint (`inference.GRPCInferenceService`); None serves REST only. Off by
    default so that several local servers never fight over one port; the operator's pods pass 8081,
    KServe's gRPC port."""
    reference: Path | None = None
    """The FP32 model for shadow evaluation; None takes the artifact's reference.onnx when present."""
    public_key: Path | None = None
    """ed25519 public key (PEM): when given, an artifact without a valid signature is refused."""
    threads: int | None = None
    """onnxruntime intra-op threads of the serving session; None lets onnxruntime choose (one per
    physical core it may run on), or under a CPU quota that allows less (Kubernetes' limits.cpu), the
    quota rounded down (cpus.serving_threads). Background sessions (reference, clip observer) always
    use one thread, so the SLIs never take more than one core away from serving."""
    onnxruntime_spinning: bool = ONNXRUNTIME_SPINNING
    """Whether the serving session's intra-op threads spin while they wait for work (onnxruntime's
    default) rather than sleep: see choices.ONNXRUNTIME_SPINNING for what spinning cost."""
    max_body_bytes: int = 16 * MiB
    """Largest request body accepted, in bytes; larger ones get 413 before being read. 16 MiB holds
    a batch of 64 float32 224x224 images, far beyond the digits model's 256 bytes a row."""
    json_decode_budget_bytes: int = 16 * MiB
    """Bytes of JSON requests decoded at once, at most (JSON past 64 KiB, decoded in a thread); more
    wait in turn. Decoding JSON costs 11 to 17 times its size in memory: six 16 MiB bodies decoded
    at once took 1.2 GiB. 16 MiB lets one body of the largest size decode at a time, or many small
    ones, at little cost in throughput: json.loads holds the GIL, so decodes side by side take as
    long as one after another. A body larger than the budget decodes alone. Answers whose JSON
    outputs pass infer_route.INLINE_ENCODE_JSON_BYTES are encoded within it too, by their outputs'
    bytes (a float32 value written as JSON costs ~13x its 4 bytes while it is written)."""
    max_header_bytes: int = 64 * 1024
    """Largest request head (request line and headers) accepted, in bytes; past it, 431 and the
    connection is closed. 64 KiB: twice what nginx forwards (large_client_header_buffers, 4 x 8 KiB),
    four times h11's default, far above any real client's (tritonclient sends a few hundred bytes),
    and parsing it costs microseconds. Unbounded, httptools took 4.3 s of CPU, the event loop stalled, for one
    64 MiB header."""
    body_timeout_s: float = 30.0
    """Seconds a request's whole body may take to arrive, from the moment its headers are in; then
    408 and the connection is closed. uvicorn has no such limit: a client trickling a body would hold
    a connection and an in-flight request forever. 30 s lets the largest body (16 MiB) arrive at
    ~560 KB/s, far below any in-cluster link (an ingress buffers slow clients' bodies before it).
    Over gRPC, a ModelInfer's message from the call's start (then DEADLINE_EXCEEDED, counted 408)."""
    idle_timeout_s: float = 75.0
    """Seconds a connection may wait for a request's headers to be complete: a fresh connection, and
    one kept alive between requests; then it is closed (408 if part of a request had come). Longer than
    the usual load balancers' and proxies' idle timeouts (60 s), as nginx's keepalive_timeout of 75 s,
    so that they close first and never send a request on a connection the server is closing. Also how
    long a client may take none of its answer (nginx's send_timeout) before the connection is cut and
    the answer dropped: a client that never reads held its answer in memory for good. Over gRPC, how
    long a client with calls under way may go without acknowledging a ping (grpc_server.start_grpc),
    which bounds the same: at least 2 s there (pings at most once a second, each given a second to be
    acknowledged: grpc_server.PING_FLOOR_MS)."""
    drain_timeout_s: float = 20.0
    """Seconds, in all, that a shutdown spends from the signal on: uvicorn's connection drain, gRPC's,
    the queued requests and the sampled background work share it; then the process exits anyway.
    20 fits Kubernetes' default 30 s grace period, which also covers a 5 s preStop; the operator
    passes its own figure, derived from the grace period it sets."""
    capture_dir: Path | None = None
    """Where to keep a reservoir sample of production inputs as `capture.npz`, in the calibration-data
    format `quantship quantize --calibration` reads. None (the default) captures nothing: the file
    holds real user inputs, so keeping them is an explicit decision (README, "Serve": privacy)."""
    capture_max_samples: int = 1000
    """Samples (rows) the capture keeps, at most: the upper end of a usual calibration set (100 to 1000
    samples); more adds little to calibrated ranges and costs quantization time."""
    capture_max_bytes: int = 128 * MiB
    """Bytes of captured inputs, at most (held in memory and written as one file): 1000 digits rows are
    250 KiB, 128 MiB hold ~220 EfficientNet-Lite0 images. Writing briefly needs twice this."""
    capture_flush_s: float = 30.0
    """Seconds between writes of the capture file, at least (and once at shutdown): each write is the
    whole reservoir, so this bounds the disk traffic to max bytes every 30 s. A write also waits until
    a tenth of the rows changed since the last, 10 periods at most (`capture.REWRITE_SHARE`): a full
    reservoir in steady traffic, a row or two changed a period, is written every 5 minutes."""
    require_gate_hardware: bool = False
    """Refuse an artifact whose gate ran on other hardware (CPU int8 features, onnxruntime version or
    provider) than this node, as a bad artifact is refused. Off by default: a mismatch is a warning
    and `quantship_hardware_mismatch`, since most models keep their accuracy across CPUs; turn it on
    where the gate showed they do not (int8 accuracy can differ with and without VNNI)."""
    batching: BatchSettings = field(default_factory=BatchSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    """`quantship serve` builds it for its track (`QualitySettings.for_track`); left out here, it is
    the stable's defaults whatever `track` says."""

    def __post_init__(self) -> None:
        _check_name("the model name", self.model_name)
        _check_name("the revision", self.revision)
        if self.body_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("body and idle timeouts must be > 0 seconds")
        if self.max_header_bytes < 1 or self.json_decode_budget_bytes < 1:
            raise ValueError("max header bytes and the JSON decode budget must be >= 1")
        if self.capture_max_samples < 1 or self.capture_max_bytes < 1 or self.capture_flush_s < 0:
            raise ValueError("capture max samples and bytes must be >= 1, the flush interval >= 0")
        for name in ("body_timeout_s", "idle_timeout_s", "drain_timeout_s", "capture_flush_s"):
            if not _finite(getattr(self, name)):  # NaN passed every comparison above
                raise ValueError(f"{name} must be a finite number of seconds, got {getattr(self, name)}")
        if self.grpc_port == self.port != 0:  # gRPC binds first (SO_REUSEPORT), then uvicorn fails to
            raise ValueError(f"the gRPC port must not be the HTTP port ({self.port}): each needs its own")

    @property
    def labels(self) -> dict[str, str]:
        """The `model`, `revision` and `track` labels every metric of this server carries."""
        return {"model": self.model_name, "revision": self.revision, "track": self.track.value}
