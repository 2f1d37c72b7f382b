"""quantize's progress bars: on stderr with the warnings, drawn while the calibration silences
onnxruntime's print()s (by redirecting sys.stdout), and each warning printed above them, whole."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TaskID

from quantship import zoo
from quantship.quantize import QuantizeConfig, Strategy, default_progress, printed_warnings, run
from quantship.quantize.evaluate import Metric

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


class _Watched(Progress):
    """A Progress that notes the tuning bar's count and total each time it moves."""

    def __init__(self) -> None:
        super().__init__(disable=True)
        self.tuning: list[tuple[float, float | None]] = []

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        task = self._tasks[task_id]
        if task.description.startswith("tuning"):
            self.tuning.append((task.completed, task.total))


def test_the_tuning_bar_counts_its_trials_and_ends_at_what_it_ran(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """Its total was the tuner's budget, --max-trials and one more: it read 0/17 and ended 8/8, its
    total changing under the user's eyes."""
    progress = _Watched()
    # a gate no static recipe passes on the one-digit calibration: several trials, op-type fallback
    config = QuantizeConfig(metric=Metric.TOP1_AGREEMENT, threshold=1.0, strategy=Strategy.FALLBACK)
    result = run(
        sample.model,
        tmp_path / "a",
        config,
        calibration=sample.calibration_skewed,
        evaluation=sample.evaluation,
        progress=progress,
    )
    assert len(result.trials) > 1
    assert progress.tuning == [(number, None) for number in range(1, len(result.trials) + 1)]
    (tuning,) = [task for task in progress.tasks if task.description.startswith("tuning")]
    assert (tuning.completed, tuning.total) == (len(result.trials), len(result.trials))
