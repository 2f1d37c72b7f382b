"""Outputs the gate and the shadow judge as class ids (hunt-H H6, H7), quantized with the real
onnxruntime.quantization and loaded by a real server: a BOOL flag is refused before any tuning (the
server's load refused its rule: 503 forever), and an answer per position (token ids [N, seq], scores
[N, seq, classes]) is judged at every position but the padding (position 0 alone was compared)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as http
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from server_harness import MODEL, LocalServer, settings_for, wait_until

from quantship import agreement as agreement_module
from quantship import artifact, artifact_format, runtime
from quantship.agreement import Kind, RowRule, Task
from quantship.artifact import MODEL_FILE, REFERENCE_FILE
from quantship.cli import main
from quantship.quantize import QuantizeConfig, run
from quantship.quantize.data import load_dataset, model_inputs
from quantship.quantize.errors import QuantizeInputError
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


def build_token_classifier(
    path: Path,
    *,
    last_bias: float = 0.0,
    first: str = "tokens",
    keepdims: int = 0,
    unused_inputs: tuple[str, ...] = (),
) -> Path:
    """x [N, seq, 16] and its `attention_mask` [N, seq] (INT64, 0 at padding, which zeroes x there)
    -> `logits` [N, seq, 8] (with a bias per position) and `tokens` [N, seq] INT64, their ArgMax: a
    token classifier as often exported, `first` its first output. `last_bias` adds to class 1 at the
    last position only: a model that answers otherwise there and nowhere else, and always where that
    position is padding (FP32's answer there is the bias's argmax, class 0). `keepdims` 1: `tokens`
    [N, seq, 1], as ArgMax writes by default. `unused_inputs`: more [N, seq] INT64 inputs it takes."""
    rng = np.random.default_rng(0)
    weight = rng.normal(scale=0.5, size=(WIDTH, CLASSES)).astype(np.float32)
    bias = np.zeros((POSITIONS, CLASSES), np.float32)
    bias[0, 0] = SURE_AT_FIRST
    bias[-1, 1] += last_bias
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last_axis"], ["mask_column"]),
        helper.make_node("Mul", ["x", "mask_column"], ["tokens_only"]),
        helper.make_node("MatMul", ["tokens_only", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["tokens"], axis=-1, keepdims=keepdims),
    ]
    outputs = {
        "tokens": helper.make_tensor_value_info(
            "tokens", TensorProto.INT64, ["N", POSITIONS, 1][: 2 + keepdims]
        ),
        "logits": helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", POSITIONS, CLASSES]),
    }
    return _save(
        path,
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", POSITIONS, WIDTH]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", POSITIONS]),
            *(
                helper.make_tensor_value_info(name, TensorProto.INT64, ["N", POSITIONS])
                for name in unused_inputs
            ),
        ],
        [outputs[first], *(output for name, output in outputs.items() if name != first)],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
        ],
    )


def _data(path: Path, rows: int, *, positions: bool, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    shape = (rows, POSITIONS, WIDTH) if positions else (rows, WIDTH)
    arrays = {"x": rng.normal(size=shape).astype(np.float32)}
    if positions:  # right-padded, as a tokenizer pads: half the rows lose their last 1-3 positions
        lengths = np.where(rng.random(rows) < 0.5, POSITIONS, rng.integers(POSITIONS - 3, POSITIONS, rows))
        arrays["attention_mask"] = (np.arange(POSITIONS) < lengths[:, None]).astype(np.int64)
    np.savez(path, **arrays)
    return path


def _tokens(model: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    tokens = runtime.create_session(model).run(["tokens"], inputs)[0]
    assert isinstance(tokens, np.ndarray)
    return tokens


def _flips(fp32: Path, other: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Per position, whether the two models answer another class there."""
    return _tokens(fp32, inputs) != _tokens(other, inputs)


