"""What a demo run starts from (nothing of the previous run's that it could read as its own), and
where it shows its progress (a live view only where one can draw), and what its help says."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from quantship import artifact
from quantship.cli import main
from quantship.local import demo, live
from quantship.local.recalibration import DriftLoop
from quantship.local.timeline import RevisionSample, Sample, Timeline


def test_a_rerun_starts_without_the_previous_runs_outputs_and_leaves_the_rest(tmp_path: Path) -> None:
    """Prometheus' old data held the last servers' drift gauges: a rerun read 0.128 bits as calm."""
    demo.clear_previous_run(tmp_path)  # the first run marks its workdir
    for name in demo.PREVIOUS_RUN:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if "." in path.name:
            path.write_text("old")
        else:
            (path / "chunks").mkdir(parents=True)
    recalibrated = tmp_path / demo.RECALIBRATED
    recalibrated.mkdir(parents=True)
    (recalibrated / artifact.MANIFEST_FILE).write_text("{}")
    mine = tmp_path / "artifacts" / "mine" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("a user's file")

    assert demo.clear_previous_run(tmp_path) == tmp_path.resolve()

    assert not any((tmp_path / name).exists() for name in demo.PREVIOUS_RUN)
    assert not recalibrated.exists() and mine.read_text() == "a user's file"


def test_a_workdir_no_demo_ran_in_loses_nothing(tmp_path: Path) -> None:
    """`--workdir .`: the user's own ./summary.json and ./captures stay."""
    (tmp_path / "summary.json").write_text("a user's")
    (tmp_path / "captures").mkdir()

    demo.clear_previous_run(tmp_path)

    assert (tmp_path / "summary.json").read_text() == "a user's" and (tmp_path / "captures").is_dir()
    assert (tmp_path / demo.WORKDIR_MARK).is_file()


def test_a_folder_where_the_recalibrated_artifact_goes_is_kept_unless_it_is_one(tmp_path: Path) -> None:
    demo.clear_previous_run(tmp_path)
    folder = tmp_path / demo.RECALIBRATED
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not an artifact")

    demo.clear_previous_run(tmp_path)

    assert (folder / "notes.txt").exists()


@pytest.mark.parametrize(
    ("terminal", "term", "width", "live"),
    [
        (True, "xterm", 120, True),
        (True, "dumb", 120, False),
        (True, "xterm", 40, False),
        (True, "xterm", 80, False),
        (False, "xterm", 120, False),
    ],
    ids=["terminal", "dumb terminal", "narrow terminal", "80 columns", "pipe"],
)
def test_the_live_view_shows_only_where_it_can_draw(
    terminal: bool, term: str, width: int, live: bool
) -> None:
    console = Console(force_terminal=terminal, width=width, _environ={"TERM": term, "COLUMNS": str(width)})
    assert demo.can_show_live(console) is live


def test_a_workdir_a_demo_wrote_before_it_marked_workdirs_is_cleared_too(tmp_path: Path) -> None:
    summary = {"ok": True, "rollouts": [], "drift": {}, "decisions": []}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "prometheus" / "data").mkdir(parents=True)

    demo.clear_previous_run(tmp_path)

    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "prometheus" / "data").exists()


def test_the_help_names_every_part_of_the_demo_and_that_a_rerun_replaces_its_outputs() -> None:
    """It said "roll a good canary out, roll a bad one back" and stopped: half of what the demo does
    (the drift, the recalibration and its canary) went unsaid."""
    result = CliRunner().invoke(main, ["demo", "--help"], terminal_width=200)

    assert result.exit_code == 0
    words = " ".join(result.output.split())
    assert "drift the traffic, recalibrate from what the stable captured and roll that out" in words
    assert "a rerun replaces the last run's outputs there" in words


