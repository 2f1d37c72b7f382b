"""The artifact report's bar panels (the demo writes one per artifact): each label clear of the frame."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from quantship import reporting
from quantship.quantize import report

PANELS: dict[str, Callable[[Any], None]] = {
    "agreement of 1 under a limit of 1.05": lambda ax: report._metric_panel(
        ax, {"top1_agreement": 1.0, "confident_agreement": 1.0}, "higher is better", (0, 1.05)
    ),
    "kl divergence, autoscaled": lambda ax: report._metric_panel(
        ax, {"kl_divergence": 0.00268}, "lower is better", None
    ),
    "top-1 accuracy near 100%": lambda ax: report._accuracy_panel(ax, {"fp32": 0.995, "int8": 0.9975}),
}


@pytest.mark.parametrize("draw", PANELS.values(), ids=PANELS.keys())
def test_a_bar_label_stays_inside_the_frame_clear_of_it(draw: Callable[[Any], None]) -> None:
    """'1' sat on the frame at 1.05 and '0.00268' ran through it."""
    fig, ax = reporting.new_figure(3.2, 3)
    draw(ax)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    frame = ax.get_window_extent(renderer)
    labels = [text for text in ax.texts if text.get_text()]
    assert labels
    for label in labels:
        assert label.get_window_extent(renderer).y1 < frame.y1 - 2, label.get_text()
    reporting.pyplot().close(fig)
