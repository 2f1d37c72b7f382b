"""quantize's progress bars: on stderr with the warnings, drawn while the calibration silences
onnxruntime's print()s (by redirecting sys.stdout), and each warning printed above them, whole."""

from __future__ import annotations

import contextlib
import io
import re

from rich.console import Console
from rich.progress import Progress

from quantship.quantize import default_progress, printed_warnings

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_the_progress_draws_on_stderr_and_keeps_drawing_while_stdout_is_redirected() -> None:
    terminal = io.StringIO()
    with contextlib.redirect_stderr(terminal):
        progress = default_progress()
    silenced = io.StringIO()
    with contextlib.redirect_stdout(silenced):  # as engine_calibration.calibrate does around the calibrators
        progress.console.print("calibrating 104/256")
    assert "calibrating 104/256" in terminal.getvalue()
    assert silenced.getvalue() == ""


def test_a_warning_while_the_bars_draw_is_printed_above_them_on_their_stream() -> None:
    """Printed by the CLI's own stderr console, a warning went to the terminal behind the bars'
    back: glued to their last line, then drawn over by the next redraw (seen in tmux on MiniLM)."""
    terminal = io.StringIO()
    progress = Progress(console=Console(file=terminal, force_terminal=True, width=60))
    warn = printed_warnings(progress.console)
    message = "static trials: " + " ".join(f"/encoder/layer.{i}/attention/self/Add" for i in range(12))
    with progress:
        task = progress.add_task("calibrating (minmax)", total=2)
        progress.advance(task)
        warn(message)
        progress.advance(task)
    shown = ANSI.sub("", terminal.getvalue())
    before, found, after = shown.partition(f"warning: {message}\n")
    assert found, "the warning went to another stream than the bars'"
    assert before.endswith(("\n", "\r")), "the warning was glued to a line of the bars"
    assert "calibrating (minmax)" in after  # the bars drawn again below it
