"""`quantship serve`: its options, each default read from the server's settings
(`quantship/server/settings.py`, where it is written once), made into `ServerSettings`
(`serve_settings`), and the ports checked free before the server (`quantship.server`) loads."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from quantship.cli.errors import Refused
from quantship.cli.options import FiniteRange
from quantship.server import settings as server_settings

F = TypeVar("F", bound=Callable[..., Any])


def _default(owner: type, name: str) -> Any:
    """A server settings field's default: written once, in quantship/server/settings.py."""
    return {field.name: field.default for field in dataclasses.fields(owner)}[name]


_SERVE, _BATCH, _QUALITY = (
    server_settings.ServerSettings,
    server_settings.BatchSettings,
    server_settings.QualitySettings,
)


def _sampling_option(flag: str, kind: click.ParamType, help: str) -> Callable[[F], F]:
    """An SLI sampling option whose default depends on --track: None when not given (then
    QualitySettings.for_track fills in the track's), both tracks' defaults in its help."""
    name = flag.removeprefix("--").replace("-", "_")
    stable, canary = (_QUALITY.default(name, track) for track in server_settings.Track)
    on_canary = f"; on --track canary: {canary:g}" if canary != stable else ""
    return click.option(flag, type=kind, default=None, help=f"{help} [default: {stable:g}{on_canary}]")


