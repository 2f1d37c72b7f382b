"""Exit codes tell a script what went wrong: 2 the command line (click's usage errors), 3 a refusal
of what the command was given (one line, `error: ...`), never the same number for both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
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


REQUIRED = {
    "quantize": ["model.onnx", "-o", "out"],
    "serve": ["artifact", "--model-name", "m", "--revision", "r"],
    "fetch": ["file:///artifact", "dest"],
    "push": ["artifact", "oci://registry.example/repo:tag"],
    "pull": ["oci://registry.example/repo:tag", "-o", "dest"],
    "quantize-job": [
        "--model",
        "file:///model.onnx",
        "--calibration",
        "file:///data.npz",
        "--target",
        "file:///out",
    ],
    "operator": [],
}
"""What each command with a float option needs besides it, so that the float alone is wrong."""


def float_options() -> Iterator[tuple[str, str]]:
    """(command, option) for every option of every command that takes a float."""

    def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")
            else:
                yield prefix + name, command

    for name, command in commands(main):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, click.types.FloatParamType):
                yield name, param.opts[0]


@pytest.mark.parametrize(("command", "option"), list(float_options()))
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_float_option_that_is_not_a_finite_number_is_a_usage_error(
    command: str, option: str, value: str
) -> None:
    """click's FloatRange lets NaN pass every bound, and inf an open one: `serve --max-queue-delay-ms nan`
    went ready and every request waited forever; `fetch --timeout inf` and `serve --drain-timeout-s
    inf` ended in a traceback."""
    result = CliRunner().invoke(main, [*command.split(), *REQUIRED[command], option, value])

    assert result.exit_code == ExitCode.USAGE, result.output
    assert option in result.output and "is not a finite number" in result.output
    assert not isinstance(result.exception, ValueError | OverflowError)


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
