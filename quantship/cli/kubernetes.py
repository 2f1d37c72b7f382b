"""The commands that run in Kubernetes: `operator`, and its pods' `fetch` (the model server's init
container) and `quantize-job` (a QuantizedModel's quantization Job, which runs `quantize`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quantship import UNIQUE_TAG_ENV
from quantship.cli.errors import ExitCode, Refused, user_errors
from quantship.cli.options import FiniteRange, given, speed_limit_of, speed_options
from quantship.cli.output import signature_in_words, stderr
from quantship.cli.quantizing import quantize

_pvc_root_option = click.option(
    "--pvc-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where pvc://CLAIM/... claims are mounted. Default: where the operator mounts them "
    "(quantship.operator.fetch.PVC_ROOT).",
)
"""Shared by `fetch` and `quantize-job`; None keeps the fetch module's default (written there once)."""


JOBS_OWN_PARAMETERS = ("out", "calibration", "evaluation")
"""quantize's options the Job sets itself (the inputs it fetched, its work folder): given after --
too, click took the last of each, and quantize wrote where the Job never looked ("WORKDIR/artifact:
no such artifact", the artifact left outside its work folder) or gated on data it never fetched."""


def _jobs_own_given(quantize_args: tuple[str, ...]) -> list[str]:
    """The Job's own options among QUANTIZE_ARGS, as quantize parses them: an option's value that
    looks like one (a node `--exclude --out`) is a value."""
    parsed = quantize.make_context("quantize", ["MODEL", *quantize_args], resilient_parsing=True)
    commandline = click.core.ParameterSource.COMMANDLINE
    return [
        "/".join(param.opts)
        for param in quantize.params
        if param.name in JOBS_OWN_PARAMETERS and parsed.get_parameter_source(param.name) is commandline
    ]


def _ip_address(value: str | None) -> str | None:
    """An IP address for a listener, refused here in one line rather than by each model server's
    start (a crash loop in every pod)."""
    import ipaddress

    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IPv4 or IPv6 address") from None
        if "%" in value:  # a link-local scope names one node's interface: no address for every pod
            raise click.BadParameter(f"{value!r} names an interface's scope: give an address without it")
    return value


