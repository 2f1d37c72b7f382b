"""`quantship demo`: the whole flow on this machine (`quantship.local.demo`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quantship.cli.errors import Refused, user_errors
from quantship.cli.output import stdout


@click.command()
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
