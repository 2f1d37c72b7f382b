"""Per-tensor SQNR: weights from hand-made float and QDQ graphs (what `sensitivity.measure` feeds
onnxruntime), activations of small models quantized by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, quantize_static
from onnxruntime.quantization.qdq_loss_debug import compute_weight_error

from quantship.quantize import sensitivity
from quantship.quantize.data import CalibrationReader, Dataset


def _save(path: Path, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> Path:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializers,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_scalar_weight_gets_an_sqnr_not_a_type_error(tmp_path: Path) -> None:
    # all-MiniLM-L6-v2's attention scale is such a 0-d weight: static tuning crashed on it.
    scale_value = np.array(0.125, dtype=np.float32)
    fp32 = _save(tmp_path / "fp32.onnx", [helper.make_node("Mul", ["x", "w"], ["y"])],
                 [numpy_helper.from_array(scale_value, "w")])  # fmt: skip
    qdq = _save(
        tmp_path / "qdq.onnx",
        [
            helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w_dq"]),
            helper.make_node("Mul", ["x", "w_dq"], ["y"]),
        ],
        [
            numpy_helper.from_array(np.array(127, dtype=np.uint8), "w_quantized"),
            numpy_helper.from_array(np.array(0.001, dtype=np.float32), "w_scale"),
            numpy_helper.from_array(np.array(2, dtype=np.uint8), "w_zero_point"),
        ],
    )
    errors = compute_weight_error(sensitivity._weight_matching(fp32, qdq))
    # dequantized (127 - 2) * 0.001 = 0.125: exact, so the SQNR is as high as float32 allows
    assert list(errors) == ["w"] and errors["w"] > 100


def test_per_channel_zero_points_are_subtracted_without_wrapping(tmp_path: Path) -> None:
    weights = np.array([[0.5, -0.25], [-0.3, 0.2]], dtype=np.float32)
    fp32 = _save(tmp_path / "fp32.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [numpy_helper.from_array(weights, "w")])  # fmt: skip
    scale = np.array([0.01, 0.002], dtype=np.float32)
    zero_point = np.array([116, 128], dtype=np.uint8)
    quantized = np.clip(np.round(weights / scale) + zero_point, 0, 255).astype(np.uint8)
    qdq = _save(
        tmp_path / "qdq.onnx",
        [
            helper.make_node(
                "DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w_dq"], axis=1
            ),
            helper.make_node("MatMul", ["x", "w_dq"], ["y"]),
        ],
        [numpy_helper.from_array(quantized, "w_quantized"), numpy_helper.from_array(scale, "w_scale"),
         numpy_helper.from_array(zero_point, "w_zero_point")],
    )  # fmt: skip
    matched = sensitivity._weight_matching(fp32, qdq)["w"]
    np.testing.assert_allclose(matched["dequantized"], weights, atol=0.005)
    assert compute_weight_error({"w": matched})["w"] == pytest.approx(
        20 * np.log10(np.linalg.norm(weights) / np.linalg.norm(weights - matched["dequantized"]))
    )


def _relu_model(path: Path) -> Path:
    """x -> MatMul -> Relu -> MatMul -> y, with weights that make half of the first MatMul's
    outputs negative: onnxruntime's QDQ quantizer folds the Relu into its input's range."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["pre"], name="first"),
            helper.make_node("Relu", ["pre"], ["relu"], name="relu"),
            helper.make_node("MatMul", ["relu", "w2"], ["y"], name="second"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [
            numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w2"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _dataset(rows: int) -> Dataset:
    x = np.random.default_rng(1).normal(size=(rows, 8)).astype(np.float32)
    return Dataset(arrays={"x": x}, labels=None, stacked=True, sha256="-", source="test")


def _quantized_qdq(fp32: Path, qdq: Path, dataset: Dataset) -> Path:
    quantize_static(
        str(fp32), str(qdq), CalibrationReader(dataset, 4), quant_format=QuantFormat.QDQ, per_channel=False
    )
    return qdq


def test_a_folded_relu_has_no_qdq_sqnr_its_clipping_is_not_quantization_error(tmp_path: Path) -> None:
    """EfficientNet-Lite0's ReLU6 outputs read 0.09-8.4 dB by qdq_err (the unclipped input against its
    clipped self), pointing a reader of the manifest at tensors nothing is wrong with."""
    dataset = _dataset(16)
    fp32 = _relu_model(tmp_path / "fp32.onnx")
    qdq = _quantized_qdq(fp32, tmp_path / "qdq.onnx", dataset)
    assert "Relu" not in {node.op_type for node in onnx.load(str(qdq)).graph.node}  # onnxruntime folded it
    measured = sensitivity.measure(fp32, qdq, dataset, 4, tmp_path)
    errors = {e.tensor: e for e in measured if e.kind == "activation"}
    assert errors["relu"].qdq_sqnr_db is None and errors["relu"].sqnr_db > 20
    assert errors["relu"].to_json().keys() == {"tensor", "kind", "sqnr_db", "node", "op_type"}
    assert errors["x"].qdq_sqnr_db is not None  # a tensor whose range nothing folded keeps the figure


def test_a_weight_is_named_with_the_node_that_reads_it(tmp_path: Path) -> None:
    dataset = _dataset(8)
    fp32 = _relu_model(tmp_path / "fp32.onnx")
    qdq = _quantized_qdq(fp32, tmp_path / "qdq.onnx", dataset)
    measured = sensitivity.measure(fp32, qdq, dataset, 4, tmp_path)
    weights = {e.tensor: (e.node, e.op_type) for e in measured if e.kind == "weight"}
    assert weights == {"w1": ("first", "MatMul"), "w2": ("second", "MatMul")}


def test_a_shared_weight_is_named_by_the_node_that_reads_it_quantized(tmp_path: Path) -> None:
    """A weight read by a node kept in float (a trial's exclusion, a user's --exclude) and by a
    quantized one is dequantized for the latter only: its row names that node, not the first reader
    in graph order, which already runs in float and which excluding again changes nothing."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["hidden"], name="kept"),
            helper.make_node("MatMul", ["hidden", "w"], ["y"], name="quantized"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w")],
    )
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    dataset, qdq = _dataset(8), tmp_path / "qdq.onnx"
    quantize_static(
        str(fp32), str(qdq), CalibrationReader(dataset, 4), quant_format=QuantFormat.QDQ,
        per_channel=False, nodes_to_exclude=["kept"],
    )  # fmt: skip
    measured = sensitivity.measure(fp32, qdq, dataset, 4, tmp_path)
    assert [(e.tensor, e.node) for e in measured if e.kind == "weight"] == [("w", "quantized")]


def test_a_folded_relus_sqnr_ranks_the_node_that_writes_it_now(tmp_path: Path) -> None:
    """The folded Relu is a follower the tuner never leaves in float, and the MatMul before it has no
    output of its own left to measure: credited to the Relu, the MatMul ranked last, unmeasured
    (EfficientNet-Lite0's 33 Convs before a ReLU6 were tried blind, in graph order)."""
    dataset = _dataset(16)
    fp32 = _relu_model(tmp_path / "fp32.onnx")
    qdq = _quantized_qdq(fp32, tmp_path / "qdq.onnx", dataset)
    measured = sensitivity.measure(fp32, qdq, dataset, 4, tmp_path)
    errors = {e.tensor: e for e in measured if e.kind == "activation"}
    assert (errors["relu"].node, errors["relu"].op_type) == ("first", "MatMul")
    assert (errors["y"].node, errors["y"].op_type) == ("second", "MatMul")
    by_sqnr = sorted(["first", "second"], key=lambda n: errors["relu" if n == "first" else "y"].sqnr_db)
    assert sensitivity.rank_nodes(measured, ["first", "second"]) == by_sqnr
