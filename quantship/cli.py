"""The `quantship` command. Each subcommand parses its flags and calls one module; nothing else.

Exit codes (`ExitCode`): 0 done; 1 a verdict went against you (the accuracy gate failed); 2 the
command line is wrong (click's usage errors, and a name from a list the command knows, such as an
unknown zoo model); 3 refused: the command was well formed, but what it was given cannot be used
(a tampered or unsigned artifact, data of the wrong shape, a download that failed or was too big,
a hostile archive, an unwritable output, missing credentials, an output or node the model lacks,
a demo workdir another demo is running in).
2 and 3 print one line on stderr, `error: ...`, naming the problem; nothing partial is left on disk.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import functools
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource
from rich.console import Console

from quantship import UNIQUE_TAG_ENV, __version__, artifact, scratch
from quantship.agreement import Task
from quantship.choices import MAX_NUM_BINS
from quantship.quantize import config as q_config
from quantship.quantize.evaluate import Metric
from quantship.server import settings as server_settings

F = TypeVar("F", bound=Callable[..., Any])
# Piped output (CI logs, files) gets room for the summary tables instead of rich's 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class _FiniteFloat(click.ParamType):
    """A float that is a number: click's FLOAT accepts "nan" and "inf", which no gate can use."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return float(number)


FINITE = _FiniteFloat()


class _FiniteRange(click.FloatRange):
    """click's FloatRange, refusing NaN and infinities too: every comparison with NaN is false, so it
    passes a range (`serve --max-queue-delay-ms nan` went ready and let every request wait forever),
    and an open-ended range takes inf, which no timeout or interval can use. Every float option of
    every command takes this type or FINITE (tests/unit/test_exit_codes.py checks)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(FINITE.convert(value, param, ctx), param, ctx)


def _choice(values: type[enum.Enum]) -> click.Choice:
    """A click choice of an enum's values: the enum is the one list of them."""
    return click.Choice([member.value for member in values])


_QUANTIZE = q_config.QuantizeConfig()
"""`quantship quantize`'s defaults are the config's: written once, there."""


class ExitCode(enum.IntEnum):
    OK = 0
    VERDICT = 1
    """A verdict went against you: the accuracy gate failed (the best effort is still written)."""
    USAGE = 2
    """The command line is wrong. click's own code for its usage errors; ours for what it cannot check."""
    REFUSED = 3
    """Well formed, but what it names cannot be used: a runtime refusal."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT, as a shell reports a command it interrupted)."""


