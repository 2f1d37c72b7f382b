"""What a `quantship` command exits with (`ExitCode`), and the one-line refusals every command
raises (`BadUsage`, `Refused`, `user_errors`): the contract the package's docstring writes down."""

from __future__ import annotations

import enum
import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from quantship import artifact

F = TypeVar("F", bound=Callable[..., Any])


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