def _row_shares(flips: np.ndarray, judged: np.ndarray) -> tuple[float, int]:
    """What the shadow counts: (the rows' shares of their judged positions that flip, summed; the rows
    with a position judged)."""
    counted = np.count_nonzero(judged, axis=1)
    flipped = np.count_nonzero(flips & judged, axis=1)
    return float(np.sum(flipped[counted > 0] / counted[counted > 0])), int(np.count_nonzero(counted))


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


@pytest.mark.parametrize("first", ["tokens", "logits"])
def test_an_answer_per_position_is_judged_at_every_position_but_the_padding(
    tmp_path: Path, first: str
) -> None:
    """A model answering otherwise at the last position only: the gate read position 0 and saw
    top-1 agreement 1.0 (hunt-H H7); then a row with any flip disagreed, and padding counted too.
    Ids [N, seq] and scores [N, seq, classes] named like logits are judged alike: each real position
    is one answer (a causal LM's next tokens, hunt-H H4), and the attention mask is found."""
    fp32 = build_token_classifier(tmp_path / "fp32.onnx", first=first)
    other = build_token_classifier(tmp_path / "other.onnx", last_bias=1.0, first=first)
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    inputs = dict(np.load(data))
    flips, real = _flips(fp32, other, inputs), inputs["attention_mask"] == 1
    padded_last = ~real[:, -1]
    assert padded_last.any() and np.all(flips[padded_last, -1]), "every padded last position differs"
    assert np.any(flips[real]) and not np.any(flips[:, :-1]), "real last positions flip on some rows"

    dataset = load_dataset(data, model_inputs(onnx.load(fp32)), role="evaluation")
    evaluator = Evaluator(fp32, dataset, None, GateRequest())
    evaluation = evaluator.evaluate(other)
    assert evaluator.task is Task.CLASSIFICATION and evaluator.mask_input == "attention_mask"
    assert evaluation.values[Metric.TOP1_AGREEMENT.value] == pytest.approx(1.0 - np.mean(flips[real]))
    assert evaluation.values["positions"] == np.count_nonzero(real)
    assert "'attention_mask' marks the padding" in evaluator.gate.reason and evaluator.warnings == []
    if first == "tokens":  # ids: no confidence to read, every real position judged
        assert evaluator.gate.metric is Metric.TOP1_AGREEMENT and "every position" in evaluator.gate.reason
        assert evaluator.gate.rule == RowRule(Kind.TOP1, per_position=True, mask_input="attention_mask")
        assert evaluation.shadow == pytest.approx(_row_shares(flips, real)), "the shadow counts rows"
        shares, rows = _row_shares(flips, real)
        said = evaluator.shadow_warning(evaluation)  # over the SLO's 0.5%: what the canary will read
        read = f"the {rows} evaluation rows disagree with FP32 at {shares / rows:.1%} of their positions"
        assert said is not None and read in said, said
        assert evaluator.gate.limit == pytest.approx(0.005) and "--max-accuracy-delta" not in said, "within"
        return
    # Scores: as for rows, flips between near-ties are no error; the real positions FP32 is sure of count.
    logits = runtime.create_session(fp32).run(["logits"], inputs)[0]
    sure = real & (agreement_module.probabilities(logits.reshape(-1, CLASSES)).max(axis=1) > 0.5).reshape(
        real.shape
    )
    assert 0 < np.count_nonzero(flips[sure]) < np.count_nonzero(flips[real]), "some flips are near-ties"
    assert evaluator.gate.metric is Metric.CONFIDENT_AGREEMENT
    rule = RowRule(Kind.TOP1, confident_only=True, per_position=True, mask_input="attention_mask")
    assert evaluator.gate.rule == rule
    assert evaluation.shadow == pytest.approx(_row_shares(flips, sure)), "the shadow counts rows"
    assert evaluation.value == pytest.approx(1.0 - np.mean(flips[sure]))


