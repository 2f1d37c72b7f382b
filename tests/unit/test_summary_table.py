"""The table `quantship quantize` and the demo's first step print: read whole at the terminal's width."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from quantship import artifact
from quantship.quantize import summary


def _printed(columns: int, rows: list[tuple[str, artifact.Artifact]]) -> list[str]:
    """The table as a terminal of `columns` (COLUMNS, as a shell exports it) shows it."""
    console = Console(file=io.StringIO(), record=True, _environ={"COLUMNS": str(columns)})
    assert console.width == columns
    console.print(summary.table(rows))
    return console.export_text().splitlines()


@pytest.mark.parametrize("columns", [80, 120])
def test_the_summary_of_the_demos_artifacts_reads_whole_in_a_narrow_terminal(
    columns: int, good_artifact: artifact.Artifact, skewed_artifact: artifact.Artifact
) -> None:
    """At 80 columns the eight columns were cut to `int8-g…` and `accura…` and folded into five-line
    rows that ran into each other."""
    lines = _printed(columns, [("int8-good", good_artifact), ("int8-skewed", skewed_artifact)])

    assert max(map(len, lines)) <= columns, "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text, text
    assert "int8-good" in text and "int8-skewed" in text and "size FP32→INT8" in text
    assert len(re.findall(r"\d+→\d+ KiB \(\d\.\dx smaller\)", text)) == 2, text  # on one line each


def test_a_wide_terminal_gets_one_row_per_artifact(
    good_artifact: artifact.Artifact, skewed_artifact: artifact.Artifact
) -> None:
    """Where the whole row fits (a piped log is 120 columns; this row needs about 140): as before."""
    lines = _printed(200, [("int8-good", good_artifact), ("int8-skewed", skewed_artifact)])

    header = next(line for line in lines if "artifact" in line)
    assert all(name in header for name in ("size FP32→INT8", "gate metric", "trials", "in float")), header
    assert sum(line.count("int8-") for line in lines) == 2 and len(lines) == 7, "\n".join(lines)


def test_the_summary_names_the_recipe_the_tuner_chose(good_artifact: artifact.Artifact) -> None:
    """all-MiniLM-L6-v2's summary said 8 trials and warned of its static trials, never that the
    artifact written was the dynamic one: the serve log was the first to say so."""
    manifest = good_artifact.manifest
    chosen = manifest["trials"][manifest["tuning"]["chosen"]]["recipe"]
    assert chosen.startswith(("static", "dynamic"))
    lines = _printed(80, [("int8-good", good_artifact)])
    (row,) = [line for line in lines if "recipe" in line]
    assert chosen in row, "\n".join(lines)
