"""Static INT8 of a transformer whose MLP writes outlier channels: the MatMuls-only recipe.

A BERT's FFN writes a few channels 10-200x the others into the residual stream (all-MiniLM-L6-v2:
223 at [CLS] beside values of 1-10), from a GELU output with one channel far above the rest. One
per-tensor INT8 scale on the residual Add, the LayerNorm or the down-projection's input leaves
the ordinary values a few codes: static INT8 of every op agreed with FP32 on no row of MiniLM.
The small graph here has the same shape of problem, built with onnx.helper.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from quantship import artifact
from quantship.cli import main
from quantship.quantize import Mode, QuantizeConfig, Strategy, engine, run
from quantship.quantize.pipeline import QuantizeResult

TOKENS, WIDTH, HIDDEN = 8, 16, 64
MARKER = WIDTH - 1
"""The input channel that marks a row's first token, as [CLS] does: it alone drives the outlier."""


def _constant(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _erf_gelu(x: str, out: str) -> list[onnx.NodeProto]:
    """GELU as torch exports it: x * (1 + erf(x / sqrt 2)) * 0.5."""
    return [
        helper.make_node("Div", [x, "sqrt2"], ["gelu_d"], name="gelu_div"),
        helper.make_node("Erf", ["gelu_d"], ["gelu_e"], name="gelu_erf"),
        helper.make_node("Add", ["gelu_e", "one"], ["gelu_a"], name="gelu_add"),
        helper.make_node("Mul", [x, "gelu_a"], ["gelu_m"], name="gelu_mul"),
        helper.make_node("Mul", ["gelu_m", "half"], [out], name="gelu_half"),
    ]


def _tanh_gelu(x: str, out: str) -> list[onnx.NodeProto]:
    """GPT-2's GELU: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))."""
    return [
        helper.make_node("Mul", [x, x], ["gelu_x2"], name="gelu_square"),
        helper.make_node("Mul", ["gelu_x2", x], ["gelu_x3"], name="gelu_cube"),
        helper.make_node("Mul", ["gelu_x3", "c"], ["gelu_cx3"], name="gelu_scale_cube"),
        helper.make_node("Add", [x, "gelu_cx3"], ["gelu_inner"], name="gelu_inner"),
        helper.make_node("Mul", ["gelu_inner", "k"], ["gelu_k"], name="gelu_scale"),
        helper.make_node("Tanh", ["gelu_k"], ["gelu_t"], name="gelu_tanh"),
        helper.make_node("Add", ["gelu_t", "one"], ["gelu_a"], name="gelu_add"),
        helper.make_node("Mul", ["half", x], ["gelu_hx"], name="gelu_half"),
        helper.make_node("Mul", ["gelu_hx", "gelu_a"], [out], name="gelu_mul"),
    ]


def _silu(x: str, out: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Sigmoid", [x], ["silu_s"], name="silu_sigmoid"),
        helper.make_node("Mul", [x, "silu_s"], [out], name="silu_mul"),
    ]


def _relu(x: str, out: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Relu", [x], [out], name="relu")]


def _block(activation=_erf_gelu) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    """One transformer MLP block, pooled into a unit embedding: up-projection, `activation`,
    down-projection, residual Add, LayerNorm, mean over tokens. One hidden unit reads only the
    marker channel and writes ~210 into channel 0 of the residual stream on the marked token."""
    rng = np.random.default_rng(0)
    w_up = rng.normal(scale=0.25, size=(WIDTH, HIDDEN)).astype(np.float32)
    w_up[MARKER, :], w_up[MARKER, 0] = 0.0, 6.0
    w_down = rng.normal(scale=0.2, size=(HIDDEN, WIDTH)).astype(np.float32)
    w_down[0, :], w_down[0, 0] = 0.0, 7.0
    constants = [
        _constant("w_up", w_up),
        _constant("b_up", np.zeros(HIDDEN)),
        _constant("w_down", w_down),
        _constant("b_down", np.zeros(WIDTH)),
        _constant("sqrt2", 2**0.5),
        _constant("one", 1.0),
        _constant("half", 0.5),
        _constant("c", 0.044715),
        _constant("k", (2 / np.pi) ** 0.5),
        _constant("gamma", np.ones(WIDTH)),
        _constant("beta", np.zeros(WIDTH)),
        numpy_helper.from_array(np.array([1], np.int64), "token_axis"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "w_up"], ["up_out"], name="up"),
        helper.make_node("Add", ["up_out", "b_up"], ["hidden"], name="up_bias"),
        *activation("hidden", "activated"),
        helper.make_node("MatMul", ["activated", "w_down"], ["down_out"], name="down"),
        helper.make_node("Add", ["down_out", "b_down"], ["ffn"], name="down_bias"),
        helper.make_node("Add", ["X", "ffn"], ["residual_out"], name="residual"),
        helper.make_node(
            "LayerNormalization", ["residual_out", "gamma", "beta"], ["normed"], axis=-1, name="norm"
        ),
        helper.make_node("ReduceMean", ["normed", "token_axis"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("LpNormalization", ["pooled"], ["embedding"], axis=1, p=2, name="normalize"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", TOKENS, WIDTH])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", WIDTH])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def _rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, TOKENS, WIDTH)).astype(np.float32)
    rows[:, :, MARKER] = 0.0
    rows[:, 0, MARKER] = 5.0
    return rows


@pytest.mark.parametrize("activation", [_erf_gelu, _tanh_gelu, _silu])
def test_the_reader_of_an_mlps_gelu_or_silu_is_its_down_projection(activation) -> None:  # type: ignore[no-untyped-def]
    assert engine.mlp_activation_readers(_block(activation)) == ["down"]


def test_a_reader_behind_a_reshape_is_found_and_so_is_a_second_reader() -> None:
    """An Erf GELU's tail (Add, Mul, Mul) took all 3 hops, and a Reshape flattening its output for
    the down-projection's Gemm (as gpt2's Conv1D does) one more: no reader was found."""
    model = _block()
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, HIDDEN], np.int64), "flat"))
    nodes = list(model.graph.node)
    down = next(index for index, node in enumerate(nodes) if node.name == "down")
    nodes[down].input[0] = "flattened"
    nodes[down:down] = [helper.make_node("Reshape", ["activated", "flat"], ["flattened"], name="flatten")]
    nodes.append(helper.make_node("MatMul", ["flattened", "w_down"], ["side"], name="side"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)

    assert engine.mlp_activation_readers(model) == ["down", "side"]


def test_a_relu_mlp_has_no_such_reader() -> None:
    """A ReLU's output has no long tail to one side of 0 that GELU's has: nothing is kept for it."""
    assert engine.mlp_activation_readers(_block(_relu)) == []


def test_matmuls_only_keeps_the_residual_stream_and_the_down_projection_in_float() -> None:
    model = _block()
    assert engine.matmuls_only_exclusions(model, QuantizeConfig()) == []
    kept = engine.matmuls_only_exclusions(model, QuantizeConfig(matmuls_only=True))
    # Div and Erf have no int8 op, ReduceMean and LpNormalization none in onnxruntime's QDQ: never quantized.
    assert kept == [
        "up_bias",
        "gelu_add",
        "gelu_mul",
        "gelu_half",
        "down",
        "down_bias",
        "residual",
        "norm",
    ]
    assert engine.matmuls_only_exclusions(model, QuantizeConfig(mode=Mode.DYNAMIC, matmuls_only=True)) == []


def test_static_int8_of_an_outlier_mlp_fails_on_every_op_and_passes_with_matmuls_only(tmp_path: Path) -> None:
    onnx.save(_block(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calibration.npz", X=_rows(64, 1))
    np.savez(tmp_path / "evaluation.npz", X=_rows(200, 2))
    static = QuantizeConfig(max_trials=0, pre_process=False, strategy=Strategy.FALLBACK)

    def quantize(config: QuantizeConfig, out: str) -> QuantizeResult:
        return run(
            tmp_path / "m.onnx",
            tmp_path / out,
            config,
            calibration=tmp_path / "calibration.npz",
            evaluation=tmp_path / "evaluation.npz",
        )

    every_op = quantize(static, "every-op")
    assert not every_op.gate_passed
    assert "--matmuls-only" in every_op.artifact.manifest["tuning"]["advice"]

    result = quantize(replace(static, matmuls_only=True), "matmuls-only")

    assert result.gate_passed and result.chosen.config.label() == "static U8S8 minmax MatMuls-only per-tensor"
    manifest = result.artifact.manifest
    assert manifest["quantization"]["matmuls_only"] is True
    excluded = manifest["quantization"]["excluded_nodes"]
    assert {"down", "residual", "norm"} <= set(excluded) and "up" not in excluded
    # What the recipe keeps in float runs in float: the artifact's model has one int8 MatMul.
    ops = [node.op_type for node in onnx.load(str(result.artifact.model_path)).graph.node]
    assert ops.count("MatMul") == 2 and ops.count("DequantizeLinear") == 2  # up's input and weight


def test_an_artifact_whose_only_range_is_a_graph_input_is_written(tmp_path: Path) -> None:
    """The clip warning's count read the observed tensors from a session asked for none of its
    outputs where every range was a graph input's, and onnxruntime, asked for none, returns them all:
    a ValueError from zip after the trial passed, and no artifact. MatMuls-only on this block
    leaves one range: the input's, which its up-projection reads."""
    onnx.save(_block(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calibration.npz", X=_rows(64, 1))
    np.savez(tmp_path / "evaluation.npz", X=_rows(200, 2))
    config = QuantizeConfig(max_trials=0, pre_process=False, matmuls_only=True)

    result = run(
        tmp_path / "m.onnx",
        tmp_path / "a",
        config,
        calibration=tmp_path / "calibration.npz",
        evaluation=tmp_path / "evaluation.npz",
    )

    assert result.gate_passed
    assert [r["tensor"] for r in result.artifact.manifest["activation_ranges"]] == ["X"]


def _small_cnn() -> onnx.ModelProto:
    """Two Convs and a Gemm head: as EfficientNet-Lite0 (49 Convs, one Gemm), most of its compute
    is what MatMuls-only keeps in float."""
    rng = np.random.default_rng(0)
    constants = [
        _constant("k1", rng.normal(scale=0.5, size=(4, 1, 3, 3))),
        _constant("k2", rng.normal(scale=0.5, size=(4, 4, 3, 3))),
        _constant("w_head", rng.normal(scale=0.5, size=(4 * 4 * 4, 3))),
        _constant("b_head", np.zeros(3)),
    ]
    nodes = [
        helper.make_node("Conv", ["X", "k1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "k2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "w_head", "b_head"], ["scores"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def test_matmuls_only_on_a_cnn_says_it_keeps_most_of_the_compute_in_float(tmp_path: Path) -> None:
    """EfficientNet-Lite0 with --matmuls-only passed with its 49 Convs in float, 1.3x smaller, not 4x,
    and nothing said so. The MLP block's MatMuls-only, which keeps 1 of its 2 MatMuls, says nothing."""
    onnx.save(_small_cnn(), tmp_path / "cnn.onnx")
    rows = np.random.default_rng(1).normal(size=(64, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "images.npz", X=rows)
    config = QuantizeConfig(max_trials=0, pre_process=False, matmuls_only=True)

    cnn = run(tmp_path / "cnn.onnx", tmp_path / "a", config, calibration=tmp_path / "images.npz")

    said = [w for w in cnn.artifact.manifest["warnings"] if w.startswith("--matmuls-only")]
    assert said == [
        "--matmuls-only keeps 2 of the model's 3 compute ops in float (2 Conv): it quantizes only MatMuls, "
        "Gemms and embedding Gathers, for a transformer's outlier channels; without it, static "
        "quantization quantizes them too"
    ]
    onnx.save(_block(), tmp_path / "m.onnx")
    np.savez(tmp_path / "tokens.npz", X=_rows(64, 1))
    mlp = run(tmp_path / "m.onnx", tmp_path / "b", config, calibration=tmp_path / "tokens.npz")
    assert not any("--matmuls-only" in w for w in mlp.artifact.manifest["warnings"])


def test_no_matmuls_only_runs_no_matmuls_only_trial(tmp_path: Path) -> None:
    """--no-matmuls-only was the default's value, and the tuner ran its MatMuls-only trial all the
    same (which passes here): a user who says no, or a QuantizedModel's matmulsOnly: false, gets none."""
    onnx.save(_block(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calibration.npz", X=_rows(64, 1))
    np.savez(tmp_path / "evaluation.npz", X=_rows(200, 2))
    files = ["--calibration", tmp_path / "calibration.npz", "--evaluation", tmp_path / "evaluation.npz"]
    flags = [*files, "--no-pre-process", "--strategy", "fallback", "--max-trials", "1", "-q"]

    def quantize(out: str, *extra: str) -> dict:  # type: ignore[type-arg]
        args = [str(a) for a in (tmp_path / "m.onnx", "-o", tmp_path / out, *flags, *extra)]
        CliRunner().invoke(main, ["quantize", *args])
        return artifact.load_artifact(tmp_path / out).manifest

    banned = quantize("banned", "--no-matmuls-only")

    assert [t["config"]["matmuls_only"] for t in banned["trials"]] == [False, False]
    assert "--matmuls-only" not in banned["tuning"]["advice"]
    unset = quantize("unset")
    assert [t["config"]["matmuls_only"] for t in unset["trials"]] == [False, True]