def test_feedback_to_an_answer_per_position_says_a_label_is_one_class_a_row(tmp_path: Path) -> None:
    """A token classifier's feedback is 400, as the README says; it said "feedback needs a
    classifier; output 'logits' gives no class ids" of the classes its gate judged at each position."""
    fp32 = build_token_classifier(tmp_path / "fp32.onnx", first="logits")
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    quantized = run(
        fp32, tmp_path / "a", QuantizeConfig(max_accuracy_delta=0.1), calibration=data, evaluation=data
    )
    assert RowRule.from_json(quantized.artifact.manifest["validation"]["shadow_rule"]).per_position
    server = LocalServer(settings_for(quantized.artifact, "tokens")).start()
    try:
        answer = httpx.post(f"{server.url}/v2/models/{MODEL}/feedback", json={"id": "r1", "label": 1})
    finally:
        server.stop()
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == (
        "feedback takes one class label a row; output 'logits' answers a class at each position"
    )


def test_labels_per_position_gate_the_accuracy_of_the_labelled_real_positions(tmp_path: Path) -> None:
    """A token classifier's (or an LM's next-token) labels [N, seq]: -100 marks a position without a
    label, as a tokenizer writes it, and padding is left out as for agreement."""
    fp32 = build_token_classifier(tmp_path / "fp32.onnx", first="logits")
    other = build_token_classifier(tmp_path / "other.onnx", last_bias=1.0, first="logits")
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    inputs = dict(np.load(data))
    labels = _tokens(fp32, inputs)  # FP32 right everywhere: the other model loses its flips
    labels[::3, 1] = (labels[::3, 1] + 1) % CLASSES  # and wrong at a few positions
    labels[::2, -1] = -100  # no label at half the last positions
    np.savez(data, **inputs, labels=labels)
    flips, real = _flips(fp32, other, inputs), inputs["attention_mask"] == 1
    judged = real & (labels >= 0)
    fp32_right = (_tokens(fp32, inputs) == labels)[judged]
    other_right = (_tokens(other, inputs) == labels)[judged]
    assert np.any(flips[judged]) and not fp32_right.all()

    dataset = load_dataset(data, model_inputs(onnx.load(fp32)), role="evaluation")
    evaluator = Evaluator(fp32, dataset, None, GateRequest())
    evaluation = evaluator.evaluate(other)
    assert evaluator.gate.metric is Metric.TOP1_ACCURACY and evaluator.mask_input == "attention_mask"
    assert evaluation.fp32 == pytest.approx(np.mean(fp32_right))
    assert evaluation.int8 == pytest.approx(np.mean(other_right))
    assert evaluation.shadow == pytest.approx(_row_shares(flips, real)), "all real positions"


