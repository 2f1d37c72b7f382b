"""The model service: the transport-neutral core that the routes call with decoded requests.

It loads and verifies the artifact in a thread while the server already answers health checks
(so a slow or refused load never stops /v2/health/live and /metrics), owns the sessions, the
batcher, the two SLI lanes and the capture lane, answers inference and feedback, and drains on
shutdown. A refused artifact leaves it up and unready, with the reason logged and counted: what the
load checks and refuses is load_checks'. It never sees HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import gc
import itertools
import logging
import random
import secrets
import tempfile
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from quantship import runtime, scratch, slo
from quantship.activations import ActivationRange
from quantship.artifact import (
    MODEL_FILE,
    REFERENCE_FILE,
    Artifact,
    ArtifactError,
    Verified,
    load_verified,
)
from quantship.artifact_keys import load_public_key
from quantship.server import batch_policy, cpus, probe, runner_graph, throttled_log
from quantship.server.background import HAND_OFF_ITEMS, CpuBudget, Lane, lower_priority
from quantship.server.batcher import Batcher, Gone
from quantship.server.capture import Capture, CapturePick, Reservoir
from quantship.server.clipping import ClipCounter, ClipSample, observer_model
from quantship.server.drift import DriftWindow
from quantship.server.errors import InvalidInput, ModelNotFound, NotReady
from quantship.server.feedback import FeedbackStore
from quantship.server.load_checks import (
    ORT_ERRORS,
    LoadRefused,
    check_manifest,
    hardware_check,
    open_model,
    open_reference,
    read_reference,
    refuse_other_hardware,
)
from quantship.server.metrics import ServerMetrics
from quantship.server.protocol import InferRequest, InferResponse
from quantship.server.runner import Runner
from quantship.server.runner_signature import Tensors, TensorSpec
from quantship.server.settings import ServerSettings
from quantship.server.shadow import Comparator, ShadowEvaluator, ShadowSample

log = logging.getLogger("quantship.server")
PLATFORM = "onnxruntime_onnx"  # what Triton reports for ONNX models


class Phase(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    REFUSED = "refused"
    STOPPING = "stopping"


@dataclass(frozen=True)
class Opened:
    """What the loading thread builds: verified artifact, sessions, and the load-time analysis."""

    artifact: Artifact
    runner: Runner
    comparator: Comparator
    reference: Runner | None
    observer: Runner | None
    ranges: list[ActivationRange]
    fallback: dict[str, int]
    batching: batch_policy.BatchPolicy
    deterministic: bool | None


@dataclass
class Model:
    """A loaded model with its running parts."""

    opened: Opened
    batcher: Batcher
    feedback: FeedbackStore | None
    shadow: Lane[ShadowSample] | None
    clip: Lane[ClipSample] | None
    reservoir: Reservoir | None = None
    capture: Lane[CapturePick] | None = None
    capturer: Capture | None = None

    @property
    def lanes(self) -> list[Lane[Any]]:
        return [lane for lane in (self.shadow, self.clip, self.capture) if lane is not None]

    @property
    def runner(self) -> Runner:
        return self.opened.runner

    @property
    def comparator(self) -> Comparator:
        return self.opened.comparator

    async def idle(self) -> None:
        """Until the sampled background work offered so far is done (for tests and benchmarks)."""
        for lane in self.lanes:
            await lane.idle()


@dataclass(frozen=True)
class FeedbackResult:
    id: str
    rows: int
    quantized_correct: int
    reference_correct: int | None


HANG_UP_LOG_LINES_PER_S = 10
"""A request whose client went away (mid-body, queued or running) or sent its body too slowly is
logged one line each, but no more than this many a second (the next line after a pause says how many
were held back): an overloaded server whose clients' deadlines all pass, or a client opening
connections only to drop them, would otherwise log thousands of lines a second."""

CUT_SLACK_S = 0.05
"""How early, in seconds, a cancellation may come of a timer set for the connections' deadline and
still be that deadline's (`ModelService.connections_spent`)."""


