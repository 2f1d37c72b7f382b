"""What a graph holds as constants, read one way: its initializers and its Constant nodes' outputs.

A Constant carries its value in exactly one attribute, and exporters use several: `value` (a
tensor, as torch exports), `value_float` / `value_floats` and `value_int` / `value_ints` (scalars
and lists, as hand-written graphs and some converters make `Constant(value_float=-10000)`). A
reader of `value` alone missed the others: an additive mask of -10000 made that way was not found.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

CONSTANT = "Constant"

_LISTED_TYPES = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}
"""The element type ONNX gives a Constant's scalar and list attributes."""


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """A Constant node's value as a tensor, whichever attribute holds it; None for any other node,
    and for strings (`value_string(s)`) and a `sparse_value`: nothing a float graph computes with
    as a weight or a mask."""
    if node.op_type != CONSTANT or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        return value
    dtype = _LISTED_TYPES.get(attribute.name)
    return None if dtype is None else numpy_helper.from_array(np.asarray(value, dtype))


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """A Constant node's value as an array (constant_tensor)."""
    tensor = constant_tensor(node)
    return None if tensor is None else numpy_helper.to_array(tensor)


def graph_constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The model's initializers and the outputs of its Constant nodes (constant_tensor), by name."""
    found = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if (tensor := constant_tensor(node)) is not None:
            found[node.output[0]] = tensor
    return found


def constant_names(model: onnx.ModelProto) -> set[str]:
    """The tensors no node computes from the inputs: initializers and every Constant's output (never
    an activation to calibrate or quantize)."""
    names = {init.name for init in model.graph.initializer}
    return names | {out for node in model.graph.node if node.op_type == CONSTANT for out in node.output}
