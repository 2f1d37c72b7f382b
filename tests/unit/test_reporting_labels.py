"""Figure labels: names drawn as written, while matplotlib still draws its own tick labels as math."""

from __future__ import annotations

import matplotlib

from quantship import reporting
from quantship.quantize import report  # noqa: F401  # importing the reports must not change matplotlib


def test_a_name_holding_dollars_is_drawn_as_written_and_log_ticks_stay_math() -> None:
    """`r$^{$` as a tick label raised a pyparsing error; switching mathtext off for the process instead
    drew a symlog axis' ticks as `$\\mathdefault{10^{0}}$`, in the demo report's burn-rate figure."""
    assert matplotlib.rcParams["text.parse_math"]
    fig, (names, burns) = reporting.pyplot().subplots(1, 2, figsize=(6, 2))
    names.barh([reporting.literal("r$^{$"), reporting.literal("a$x$b")], [1.0, 2.0])
    burns.scatter([1.0, 2.0], [0.5, 7.0])
    burns.set_yscale("symlog", linthresh=0.01)
    fig.canvas.draw()  # raises on a label mathtext cannot parse
    assert [label.get_text() for label in names.get_yticklabels()] == ["r\\$^{\\$", "a\\$x\\$b"]
    ticks = burns.get_yticklabels()
    assert ticks and all(tick.get_parse_math() and tick.get_text().startswith("$") for tick in ticks)
    reporting.pyplot().close(fig)
