"""A Constant node's value, whichever of its attributes holds it: one reader for every rule."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from quantship.quantize.constants import constant_value, graph_constants


@pytest.mark.parametrize(
    ("attribute", "held", "expected"),
    [
        (
            "value",
            numpy_helper.from_array(np.array([-1e4, 0.0], np.float32)),
            np.array([-1e4, 0.0], np.float32),
        ),
        ("value_float", -1e4, np.array(-1e4, np.float32)),
        ("value_floats", [-1e4, 0.0], np.array([-1e4, 0.0], np.float32)),
        ("value_int", 3, np.array(3, np.int64)),
        ("value_ints", [1, 2], np.array([1, 2], np.int64)),
    ],
)
def test_every_attribute_a_constant_holds_its_value_in_reads_as_that_value(
    attribute: str, held: object, expected: np.ndarray
) -> None:
    value = constant_value(helper.make_node("Constant", [], ["c"], **{attribute: held}))
    assert value is not None and value.dtype == expected.dtype and value.shape == expected.shape
    np.testing.assert_array_equal(value, expected)


def test_a_string_constant_or_another_op_has_no_value_and_initializers_are_constants_too() -> None:
    assert constant_value(helper.make_node("Constant", [], ["s"], value_string="pad")) is None
    assert constant_value(helper.make_node("Identity", ["x"], ["y"])) is None
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["lowest"], value_float=-1e4)],
        "g",
        [],
        [],
        [numpy_helper.from_array(np.array(0.25, np.float32), "quarter")],
    )
    found = graph_constants(helper.make_model(graph))
    assert {name: float(numpy_helper.to_array(t)) for name, t in found.items()} == {
        "quarter": 0.25,
        "lowest": -1e4,
    }
