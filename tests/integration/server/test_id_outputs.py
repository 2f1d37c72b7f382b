"""Outputs the gate and the shadow judge as class ids (hunt-H H6, H7), quantized with the real
onnxruntime.quantization and loaded by a real server: a BOOL flag is refused before any tuning (the
server's load refused its rule: 503 forever), and token ids [N, seq] agree on a row only where every
position does (position 0 alone was compared)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from server_harness import LocalServer, settings_for

from quantship.cli import main
from quantship.quantize import QuantizeConfig, run

ROWS, POSITIONS, WIDTH, CLASSES = 200, 12, 16, 8
SURE_AT_FIRST = 50.0
"""Class 0's bias at position 0: every model answers class 0 there, so position 0 alone agrees."""


def _save(
    path: Path, nodes: list[onnx.NodeProto], inputs: list[Any], outputs: list[Any], weights: list[Any]
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_flagged_classifier(path: Path) -> Path:
    """x [N, 16] -> `logits` [N, 8], and first a BOOL `confident` [N] (max logit > 1): an accept/reject
    flag exported beside the scores."""
    weight = np.random.default_rng(0).normal(scale=0.5, size=(WIDTH, CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logits"]),
        helper.make_node("ReduceMax", ["logits"], ["top"], axes=[1], keepdims=0),
        helper.make_node("Greater", ["top", "one"], ["confident"]),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [
            helper.make_tensor_value_info("confident", TensorProto.BOOL, ["N"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES]),
        ],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )


def _data(path: Path, rows: int, *, positions: bool, seed: int) -> Path:
    shape = (rows, POSITIONS, WIDTH) if positions else (rows, WIDTH)
    np.savez(path, x=np.random.default_rng(seed).normal(size=shape).astype(np.float32))
    return path


@pytest.mark.parametrize("task", [[], ["--task", "classification"], ["--task", "regression"]])
def test_a_bool_output_is_refused_before_tuning_naming_the_outputs_to_gate_instead(
    tmp_path: Path, task: list[str]
) -> None:
    """Inferred regression (one value a row) or asked for, the rule could not judge booleans: the
    artifact verified and every server refused it at load ('a relative_error rule needs a float
    output, not bool'; with --task classification 'a top-1 rule needs class ids ...')."""
    model = build_flagged_classifier(tmp_path / "flagged.onnx")
    data = _data(tmp_path / "x.npz", ROWS, positions=False, seed=1)
    out = tmp_path / "a"
    args = ["quantize", model, "-o", out, "--calibration", data, "--evaluation", data, "-q", *task]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 3, result.stderr  # ExitCode.REFUSED
    (line,) = result.stderr.strip().splitlines()
    assert "output 'confident' cannot be gated" in line and "not bool" in line, line
    assert line.endswith("pick a float or class-id output with --output NAME (logits)"), line
    assert not out.exists()


def test_the_flagged_classifier_gated_on_its_scores_is_served(tmp_path: Path) -> None:
    model = build_flagged_classifier(tmp_path / "flagged.onnx")
    data = _data(tmp_path / "x.npz", ROWS, positions=False, seed=1)
    config = QuantizeConfig(output="logits", max_accuracy_delta=0.1)
    quantized = run(model, tmp_path / "a", config, calibration=data, evaluation=data)
    assert quantized.gate_passed
    server = LocalServer(settings_for(quantized.artifact, "scores")).start()  # ready: it loaded
    server.stop()
