"""Small real ONNX models for the server's unit tests, built with onnx.helper and run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import TinyModel, build_plus_one

from quantship.server.runner import Runner


@pytest.fixture
def tiny_model(tmp_path: Path) -> TinyModel:
    """Factory: a Runner over a fresh plus-one model; `first_dim=1` makes it unbatchable; `rows_mix`
    runs it as a model whose rows mix (as `Runner.load` finds a dynamically quantized one)."""

    def make(*, first_dim: int | str = "N", width: int | str = 3, rows_mix: bool = False) -> Runner:
        path = build_plus_one(
            tmp_path / f"plus-one-{first_dim}-{width}.onnx", first_dim=first_dim, width=width
        )
        runner = Runner.load(path, threads=1)
        runner.rows_mix = rows_mix
        return runner

    return make
