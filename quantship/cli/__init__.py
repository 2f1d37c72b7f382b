"""The `quantship` command (`run`, the console script, and `main`, its click group). Each subcommand
parses its flags and calls one module; nothing else. The commands live in modules by what they work
on: samples (zoo), quantizing, artifacts (package, pack, verify, report, keygen), registry (push,
pull), serving, demo, kubernetes (operator, fetch, quantize-job); what they share in errors (the
exit codes below), options and output.

Exit codes (`ExitCode`): 0 done; 1 a verdict went against you (the accuracy gate failed); 2 the
command line is wrong (click's usage errors, and a name from a list the command knows, such as an
unknown zoo model); 3 refused: the command was well formed, but what it was given cannot be used
(a tampered or unsigned artifact, data of the wrong shape, a download that failed or was too big,
a hostile archive, an unwritable output, missing credentials, an output or node the model lacks,
a demo workdir another demo is running in).
2 and 3 print one line on stderr, `error: ...`, naming the problem; nothing partial is left on disk.
"""

from __future__ import annotations

import signal
import sys

import click

from quantship import __version__
from quantship.cli import artifacts, demo, kubernetes, quantizing, registry, samples, serving
from quantship.cli.errors import ExitCode

__all__ = ["ExitCode", "Terminated", "main", "run"]


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


for command in (
    samples.zoo,
    quantizing.quantize,
    artifacts.package,
    artifacts.pack,
    artifacts.verify,
    artifacts.report,
    artifacts.keygen,
    registry.push,
    registry.pull,
    serving.serve,
    demo.demo,
    kubernetes.fetch,
    kubernetes.quantize_job,
    kubernetes.operator,
):
    main.add_command(command)