def test_where_the_live_view_shows_its_traffic_table_cuts_no_cell() -> None:
    """At 120 columns it read "v3-int8-skew…" and "accuracy_del…"; at 80, where it showed too, every
    cell ("0.0…")."""
    ratios = {objective.sli: 0.00123 for objective in demo.OBJECTIVES}
    serving = {"v2-int8": "stable", "v3-int8-skewed": "canary", "v4-int8-recal": "canary"}
    revisions = {
        name: RevisionSample(track, 12345, 0, ratios, 1.234, 1.234, 0.123) for name, track in serving.items()
    }
    timeline = Timeline(demo.OBJECTIVES, 10, "digits", samples=[Sample(1.0, "v3", 20, revisions)])
    console = Console(width=demo.LIVE_MIN_WIDTH, record=True)

    console.print(live._traffic(timeline))

    shown = console.export_text()
    assert "…" not in shown and all(name in shown for name in serving), shown


def test_the_closing_tables_read_whole_at_80_columns() -> None:
    """Eight and seven columns shared out at 80: `v3-int8-s` over `kewed`, `RolledBac` over `k`,
    `captur…`, and each reason one word a line."""
    reason = (
        "clip_rate burn rate above 1 on both windows: 4.54 on 10s (0.454% bad against a budget of 0.100%)"
    )
    outcomes = [
        {"revision": "v3-int8-skewed", "artifact": "INT8, one-digit calibration", "phase": "RolledBack",
         "expected": "RolledBack", "seconds": 14.5, "judgements": 1, "reason": reason},
        {"revision": "v4-int8-recal", "artifact": "INT8, recalibrated on the drifted capture",
         "phase": "Promoted", "expected": "Promoted", "seconds": 37.1, "judgements": 3, "reason": "passed"},
    ]  # fmt: skip
    loop = DriftLoop("v2-int8", 2.0, calm=0.0072, drifted=0.1232, rose_in=1.8, captured=1634,
                     recalibrated="v4-int8-recal", after=0.0236, phase="Promoted")  # fmt: skip
    console = Console(file=io.StringIO(), record=True, _environ={"COLUMNS": "80"})

    console.print(demo._summary(outcomes))
    console.print(demo._drift_summary(loop))

    lines = console.export_text().splitlines()
    shown = "\n".join(lines)
    assert max(map(len, lines)) <= 80 and "…" not in shown, shown
    assert all(
        f" {word} " in shown for word in ("v3-int8-skewed", "RolledBack", "v4-int8-recal", "1634 rows")
    ), shown


def test_building_the_artifacts_prints_the_quantizers_warnings_above_its_bars(tmp_path: Path) -> None:
    """The skewed artifact's clip prediction (its canary will roll back) was in its report only; the
    CLI's quantize prints it on stderr above the bars, and so does the demo now."""
    terminal = io.StringIO()
    with contextlib.redirect_stderr(terminal):  # where the bars draw (quantize.default_progress)
        _, revisions = demo.build_artifacts(tmp_path, Console(file=io.StringIO()))

    skewed = artifact.load_artifact(next(r.artifact for r in revisions if r.name == "v3-int8-skewed"))
    clip = next(w for w in skewed.manifest["warnings"] if "spec.slos.maxClipRate" in w)
    shown = " ".join(terminal.getvalue().split())  # a terminal's line breaks, undone
    assert f"warning: {' '.join(clip.split())}" in shown


def test_the_recalibrated_artifacts_warnings_are_printed_as_quantize_prints_them(
    skewed_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """The recalibration runs `quantship quantize -q` in a child whose output is kept for a failure:
    its manifest's warnings (a clip prediction: the canary will roll back) were in its report only."""
    (tmp_path / "reports").mkdir()
    console = Console(file=io.StringIO(), width=100)

    demo._show_recalibrated(skewed_artifact.root, tmp_path, console)

    shown = " ".join(console.file.getvalue().split())  # a terminal's line breaks, undone
    warnings = skewed_artifact.manifest["warnings"]
    assert any("spec.slos.maxClipRate" in w for w in warnings)
    assert all(f"warning: {' '.join(w.split())}" in shown for w in warnings), shown
    assert "int8-recalibrated" in shown and (tmp_path / "reports" / "int8-recalibrated.html").is_file()