def _local_artifact(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """ARTIFACT of `serve`, refused when it is a URI (Path would read oci://host/repo as the
    folder oci:/host/repo, and the server would stay up unready for it)."""
    if "://" in value:
        raise click.BadParameter(
            f"{value!r} is a URI: serve takes a directory or .tar.gz; `quantship pull` or "
            "`quantship fetch` it to one first"
        )
    return Path(value)


@click.command()
@click.argument("artifact_path", metavar="ARTIFACT", type=click.Path(), callback=_local_artifact)
@click.option(
    "--model-name",
    required=True,
    help="Name clients address, and the `model` metric label. It and --revision are URL path segments: "
    "letters, digits, '.', '_', '-' and '~', beginning with a letter or digit.",
)
@click.option(
    "--revision", required=True, help="This artifact's revision: the model version and `revision` label."
)
@click.option(
    "--track",
    type=click.Choice([t.value for t in server_settings.Track]),
    default=_default(_SERVE, "track").value,
    show_default=True,
    help="Which side of a rollout this server is (the `track` label). A canary's SLIs sample more by "
    "default, to be judged: see --shadow-rate, --sli-cpu-budget, --canary-sli-cpu-budget and "
    "--shadow-budget-share.",
)
@click.option("--host", default=_default(_SERVE, "host"), show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=_default(_SERVE, "port"), show_default=True)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=_default(_SERVE, "grpc_port"),
    help="Also serve Open Inference Protocol v2 over gRPC on this port (KServe's is 8081). Default: off.",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    default=_default(_SERVE, "reference"),
    help="FP32 model for shadow evaluation. Default: the artifact's reference.onnx when present.",
)
@click.option(
    "--public-key",
    type=click.Path(path_type=Path),
    default=_default(_SERVE, "public_key"),
    help="Refuse artifacts without a valid signature.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=_default(_BATCH, "max_batch_size"),
    show_default=True,
    help="Rows per batch, at most (the server may choose fewer: see the log).",
)
@click.option(
    "--max-queue-delay-ms",
    type=FiniteRange(min=0),
    default=_default(_BATCH, "max_queue_delay_ms"),
    show_default=True,
    help="How long a request may wait for others to join its batch.",
)
@click.option(
    "--max-queue-size",
    type=click.IntRange(min=1),
    default=_default(_BATCH, "max_queue_size"),
    show_default=True,
    help="Requests waiting for the model (one split into calls, until answered); beyond it, 429.",
)
@_sampling_option(
    "--shadow-rate",
    FiniteRange(0, 1),
    "Share of requests also run through the FP32 reference, in the background.",
)
@_sampling_option(
    "--clip-sample-rate",
    FiniteRange(0, 1),
    "Share of requests whose activations are checked against the calibrated ranges.",
)
@_sampling_option(
    "--sli-cpu-budget",
    FiniteRange(0, server_settings.MAX_SLI_CPU_BUDGET),
    "CPU seconds per second the shadow and clip work may use, split between the two that run (see "
    "--shadow-budget-share); samples past it are dropped and counted.",
)
@click.option(
    "--canary-sli-cpu-budget",
    type=FiniteRange(0, server_settings.MAX_SLI_CPU_BUDGET),
    default=None,
    help="The SLI CPU budget of a server on --track canary, in place of --sli-cpu-budget, for a model "
    "whose canary needs more FP32 comparisons than that buys. A stable server ignores it, so promotion "
    "(which changes only --track) restores the stable's budget. [default: --sli-cpu-budget's, else "
    f"{_QUALITY.default('sli_cpu_budget', server_settings.Track.CANARY):g}]",
)
@_sampling_option(
    "--shadow-budget-share",
    FiniteRange(0, 1),
    "Share of the SLI CPU budget the shadow lane pays from when the clip lane runs too; the clip lane "
    "pays from the rest.",
)
@click.option(
    "--per-tensor-metrics",
    is_flag=True,
    default=_default(_QUALITY, "per_tensor_metrics"),
    help="Export clip counts and activation drift per activation tensor.",
)
@click.option(
    "--drift-window",
    type=click.IntRange(min=2),
    default=_default(_QUALITY, "drift_window"),
    show_default=True,
    help="Clip-sampled requests the activation drift SLI compares with the calibration histograms.",
)
@click.option(
    "--feedback-capacity",
    type=click.IntRange(min=1),
    default=_default(_QUALITY, "feedback_capacity"),
    show_default=True,
    help="Recent requests kept for label feedback.",
)
@click.option(
    "--feedback-max-bytes",
    type=click.IntRange(min=0),
    default=_default(_QUALITY, "feedback_max_bytes"),
    show_default=True,
    help="Bytes of request inputs kept for feedback (the reference runs on them at feedback time).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=_default(_SERVE, "max_body_bytes"),
    show_default=True,
)
@click.option(
    "--json-decode-budget-bytes",
    type=click.IntRange(min=1),
    default=_default(_SERVE, "json_decode_budget_bytes"),
    show_default=True,
    help="Bytes of JSON requests decoded, and of outputs encoded as JSON, at once (each costs 11-17x "
    "its size); more wait their turn.",
)
@click.option(
    "--max-header-bytes",
    type=click.IntRange(min=1),
    default=_default(_SERVE, "max_header_bytes"),
    show_default=True,
    help="Bytes a request's line and headers may take; then 431 and the connection is closed.",
)
@click.option(
    "--body-timeout-s",
    type=FiniteRange(min=0, min_open=True),
    default=_default(_SERVE, "body_timeout_s"),
    show_default=True,
    help="Seconds a request body may take to arrive once its headers are in (a gRPC call's message, "
    "once the call starts); then 408 (DEADLINE_EXCEEDED).",
)
@click.option(
    "--idle-timeout-s",
    type=FiniteRange(min=0, min_open=True),
    default=_default(_SERVE, "idle_timeout_s"),
    show_default=True,
    help="Seconds a connection may wait for a request's headers (new or kept alive), or its client may "
    "take none of its answer (over gRPC: acknowledge no ping); then it is closed.",
)
@click.option(
    "--drain-timeout-s",
    type=FiniteRange(min=0),
    default=_default(_SERVE, "drain_timeout_s"),
    show_default=True,
    help="On SIGTERM, seconds to finish accepted requests; keep it below the pod's grace.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=_default(_SERVE, "threads"),
    help="onnxruntime intra-op threads (default: its own, one per physical core; under a smaller CPU "
    "quota, the quota).",
)
@click.option(
    "--onnxruntime-spinning/--no-onnxruntime-spinning",
    default=_default(_SERVE, "onnxruntime_spinning"),
    show_default=True,
    help="onnxruntime's intra-op threads spin while they wait for work instead of sleeping: that may "
    "save a wake-up on cores nothing else needs, and burns CPU that the server and the SLIs need.",
)
@click.option(
    "--capture-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=_default(_SERVE, "capture_dir"),
    help="Keep a reservoir sample of production inputs here (capture.npz, calibration format). "
    "Off by default: it stores user inputs on disk.",
)
@click.option(
    "--capture-max-samples",
    type=click.IntRange(min=1),
    default=_default(_SERVE, "capture_max_samples"),
    show_default=True,
    help="Samples the capture keeps, at most.",
)
@click.option(
    "--capture-max-bytes",
    type=click.IntRange(min=1),
    default=_default(_SERVE, "capture_max_bytes"),
    show_default=True,
    help="Bytes of captured inputs, at most.",
)
@click.option(
    "--capture-flush-s",
    type=FiniteRange(min=0),
    default=_default(_SERVE, "capture_flush_s"),
    show_default=True,
    help="Seconds between writes of the capture file, at least (and once at shutdown). Once the file "
    "is written, a write waits until a tenth of its rows changed, 10 periods at most; 0 writes every change.",
)
@click.option(
    "--require-gate-hardware",
    is_flag=True,
    default=_default(_SERVE, "require_gate_hardware"),
    help="Refuse an artifact whose accuracy gate ran on other CPU int8 features, onnxruntime or provider.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--access-log", is_flag=True, help="Log every request (costs throughput).")
