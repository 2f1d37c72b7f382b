"""The quantize command the demo's drift loop shows is the one it runs, and a person can paste it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from quantship.local.recalibration import command_line, quantize_arguments


def test_the_shown_command_names_every_file_whole_relative_to_where_the_demo_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It read `quantship quantize model.onnx --calibration capture.npz ...`: no such files there."""
    workdir = tmp_path / "build" / "demo"  # as `make demo` passes it, resolved by the demo
    inputs = [workdir / "zoo/digits/model.onnx", workdir / "captures/v2/capture.npz", workdir / "eval.npz"]
    for path in inputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    arguments = quantize_arguments(*inputs, workdir / "artifacts" / "int8 recalibrated")
    monkeypatch.chdir(tmp_path)

    shown = shlex.split(command_line(arguments))

    assert shown[:2] == ["quantship", "quantize"]
    assert [str(Path(a).resolve()) if "/" in a else a for a in shown[1:]] == arguments
    assert shown[2] == "build/demo/zoo/digits/model.onnx" and Path(shown[2]).is_file()
    assert all(Path(shown[shown.index(flag) + 1]).is_file() for flag in ("--calibration", "--evaluation"))
    assert shown[shown.index("-o") + 1] == "build/demo/artifacts/int8 recalibrated"


def test_paths_outside_the_current_directory_stay_absolute(tmp_path: Path) -> None:
    arguments = quantize_arguments(*(tmp_path / name for name in ("m.onnx", "c.npz", "e.npz", "out")))

    assert shlex.split(command_line(arguments, cwd=tmp_path / "elsewhere"))[1:] == arguments