class _OneLine(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BadUsage(_OneLine):
    """A value click could not check (an unknown model name): a usage error, in one line."""

    exit_code = ExitCode.USAGE


class Refused(_OneLine):
    """The input is well formed but cannot be used: one line, exit code 3."""

    exit_code = ExitCode.REFUSED


def user_errors(func: F) -> F:
    """Turn the refusals a person must fix (ArtifactError, QuantizeInputError, a file that cannot be
    written or read: OSError) into one line and exit code 3 (`ExitCode.REFUSED`), distinct from
    click's 2 for a wrong command line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from quantship.quantize import QuantizeInputError

        try:
            return func(*args, **kwargs)
        except (artifact.ArtifactError, QuantizeInputError) as exc:
            raise Refused(str(exc)) from exc
        except OSError as exc:  # an unwritable output, a directory where a file must go
            if exc.errno == errno.EPIPE or isinstance(exc, TimeoutError):
                raise  # a reader that went away (`| head`: click's own quiet exit), or ours to fix
            raise Refused(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantship")
def main() -> None:
    """Ship quantized ONNX models to production safely."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the command (its `finally` blocks and context managers run), past
    click and anything catching Exception, to `run`."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the cleanups too
    raise Terminated


def run() -> None:
    """The console script: `main`, with SIGTERM (a pod deleted, a CI job's timeout) ending a command as
    Ctrl-C does, by an exception, so that its cleanups run and no scratch or partial file stays; then
    the process ends by the signal, as its parent expects. `serve`, `operator` and `demo` put their own
    handlers (a drain, a stop) over this one."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = main.main(standalone_mode=False)
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    except click.exceptions.Abort:  # Ctrl-C: 130, as a shell reports it; click's own is 1, a failed gate's
        click.echo("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


# -- sample models ----------------------------------------------------------------------------


@main.group()
def zoo() -> None:
    """Sample models with their data: a scikit-learn classifier, and real ones exported with PyTorch."""


@zoo.command("build")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--model",
    "models",
    multiple=True,
    default=["digits"],
    show_default=True,
    metavar="NAME",
    help="digits, efficientnet-lite0, minilm-l6, gpt2-lm or all; repeat for several.",
)
@click.option(
    "--build-env",
    type=click.Path(file_okay=False, path_type=Path),
    default=".venv-export",
    show_default=True,
    help="Build-only virtualenv for torch and the pretrained models (created on demand).",
)
@user_errors
def zoo_build(out_dir: Path, models: tuple[str, ...], build_env: Path) -> None:
    """Write sample models with their data files under OUT_DIR/NAME.

    digits trains a small classifier with scikit-learn (seconds). efficientnet-lite0 and minilm-l6 are
    pretrained models exported with PyTorch in the build virtualenv, gpt2-lm a small language model
    trained there (a minute or two): the first build installs torch there (minutes); later builds
    skip a model whose files are up to date."""
    from quantship import zoo as zoo_module

    names = zoo_module.resolve_names(models)
    if isinstance(names, str):
        raise BadUsage(names)
    for name in names:
        if name == "digits":
            with stderr.status("training the digits classifier (scikit-learn, fixed seed)"):
                sample = zoo_module.build_digits(out_dir)
            stderr.print(
                f"wrote {sample.root}: model.onnx, calibration.npz, calibration-skewed.npz "
                "(one digit only), evaluation.npz, requests.npz, request.json"
            )
        else:
            _build_real_model(name, out_dir, build_env)


def _build_real_model(name: str, out_dir: Path, build_env: Path) -> None:
    """A spinner with the current step on a terminal; one timestamped line per step in CI logs."""
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from quantship.zoo import real

    started = time.monotonic()
    last = ["starting"]
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    ) as progress:
        task = progress.add_task(name)

        def report(message: str) -> None:
            last[0] = message
            if stderr.is_terminal:
                progress.update(task, description=f"{name}: {message}")
            else:
                stderr.print(f"[{time.monotonic() - started:5.0f}s] {name}: {message}", markup=False)

        try:
            sample = real.build(name, out_dir, build_env=build_env, report=report)
        except real.ZooBuildError as exc:
            progress.stop()
            stderr.print(str(exc), markup=False, highlight=False)
            raise Refused(f"building {name} failed: {str(exc).splitlines()[0]}") from exc
    verb = "up to date" if last[0] == "up to date" else "wrote"
    files = ", ".join(real.files_of(name))
    stderr.print(f"{verb} {sample.root}: {files}", markup=False)


# -- quantize, verify, report -----------------------------------------------------------------


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Artifact directory to write."
)
@click.option(
    "--calibration", type=click.Path(path_type=Path), help=".npz keyed by input name, or a folder of .npy."
)
@click.option(
    "--evaluation",
    type=click.Path(path_type=Path),
    help="Data for the gate; with a 'labels' array for accuracy.",
)
@click.option("--mode", type=_choice(q_config.Mode), default=_QUANTIZE.mode.value, show_default=True)
@click.option(
    "--format",
    "quant_format",
    type=_choice(q_config.Format),
    default=_QUANTIZE.format.value,
    show_default=True,
)
@click.option("--per-channel", is_flag=True, help="Quantize weights per output channel.")
@click.option(
    "--activation-type",
    type=_choice(q_config.Precision),
    default=_QUANTIZE.activation_type.value,
    show_default=True,
)
@click.option(
    "--weight-type", type=_choice(q_config.Precision), default=_QUANTIZE.weight_type.value, show_default=True
)
@click.option(
    "--reduce-range/--no-reduce-range",
    default=None,
    help="7-bit weights. Default: on where the CPU lacks VNNI.",
)
@click.option(
    "--calibration-method",
    type=_choice(q_config.Calibration),
    default=_QUANTIZE.calibration.value,
    show_default=True,
)
@click.option(
    "--percentile",
    type=_FiniteRange(0, 100, min_open=True),
    default=_QUANTIZE.percentile,
    show_default=True,
)
@click.option(
    "--num-bins",
    type=click.IntRange(min=2, max=MAX_NUM_BINS),
    default=None,
    help="Histogram bins (histogram methods; entropy's search grows with their square).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_QUANTIZE.batch_size,
    show_default=True,
    help="Calibration rows per batch at most (memory grows with it; large inputs lower it).",
)
@click.option(
    "--pre-process/--no-pre-process",
    default=True,
    show_default=True,
    help="Run onnxruntime's quant_pre_process first.",
)
@click.option(
    "--max-accuracy-delta",
    type=_FiniteRange(0, 1),  # a share: of accuracy, of rows, or a relative error
    default=_QUANTIZE.max_accuracy_delta,
    show_default=True,
    help="Gate: the relative accuracy loss with labels, else the share of rows that may disagree "
    "with FP32 (top-1, or cosine below --min-cosine), or the relative error of a regressor.",
)
@click.option(
    "--task",
    type=_choice(Task),
    default=None,
    help="What the output is; inferred from its dtype, shape and values when omitted. A task the output "
    "does not look like is warned of, naming the one it looks like: classification on unit-length rows "
    "sure of no class without labels, regression on them (an embedding's look); embedding or regression "
    "on probabilities, or on confident scores named like them (a classifier's); embedding on one value a "
    "row (a regression's).",
)
@click.option(
    "--metric",
    type=_choice(Metric),
    default=None,
    help="Gating metric. Default: top1_accuracy with labels; without, confident_agreement (top1_agreement "
    "for class ids, or when FP32 is confident on under 30 rows, or positions for a token model); "
    "cosine_agreement for embeddings; relative_error for regression.",
)
@click.option(
    "--threshold",
    type=FINITE,
    default=None,
    help="The gating metric's limit in its own units (least for agreement/cosine, most for "
    "losses). Default: from --max-accuracy-delta for accuracy and agreement shares.",
)
@click.option(
    "--min-cosine",
    type=_FiniteRange(-1, 1),
    default=_QUANTIZE.min_cosine,
    show_default=True,
    help="Embeddings: the least cosine to FP32 at which a row agrees (gate and shadow SLI).",
)
@click.option(
    "--mask-input",
    default=None,
    metavar="NAME",
    help="An answer per position (a token model's): the input whose zeros mark padding, left out of the "
    "gate and the shadow SLI (ignored, with a warning, for other outputs). Default: the one input named "
    "like an attention mask.",
)
@click.option(
    "--matmul-const-b-only/--no-matmul-const-b-only",
    default=_QUANTIZE.matmul_const_b_only,
    show_default=True,
    help="Static: quantize only MatMuls by a weight, leaving attention products in float (QDQ; "
    "QOperator's graph optimizations may still fuse some).",
)
@click.option(
    "--strategy",
    type=_choice(q_config.Strategy),
    default=_QUANTIZE.strategy.value,
    show_default=True,
    help="recipes: try whole-model recipes first, then op-type and node fallback; fallback: keep "
    "the given recipe, fall back only.",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="Run stage 1's recipes on after one passes (up to half of --max-trials), keeping the most "
    "quantized, then fastest, passing one (or its refinement with the ops onnxruntime cannot fuse in "
    "float, which is tried once more).",
)
@click.option(
    "--max-trials",
    type=click.IntRange(min=0),
    default=_QUANTIZE.max_trials,
    show_default=True,
    help="Trials after the first before giving up; a passing trial's refinement with the ops "
    "onnxruntime cannot fuse kept in float runs beyond them.",
)
@click.option("--exclude", multiple=True, help="Node to keep in float (repeatable).")
@click.option("--output", "output_name", help="Model output the gate compares (default: the first).")
@click.option(
    "--sign-key", type=click.Path(path_type=Path), help="ed25519 private key (PEM) to sign the manifest."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@user_errors
def quantize(
    model: Path,
    out: Path,
    calibration: Path | None,
    evaluation: Path | None,
    mode: str,
    quant_format: str,
    per_channel: bool,
    activation_type: str,
    weight_type: str,
    reduce_range: bool | None,
    calibration_method: str,
    percentile: float,
    num_bins: int | None,
    batch_size: int,
    pre_process: bool,
    max_accuracy_delta: float,
    task: str | None,
    metric: str | None,
    threshold: float | None,
    min_cosine: float,
    mask_input: str | None,
    matmul_const_b_only: bool,
    strategy: str,
    keep_going: bool,
    max_trials: int,
    exclude: tuple[str, ...],
    output_name: str | None,
    sign_key: Path | None,
    quiet: bool,
) -> None:
    """Quantize MODEL to INT8, gate it on accuracy, and write a verifiable artifact to --out."""
    from quantship import quantize as q
    from quantship.quantize import summary

    config = q.QuantizeConfig(
        mode=q.Mode(mode),
        format=q.Format(quant_format),
        per_channel=per_channel,
        activation_type=q.Precision(activation_type),
        weight_type=q.Precision(weight_type),
        reduce_range=reduce_range,
        calibration=q.Calibration(calibration_method),
        percentile=percentile,
        num_bins=num_bins,
        batch_size=batch_size,
        pre_process=pre_process,
        max_accuracy_delta=max_accuracy_delta,
        task=Task(task) if task else None,
        metric=Metric(metric) if metric else None,
        threshold=threshold,
        min_cosine=min_cosine,
        mask_input=mask_input,
        matmul_const_b_only=matmul_const_b_only,
        strategy=q.Strategy(strategy),
        keep_going=keep_going,
        max_trials=max_trials,
        output=output_name,
        excluded_nodes=tuple(exclude),
    )
    _check_quantize_options(config, click.get_current_context())
    key = artifact.load_private_key(sign_key) if sign_key else None
    progress = None if quiet else q.default_progress()
    result = q.run(
        model,
        out,
        config,
        calibration=calibration,
        evaluation=evaluation,
        sign_key=key,
        progress=progress,
        warn=lambda message: stderr.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True),
    )
    stdout.print(summary.table([(result.written_to.name, result.artifact)]))
    if not result.gate_passed:
        kept = f"; the artifact at {out}, whose gate did not fail, is left as it was" if result.kept else ""
        stderr.print(
            f"[red]accuracy gate failed[/]: best effort written to {result.written_to} "
            f"(marked gate: failed){kept}"
        )
        sys.exit(1)


_OPTION_OF_FIELD = {
    "format": "quant_format",
    "calibration": "calibration_method",
    "activation_type": "activation_type",
    "percentile": "percentile",
    "num_bins": "num_bins",
    "batch_size": "batch_size",
    "matmul_const_b_only": "matmul_const_b_only",
}
"""quantize's parameter for each config field a recipe may leave unread."""


def _check_quantize_options(config: q_config.QuantizeConfig, ctx: click.Context) -> None:
    """Refuse options that cannot work together; name, once, those given that will not apply (a
    warning, not a refusal: the operator's quantize Job passes what a QuantizedModel sets, and a run
    that would have worked must not fail after its downloads)."""
    from quantship.quantize.evaluate import METRICS

    if problems := config.problems():
        raise BadUsage(problems[0])
    for caution in config.cautions():
        stderr.print(f"[yellow]warning:[/] {caution}", highlight=False, soft_wrap=True)
    given = {name for name in ctx.params if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    if "max_accuracy_delta" in given and (
        config.threshold is not None
        or (config.metric is not None and METRICS[config.metric].default_threshold is not None)
    ):
        why = "--threshold" if config.threshold is not None else f"--metric {config.metric}'s own default"
        stderr.print(
            f"[yellow]warning:[/] --max-accuracy-delta ignored: the gate's limit is {why}",
            highlight=False,
            soft_wrap=True,
        )
    unread = config.not_applied({field for field, param in _OPTION_OF_FIELD.items() if param in given})
    if unread:
        options = ", ".join(_option_name(ctx, _OPTION_OF_FIELD[field]) for field in unread)
        stderr.print(
            f"[yellow]warning:[/] ignored, {config.label()} does not use them: {options}",
            highlight=False,
            soft_wrap=True,
        )


def _option_name(ctx: click.Context, param: str) -> str:
    return next(p.opts[0] for p in ctx.command.params if p.name == param)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Artifact directory.")
@click.option("--sign-key", type=click.Path(path_type=Path), help="ed25519 private key (PEM) to sign with.")
@user_errors
def package(model: Path, out: Path, sign_key: Path | None) -> None:
    """Wrap an FP32 MODEL as an artifact, unquantized: a baseline to serve and to canary against."""
    from quantship.quantize import package_fp32

    key = artifact.load_private_key(sign_key) if sign_key else None
    written = package_fp32(model, out, sign_key=key)
    click.echo(f"wrote {written.root} (fp32, {written.manifest['files'][artifact.MODEL_FILE]['size']} bytes)")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("tarball", type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def pack(path: Path, tarball: Path) -> None:
    """Verify the artifact at PATH and write it as TARBALL (.tar.gz), for an http(s):// artifact URI."""
    artifact.refuse_inside_an_artifact(tarball)
    try:
        artifact.pack(path, tarball)
    except OSError as exc:
        raise Refused(f"cannot write {tarball}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {tarball}")


def _speed_options(func: F) -> F:
    """curl's --speed-limit and --speed-time, for a transfer from or to an OCI registry and an
    http(s) download (fetch's artifact, quantize-job's inputs): the help says so, with no `oci://:`
    of the registry-only flags of fetch and quantize-job."""
    func = click.option(
        "--speed-time",
        type=_FiniteRange(min=0, min_open=True),
        default=None,
        help="Seconds over which --speed-limit is measured. Default: quantship.oci.SPEED_WINDOW_S (60).",
    )(func)
    func = click.option(
        "--speed-limit",
        type=_FiniteRange(min=0),
        default=None,
        help="Bytes a second each transfer (to or from a registry, or an http(s) download) must move, "
        "on average over --speed-time, or be abandoned (0: never). Default: "
        "quantship.oci.MIN_SPEED_BYTES_S (100).",
    )(func)
    return func


def _speed(speed_limit: float | None, speed_time: float | None) -> Any:
    """The oci.SpeedLimit the options ask for: its defaults where not given."""
    from quantship import oci

    return oci.SpeedLimit(**_given(bytes_per_s=speed_limit, window_s=speed_time))


def _registry_options(func: F) -> F:
    """Credentials and transport for an OCI registry; the password only from the environment."""
    func = _speed_options(func)
    func = click.option("--insecure", is_flag=True, help="Plain HTTP (loopback registries always use it).")(
        func
    )
    func = click.option(
        "--docker-config",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A Docker config.json with credentials (a dockerconfigjson Secret).",
    )(func)
    func = click.option(
        "--username",
        envvar="QUANTSHIP_REGISTRY_USER",
        help="Registry user [env QUANTSHIP_REGISTRY_USER]; the password comes from "
        "QUANTSHIP_REGISTRY_PASSWORD.",
    )(func)
    return func


def _credentials(username: str | None, docker_config: Path | None) -> Any:
    import os

    from quantship import oci

    password = os.environ.get("QUANTSHIP_REGISTRY_PASSWORD")
    if username is not None and password is None and docker_config is None:
        # else the user went unused: an open registry was asked anonymously, a closed one said
        # "needs credentials" to someone who had given some
        raise click.UsageError(
            f"--username {username!r} (or QUANTSHIP_REGISTRY_USER) needs QUANTSHIP_REGISTRY_PASSWORD "
            "in the environment, which is not set"
        )
    return oci.Credentials(username, password, docker_config)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("uri")
@_registry_options
@user_errors
def push(
    path: Path,
    uri: str,
    username: str | None,
    docker_config: Path | None,
    insecure: bool,
    speed_limit: float | None,
    speed_time: float | None,
) -> None:
    """Verify the artifact at PATH and push it to URI (oci://REGISTRY/REPO:TAG); prints the digest."""
    from quantship import oci

    try:
        digest = oci.push(
            path,
            uri,
            credentials=_credentials(username, docker_config),
            insecure=insecure,
            speed_limit=_speed(speed_limit, speed_time),
        )
    except oci.OciError as exc:
        raise Refused(str(exc)) from exc
    reference = oci.Reference.parse(uri)
    click.echo(f"pushed {uri}: oci://{reference.registry}/{reference.repository}@{digest}")


@main.command()
@click.argument("uri")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Directory to create.")
@click.option("--public-key", type=click.Path(path_type=Path), help="Require a valid ed25519 signature.")
@_registry_options
@user_errors
def pull(
    uri: str,
    out: Path,
    public_key: Path | None,
    username: str | None,
    docker_config: Path | None,
    insecure: bool,
    speed_limit: float | None,
    speed_time: float | None,
) -> None:
    """Pull the artifact at URI (oci://REGISTRY/REPO:TAG or @sha256:DIGEST) into OUT, verified."""
    from quantship import oci

    key = artifact.load_public_key(public_key) if public_key else None
    try:
        pulled = oci.pull(
            uri,
            out,
            credentials=_credentials(username, docker_config),
            insecure=insecure,
            public_key=key,
            speed_limit=_speed(speed_limit, speed_time),
        )
    except oci.OciError as exc:
        raise Refused(str(exc)) from exc
    click.echo(
        f"pulled {uri} ({pulled.image_digest}) into {pulled.root}: {pulled.gate_in_words()}, "
        f"its manifest.json sha256 {pulled.digest[:12]}"
    )


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), help="Require a valid ed25519 signature.")
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check this FP32 model as `serve --reference FILE` would, not the artifact's reference.onnx.",
)
@click.option(
    "--require-gate-hardware",
    is_flag=True,
    help="Refuse, as `serve --require-gate-hardware` would, an artifact whose gate ran on other CPU int8 "
    "features, onnxruntime or provider than this machine's.",
)
@user_errors
def verify(path: Path, public_key: Path | None, reference: Path | None, require_gate_hardware: bool) -> None:
    """Check an artifact's file hashes (and its signature when --public-key is given), and that a
    server's load would take it: its model opens, its manifest fits the model, and its reference takes
    the model's inputs. An intact artifact whose accuracy gate failed (a best effort) exits 1.

    A server started with options verify was not given decides otherwise: `serve --reference FILE`
    checks FILE, not the artifact's reference.onnx (pass the same --reference here), and `serve
    --require-gate-hardware` refuses an artifact gated on other hardware than its node's, which verify
    checks only with --require-gate-hardware, against the machine it runs on."""
    from quantship.server.service import LoadRefused, check_loadable

    key = artifact.load_public_key(public_key) if public_key else None
    scratch.sweep()  # what verifies and servers killed before us left behind
    with artifact.opened(path, public_key=key) as loaded:  # a .tar.gz unpacked, then removed
        try:  # hashes, signature and archive checks passed on opening; then the load's own
            check_loadable(loaded, reference=reference, require_gate_hardware=require_gate_hardware)
        except LoadRefused as exc:
            raise Refused(f"{path}: a server refuses to load it: {exc}") from exc
    signature = _signature_in_words(loaded, checked=key is not None)
    files = len(loaded.manifest["files"])
    matched = f"{files} files match their sha256" if files > 1 else "its one file matches its sha256"
    if loaded.gate == "failed":  # intact, but a best effort: `verify && deploy` must not ship it
        click.echo(f"gate failed: {path}: {matched}; {signature}; its accuracy gate failed (exit code 1)")
        sys.exit(ExitCode.VERDICT)
    click.echo(f"ok: {path}: {matched}; {signature}; {loaded.gate_in_words()}")


