"""Which side of a node run in float behind Q/DQ the unfused trials keep in float, by its weight values
(engine_graph.weight_values, engine_graph.cheaper_side), on small graphs as an exporter writes them.

tests/integration/test_quantize.py runs the same choice on real quantizations.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from quantship.quantize import engine_graph


def _model(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    produced = {out for node in nodes for out in node.output}
    read = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "sides",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 8, 16])],
        [
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            for name in sorted(produced - read)
        ],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _head_reading(chain: list[onnx.NodeProto], weight: str) -> onnx.ModelProto:
    """head(LayerNormalization(mm1(X) + X)): mm1 reads its 16x16 weight itself, the head its 16x64 one
    (1024 values) through `chain`, whose last output is `weight`."""
    nodes = [
        helper.make_node("MatMul", ["X", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "X"], ["r"], name="residual"),
        helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["n"], name="ln", axis=-1),
        *chain,
        helper.make_node("MatMul", ["n", weight], ["Y"], name="head"),
    ]
    weights = {
        "w1": np.ones((16, 16), np.float32),
        "gamma": np.ones(16, np.float32),
        "beta": np.zeros(16, np.float32),
        "w2t": np.ones((64, 16), np.float32),
        "w2_int8": np.ones((16, 64), np.int8),
        "scale": np.array(0.1, np.float32),
        "w2_half": np.ones((16, 64), np.float16),
        "shape": np.array([16, 64], np.int64),
        "w2_flat": np.ones(1024, np.float32),
    }
    return _model(nodes, weights)


CHAINS = {
    "Transpose": [helper.make_node("Transpose", ["w2t"], ["w2"], name="t", perm=[1, 0])],
    "DequantizeLinear": [helper.make_node("DequantizeLinear", ["w2_int8", "scale"], ["w2"], name="dq")],
    "Cast, Identity": [
        helper.make_node("Cast", ["w2_half"], ["w2_f"], name="cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Identity", ["w2_f"], ["w2"], name="same"),
    ],
    "Reshape": [helper.make_node("Reshape", ["w2_flat", "shape"], ["w2"], name="reshape")],
}


@pytest.mark.parametrize("chain", CHAINS, ids=list(CHAINS))
def test_a_weight_read_through_layout_and_cast_ops_counts_and_its_side_is_not_the_cheaper(chain: str) -> None:
    """The head's 1024 weight values reach it through `chain`: counted, they make mm1 (256) the side
    to keep in float, not the head (which, counting only what a node reads itself, held none)."""
    model = _head_reading(CHAINS[chain], "w2")
    assert engine_graph.weight_values(model, ["head"]) == 1024
    assert engine_graph.weight_values(model, ["mm1", "head"]) == 256 + 1024
    assert engine_graph.cheaper_side(model, ["residual", "ln"], ["mm1", "head"]) == ["mm1"]


def test_a_weight_is_counted_once_whoever_reads_it_and_an_activation_holds_none() -> None:
    """A tied weight (GPT-2's embedding and head) holds its values once, read directly or through a
    Transpose; attention's scores read a transposed activation, no weight."""
    nodes = [
        helper.make_node("MatMul", ["X", "w"], ["a"], name="mm_a"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="mm_b"),
        helper.make_node("Transpose", ["w"], ["wt"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["b", "wt"], ["c"], name="mm_c"),
        helper.make_node("Transpose", ["X"], ["xt"], name="xt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["X", "xt"], ["scores"], name="scores"),
    ]
    model = _model(nodes, {"w": np.ones((16, 16), np.float32)})
    assert engine_graph.weight_values(model, ["mm_a", "mm_b", "mm_c"]) == 256
    assert engine_graph.weight_values(model, ["scores"]) == 0