@pytest.mark.parametrize(
    ("labels", "refusal"),
    [
        (np.zeros(ROWS, np.int64), "labels of one class a row, but output 'logits' of shape [200, 12, 8]"),
        (np.zeros((ROWS, 3), np.int64), "labels of shape [200, 3], but output 'logits'"),
        (np.full((ROWS, POSITIONS), -100, np.int64), "label none of the positions output 'logits' answers"),
    ],
)
def test_labels_that_do_not_label_the_positions_are_refused(
    tmp_path: Path, labels: np.ndarray, refusal: str
) -> None:
    model = build_token_classifier(tmp_path / "fp32.onnx", first="logits")
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    np.savez(data, **np.load(data), labels=labels)
    out = tmp_path / "a"
    args = ["quantize", model, "-o", out, "--calibration", data, "--evaluation", data, "-q"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 3, result.stderr  # ExitCode.REFUSED
    (line,) = result.stderr.strip().splitlines()
    assert refusal in line, line
    assert not out.exists()


def test_the_shadow_counts_rows_by_the_positions_a_request_did_not_pad(tmp_path: Path) -> None:
    """A real INT8 token classifier is served; an artifact whose model answers otherwise at the last
    position only is shadowed against its FP32 reference: each row is one comparison (DESIGN: shadow
    comparisons count rows; counted as positions, two 64-token requests met an analysis' minSamples),
    disagreeing by the share of its real positions that flip; padding is not judged. Rows of 9 to 12
    real positions: the disagreements are the rows' shares, not the flips over all positions."""
    fp32 = build_token_classifier(tmp_path / "fp32.onnx", first="logits")
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    every_position = QuantizeConfig(metric=Metric.TOP1_AGREEMENT, max_accuracy_delta=0.5)
    quantized = run(fp32, tmp_path / "a", every_position, calibration=data, evaluation=data)
    manifest = quantized.artifact.manifest
    rule = {"kind": "top1", "tolerance": None, "confident_only": False}
    assert manifest["validation"]["shadow_rule"] == {
        **rule,
        "per_position": True,
        "mask_input": "attention_mask",
    }
    older_servers_refuse = artifact_format.PER_POSITION_FORMAT_VERSION
    assert manifest["format_version"] == older_servers_refuse
    assert quantized.gate_passed
    served_alike = LocalServer(settings_for(quantized.artifact, "int8")).start()  # ready: it loaded
    served_alike.stop()

    other = build_token_classifier(tmp_path / "other.onnx", last_bias=1.0, first="logits")
    # The float model quantizes no tensor: the INT8 model's ranges would name none of its own.
    dropped = ("files", "format_version", "activation_ranges", "activation_histograms")
    kept = {k: v for k, v in manifest.items() if k not in dropped}
    skewed = artifact.write_artifact(tmp_path / "skewed", {MODEL_FILE: other, REFERENCE_FILE: fp32}, kept)
    quality = QualitySettings(shadow_rate=1.0, clip_sample_rate=0.0, sli_cpu_budget=4.0)
    server = LocalServer(settings_for(skewed, "skewed", quality=quality)).start()
    try:
        requests = dict(np.load(_data(tmp_path / "traffic.npz", 40, positions=True, seed=2)))
        flips, real = _flips(fp32, other, requests), requests["attention_mask"] == 1
        assert np.count_nonzero(flips[real]) > 0 and np.count_nonzero(flips[~real]) > 0
        client = http.InferenceServerClient(server.address)
        for x, mask in zip(np.split(requests["x"], 4), np.split(requests["attention_mask"], 4), strict=True):
            sent = [
                http.InferInput("x", list(x.shape), "FP32"),
                http.InferInput("attention_mask", list(mask.shape), "INT64"),
            ]
            sent[0].set_data_from_numpy(x)
            sent[1].set_data_from_numpy(mask)
            client.infer(MODEL, sent)
        shares, rows = _row_shares(flips, real)
        assert rows == 40 and len(set(np.count_nonzero(real, axis=1))) > 1, "rows of other lengths"
        wait_until(lambda: server.metric("quantship_shadow_comparisons_total") == rows, what="every row")
        assert server.metric("quantship_shadow_disagreements_total") == pytest.approx(shares)
        assert shares / rows != pytest.approx(np.mean(flips[real])), "a mean of rows, not of positions"
    finally:
        server.stop()


def _ids_first(path: Path, bias: list[float]) -> Path:
    """x [N, 10] + `bias` -> `logits`, and first its ArgMax `label` [N]: a classifier exporting its
    answer beside its scores."""
    nodes = [
        helper.make_node("Add", ["x", "b"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
        ],
        [numpy_helper.from_array(np.array(bias, np.float32), "b")],
    )


def test_a_confident_gate_on_class_ids_says_the_shadow_counts_every_row(tmp_path: Path) -> None:
    """Ids carry no confidence: the gate read it from the scores beside them, and the shadow judges
    every row of the ids. 15 near-tie rows flip: the gate passes on the confident rows, and says the
    canary's shadow will count them (it told the user to gate within the SLO it already used, review)."""
    fp32 = _ids_first(tmp_path / "fp32.onnx", [0.0] * 10)
    flipped = _ids_first(tmp_path / "flipped.onnx", [0.01] + [0.0] * 9)
    x = np.zeros((300, 10), np.float32)
    x[np.arange(300), np.random.default_rng(0).integers(0, 10, 300)] = 10.0  # sure rows
    x[:15] = 0.0
    x[:15, :2] = [1.0, 1.005]  # near-ties of class 1, which the other bias flips to class 0
    np.savez(tmp_path / "x.npz", x=x)
    dataset = load_dataset(tmp_path / "x.npz", model_inputs(onnx.load(fp32)), role="evaluation")
    evaluator = Evaluator(fp32, dataset, None, GateRequest())
    evaluation = evaluator.evaluate(flipped)
    assert evaluator.gate.metric is Metric.CONFIDENT_AGREEMENT and evaluation.passed
    assert evaluator.gate.rule == RowRule(Kind.TOP1), "no confidence claimed of ids"
    assert evaluation.shadow == (15, 300)
    said = evaluator.shadow_warning(evaluation)
    assert said is not None and "top-1 differs (" not in said, "no confident scope claimed"
    assert "--metric top1_agreement" in said and "--max-accuracy-delta" not in said


def test_the_padding_is_the_attention_masks_not_an_encoders_or_a_special_tokens_mask(tmp_path: Path) -> None:
    """A seq2seq decoder also takes its encoder's mask, and a tokenizer's special-tokens mask marks the
    tokens it added with 1s: neither says which of the output's positions are padding (review: the
    encoder's mask was read as the decoder's). --mask-input names one where the guess cannot."""
    others = ("encoder_attention_mask", "special_tokens_mask")
    model = build_token_classifier(tmp_path / "fp32.onnx", first="logits", unused_inputs=others)
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    rng = np.random.default_rng(3)
    inputs = dict(np.load(data))
    np.savez(data, **inputs, **{name: rng.integers(0, 2, (ROWS, POSITIONS)) for name in others})
    dataset = load_dataset(data, model_inputs(onnx.load(model)), role="evaluation")
    assert Evaluator(model, dataset, None, GateRequest()).mask_input == "attention_mask"
    chosen = Evaluator(model, dataset, None, GateRequest(mask_input="special_tokens_mask"))
    assert chosen.gate.rule.mask_input == "special_tokens_mask"
    for name, refusal in [("x", "a mask needs 0s and 1s"), ("padding", "no such input")]:
        with pytest.raises(QuantizeInputError, match=f"--mask-input {name}: {refusal}"):
            Evaluator(model, dataset, None, GateRequest(mask_input=name))


@pytest.mark.parametrize(
    ("more_inputs", "found"),
    [(("decoder_input_ids", "decoder_attention_mask"), "decoder_attention_mask"), (("padding_mask",), None)],
)
def test_a_decoders_padding_is_its_own_mask_and_two_candidates_are_said(
    tmp_path: Path, more_inputs: tuple[str, ...], found: str | None
) -> None:
    """A seq2seq export names its encoder's mask plainly `attention_mask` (review: read as the
    decoder's); two masks that both fit are no guess to make silently."""
    model = build_token_classifier(tmp_path / "fp32.onnx", first="logits", unused_inputs=more_inputs)
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    inputs = dict(np.load(data))
    np.savez(data, **inputs, **{name: inputs["attention_mask"][::-1] for name in more_inputs})
    evaluator = Evaluator(
        model, load_dataset(data, model_inputs(onnx.load(model)), role="evaluation"), None, GateRequest()
    )
    assert evaluator.mask_input == found
    said = [w for w in evaluator.warnings if "could each mark the padding" in w]
    assert bool(said) == (found is None), evaluator.warnings


def test_ids_that_keep_the_argmax_axis_are_judged_and_labelled_at_their_positions(tmp_path: Path) -> None:
    """ArgMax writes [N, seq, 1] unless told otherwise: its positions are [N, seq], and so are its
    mask and labels (review: padding counted, and no labels could be given)."""
    model = build_token_classifier(tmp_path / "fp32.onnx", keepdims=1)
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    inputs = dict(np.load(data))
    np.savez(data, **inputs, labels=_tokens(model, inputs)[..., 0])
    evaluator = Evaluator(
        model, load_dataset(data, model_inputs(onnx.load(model)), role="evaluation"), None, GateRequest()
    )
    evaluation = evaluator.evaluate(model)
    assert evaluator.mask_input == "attention_mask" and evaluator.gate.metric is Metric.TOP1_ACCURACY
    assert evaluation.fp32 == evaluation.int8 == 1.0
    assert evaluation.values["positions"] == np.count_nonzero(inputs["attention_mask"])


def test_a_token_model_without_a_batch_axis_is_judged_at_its_positions_and_served(tmp_path: Path) -> None:
    """x [seq, 16] -> `logits` [seq, 8]: one sequence a call. Its positions were refused by the
    rule's check of the declared shape, which has no batch axis (review: quantized before)."""
    weight = np.random.default_rng(0).normal(size=(WIDTH, CLASSES)).astype(np.float32)
    model = _save(
        tmp_path / "fp32.onnx",
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [POSITIONS, WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [POSITIONS, CLASSES])],
        [numpy_helper.from_array(weight, "W")],
    )
    np.savez(
        tmp_path / "x.npz", x=np.random.default_rng(1).normal(size=(100, POSITIONS, WIDTH)).astype(np.float32)
    )
    quantized = run(
        model, tmp_path / "a", QuantizeConfig(), calibration=tmp_path / "x.npz", evaluation=tmp_path / "x.npz"
    )
    validation = quantized.artifact.manifest["validation"]
    assert validation["shadow_rule"]["per_position"] and validation["metrics"]["positions"] == 100 * POSITIONS
    server = LocalServer(settings_for(quantized.artifact, "int8")).start()  # ready: it loaded
    server.stop()


def test_score_metrics_read_in_chunks_equal_those_read_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An LM's probabilities are made a chunk of positions at a time (agreement.chunks: a GPT-2
    vocabulary's held whole took 7 GB a side): chunks of 3 positions read what all at once read."""
    fp32 = build_token_classifier(tmp_path / "fp32.onnx", first="logits")
    other = build_token_classifier(tmp_path / "other.onnx", last_bias=1.0, first="logits")
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    dataset = load_dataset(data, model_inputs(onnx.load(fp32)), role="evaluation")
    at_once = Evaluator(fp32, dataset, None, GateRequest()).evaluate(other).values
    monkeypatch.setattr(agreement_module, "PROBABILITY_CHUNK_VALUES", 3 * CLASSES)
    chunked = Evaluator(fp32, dataset, None, GateRequest()).evaluate(other).values
    assert chunked == pytest.approx(at_once) and at_once["kl_divergence"] > 0


def test_a_mask_of_other_values_than_0_and_1_is_said_not_read(tmp_path: Path) -> None:
    """gpt2-lm's attention_mask as 0s and 2s was left unread in silence: its padding was judged."""
    model = build_token_classifier(tmp_path / "fp32.onnx", first="logits")
    data = _data(tmp_path / "x.npz", ROWS, positions=True, seed=1)
    inputs = dict(np.load(data))
    np.savez(data, **{**inputs, "attention_mask": inputs["attention_mask"] * 2})
    evaluator = Evaluator(
        model, load_dataset(data, model_inputs(onnx.load(model)), role="evaluation"), None, GateRequest()
    )
    assert evaluator.mask_input is None
    said = [w for w in evaluator.warnings if "'attention_mask' is shaped like the padding mask" in w]
    assert said and "holds 0, 2, not only 0s and 1s" in said[0], evaluator.warnings
