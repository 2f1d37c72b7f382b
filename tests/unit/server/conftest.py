"""Small real ONNX models for the server's unit tests, built with onnx.helper and run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import TinyModel, build_plus_one

from quantship.server.runner import Runner


@pytest.fixture
def tiny_model(tmp_path: Path) -> TinyModel:
    """Factory: a Runner over a fresh plus-one model; `first_dim=1` makes it unbatchable."""

    def make(*, first_dim: int | str = "N", width: int | str = 3) -> Runner:
        path = build_plus_one(
            tmp_path / f"plus-one-{first_dim}-{width}.onnx", first_dim=first_dim, width=width
        )
        return Runner.load(path, threads=1)

    return make
