"""Option types and options more than one command takes: finite floats (`FINITE`, `FiniteRange`:
every float option takes one), an enum's values (`choice`), the options the user set (`given`),
curl's --speed-limit/--speed-time (`speed_options`, `speed_limit_of`), and the -o that names an
artifact directory to write (`artifact_out`) with what it replaces (`REPLACES`)."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

REPLACES = "an older artifact there is replaced in one rename, never half-written; anything else is refused"
"""What `quantize -o`, `package -o` and `pull -o` do with what is there (and `pack` with an older
archive): write over their own earlier output, as `tar -czf` and `docker save -o` do, but never over
a user's other data."""

artifact_out = click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help=f"Artifact directory to write; {REPLACES}.",
)
"""`quantize`'s, `package`'s and `pull`'s -o (each use makes its own click Option)."""


class _FiniteFloat(click.ParamType):
    """A float that is a number: click's FLOAT accepts "nan" and "inf", which no gate can use."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return float(number)


FINITE = _FiniteFloat()


class FiniteRange(click.FloatRange):
    """click's FloatRange, refusing NaN and infinities too: every comparison with NaN is false, so it
    passes a range (`serve --max-queue-delay-ms nan` went ready and let every request wait forever),
    and an open-ended range takes inf, which no timeout or interval can use. Every float option of
    every command takes this type or FINITE (tests/unit/test_exit_codes.py checks)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(FINITE.convert(value, param, ctx), param, ctx)


def choice(values: type[enum.Enum]) -> click.Choice:
    """A click choice of an enum's values: the enum is the one list of them."""
    return click.Choice([member.value for member in values])


def given(**options: Any) -> dict[str, Any]:
    """The options the user set: the rest keep the called function's own defaults."""
    return {name: value for name, value in options.items() if value is not None}


def speed_options(func: F) -> F:
    """curl's --speed-limit and --speed-time, for a transfer from or to an OCI registry and an
    http(s) download (fetch's artifact, quantize-job's inputs): the help says so, with no `oci://:`
    of the registry-only flags of fetch and quantize-job."""
    func = click.option(
        "--speed-time",
        type=FiniteRange(min=0, min_open=True),
        default=None,
        help="Seconds over which --speed-limit is measured. Default: "
        "quantship.transfer_speed.SPEED_WINDOW_S (60).",
    )(func)
    func = click.option(
        "--speed-limit",
        type=FiniteRange(min=0),
        default=None,
        help="Bytes a second each transfer (to or from a registry, or an http(s) download) must move, "
        "on average over --speed-time, or be abandoned (0: never). Default: "
        "quantship.transfer_speed.MIN_SPEED_BYTES_S (100).",
    )(func)
    return func


def speed_limit_of(speed_limit: float | None, speed_time: float | None) -> Any:
    """The transfer_speed.SpeedLimit the options ask for: its defaults where not given."""
    from quantship import transfer_speed

    return transfer_speed.SpeedLimit(**given(bytes_per_s=speed_limit, window_s=speed_time))
