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
import tritonclient.http as http
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from server_harness import MODEL, LocalServer, settings_for, wait_until

from quantship import artifact, runtime
from quantship.artifact import MODEL_FILE, REFERENCE_FILE
from quantship.cli import main
from quantship.quantize import QuantizeConfig, run
from quantship.quantize.data import load_dataset, model_inputs
from quantship.quantize.evaluate import Evaluator, GateRequest, Metric
from quantship.server.settings import QualitySettings

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


def build_token_classifier(path: Path, *, last_bias: float = 0.0) -> Path:
    """x [N, seq, 16] -> `logits` [N, seq, 8] (with a bias per position) -> first output `tokens`
    [N, seq] INT64, their ArgMax: a token classifier as often exported. `last_bias` adds to class 1
    at the last position only: a model that answers otherwise there and nowhere else."""
    rng = np.random.default_rng(0)
    weight = rng.normal(scale=0.5, size=(WIDTH, CLASSES)).astype(np.float32)
    bias = np.zeros((POSITIONS, CLASSES), np.float32)
    bias[0, 0] = SURE_AT_FIRST
    bias[-1, 1] += last_bias
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["tokens"], axis=-1, keepdims=0),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", POSITIONS, WIDTH])],
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", POSITIONS]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", POSITIONS, CLASSES]),
        ],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "bias")],
    )


def _data(path: Path, rows: int, *, positions: bool, seed: int) -> Path:
    shape = (rows, POSITIONS, WIDTH) if positions else (rows, WIDTH)
    np.savez(path, x=np.random.default_rng(seed).normal(size=shape).astype(np.float32))
    return path


def _tokens(model: Path, x: np.ndarray) -> np.ndarray:
    tokens = runtime.create_session(model).run(["tokens"], {"x": x})[0]
    assert isinstance(tokens, np.ndarray)
    return tokens


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


def test_token_ids_agree_on_a_row_only_where_every_position_does(tmp_path: Path) -> None:
    """A model answering otherwise at the last position only: the gate read position 0 and saw
    top-1 agreement 1.0; no confidence is claimed of ids (FP32 was 'confident on only 0 rows')."""
    fp32 = build_token_classifier(tmp_path / "fp32.onnx")
    other = build_token_classifier(tmp_path / "other.onnx", last_bias=1.0)
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    x = np.load(data)["x"]
    differs = np.any(_tokens(fp32, x) != _tokens(other, x), axis=1)
    assert 0.1 < np.mean(differs) < 0.9, "the last position flips on some rows, not all"
    assert np.all(_tokens(fp32, x)[:, :-1] == _tokens(other, x)[:, :-1])

    dataset = load_dataset(data, model_inputs(onnx.load(fp32)), role="evaluation")
    evaluator = Evaluator(fp32, dataset, None, GateRequest())
    agreement = evaluator.evaluate(other).values[Metric.TOP1_AGREEMENT.value]
    assert agreement == pytest.approx(1.0 - np.mean(differs))
    # Scores per position are no scores a row: their softmax over a whole row is no confidence.
    assert evaluator.gate.metric is Metric.TOP1_AGREEMENT and evaluator.warnings == []
    assert "every position" in evaluator.gate.reason


def test_the_shadow_counts_a_token_row_disagreeing_at_any_position(tmp_path: Path) -> None:
    """A real INT8 token classifier is served; an artifact whose model answers otherwise at the last
    position only is shadowed against its FP32 reference: each such row is a disagreement."""
    fp32 = build_token_classifier(tmp_path / "fp32.onnx")
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    quantized = run(
        fp32, tmp_path / "a", QuantizeConfig(max_accuracy_delta=0.5), calibration=data, evaluation=data
    )
    manifest = quantized.artifact.manifest
    assert manifest["validation"]["shadow_rule"]["kind"] == "top1"
    assert not [w for w in manifest["warnings"] if "confident" in w]
    assert quantized.gate_passed
    served_alike = LocalServer(settings_for(quantized.artifact, "int8")).start()  # ready: it loaded
    served_alike.stop()

    other = build_token_classifier(tmp_path / "other.onnx", last_bias=1.0)
    # The float model quantizes no tensor: the INT8 model's ranges would name none of its own.
    dropped = ("files", "format_version", "activation_ranges", "activation_histograms")
    kept = {k: v for k, v in manifest.items() if k not in dropped}
    skewed = artifact.write_artifact(tmp_path / "skewed", {MODEL_FILE: other, REFERENCE_FILE: fp32}, kept)
    quality = QualitySettings(shadow_rate=1.0, clip_sample_rate=0.0, sli_cpu_budget=4.0)
    server = LocalServer(settings_for(skewed, "skewed", quality=quality)).start()
    try:
        x = np.random.default_rng(2).normal(size=(40, POSITIONS, WIDTH)).astype(np.float32)
        expected = int(np.count_nonzero(np.any(_tokens(fp32, x) != _tokens(other, x), axis=1)))
        assert expected > 0
        client = http.InferenceServerClient(server.address)
        for rows in np.split(x, 4):
            request = http.InferInput("x", list(rows.shape), "FP32")
            request.set_data_from_numpy(rows)
            client.infer(MODEL, [request])
        wait_until(
            lambda: server.metric("quantship_shadow_comparisons_total") == len(x), what="40 comparisons"
        )
        assert server.metric("quantship_shadow_disagreements_total") == expected
    finally:
        server.stop()