def _signature_in_words(loaded: artifact.Artifact, *, checked: bool) -> str:
    if checked:
        return "signature valid"
    return "signed, signature not checked" if loaded.signed else "unsigned"


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(path_type=Path),
    help="Require a valid ed25519 signature; the report then says it was checked.",
)
@user_errors
def report(path: Path, out: Path, public_key: Path | None) -> None:
    """Write a self-contained HTML report (plots embedded) for an artifact."""
    from quantship.quantize import report as report_module

    artifact.refuse_inside_an_artifact(out)
    key = artifact.load_public_key(public_key) if public_key else None
    with artifact.opened(path, public_key=key) as loaded:
        html = report_module.render(loaded, given=path, signature_checked=key is not None)
    try:
        out.write_text(html)
    except OSError as exc:
        raise Refused(f"cannot write {out}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {out}")


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


@main.command()
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
    type=_FiniteRange(min=0),
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
    _FiniteRange(0, 1),
    "Share of requests also run through the FP32 reference, in the background.",
)
@_sampling_option(
    "--clip-sample-rate",
    _FiniteRange(0, 1),
    "Share of requests whose activations are checked against the calibrated ranges.",
)
@_sampling_option(
    "--sli-cpu-budget",
    _FiniteRange(0, server_settings.MAX_SLI_CPU_BUDGET),
    "CPU seconds per second the shadow and clip work may use, split between the two that run (see "
    "--shadow-budget-share); samples past it are dropped and counted.",
)
@click.option(
    "--canary-sli-cpu-budget",
    type=_FiniteRange(0, server_settings.MAX_SLI_CPU_BUDGET),
    default=None,
    help="The SLI CPU budget of a server on --track canary, in place of --sli-cpu-budget, for a model "
    "whose canary needs more FP32 comparisons than that buys. A stable server ignores it, so promotion "
    "(which changes only --track) restores the stable's budget. [default: --sli-cpu-budget's, else "
    f"{_QUALITY.default('sli_cpu_budget', server_settings.Track.CANARY):g}]",
)
@_sampling_option(
    "--shadow-budget-share",
    _FiniteRange(0, 1),
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
    type=_FiniteRange(min=0, min_open=True),
    default=_default(_SERVE, "body_timeout_s"),
    show_default=True,
    help="Seconds a request body may take to arrive once its headers are in; then 408.",
)
@click.option(
    "--idle-timeout-s",
    type=_FiniteRange(min=0, min_open=True),
    default=_default(_SERVE, "idle_timeout_s"),
    show_default=True,
    help="Seconds a connection may wait for a request's headers (new or kept alive), or its client may "
    "take none of its answer (over gRPC: acknowledge no ping); then it is closed.",
)
@click.option(
    "--drain-timeout-s",
    type=_FiniteRange(min=0),
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
    type=_FiniteRange(min=0),
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


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build/demo"),
    show_default=True,
    help="Where models, artifacts, logs and reports go; a rerun replaces the last run's outputs there "
    "(one demo at a time: a second one there refuses).",
)
@click.option("--quick", is_flag=True, help="Shorter steps and windows (about a minute): for tests.")
@click.option(
    "--prometheus/--no-prometheus",
    default=True,
    show_default=True,
    help="Judge through a real Prometheus when installed; else scrape the servers directly.",
)
@user_errors
def demo(workdir: Path, quick: bool, prometheus: bool) -> None:
    """Run the whole flow locally: quantize, serve, roll a good canary out and a bad one back, then
    drift the traffic, recalibrate from what the stable captured and roll that out."""
    from quantship.local import demo as demo_module
    from quantship.local import workdir_lock

    try:
        code = demo_module.main(workdir, stdout, quick=quick, prometheus=prometheus)
    except workdir_lock.WorkdirLockError as exc:
        raise Refused(str(exc)) from None
    sys.exit(code)