class ModelService:
    def __init__(
        self, settings: ServerSettings, metrics: ServerMetrics, *, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.problem = f"model {settings.model_name!r} is still loading"
        self.draining = False
        """Shutdown has begun: readiness says no (so load balancers stop sending), requests still run."""
        self.connections_deadline: float | None = None
        """When shutdown's share for connections ends (time.monotonic()): past it, a call cut by the
        transport's drain was cut by the server, not given up by its client (`connections_spent`)."""
        self.cut_requests = 0
        """Requests accepted but answered 503 unfinished at shutdown (`request_cut`), for the drain's log."""
        self.client_log = throttled_log.ThrottledLog(1.0, log, logging.INFO, HANG_UP_LOG_LINES_PER_S)
        """Lines about clients that went (499) or sent too slowly (408): `client_went`, and the
        bodies' reader (infer_route.receive_body); and gRPC calls that ended with no request message
        (413: grpc_server.GrpcEndpoints._without_request)."""
        self.model: Model | None = None
        self._rng = rng if rng is not None else random.Random()
        self._infer_executor = ThreadPoolExecutor(1, thread_name_prefix="quantship-infer")
        self._background_executor = ThreadPoolExecutor(
            1, thread_name_prefix="quantship-background", initializer=lower_priority
        )
        # A /feedback whose answer was not shadowed runs the reference while its client waits: at
        # normal priority, and not queued behind the SLI lanes' batches on the background thread,
        # which a saturated core starves (SCHED_IDLE) by design.
        self._feedback_executor = ThreadPoolExecutor(1, thread_name_prefix="quantship-feedback")
        # The capture lane copies picked rows into its reservoir (microseconds a row) and writes the
        # file: at normal priority, on its own thread. On the SCHED_IDLE one, a host busy with other
        # work starved it: MiniLM INT8 at ~23 one-row requests a second, load ~3.6 on two cores, kept
        # 85 of 200 rows and dropped 115 as behind (2026-12-06), and a reservoir that drops rows by
        # the host's load is no uniform sample of the rows served.
        self._capture_executor = ThreadPoolExecutor(1, thread_name_prefix="quantship-capture")
        self._scratch: Path | None = None
        """Where a .tar.gz artifact is unpacked: marked ours, removed on close, swept if we are killed."""
        self._loading: asyncio.Task[None] | None = None
        self._capture_flusher: asyncio.Task[None] | None = None
        """Writes a capture that is due while no traffic comes (`_flush_capture_periodically`)."""
        # Request ids for requests that bring none: a random prefix per process, then a counter
        # (uuid4 costs a getrandom syscall per request).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the service runs on, once started (tests reach into it from other threads)."""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loading = asyncio.create_task(self.load(), name="model loader")

    async def load(self) -> None:
        """Open the artifact in a thread, then serve it; a refusal or a failure leaves us up, unready."""
        started = time.perf_counter()
        try:
            opened = await asyncio.to_thread(self._open)
            if self.phase is not Phase.STOPPING:
                self._serve(opened, time.perf_counter() - started)
        except (ArtifactError, LoadRefused) as exc:
            self._refuse(exc.reason, str(exc))
        except ORT_ERRORS as exc:
            self._refuse("model", f"onnxruntime cannot load {self.settings.artifact}: {exc}")
        except Exception as exc:  # ours, not the artifact's: say so, with the traceback
            log.exception("loading %s failed in the server's own code", self.settings.artifact)
            self._refuse("internal", f"the server failed while loading (a bug; see its log): {exc!r}")

    def _serve(self, opened: Opened, seconds: float) -> None:
        self.model = self._assemble(opened)
        # Loading leaves ~100k long-lived objects (graphs, sessions' Python side, FastAPI): every full
        # collection walked them, 50 ms pauses that made p99 at c=32 six times p50. Frozen after one
        # last collection, they are never walked again; collections see only what serving allocates.
        gc.collect()
        gc.freeze()
        self.metrics.model_loaded(
            _model_info(opened.artifact), seconds, opened.fallback, _model_sizes(opened.artifact)
        )
        self.metrics.probed(opened.deterministic)
        if opened.deterministic is False:
            log.warning("the same probe input gave different outputs twice: this model is not deterministic")
        self.phase = Phase.READY
        quantization = opened.artifact.quantization
        log.info(
            "serving %s revision %s (%s track) from %s in %.2f s: %s, onnxruntime threads %s, batching %s, "
            "shadow %s, clip %s, SLI CPU budget %g CPU seconds a second",
            self.settings.model_name,
            self.settings.revision,
            self.settings.track,
            opened.artifact.root,
            seconds,
            quantization.get("precision", "fp32"),
            "spinning" if self.settings.onnxruntime_spinning else "sleeping when idle",
            opened.batching.summary(),
            f"{self.settings.quality.shadow_rate:.0%}" if self.model.shadow else "off (no reference)",
            f"{self.settings.quality.clip_sample_rate:.0%} of {len(opened.ranges)} tensors"
            if self.model.clip
            else "off",
            self.settings.quality.sli_cpu_budget,
        )
        fell_back = {op_type: count for op_type, count in (opened.fallback or {}).items() if count}
        if fell_back:  # the op types that fused are 0 in the metric, not news in the log
            log.warning("ops running in float instead of int8: %s", fell_back)
        if opened.artifact.manifest.get("validation", {}).get("gate") == "failed":
            log.warning("this artifact did not pass its accuracy gate; serving it as asked")

    def _refuse(self, reason: str, message: str) -> None:
        self.phase = Phase.REFUSED
        self.problem = f"model {self.settings.model_name!r} is not served: {message}"
        self.metrics.load_failed(reason)
        log.error(
            "cannot serve artifact %s (reason: %s): %s. Staying up but not ready: /v2/health/ready: 503",
            self.settings.artifact,
            reason,
            message,
        )

    def _open(self) -> Opened:
        """Blocking: verify, load the sessions, analyse. Runs in a thread."""
        return self._build(self._verify())

    def _verify(self) -> Verified:
        """The artifact verified, with the bytes of the files served (the model, and the reference
        unless --reference replaces it) read once and hashed: everything is built from those."""
        settings = self.settings
        key = load_public_key(settings.public_key) if settings.public_key else None
        scratch.sweep()  # what servers and verifies killed before us (kill -9, OOM) left behind
        extract_to = None
        if settings.artifact.is_file():
            try:
                self._scratch = scratch.create(scratch.SERVE_PREFIX)
            except OSError as exc:  # a full disk: the node's to fix, not the artifact's nor a bug
                raise LoadRefused(
                    f"cannot unpack {settings.artifact}: no scratch folder in {tempfile.gettempdir()}: "
                    f"{exc.strerror or exc}",
                    reason="io",
                ) from exc
            extract_to = self._scratch / "artifact"
        served = (MODEL_FILE,) if settings.reference is not None else (MODEL_FILE, REFERENCE_FILE)
        return load_verified(settings.artifact, keep=served, public_key=key, extract_to=extract_to)

    def _build(self, verified: Verified) -> Opened:
        """Sessions and load-time analysis, all from the verified bytes, never from the files again
        (swapped since they were hashed, they would be served as this artifact). Each file's bytes
        are released once what needs them is built."""
        settings, quality, loaded = self.settings, self.settings.quality, verified.artifact
        if settings.capture_dir is not None:
            try:
                Capture.prepare(settings.capture_dir)
            except OSError as exc:
                raise LoadRefused(
                    f"--capture-dir {settings.capture_dir} is not writable: {exc}", reason="io"
                ) from exc
        threads = settings.threads or cpus.serving_threads()
        if threads != settings.threads:
            log.info("onnxruntime intra-op threads: %d, what the CPU quota allows", threads)
        model = verified.take(MODEL_FILE)
        assert model is not None  # load_verified kept it: every artifact lists its model
        runner, proto = open_model(model, loaded.model_path, threads, spinning=settings.onnxruntime_spinning)
        self._check_hardware(loaded, runner)
        comparator = check_manifest(loaded.manifest, proto, runner.signature, quality.disagreement_tolerance)
        compared = comparator.output
        observer, ranges = None, loaded.activation_ranges
        if ranges and quality.clip_sample_rate > 0:
            observed, ranges = observer_model(proto, ranges)
            observer = Runner.load(observed, threads=1) if ranges else None
        fallback = runner_graph.fallback_ops(model, proto=proto)
        del model, proto  # the served model's bytes and graph: its sessions hold what they need
        reference = open_reference(self._reference_model(verified), runner.signature, compared)
        batching = batch_policy.choose(runner, settings.batching.max_batch_size)
        deterministic = probe.deterministic(runner, loaded.row_shapes)
        return Opened(
            loaded, runner, comparator, reference, observer, ranges, fallback, batching, deterministic
        )

    def _check_hardware(self, loaded: Artifact, runner: Runner) -> None:
        """Compare this node with where the gate measured; export it, warn, or refuse when required."""
        check = hardware_check(loaded, runner)
        self.metrics.hardware_checked(check)
        if not check.differs:
            log.info("hardware: %s", check.describe())
            return
        if self.settings.require_gate_hardware:
            refuse_other_hardware(check)
        log.warning(
            "serving on other hardware than the accuracy gate measured, so its verdict may not hold here: %s",
            check.describe(),
        )

    def _reference_model(self, verified: Verified) -> tuple[Path, bytes] | None:
        """The reference to shadow with, and its bytes: --reference FILE's, read once here, or the
        artifact's, as verified (None where there is neither)."""
        path = self.settings.reference
        if path is None:
            content = verified.take(REFERENCE_FILE)
            return None if content is None else (verified.artifact.root / REFERENCE_FILE, content)
        return read_reference(path)

    def _assemble(self, opened: Opened) -> Model:
        settings, quality = self.settings, self.settings.quality
        batcher = Batcher(
            opened.runner,
            dataclasses.replace(settings.batching, max_batch_size=opened.batching.max_batch_size),
            executor=self._infer_executor,
            inline_rows=opened.batching.inline_rows,
            alone_rows=opened.batching.alone_rows,
            overlap=opened.batching.overlap,
            split_rows=opened.batching.split_rows,
            observer=self.metrics,
        )
        batcher.start()
        feedback = (
            FeedbackStore(quality.feedback_capacity, quality.feedback_max_bytes)
            if opened.comparator.classifier
            else None
        )
        reference = opened.reference if quality.shadow_rate > 0 else None
        observer = opened.observer  # None unless clip sampling is on and the model has ranges
        # Each SLI lane that runs pays from its own part of the budget (the shadow lane's is
        # shadow_budget_share of it when both run). Shared first come, first served,
        # EfficientNet-Lite0's clip samples (40-45 ms of CPU each beside a busy server, more on a
        # busier machine, the reference's ~10) took three quarters of it: 9-17 FP32 comparisons a
        # minute at c=1; 30-32 with half each (2026-12-04).
        both = reference is not None and observer is not None
        shadow_part = quality.sli_cpu_budget * (quality.shadow_budget_share if both else 1.0)
        clip_part = quality.sli_cpu_budget - shadow_part if both else quality.sli_cpu_budget
        shadow = None
        if reference is not None:
            evaluator = ShadowEvaluator(reference, opened.comparator, self.metrics, feedback)
            shadow = self._lane(slo.SampleKind.SHADOW, evaluator.process, CpuBudget(shadow_part))
        clip = None
        if observer is not None:
            observed = {r.tensor for r in opened.ranges}
            histograms = [h for h in opened.artifact.activation_histograms if h.tensor in observed]
            drift = DriftWindow(histograms, quality.drift_window, opened.ranges) if histograms else None
            log.info(
                "activation drift: %s",
                f"{len(drift.tensors)} tensors against calibration, window {quality.drift_window} sampled"
                " requests"
                if drift
                else "off (the artifact carries no calibration histograms)",
            )
            counter = ClipCounter(observer, opened.ranges, self.metrics, drift)
            clip = self._lane(slo.SampleKind.CLIP, counter.process, CpuBudget(clip_part))
        model = Model(opened, batcher, feedback, shadow, clip)
        if settings.capture_dir is not None:
            batchable = opened.runner.signature.batchable
            model.reservoir = Reservoir(
                opened.runner.signature, settings.capture_max_samples, settings.capture_max_bytes, self._rng
            )
            model.capturer = Capture(settings.capture_dir, settings.capture_flush_s, batchable=batchable)
            capturing = model.capturer.process
            model.capture = self._lane(
                slo.SampleKind.CAPTURE, capturing, executor=self._capture_executor, max_items=None
            )
            self._capture_flusher = self._flush_capture_periodically(model.capturer)
            log.info(
                "capturing a reservoir of production inputs in %s: %s",
                model.capturer.path,
                model.reservoir.describe(),
            )
        return model

    def _flush_capture_periodically(self, capturer: Capture) -> asyncio.Task[None] | None:
        """The capture lane writes only as a hand-off arrives: without this, rows captured before
        traffic stopped waited for the next request or shutdown. Every `flush_s` the background
        thread, the one the lane writes on (so never two writes at once), is asked to write what
        is due; with 0 every hand-off is written as it comes, and nothing is needed."""
        if capturer.flush_s <= 0:
            return None

        async def flush_when_due() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(capturer.flush_s)
                await loop.run_in_executor(self._capture_executor, capturer.process, [])

        return asyncio.get_running_loop().create_task(flush_when_due(), name="capture flusher")

    def _lane(
        self,
        kind: slo.SampleKind,
        process: Any,
        budget: CpuBudget | None = None,
        *,
        executor: Executor | None = None,
        max_items: int | None = HAND_OFF_ITEMS,
    ) -> Lane[Any]:
        """A lane on the background thread unless `executor` is given; `max_items` None: a hand-off
        takes all that is queued (the capture's work is cheap a sample, and the wake-up is not)."""
        capacity = self.settings.quality.background_queue_size
        lane: Lane[Any] = Lane(
            kind,
            process,
            executor=self._background_executor if executor is None else executor,
            capacity=capacity,
            on_drop=lambda reason: self.metrics.sample_dropped(kind, reason),
            on_processed=lambda count: self.metrics.samples_done(kind, count),
            budget=budget,
            max_items=capacity if max_items is None else max_items,
        )
        lane.start()
        return lane

    def hurry(self) -> None:
        """Shutdown has begun: readiness turns false, queued requests run now, without waiting for
        batch-mates."""
        self.draining = True
        if self.model is not None:
            self.model.batcher.hurry()

    def connections_spent(self) -> bool:
        """Whether shutdown's share for connections has ended (within CUT_SLACK_S: gRPC's own timer
        for the same deadline may fire a little early)."""
        deadline = self.connections_deadline
        return deadline is not None and time.monotonic() >= deadline - CUT_SLACK_S

    def request_cut(self) -> None:
        """A request was answered 503 because shutdown's budget ended before its answer."""
        self.cut_requests += 1

    async def close(self, timeout: float | None = None) -> None:
        """Finish queued requests and sampled work within `timeout` seconds in all (default: the
        drain timeout), then release threads and files. What is left past the deadline is dropped."""
        self.phase = Phase.STOPPING
        self.problem = "the server is shutting down"
        deadline = time.monotonic() + (self.settings.drain_timeout_s if timeout is None else timeout)

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self._loading is not None and not self._loading.done():
            await asyncio.wait({self._loading}, timeout=left())
        finished = True
        if self.model is not None:
            worker = asyncio.ensure_future(self.model.batcher.close())
            finished = not (await asyncio.wait({worker}, timeout=left()))[1]
            for lane in self.model.lanes:
                await lane.close(left())
            if self._capture_flusher is not None:
                self._capture_flusher.cancel()  # the last write follows, on the same thread
            if self.model.capturer is not None:
                await self._write_capture(self.model.capturer, left())
        self._infer_executor.shutdown(wait=False)
        self._background_executor.shutdown(wait=False)
        self._feedback_executor.shutdown(wait=False)
        self._capture_executor.shutdown(wait=False)
        if self._scratch is not None:
            scratch.remove(self._scratch)
        if self.cut_requests:
            log.warning(
                "drain's share for connections spent: %d accepted requests cut unanswered "
                "(503 or UNAVAILABLE)",
                self.cut_requests,
            )
        elif finished:
            log.info("drained: every accepted request answered, background work finished")
        else:
            log.warning("drain budget spent: gave up on requests still queued for the model")

    async def _write_capture(self, capturer: Capture, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            final = functools.partial(capturer.flush, final=True)
            await asyncio.wait_for(loop.run_in_executor(self._capture_executor, final), timeout)
        except TimeoutError:
            log.warning(
                "drain budget spent before the capture was written; %s keeps the last one", capturer.path
            )
        except OSError as exc:
            log.error("could not write the capture %s: %s", capturer.path, exc)

    # -- answering ------------------------------------------------------------------------------

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.settings.model_name:
            raise ModelNotFound(f"unknown model {name!r}; this server serves {self.settings.model_name!r}")
        if version is not None and version != self.settings.revision:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; this server serves revision "
                f"{self.settings.revision!r}"
            )

    def ready_model(self) -> Model:
        if self.phase is Phase.READY and self.model is not None:
            return self.model
        raise NotReady(self.problem)

    def check_ready(self) -> None:
        """What readiness probes ask: a model to serve, and no shutdown under way (its requests
        still run, but a load balancer must stop sending new ones)."""
        self.ready_model()
        if self.draining:
            raise NotReady("the server is shutting down")

    def client_went(self, where: object, what: str) -> None:
        """Log a request whose client went away while it was queued or running, which its transport
        counts as 499: one line, as a client that hangs up mid-body gets (infer_route.receive_body),
        so that an on-call who sees 499s finds them in the log; at most 10 a second
        (HANG_UP_LOG_LINES_PER_S). `where`: the client and what it called (its str, made only if the line
        is written: throttled_log.Later); `what`: when it went."""
        self.client_log.log("%s: %s; counted as 499", where, what)

    async def infer(self, request: InferRequest, gone: Gone | None = None) -> InferResponse:
        """`gone`: whether the caller has gone (batcher.Gone), so that a request queued meanwhile does
        not run and one split into calls stops making them."""
        model = self.ready_model()
        signature = model.runner.signature
        rows = signature.validate(request.inputs)
        signature.check_outputs([output.name for output in request.outputs])
        # The id answered is the one feedback and the shadow lane know the request by, so quoting it in
        # feedback works for every answer. A client's id comes back as given, even "" (the OIP: an id
        # specified must be returned); like any id a client reuses, the latest answer holds it. Only
        # a request without one gets one made: over gRPC, every id "" (proto3 cannot tell it from unset).
        request_id = f"{self._id_prefix}-{next(self._ids)}" if request.id is None else request.id
        outputs = await model.batcher.submit(request.inputs, rows, gone)
        self._sample(model, request_id, request.inputs, rows, outputs[model.comparator.output])
        return InferResponse(self.settings.model_name, self.settings.revision, request_id, outputs)

    def _sample(self, model: Model, request_id: str, inputs: Tensors, rows: int, served: np.ndarray) -> None:
        """Hand the answer to feedback and, for a sampled share, to the SLI lanes. Never blocks."""
        quality = self.settings.quality
        if model.feedback is not None:
            top1 = runtime.top1(served)
            if top1 is not None:
                kept = inputs if model.opened.reference is not None else None
                model.feedback.remember(request_id, len(top1), top1, kept)
        if model.shadow is not None and self._rng.random() < quality.shadow_rate:
            model.shadow.offer(ShadowSample(request_id, inputs, rows, served))
        if model.clip is not None and self._rng.random() < quality.clip_sample_rate:
            model.clip.offer(ClipSample(inputs, rows))
        if model.reservoir is not None and model.capture is not None:
            picks = model.reservoir.choose(inputs, rows)
            if picks is None:
                self.metrics.sample_dropped(slo.SampleKind.CAPTURE, slo.DropReason.SHAPE)
            elif picks:
                model.capture.offer(CapturePick(inputs, picks, model.reservoir.capacity or 0))

    async def feedback(self, request_id: str, labels: Any) -> FeedbackResult:
        model = self.ready_model()
        if model.feedback is None:
            raise InvalidInput(f"feedback takes one class label a row; {model.comparator.unlabelled()}")
        answer = model.feedback.get(request_id)
        expected = _labels(labels, answer.rows, request_id, _classes(model))
        reference = answer.reference
        if reference is None and model.opened.reference is not None and answer.inputs is not None:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._feedback_executor, model.opened.reference.run, answer.inputs
            )
            reference = runtime.top1(outputs[model.comparator.output])
        answer = model.feedback.mark_labelled(request_id)
        served_correct = int(np.count_nonzero(answer.served == expected))
        self.metrics.fed_back("quantized", served_correct, answer.rows - served_correct)
        reference_correct = None
        if reference is not None:
            reference_correct = int(np.count_nonzero(reference == expected))
            self.metrics.fed_back("reference", reference_correct, answer.rows - reference_correct)
        return FeedbackResult(request_id, answer.rows, served_correct, reference_correct)

    # -- describing -----------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        from quantship import __version__

        return {"name": "quantship", "version": __version__, "extensions": ["binary_tensor_data"]}

    def model_metadata(self) -> dict[str, Any]:
        model = self.ready_model()
        signature = model.runner.signature
        return {
            "name": self.settings.model_name,
            "versions": [self.settings.revision],
            "platform": PLATFORM,
            "batching": model.opened.batching.describe(),
            "inputs": [_describe(spec) for spec in signature.inputs],
            "outputs": [_describe(spec) for spec in signature.outputs],
        }


