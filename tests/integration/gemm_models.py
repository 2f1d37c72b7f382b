"""Models of Gemm layers, as torch exports nn.Linear (importable by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUTLIER = 30.0
"""A weight from a hidden unit that never fires: FP32 never feels it, but its layer's per-tensor
int8 scale then rounds the layer's other weights to a few levels."""


def build_gemm_mlp(path: Path, *, trans_b: bool = True, bias: bool = True, outlier: bool = False) -> Path:
    """Y = fc2(relu(fc1(X))), X float32[N, 16], Y float32[N, 4]. torch's nn.Linear is a Gemm with
    transB and a bias. With `outlier`, fc2 alone is far off in int8 (OUTLIER)."""
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(16, 32)) / 4).astype(np.float32)
    w2 = (rng.normal(size=(32, 4)) / np.sqrt(32)).astype(np.float32)
    b1, b2 = (
        rng.normal(scale=0.1, size=32).astype(np.float32),
        rng.normal(scale=0.1, size=4).astype(np.float32),
    )
    if outlier:
        _never_fires(w1, b1, w2)

    def linear(name: str, x: str, y: str, weight: np.ndarray, offset: np.ndarray) -> onnx.NodeProto:
        weights.append(numpy_helper.from_array(weight.T.copy() if trans_b else weight, f"{name}.weight"))
        inputs = [x, f"{name}.weight"]
        if bias:
            weights.append(numpy_helper.from_array(offset, f"{name}.bias"))
            inputs.append(f"{name}.bias")
        return helper.make_node("Gemm", inputs, [y], name=name, transB=int(trans_b))

    weights: list[onnx.TensorProto] = []
    nodes = [
        linear("fc1", "X", "h", w1, b1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        linear("fc2", "r", "Y", w2, b2),
    ]
    return _save(path, nodes, weights, outputs=4)


def build_matmuls_with_a_gemm_head(path: Path) -> Path:
    """Y = head(relu(mm2(relu(mm1(X))))): two MatMuls, the second far off in int8 (OUTLIER), then a
    Gemm head, as a transformer's body and its classifier export."""
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(16, 32)) / 4).astype(np.float32)
    w2 = (rng.normal(size=(32, 32)) / np.sqrt(32)).astype(np.float32)
    w3 = (rng.normal(size=(32, 4)) / np.sqrt(32)).astype(np.float32)
    _never_fires(w1, np.zeros(32, np.float32), w2)
    weights = [numpy_helper.from_array(w, name) for w, name in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    nodes = [
        helper.make_node("MatMul", ["X", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3"], ["Y"], name="head"),
    ]
    return _save(path, nodes, weights, outputs=4)


def rows(count: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(count, 16)).astype(np.float32)


def _never_fires(weight: np.ndarray, bias: np.ndarray, next_weight: np.ndarray) -> None:
    """Hidden unit 0 gets no input and a negative bias, and the next layer weighs it OUTLIER."""
    weight[:, 0], bias[0], next_weight[0, 0] = 0.0, -1.0, OUTLIER


def _save(path: Path, nodes: list[onnx.NodeProto], weights: list[onnx.TensorProto], *, outputs: int) -> Path:
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", outputs])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
