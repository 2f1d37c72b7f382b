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


EMBEDDING_ROWS = 10


def build_embedding(path: Path) -> Path:
    """E = table[ids] for ids [N, seq], a table of EMBEDDING_ROWS rows of 4 (row i holds 4i to 4i+3): an
    id past the table fits every shape check, and onnxruntime refuses it (a token id past the vocabulary)."""
    table = np.arange(EMBEDDING_ROWS * 4, dtype=np.float32).reshape(EMBEDDING_ROWS, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["E"])],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"])],
        [helper.make_tensor_value_info("E", TensorProto.FLOAT, ["N", "seq", 4])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


POSITIONS = 8
POSITION_TABLE = np.arange(POSITIONS * 2, dtype=np.float32).reshape(POSITIONS, 2) / 4 - 1.5
"""The position embeddings of `build_positions`: row i embeds position i."""


def build_positions(path: Path, *, batch_sum: bool = False) -> Path:
    """H = 2X for X [N, W], and P = POSITION_TABLE[:W] as (1, W, 2) whatever N: the position
    embeddings of a static BERT export, gathered from a constant by X's shape, not its values.
    Outputs Y = H + 1 and P; `batch_sum` adds S, X summed over the batch: without a batch
    dimension too, but different for every batch."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "W"])
    outputs = [
        helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "W"]),
        helper.make_tensor_value_info("P", TensorProto.FLOAT, [1, "W", 2]),
    ]
    nodes = [
        helper.make_node("Mul", ["X", "two"], ["H"]),
        helper.make_node("Add", ["H", "one"], ["Y"]),
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Slice", ["shape", "width_at", "width_end"], ["width"]),
        helper.make_node("Slice", ["positions", "zero", "width", "axis_one"], ["ids"]),
        helper.make_node("Gather", ["table", "ids"], ["P"]),
    ]
    if batch_sum:
        nodes.append(helper.make_node("ReduceSum", ["X", "zero"], ["S"], keepdims=1))
        outputs.append(helper.make_tensor_value_info("S", TensorProto.FLOAT, [1, "W"]))
    constants = {
        "one": np.array(1.0, dtype=np.float32),
        "two": np.array(2.0, dtype=np.float32),
        "width_at": np.array([1], dtype=np.int64),
        "width_end": np.array([2], dtype=np.int64),
        "zero": np.array([0], dtype=np.int64),
        "axis_one": np.array([1], dtype=np.int64),
        "positions": np.arange(POSITIONS, dtype=np.int64)[np.newaxis],
        "table": POSITION_TABLE,
    }
    graph = helper.make_graph(
        nodes, "positions", [x], outputs, [numpy_helper.from_array(v, k) for k, v in constants.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def build_with_text(path: Path, *, width: int | str = 3) -> Path:
    """build_plus_one's Y = X + 1, with a string input T [N, 2] passed through as the output U."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "one"], ["Y"]), helper.make_node("Identity", ["T"], ["U"])],
        "with_text",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("T", TensorProto.STRING, ["N", 2]),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("U", TensorProto.STRING, ["N", 2]),
        ],
        [numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
