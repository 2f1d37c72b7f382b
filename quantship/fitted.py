"""Tables that read at the width they are printed at: a wide layout where it fits, a narrow one
elsewhere. Given too few columns, rich wraps and cuts every cell to share them out: at 80 columns the
quantize summary's eight columns showed `int8-g…` and `accura…` over five-line rows, and the demo's
rollouts table `v3-int8-s` / `kewed` and `RolledBac` / `k`. Used by the quantize summary and the demo;
imports nothing of quantship.
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table

UNBOUNDED = 100_000
"""Columns to measure a layout's unwrapped width in (rich clamps a measurement to the width given)."""


class Fitted:
    """`wide` where it fits unwrapped (a column with a `max_width` counts that much: long prose wraps
    within it), else `narrow`, decided at each print by the console's width."""

    def __init__(self, wide: Table, narrow: RenderableType) -> None:
        self.wide = wide
        self.narrow = narrow

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        unwrapped = Measurement.get(console, options.update_width(UNBOUNDED), self.wide).maximum
        yield self.wide if unwrapped <= options.max_width else self.narrow


def transposed(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    """One row per header, one column per row (headed by its first cell): a few long rows of many
    short figures read down a narrow terminal."""
    out = Table(title=title)
    out.add_column("")
    for row in rows:
        out.add_column(row[0], overflow="fold")  # a long name kept whole, folded, not cut
    for number, header in enumerate(headers[1:], start=1):
        out.add_row(header, *(row[number] for row in rows))
    return out