def _describe(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.wire_shape}


def _labels(value: Any, rows: int, request_id: str, classes: int | None) -> np.ndarray:
    """The labels as class ids, or InvalidInput: a label no class can have would count as a wrong
    answer of both models and move the accuracy SLI."""
    labels = value if isinstance(value, list) else [value]
    if not all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        raise InvalidInput(
            "label must be a class id (an integer within 64 bits), or a list of them for a batched request"
        )
    if len(labels) != rows:
        raise InvalidInput(f"request {request_id!r} had {rows} rows: give {rows} labels, not {len(labels)}")
    highest = classes - 1 if classes is not None else 2**63 - 1
    for label in labels:
        if not 0 <= label <= highest:
            raise InvalidInput(f"label {label} is not a class id: the model's are 0 to {highest}")
    return np.asarray(labels, dtype=np.int64)


def _classes(model: Model) -> int | None:
    """How many classes the model scores, when its output has a fixed score per class (None for an
    output of class ids, or an open class dimension)."""
    spec = model.runner.signature.output(model.comparator.output)
    if spec.datatype.startswith("FP") and len(spec.shape) >= 2 and spec.shape[-1] is not None:
        return spec.shape[-1]
    return None


def _model_sizes(loaded: Artifact) -> dict[str, int]:
    """Bytes of the served model and of its FP32 reference, from the verified manifest."""
    files = loaded.manifest["files"]
    if loaded.quantization.get("precision", "fp32") == "fp32":
        return {"reference": int(files[MODEL_FILE]["size"])}
    sizes = {"quantized": int(files[MODEL_FILE]["size"])}
    if REFERENCE_FILE in files:
        sizes["reference"] = int(files[REFERENCE_FILE]["size"])
    return sizes


def _model_info(loaded: Artifact) -> dict[str, str]:
    quantization = loaded.quantization
    calibration = loaded.manifest.get("calibration") or {}
    return {
        "precision": str(quantization.get("precision", "fp32")),
        "quant_mode": str(quantization.get("mode", "none")),
        "calibration_method": str(calibration.get("method", "none")),
        "calibration_sha256": str(calibration.get("sha256", "")),
        "runtime_version": onnxruntime.__version__,
    }
