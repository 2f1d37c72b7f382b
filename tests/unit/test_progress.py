"""quantize's progress bar keeps drawing while the calibration silences onnxruntime's print()s (by
redirecting sys.stdout): its console holds the stream of when it was made."""

from __future__ import annotations

import contextlib
import io

from quantship.quantize import default_progress


def test_the_progress_keeps_drawing_where_it_was_made_while_stdout_is_redirected() -> None:
    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal):
        progress = default_progress()
    silenced = io.StringIO()
    with contextlib.redirect_stdout(silenced):  # as engine_calibration.calibrate does around the calibrators
        progress.console.print("calibrating 104/256")
    assert "calibrating 104/256" in terminal.getvalue()
    assert silenced.getvalue() == ""
