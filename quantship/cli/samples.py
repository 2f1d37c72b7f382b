"""`quantship zoo build`: sample models with their data, a scikit-learn classifier and real ones
exported with PyTorch in a build virtualenv (`quantship.zoo`)."""

from __future__ import annotations

from pathlib import Path

import click

from quantship.cli.errors import BadUsage, Refused, user_errors
from quantship.cli.output import stderr


@click.group()
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