def serve(log_level: str, access_log: bool, **options: Any) -> None:
    """Serve ARTIFACT (a directory or .tar.gz) over Open Inference Protocol v2 with quantization SLIs.

    A refused artifact (tampered, badly signed, missing) keeps the server up and unready: it answers
    /v2/health/live and /metrics, 503 elsewhere, and counts quantship_model_load_failures_total.
    """
    from quantship import server

    try:
        settings = serve_settings(**options)
    except ValueError as error:  # what the options cannot check alone and the settings refuse
        raise click.UsageError(str(error)) from None
    # uvicorn drains on SIGTERM, then raises it again to end as its parent expects: by the default
    # action, not by unwinding (which would wait for a model still loading in a thread).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from quantship.server import ports

    try:
        ports.check_port(settings.host, settings.port, "HTTP")
        if settings.grpc_port is not None:
            ports.check_port(settings.host, settings.grpc_port, "gRPC")
    except OSError as exc:
        raise Refused(str(exc)) from None
    server.serve(settings, log_level=log_level, access_log=access_log)


def serve_settings(
    *,
    artifact_path: Path,
    model_name: str,
    revision: str,
    track: str,
    host: str,
    port: int,
    grpc_port: int | None,
    reference: Path | None,
    public_key: Path | None,
    max_batch_size: int,
    max_queue_delay_ms: float,
    max_queue_size: int,
    shadow_rate: float | None,
    clip_sample_rate: float | None,
    sli_cpu_budget: float | None,
    canary_sli_cpu_budget: float | None,
    shadow_budget_share: float | None,
    per_tensor_metrics: bool,
    drift_window: int,
    feedback_capacity: int,
    feedback_max_bytes: int,
    max_body_bytes: int,
    json_decode_budget_bytes: int,
    max_header_bytes: int,
    body_timeout_s: float,
    idle_timeout_s: float,
    drain_timeout_s: float,
    threads: int | None,
    onnxruntime_spinning: bool,
    capture_dir: Path | None,
    capture_max_samples: int,
    capture_max_bytes: int,
    capture_flush_s: float,
    require_gate_hardware: bool,
) -> server_settings.ServerSettings:
    """The settings `serve` runs with, from its parsed options (the track picks unset SLI defaults)."""
    return server_settings.ServerSettings(
        artifact=artifact_path,
        model_name=model_name,
        revision=revision,
        track=server_settings.Track(track),
        host=host,
        port=port,
        grpc_port=grpc_port,
        reference=reference,
        public_key=public_key,
        threads=threads,
        onnxruntime_spinning=onnxruntime_spinning,
        max_body_bytes=max_body_bytes,
        json_decode_budget_bytes=json_decode_budget_bytes,
        max_header_bytes=max_header_bytes,
        body_timeout_s=body_timeout_s,
        idle_timeout_s=idle_timeout_s,
        drain_timeout_s=drain_timeout_s,
        capture_dir=capture_dir,
        capture_max_samples=capture_max_samples,
        capture_max_bytes=capture_max_bytes,
        capture_flush_s=capture_flush_s,
        require_gate_hardware=require_gate_hardware,
        batching=server_settings.BatchSettings(max_batch_size, max_queue_delay_ms, max_queue_size),
        quality=server_settings.QualitySettings.for_track(
            server_settings.Track(track),
            shadow_rate=shadow_rate,
            clip_sample_rate=clip_sample_rate,
            sli_cpu_budget=sli_cpu_budget,
            canary_sli_cpu_budget=canary_sli_cpu_budget,
            shadow_budget_share=shadow_budget_share,
            per_tensor_metrics=per_tensor_metrics,
            drift_window=drift_window,
            feedback_capacity=feedback_capacity,
            feedback_max_bytes=feedback_max_bytes,
        ),
    )
