"""Small real ONNX models for the server's unit tests (importable by name; conftest.py holds the fixture)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantship.server.runner import Runner

TinyModel = Callable[..., Runner]


def build_plus_one(path: Path, *, first_dim: int | str = "N", width: int | str = 3) -> Path:
    """Y = X + 1 and label = argmax(Y): a classifier whose answers a test can predict."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [first_dim, width])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [first_dim, width])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [first_dim])
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["X", "one"], ["Y"]),
            helper.make_node("ArgMax", ["Y"], ["label"], axis=1, keepdims=0),
        ],
        "plus_one",
        [x],
        [y, label],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