@click.command()
@click.argument("uri")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), help="Require a valid ed25519 signature.")
@_pvc_root_option
@click.option(
    "--timeout",
    type=FiniteRange(min=1),
    default=None,
    help="Seconds any one connect or read may wait. Default: quantship.oci.TIMEOUT_S (120).",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Largest download (an oci:// artifact's layers together); a .tar.gz may unpack to, and an "
    "artifact directory hold, twice that. Default: quantship.artifact.MAX_DOWNLOAD_BYTES (8 GiB).",
)
@click.option(
    "--cross-host-redirects", is_flag=True, help="Follow redirects to other hosts (refused by default)."
)
@click.option(
    "--registry-config",
    "--docker-config",  # push's and pull's name for the same file
    "registry_config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="oci://: a Docker config.json with the registry's credentials (a mounted pull secret).",
)
@click.option("--insecure", is_flag=True, help="oci://: plain HTTP (loopback registries always use it).")
@speed_options
@user_errors
def fetch(
    uri: str,
    dest: Path,
    public_key: Path | None,
    pvc_root: Path | None,
    timeout: float | None,
    max_bytes: int | None,
    cross_host_redirects: bool,
    registry_config: Path | None,
    insecure: bool,
    speed_limit: float | None,
    speed_time: float | None,
) -> None:
    """Fetch the artifact at URI (file://, pvc://, http(s)://...tar.gz, oci://), verify it, install it
    as DEST."""
    from quantship.operator import fetch as fetch_module

    try:
        loaded = fetch_module.fetch(
            uri,
            dest,
            public_key=public_key,
            cross_host_redirects=cross_host_redirects,
            registry_config=registry_config,
            insecure=insecure,
            speed_limit=speed_limit_of(speed_limit, speed_time),
            **given(pvc_root=pvc_root, max_bytes=max_bytes, timeout=timeout),
        )
    except fetch_module.CrossHostRedirect as exc:
        raise Refused(f"{exc}; or allow it with --cross-host-redirects") from exc
    except fetch_module.FetchError as exc:
        raise Refused(str(exc)) from exc
    signature = signature_in_words(loaded, checked=public_key is not None)
    files = len(loaded.manifest["files"])
    counted = f"{files} files verified" if files > 1 else "its one file verified"  # as verify counts them
    click.echo(f"ok: {uri} -> {dest}: {counted}; {signature}")


@click.command("quantize-job", context_settings={"ignore_unknown_options": True})
@click.option("--model", "model_uri", required=True, help="The FP32 .onnx: file://, pvc:// or http(s)://.")
@click.option("--calibration", "calibration_uri", required=True, help="Calibration data URI.")
@click.option("--evaluation", "evaluation_uri", help="Gate data URI (default: the calibration data).")
@click.option("--target", required=True, help="Where a passing artifact goes: pvc://, file:// or oci://.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/work"),
    show_default=True,
    help="Scratch space for the inputs and the artifact.",
)
@click.option(
    "--result-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/dev/termination-log"),
    show_default=True,
    help="Where the verdict goes as JSON (the container's termination message).",
)
@_pvc_root_option
@click.option(
    "--registry-config",
    "--docker-config",  # push's and pull's name for the same file
    "registry_config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="oci:// target: a Docker config.json with credentials to push.",
)
@click.option("--insecure", is_flag=True, help="oci:// target: plain HTTP.")
@click.option(
    "--unique-tag",
    envvar=UNIQUE_TAG_ENV,
    help="oci:// target: push to this tag of the repository first (one no other Job pushes to), then "
    "move --target's tag: the digest the verdict pins stays tagged after the next Job moves it "
    f"[env {UNIQUE_TAG_ENV}].",
)
@speed_options
@click.argument("quantize_args", nargs=-1, type=click.UNPROCESSED)
@user_errors
def quantize_job(
    model_uri: str,
    calibration_uri: str,
    evaluation_uri: str | None,
    target: str,
    workdir: Path,
    result_file: Path,
    pvc_root: Path | None,
    registry_config: Path | None,
    insecure: bool,
    unique_tag: str | None,
    speed_limit: float | None,
    speed_time: float | None,
    quantize_args: tuple[str, ...],
) -> None:
    """A QuantizedModel's quantization Job: fetch the inputs, run `quantship quantize` with
    QUANTIZE_ARGS (after --), publish the artifact to --target when the gate passed, and write the
    verdict to --result-file. Exit 0: gate passed; 1: gate failed; 3: refused (the error in the file)."""
    from quantship.operator import quantize_job as job

    from_environment = click.get_current_context().get_parameter_source("unique_tag")
    if from_environment is click.core.ParameterSource.ENVIRONMENT and not target.startswith("oci://"):
        unique_tag = None  # the operator sets it for oci:// targets only: a stray one elsewhere is no ask

    def run_quantize(model: Path, calibration: Path, evaluation: Path | None, out: Path) -> None:
        args = [str(model), "-o", str(out), "--calibration", str(calibration), "-q"]
        if evaluation is not None:
            args += ["--evaluation", str(evaluation)]
        try:
            quantize.main([*args, *quantize_args], prog_name="quantship quantize", standalone_mode=False)
        except SystemExit as exc:
            if exc.code != ExitCode.VERDICT:  # a failed gate leaves its artifact, and a verdict
                raise
        except click.UsageError as exc:  # quantize's flags, from the resource: refused (3), as documented,
            # with click's whole message ("Did you mean '--metric'?"), not str()'s first sentence
            raise job.JobError(f"quantize: {exc.format_message()}") from None

    if own := _jobs_own_given(quantize_args):  # before anything is fetched
        message = (
            f"quantize's {', '.join(own)} after --: the Job's own (it quantizes what it fetched into "
            "--workdir); give the data as --calibration and --evaluation URIs before --"
        )
        job.write_result(result_file, {"error": message})
        raise Refused(message)
    try:
        verdict = job.run(
            model=model_uri,
            calibration=calibration_uri,
            evaluation=evaluation_uri,
            target=target,
            quantize=run_quantize,
            workdir=workdir,
            result_file=result_file,
            registry_config=registry_config,
            insecure=insecure,
            unique_tag=unique_tag,
            speed_limit=speed_limit_of(speed_limit, speed_time),
            **given(pvc_root=pvc_root),
        )
    except job.JobError as exc:
        raise Refused(str(exc)) from exc
    if not verdict.passed:
        stderr.print(
            f"[red]accuracy gate failed[/]: {verdict.metric} {verdict.value} (threshold {verdict.threshold})"
        )
        sys.exit(ExitCode.VERDICT)
    click.echo(
        f"gate passed: {verdict.metric} {verdict.value} (threshold {verdict.threshold}); {verdict.artifact}"
    )


@click.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these (repeatable).")
@click.option("--tick-interval", type=FiniteRange(min=0.1), default=5.0, show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--health-port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@click.option(
    "--bind-address",
    help="Address of the metrics and health ports. Default: loopback (OperatorSettings.bind_address); "
    "the chart passes 0.0.0.0.",
)
@click.option(
    "--server-bind-address",
    callback=lambda _ctx, _param, value: _ip_address(value),
    help="Address the model servers' HTTP and gRPC ports listen on. Default: every IPv4 address "
    "(OperatorSettings.server_bind_address, 0.0.0.0); :: on an IPv6 cluster.",
)
@click.option("--standalone", is_flag=True, help="No peering: only one replica may run.")
@click.option("--priority", type=int, default=0, show_default=True, help="Peering priority.")
@click.option("-v", "--verbose", is_flag=True)
def operator(
    namespaces: tuple[str, ...],
    tick_interval: float,
    metrics_port: int,
    health_port: int,
    bind_address: str | None,
    server_bind_address: str | None,
    standalone: bool,
    priority: int,
    verbose: bool,
) -> None:
    """Run the QuantizedModel operator (in-cluster service account, else your kubeconfig)."""
    if metrics_port and metrics_port == health_port:
        raise click.BadParameter(
            f"{health_port} is --metrics-port too: each needs its own", param_hint="--health-port"
        )
    import asyncio
    import dataclasses
    import logging

    from quantship import operator as operator_module

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s")
    settings = operator_module.OperatorSettings(
        namespaces=namespaces,
        tick_interval=tick_interval,
        metrics_port=metrics_port,
        health_port=health_port,
        standalone=standalone,
        priority=priority,
    )
    if bind_address:  # else the settings' default, loopback
        settings = dataclasses.replace(settings, bind_address=bind_address)
    if server_bind_address:
        settings = dataclasses.replace(settings, server_bind_address=server_bind_address)
    try:
        asyncio.run(operator_module.run(settings))
    except operator_module.NoCredentials as exc:
        raise Refused(str(exc)) from exc