@main.command()
@click.option("--private", "private_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--public", "public_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def keygen(private_path: Path, public_path: Path) -> None:
    """Create an ed25519 key pair for signing artifacts (PEM files)."""
    for path in (private_path, public_path):  # a private key there would ship with the artifact
        artifact.refuse_inside_an_artifact(path)
    artifact.generate_keypair(private_path, public_path)
    click.echo(f"wrote {private_path} (keep it secret) and {public_path}")


# -- Kubernetes: the operator and its init container ------------------------------------------


_pvc_root_option = click.option(
    "--pvc-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where pvc://CLAIM/... claims are mounted. Default: where the operator mounts them "
    "(quantship.operator.fetch.PVC_ROOT).",
)
"""Shared by `fetch` and `quantize-job`; None keeps the fetch module's default (written there once)."""


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


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set: the rest keep the called function's own defaults."""
    return {name: value for name, value in options.items() if value is not None}


@main.command()
@click.argument("uri")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), help="Require a valid ed25519 signature.")
@_pvc_root_option
@click.option(
    "--timeout",
    type=_FiniteRange(min=1),
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
@_speed_options
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
            speed_limit=_speed(speed_limit, speed_time),
            **_given(pvc_root=pvc_root, max_bytes=max_bytes, timeout=timeout),
        )
    except fetch_module.CrossHostRedirect as exc:
        raise Refused(f"{exc}; or allow it with --cross-host-redirects") from exc
    except fetch_module.FetchError as exc:
        raise Refused(str(exc)) from exc
    signature = _signature_in_words(loaded, checked=public_key is not None)
    click.echo(f"ok: {uri} -> {dest}: {len(loaded.manifest['files'])} files verified; {signature}")


@main.command("quantize-job", context_settings={"ignore_unknown_options": True})
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
@_speed_options
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
            speed_limit=_speed(speed_limit, speed_time),
            **_given(pvc_root=pvc_root),
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


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these (repeatable).")
@click.option("--tick-interval", type=_FiniteRange(min=0.1), default=5.0, show_default=True)
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


if __name__ == "__main__":
    main()
