"""`runtime.keeps_weights_outside`: a tensor kept in a file beside the model is found wherever the
graph holds it. A server builds sessions from verified bytes; onnxruntime would read such a file from
the working directory, unhashed, so the server refuses any model this finds (load_checks._inline_graph)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantship import runtime

X = helper.make_tensor_value_info("X", TensorProto.FLOAT, [3])
Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3])
VALUES = np.array([7.0, 7.0, 7.0], np.float32)


def outside(name: str) -> TensorProto:
    """VALUES, kept in weights.bin beside the model."""
    tensor = numpy_helper.from_array(VALUES, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(VALUES.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def sparse(name: str) -> onnx.SparseTensorProto:
    indices = numpy_helper.from_array(np.array([0, 1, 2], np.int64), f"{name}_indices")
    return helper.make_sparse_tensor(outside(name), indices, [3])


def model(nodes: list[onnx.NodeProto], **graph: object) -> onnx.ModelProto:
    built = helper.make_graph(nodes, "g", [X], [Y], **graph)  # type: ignore[arg-type]
    return helper.make_model(built, opset_imports=[helper.make_opsetid("", 17)])


def sparse_initializer() -> onnx.ModelProto:
    held = model([helper.make_node("Add", ["X", "W"], ["Y"])])
    held.graph.sparse_initializer.append(sparse("W"))
    return held


def in_a_branch() -> onnx.ModelProto:
    branch_out = helper.make_tensor_value_info("T", TensorProto.FLOAT, [3])
    then = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["T"])], "then", [], [branch_out], [outside("W")]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["E"])], "else", [], [helper.make_tensor_value_info("E", 1, [3])]
    )
    nodes = [
        helper.make_node("If", ["cond"], ["I"], then_branch=then, else_branch=other),
        helper.make_node("Add", ["X", "I"], ["Y"]),
    ]
    return model(nodes, initializer=[numpy_helper.from_array(np.array(True), "cond")])


HIDING_PLACES: dict[str, Callable[[], onnx.ModelProto]] = {
    "initializer": lambda: model([helper.make_node("Add", ["X", "W"], ["Y"])], initializer=[outside("W")]),
    "sparse initializer": sparse_initializer,
    "constant value": lambda: model(
        [
            helper.make_node("Constant", [], ["W"], value=outside("W")),
            helper.make_node("Add", ["X", "W"], ["Y"]),
        ]
    ),
    "constant sparse value": lambda: model(
        [
            helper.make_node("Constant", [], ["W"], sparse_value=sparse("W")),
            helper.make_node("Add", ["X", "W"], ["Y"]),
        ]
    ),
    "subgraph initializer": in_a_branch,
}


@pytest.mark.parametrize("build", HIDING_PLACES.values(), ids=list(HIDING_PLACES))
def test_a_tensor_kept_beside_the_model_is_found_wherever_the_graph_holds_it(
    build: Callable[[], onnx.ModelProto],
) -> None:
    assert runtime.keeps_weights_outside(build())


def test_a_model_holding_its_weights_inline_keeps_none_outside() -> None:
    weights = numpy_helper.from_array(VALUES, "W")
    assert not runtime.keeps_weights_outside(
        model([helper.make_node("Add", ["X", "W"], ["Y"])], initializer=[weights])
    )
