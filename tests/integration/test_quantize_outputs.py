"""The graph outputs beside the gated one, served as FP32 computes them (hunt-R F2), with the real
onnxruntime.quantization on small onnx.helper models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantship import runtime
from quantship.quantize import Format, Mode, QuantizeConfig, outputs, run
from quantship.quantize.data import load_dataset, model_inputs
from quantship.quantize.evaluate import Evaluator, GateRequest

ROWS = 200


def _matmul(name: str, data: str, weight: np.ndarray, out: str) -> Layer:
    return helper.make_node("MatMul", [data, f"{name}.w"], [out], name=name), numpy_helper.from_array(
        weight.astype(np.float32), f"{name}.w"
    )


Layer = tuple[onnx.NodeProto, onnx.TensorProto | None]
"""A node and its weight, if it has one."""


def _save(
    path: Path, layers: list[Layer], inputs: list[tuple[str, int]], outputs_: list[tuple[str, int]]
) -> Path:
    """A float model of `layers` with [N, width] inputs and outputs."""
    graph = helper.make_graph(
        [node for node, _ in layers],
        "two_outputs",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name, width in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name, width in outputs_],
        [weight for _, weight in layers if weight is not None],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _embedding_that_feeds_a_relu(path: Path) -> Path:
    """x -> encode -> `embedding` (an output) -> relu -> head -> `score` (the gated output): the
    Relu is the only node that reads `embedding`, the case onnxruntime folds."""
    rng = np.random.default_rng(0)
    encode = _matmul("encode", "x", rng.normal(scale=0.4, size=(16, 8)), "embedding")
    head = _matmul("head", "r", rng.normal(scale=0.4, size=(8, 1)), "score")
    relu = (helper.make_node("Relu", ["embedding"], ["r"], name="relu"), None)
    return _save(path, [encode, relu, head], [("x", 16)], [("embedding", 8), ("score", 1)])


def _two_branches(path: Path) -> Path:
    """`score` from input a, `side` from input b: two outputs, no node shared."""
    rng = np.random.default_rng(0)
    score = _matmul("score_head", "a", rng.normal(scale=0.4, size=(16, 1)), "score")
    side = _matmul("side_head", "b", rng.normal(scale=0.4, size=(16, 8)), "side")
    return _save(path, [score, side], [("a", 16), ("b", 16)], [("score", 1), ("side", 8)])


def _data(folder: Path, **columns: np.ndarray) -> Path:
    path = folder / f"{'-'.join(columns)}-{len(list(folder.iterdir()))}.npz"
    np.savez(path, **columns)
    return path


@pytest.mark.parametrize("format", [Format.QDQ, Format.QOPERATOR])
def test_an_output_that_feeds_a_relu_is_served_with_its_negative_values(
    tmp_path: Path, format: Format
) -> None:
    """onnxruntime gives the Relu's input the Relu's range [0, max] when the Relu is its only
    reader, graph output or not: the gate (on `score`) passed while `embedding` lost every negative
    value. quantship keeps such a Relu in float, and says so."""
    model = _embedding_that_feeds_a_relu(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(ROWS, 16)).astype(np.float32)
    result = run(
        model,
        tmp_path / "a",
        QuantizeConfig(format=format, output="score", max_accuracy_delta=0.05),
        calibration=_data(tmp_path, x=x),
        evaluation=_data(tmp_path, x=x[100:]),
    )
    assert result.gate_passed
    fp32 = runtime.create_session(model).run(["embedding"], {"x": x[100:]})[0]
    served = runtime.create_session(result.artifact.model_path).run(["embedding"], {"x": x[100:]})[0]
    assert np.mean(fp32 < 0) > 0.3
    assert np.mean(served < 0) == pytest.approx(np.mean(fp32 < 0), abs=0.02)
    assert np.linalg.norm(served - fp32) / np.linalg.norm(fp32) < 0.05
    manifest = result.artifact.manifest
    assert manifest["quantization"]["mode"] == "static"  # dynamic has no ranges to fold
    assert manifest["quantization"]["excluded_nodes"] == ["relu"]
    assert result.chosen.excluded == ("relu",), "kept in float by the trial, as the mask rule keeps its nodes"
    assert result.chosen.quantized_nodes >= 2, "both MatMuls still run int8"
    (said,) = [w for w in manifest["warnings"] if "'relu'" in w]
    assert "'embedding' is a graph output" in said and "clamped" in said
    assert not [w for w in manifest["warnings"] if "off FP32" in w]


def test_dynamic_quantization_keeps_no_relu_in_float_for_an_output(tmp_path: Path) -> None:
    """Dynamic quantization has no ranges, so nothing to fold: given --calibration all the same, the
    Relu was kept in float and announced for nothing."""
    model = _embedding_that_feeds_a_relu(tmp_path / "model.onnx")
    x = np.random.default_rng(1).normal(size=(ROWS, 16)).astype(np.float32)
    result = run(
        model,
        tmp_path / "a",
        QuantizeConfig(mode=Mode.DYNAMIC, output="score", max_accuracy_delta=0.05),
        calibration=_data(tmp_path, x=x),
        evaluation=_data(tmp_path, x=x[100:]),
    )
    manifest = result.artifact.manifest
    assert manifest["quantization"]["mode"] == "dynamic"
    assert manifest["quantization"]["excluded_nodes"] == []
    assert not [w for w in manifest["warnings"] if "'relu'" in w], manifest["warnings"]


def test_an_ungated_output_far_from_fp32_is_named_in_a_warning(tmp_path: Path) -> None:
    """Calibration data that never exercised one branch: its output `side` clips on the evaluation
    data, and the gate, on `score`, passes all the same. Not silently."""
    model = _two_branches(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=(ROWS, 16)).astype(np.float32) for _ in range(2))
    result = run(
        model,
        tmp_path / "a",
        QuantizeConfig(output="score", max_accuracy_delta=0.05),
        calibration=_data(tmp_path, a=a, b=b * 0.05),
        evaluation=_data(tmp_path, a=a[100:], b=b[100:]),
    )
    assert result.gate_passed
    fp32 = runtime.create_session(model).run(["side"], {"a": a[100:], "b": b[100:]})[0]
    served = runtime.create_session(result.artifact.model_path).run(["side"], {"a": a[100:], "b": b[100:]})[0]
    error = float(np.linalg.norm(served - fp32) / np.linalg.norm(fp32))
    assert error > outputs.BROKEN_RELATIVE_ERROR
    (said,) = [w for w in result.artifact.manifest["warnings"] if "off FP32" in w]
    assert said.startswith(f"output 'side' is {error:.1%} off FP32")
    assert "the gate measures 'score' only" in said


def test_outputs_within_rounding_of_fp32_are_not_named(tmp_path: Path) -> None:
    """The same model calibrated on data like the evaluation's: nothing to say."""
    model = _two_branches(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=(ROWS, 16)).astype(np.float32) for _ in range(2))
    result = run(
        model,
        tmp_path / "a",
        QuantizeConfig(output="score", max_accuracy_delta=0.05),
        calibration=_data(tmp_path, a=a, b=b),
        evaluation=_data(tmp_path, a=a[100:], b=b[100:]),
    )
    assert result.gate_passed
    assert not [w for w in result.artifact.manifest["warnings"] if "off FP32" in w]


def test_a_single_output_model_builds_no_session_to_look_for_other_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run of a one-output model (EfficientNet, MiniLM, the regressors) built one more FP32
    session, with its time and memory, only to list the output it already gates."""
    rng = np.random.default_rng(0)
    model = _save(tmp_path / "model.onnx", [_matmul("head", "x", rng.normal(size=(16, 1)), "score")],
                  [("x", 16)], [("score", 1)])  # fmt: skip
    evaluation = _data(tmp_path, x=rng.normal(size=(ROWS, 16)).astype(np.float32))
    dataset = load_dataset(evaluation, model_inputs(onnx.load(model)), role="evaluation")
    evaluator = Evaluator(model, dataset, None, GateRequest())
    built: list[Path] = []
    create_session = runtime.create_session

    def recorded(path: Path, *args: object, **kwargs: object) -> object:
        built.append(path)
        return create_session(path, *args, **kwargs)

    monkeypatch.setattr(runtime, "create_session", recorded)
    assert outputs.broken_outputs(evaluator, model, model) == {}
    assert built == []
