"""Exit codes tell a script what went wrong: 2 the command line (click's usage errors), 3 a refusal
of what the command was given (one line, `error: ...`), never the same number for both."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from quantship.cli import ExitCode, main


def test_a_wrong_command_line_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["verify"])

    assert result.exit_code == ExitCode.USAGE == 2
    assert "Usage:" in result.output and "Missing argument 'PATH'" in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [("--max-accuracy-delta", "-0.5"), ("--max-accuracy-delta", "5"), ("--max-accuracy-delta", "nan"),
     ("--min-cosine", "nan"), ("--percentile", "nan")],
)  # fmt: skip
def test_gate_settings_no_gate_can_use_are_usage_errors_before_any_work(option: str, value: str) -> None:
    """They used to run every trial first (a negative delta), or let a 150% loss pass (5)."""
    result = CliRunner().invoke(main, ["quantize", "model.onnx", "-o", "out", option, value])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert option in result.output


def test_an_artifact_that_cannot_be_used_is_a_refusal_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")

    result = CliRunner().invoke(main, ["verify", str(tmp_path)])

    assert result.exit_code == ExitCode.REFUSED == 3
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "unreadable manifest" in result.stderr


def test_an_unknown_model_name_is_usage_not_a_refusal(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["zoo", "build", str(tmp_path), "--model", "resnet50"])

    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith("error: unknown model 'resnet50'")


@pytest.mark.parametrize("command", [["zoo", "build"], ["demo", "--quick", "--workdir"]], ids=["zoo", "demo"])
def test_an_output_that_cannot_be_written_is_a_refusal_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    """A traceback and exit 1 (the demo's "an outcome differs") before."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")

    result = CliRunner().invoke(main, [*command, str(blocked / "out")])

    assert result.exit_code == ExitCode.REFUSED, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Not a directory" in result.stderr
