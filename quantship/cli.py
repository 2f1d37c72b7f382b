"""The `quantship` command. Each subcommand parses its flags and calls one module; nothing else.

Exit codes: 0 done; 1 a verdict went against you (accuracy gate failed); 2 bad input (a one-line
error on stderr names the problem; nothing partial is left on disk).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from quantship import __version__, artifact

F = TypeVar("F", bound=Callable[..., Any])
# Piped output (CI logs, files) gets room for the summary tables instead of rich's 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class InputError(click.ClickException):
    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def user_errors(func: F) -> F:
    """Turn the errors a person must fix into one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from quantship.quantize import QuantizeInputError

        try:
            return func(*args, **kwargs)
        except (artifact.ArtifactError, QuantizeInputError) as exc:
            raise InputError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantship")
def main() -> None:
    """Ship quantized ONNX models to production safely."""


# -- sample models ----------------------------------------------------------------------------


@main.group()
def zoo() -> None:
    """Sample models built from data that ships with scikit-learn."""


@zoo.command("build")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def zoo_build(out_dir: Path) -> None:
    """Train the digits classifier and write it with its data files under OUT_DIR."""
    from quantship import zoo as zoo_module

    with stderr.status("training the digits classifier (scikit-learn, fixed seed)"):
        sample = zoo_module.build_digits(out_dir)
    stderr.print(
        f"wrote {sample.root}: model.onnx, calibration.npz, calibration-skewed.npz "
        "(one digit only), evaluation.npz, requests.npz, request.json"
    )


# -- quantize, verify, report -----------------------------------------------------------------


def _choice(enum_type: Any) -> click.Choice:
    return click.Choice([member.value for member in enum_type], case_sensitive=False)


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
@click.option("--mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True)
@click.option(
    "--format", "quant_format", type=click.Choice(["QDQ", "QOperator"]), default="QDQ", show_default=True
)
@click.option("--per-channel", is_flag=True, help="Quantize weights per output channel.")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True)
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True)
@click.option(
    "--reduce-range/--no-reduce-range",
    default=None,
    help="7-bit weights. Default: on where the CPU lacks VNNI.",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "percentile", "entropy", "distribution"]),
    default="minmax",
    show_default=True,
)
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.999, show_default=True)
@click.option(
    "--num-bins", type=click.IntRange(min=2), default=None, help="Histogram bins (histogram methods)."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--pre-process/--no-pre-process",
    default=True,
    show_default=True,
    help="Run onnxruntime's quant_pre_process first.",
)
@click.option(
    "--max-accuracy-delta",
    type=float,
    default=0.005,
    show_default=True,
    help="Gate: largest relative accuracy loss (or top-1 disagreement) accepted.",
)
@click.option(
    "--max-trials",
    type=click.IntRange(min=0),
    default=12,
    show_default=True,
    help="Fallback trials before giving up.",
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
        max_trials=max_trials,
        output=output_name,
        excluded_nodes=tuple(exclude),
    )
    key = artifact.load_private_key(sign_key) if sign_key else None
    progress = None if quiet else q.default_progress()
    result = q.run(
        model, out, config, calibration=calibration, evaluation=evaluation, sign_key=key, progress=progress
    )
    stdout.print(summary.table([(out.name, result.artifact)]))
    if not result.gate_passed:
        stderr.print(f"[red]accuracy gate failed[/]: best effort written to {out} (marked gate: failed)")
        sys.exit(1)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), help="Require a valid ed25519 signature.")
@user_errors
def verify(path: Path, public_key: Path | None) -> None:
    """Check an artifact's file hashes (and its signature when --public-key is given)."""
    key = artifact.load_public_key(public_key) if public_key else None
    loaded = artifact.load_artifact(path, public_key=key)
    signature = (
        "signature valid" if key else ("signed, signature not checked" if loaded.signed else "unsigned")
    )
    gate = loaded.manifest.get("validation", {}).get("gate", "unknown")
    click.echo(
        f"ok: {path}: {len(loaded.manifest['files'])} files match their sha256; {signature}; gate {gate}"
    )


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def report(path: Path, out: Path) -> None:
    """Write a self-contained HTML report (plots embedded) for an artifact."""
    from quantship.quantize import report as report_module

    loaded = artifact.load_artifact(path)
    try:
        out.write_text(report_module.render(loaded))
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {out}")


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build/demo"),
    show_default=True,
    help="Where models, artifacts and reports go.",
)
def demo(workdir: Path) -> None:
    """Run the whole flow locally: quantize, serve, roll out, roll back."""
    from quantship.local import demo as demo_module

    demo_module.run_demo(workdir, stdout)


@main.command()
@click.option("--private", "private_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--public", "public_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def keygen(private_path: Path, public_path: Path) -> None:
    """Create an ed25519 key pair for signing artifacts (PEM files)."""
    artifact.generate_keypair(private_path, public_path)
    click.echo(f"wrote {private_path} (keep it secret) and {public_path}")


if __name__ == "__main__":
    main()
