"""The runner: a model's signature, input validation against it, batched runs, fallback analysis."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import POSITION_TABLE, build_positions

from quantship import artifact
from quantship.server.errors import InferenceFailed, InvalidInput
from quantship.server.runner import Runner
from quantship.server.runner_graph import fallback_ops, index_tables, value_free_outputs
from quantship.server.runner_layout import batch_key
from quantship.server.runner_signature import Signature, TensorSpec

TinyModel = Callable[..., Runner]


def x(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def test_the_signature_reads_names_datatypes_and_open_dimensions(tiny_model: TinyModel) -> None:
    signature = tiny_model().signature
    assert [(s.name, s.datatype, s.wire_shape) for s in signature.inputs] == [("X", "FP32", [-1, 3])]
    assert [(s.name, s.datatype, s.wire_shape) for s in signature.outputs] == [
        ("Y", "FP32", [-1, 3]),
        ("label", "INT64", [-1]),
    ]
    assert signature.batchable
    assert not tiny_model(first_dim=1).signature.batchable


@pytest.mark.parametrize(
    ("row_shape", "one_row"),
    [
        ((1, 1600), (1, 1600)),  # the gate's length for the open axis
        ((), (1, 1)),  # none recorded (an artifact made without data)
        ((1, 1600, 2), (1, 1)),  # another rank: not this input's
        ((2, 1600), (1, 1)),  # a fixed dimension it contradicts: not this input's either
    ],
    ids=["fits", "none", "other rank", "contradicts a fixed size"],
)
def test_one_row_takes_the_gates_sizes_where_they_fit_and_ones_elsewhere(
    row_shape: tuple[int, ...], one_row: tuple[int, ...]
) -> None:
    assert TensorSpec("wave", "FP32", (1, None)).one_row(row_shape) == one_row


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input 'X'; the model takes X \\(FP32 \\[-1, 3\\]\\)"),
        ({"X": x(1, 3), "Z": x(1, 3)}, "unknown input 'Z'"),
        ({"X": x(1, 3, dtype=np.float64)}, "input 'X' is FP64; the model expects FP32"),
        (
            {"X": x(3)},
            "has shape \\[3\\] \\(1 dimensions\\); the model expects \\[-1, 3\\] \\(2 dimensions\\)",
        ),
        ({"X": x(1, 4)}, "dimension 1 must be 3"),
        ({"X": x(0, 3)}, "has no rows"),
    ],
)
def test_inputs_that_do_not_fit_the_model_are_refused_by_name(
    tiny_model: TinyModel, inputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        tiny_model().signature.validate(inputs)


def test_validation_counts_rows_on_the_batch_dimension(tiny_model: TinyModel) -> None:
    assert tiny_model().signature.validate({"X": x(5, 3)}) == 5
    assert tiny_model(first_dim=1).signature.validate({"X": x(1, 3)}) == 1
    with pytest.raises(InvalidInput, match="dimension 0 must be 1"):
        tiny_model(first_dim=1).signature.validate({"X": x(2, 3)})


def test_unknown_outputs_are_refused_with_the_ones_the_model_gives(tiny_model: TinyModel) -> None:
    with pytest.raises(InvalidInput, match="unknown output 'P'; the model gives Y, label"):
        tiny_model().signature.check_outputs(["Y", "P"])


def test_run_many_merges_what_can_share_a_batch_and_splits_answers_back(tiny_model: TinyModel) -> None:
    runner = tiny_model(width="W")
    requests = [{"X": np.full((n, w), n, dtype=np.float32)} for n, w in ((1, 3), (2, 5), (3, 3))]
    for max_rows in (32, 3, 1):  # one call, two (1 + 2 rows, then 3), one a request
        answers = runner.run_many(requests, [1, 2, 3], max_rows=max_rows)
        for (n, w), answer in zip(((1, 3), (2, 5), (3, 3)), answers, strict=True):
            np.testing.assert_array_equal(answer["Y"], np.full((n, w), n + 1, dtype=np.float32))


def test_run_many_never_runs_more_than_max_rows_in_one_call(tiny_model: TinyModel) -> None:
    """The background sessions' memory: a hand-off of large requests goes one call at a time, and a
    request larger than a call goes in calls of max_rows (a sampled 4000-row gpt2-lm request ran its
    reference in one call)."""
    runner = tiny_model()
    calls: list[int] = []
    run = runner.run
    runner.run = lambda inputs: calls.append(len(inputs["X"])) or run(inputs)  # type: ignore[method-assign]
    requests = [{"X": np.arange(3 * n, dtype=np.float32).reshape(n, 3)} for n in (1, 1, 1, 41, 2, 2)]
    answers = runner.run_many(requests, [1, 1, 1, 41, 2, 2], max_rows=4)
    assert calls == [3, *[4] * 10, 1, 4]
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["Y"], runner.session.run(["Y"], request)[0])


def counting_calls(runner: Runner) -> list[int]:
    """The rows of each call `runner.run` makes from now on."""
    calls: list[int] = []
    run = runner.run
    runner.run = lambda inputs: calls.append(len(inputs["X"])) or run(inputs)  # type: ignore[method-assign]
    return calls


def test_an_output_without_a_batch_dimension_computed_from_shapes_is_shared_in_one_call(
    tmp_path: Path,
) -> None:
    """A static BERT's position embeddings (1, seq, hidden) for any batch: the merged call answers
    every request (each gets them whole, as its own call would), not a second call per request."""
    runner = Runner.load(build_positions(tmp_path / "positions.onnx"), threads=1)
    requests = [{"X": np.full((n, 5), n, dtype=np.float32)} for n in (1, 2, 1, 1)]
    calls = counting_calls(runner)
    answers = runner.run_many(requests, [1, 2, 1, 1], max_rows=32)
    assert calls == [5]
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["Y"], request["X"] * 2 + 1)
        np.testing.assert_array_equal(answer["P"], POSITION_TABLE[np.newaxis, :5])


def test_an_output_without_a_batch_dimension_that_reads_the_values_makes_requests_run_alone(
    tmp_path: Path,
) -> None:
    """A sum over the batch differs for every batch: no merged call can answer for each request.
    Learned before the first merge (the layout's probe), so no merged call is ever made."""
    runner = Runner.load(build_positions(tmp_path / "positions.onnx", batch_sum=True), threads=1)
    requests = [{"X": np.full((n, 5), n, dtype=np.float32)} for n in (1, 2, 1)]
    calls = counting_calls(runner)
    answers = runner.run_many(requests, [1, 2, 1], max_rows=32)
    assert calls == [1, 2, 1]
    assert runner.layout.alone
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["S"], request["X"].sum(axis=0, keepdims=True))


def test_value_free_outputs_are_those_reading_input_shapes_and_constants_only(tmp_path: Path) -> None:
    graph = onnx.load(str(build_positions(tmp_path / "positions.onnx", batch_sum=True))).graph
    assert value_free_outputs(graph) == {"P"}


def test_the_shape_of_a_tensor_the_values_decide_is_no_shared_output(tmp_path: Path) -> None:
    """How many of a row's values are under 0.5, through Shape(NonZero(...)): a count without a batch
    dimension that a merged call must not give each request whole (it gave all three the batch's 5)."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["X", "two"], ["Y"]),
            helper.make_node("Less", ["X", "half"], ["low"]),
            helper.make_node("NonZero", ["low"], ["where"]),  # (2, count): the values decide the shape
            helper.make_node("Shape", ["where"], ["dims"]),
            helper.make_node("Slice", ["dims", "one", "two_i"], ["C"]),
        ],
        "count",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "W"])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "W"]),
            helper.make_tensor_value_info("C", TensorProto.INT64, [1]),
        ],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([2], np.int64), "two_i"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "count.onnx")
    assert value_free_outputs(model.graph) == frozenset()
    runner = Runner.load(tmp_path / "count.onnx", threads=1)
    requests = [
        {"X": np.array([row], np.float32)} for row in ([0.1, 0.2, 0.9], [0.9, 0.9, 0.9], [0.0, 0.0, 0.0])
    ]
    for _ in range(2):  # the first merged call learns the layout, the second uses it
        answers = runner.run_batch(requests, [1, 1, 1])
        assert [answer["C"].tolist() for answer in answers] == [[2], [0], [3]]  # type: ignore[index]


def test_a_model_that_fails_on_ones_of_the_same_shapes_too_is_a_logged_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reshaping [N, W] to [1] works for one value only: real requests of 8 fail whatever their
    values. That is no client's fault (a canary so broken must count as failing, though it runs on a
    1x1 input): 500, logged one line per FAILURE_LOG_INTERVAL_S however many requests fail."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "one"], ["Y"])],
        "broken",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "W"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "broken.onnx")
    runner = Runner.load(tmp_path / "broken.onnx", threads=1)
    assert runner.run({"X": x(1, 1)})["Y"].shape == (1,)
    with caplog.at_level(logging.ERROR, logger="quantship.server.runner"):
        for _ in range(3):
            with pytest.raises(InferenceFailed, match=r"onnxruntime failed: .*Reshape"):
                runner.run({"X": x(1, 8)})
    assert len(caplog.records) == 1
    assert "on ones of the same shapes too" in caplog.records[0].getMessage()


def test_a_model_that_cannot_run_an_empty_sequence_refuses_it_as_the_clients_fault(tmp_path: Path) -> None:
    """[N, S] reshaped to [N, S, -1]: for S = 0 the -1 is 0 / 0, and onnxruntime FAILs, on ones of the
    same shape too. An empty sequence is the client's (an empty string tokenized): 400, not a 500 the
    error SLI would count against a canary that behaves as its stable."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "keep"], ["Y"])],
        "sequence",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "S"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "S", 1])],
        [numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "keep")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "sequence.onnx")
    runner = Runner.load(tmp_path / "sequence.onnx", threads=1)
    assert runner.run({"X": x(2, 3)})["Y"].shape == (2, 3, 1)
    with pytest.raises(InvalidInput, match=r"input 'X' of shape \[2, 0\], which holds no values: .*Reshape"):
        runner.run({"X": x(2, 0)})


def test_a_model_failing_on_an_empty_input_beside_one_with_values_is_a_server_error(tmp_path: Path) -> None:
    """A KV cache's first step sends an empty past beside real ids: a canary broken there must still
    count as failing (500), not blame its clients."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["past", "keep"], ["reshaped"]),
            helper.make_node("Identity", ["ids"], ["out"]),
        ],
        "cache",
        [
            helper.make_tensor_value_info("past", TensorProto.FLOAT, ["N", "S"]),
            helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("reshaped", TensorProto.FLOAT, ["N", "S", 1]),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4]),
        ],
        [numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "keep")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cache.onnx")
    runner = Runner.load(tmp_path / "cache.onnx", threads=1)
    with pytest.raises(InferenceFailed, match=r"onnxruntime failed: .*Reshape"):
        runner.run({"past": x(1, 0), "ids": x(1, 4)})


@pytest.mark.parametrize("quantized_table", [False, True])
def test_a_negative_token_id_is_refused_where_onnx_would_read_it_from_the_tables_end(
    tmp_path: Path, quantized_table: bool
) -> None:
    """An embedding gathers rows of a table by id; ONNX's Gather reads -1 as the last row, so a
    tokenizer's -1 (or any id from -rows to -1) answered 200 with the wrong token's embedding (gpt2,
    hunt of 2026-12-06). The table may be stored quantized (DequantizeLinear of an initializer)."""
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["embedded"])]
    initializers = [table]
    if quantized_table:
        codes = numpy_helper.from_array(np.arange(40, dtype=np.uint8).reshape(10, 4), "codes")
        scale, zero = (
            numpy_helper.from_array(np.float32(1.0), "scale"),
            numpy_helper.from_array(np.uint8(0), "zero"),
        )
        nodes = [helper.make_node("DequantizeLinear", ["codes", "scale", "zero"], ["table"]), *nodes]
        initializers = [codes, scale, zero]
    graph = helper.make_graph(
        nodes,
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"])],
        [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["N", "seq", 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "embedding.onnx")
    runner = Runner.load(tmp_path / "embedding.onnx", threads=1)
    ids = np.array([[0, 9, 3]], dtype=np.int64)
    assert runner.signature.validate({"ids": ids}) == 1
    np.testing.assert_array_equal(runner.run({"ids": ids})["embedded"][0, 1], [36, 37, 38, 39])
    with pytest.raises(
        InvalidInput, match=r"input 'ids' holds -1: its values index a table of 10 rows, 0 to 9"
    ):
        runner.signature.validate({"ids": np.array([[0, -1, 3]], dtype=np.int64)})


BERT_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def bert_embeddings(path: Path) -> Signature:
    """Word and segment embeddings gathered by input_ids (10 rows) and token_type_ids (2 rows), and an
    attention mask that indexes no table, as BERT's inputs."""
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["word_vectors"]),
        helper.make_node("Gather", ["segments", "token_type_ids"], ["segment_vectors"]),
        helper.make_node("Add", ["word_vectors", "segment_vectors"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
    ]
    ids = ["N", "seq"]
    graph = helper.make_graph(
        nodes,
        "bert_embeddings",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ids) for name in BERT_INPUTS],
        [
            helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["N", "seq", 4]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ids),
        ],
        [
            numpy_helper.from_array(np.zeros((10, 4), dtype=np.float32), "words"),
            numpy_helper.from_array(np.ones((2, 4), dtype=np.float32), "segments"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return Runner.load(path, threads=1).signature


def bert_request(token_ids: list[int], mask: list[int]) -> dict[str, np.ndarray]:
    rows = (token_ids, [0] * len(token_ids), mask)
    return {name: np.array([row], dtype=np.int64) for name, row in zip(BERT_INPUTS, rows, strict=True)}


def test_segment_ids_of_0s_and_1s_hide_no_negative_token_id(tmp_path: Path) -> None:
    """BERT's token_type_ids index a table too, and hold only 0s for one sentence: read as a padding
    mask they marked every position padding, so all-MiniLM-L6-v2 answered a token id of -3 with 200.
    Only the attention mask, which indexes no table, hides a position."""
    signature = bert_embeddings(tmp_path / "bert.onnx")
    with pytest.raises(InvalidInput, match=r"'input_ids' holds -3: its values index a table of 10 rows"):
        signature.validate(bert_request([1, -3, 2], [1, 1, 1]))
    assert signature.validate(bert_request([1, 2, -3], [1, 1, 0])) == 1  # at padding: the mask hides it


def test_a_token_id_past_the_table_is_refused_before_the_call_even_at_padding(tmp_path: Path) -> None:
    """onnxruntime's Gather refuses it anyway, padding or not, saying the ids must be within
    [-30522,30521] (all-MiniLM-L6-v2), where a negative one is refused: said as for a negative id."""
    signature = bert_embeddings(tmp_path / "bert.onnx")
    for mask in ([1, 1, 1], [1, 1, 0]):
        with pytest.raises(InvalidInput, match=r"^input 'input_ids' holds 10: .* table of 10 rows, 0 to 9$"):
            signature.validate(bert_request([1, 2, 10], mask))
    assert signature.validate(bert_request([1, 2, 9], [1, 1, 1])) == 1


def test_a_token_id_below_minus_the_table_is_refused_before_the_call_even_at_padding(tmp_path: Path) -> None:
    """Gather takes -rows to rows - 1: below that it fails at a masked position too (gpt2-lm, -1000000
    at padding: onnxruntime's 400 named the range [-128,127]). -rows itself, at padding, stays hidden."""
    signature = bert_embeddings(tmp_path / "bert.onnx")
    for mask in ([1, 1, 1], [1, 1, 0]):
        with pytest.raises(InvalidInput, match=r"^input 'input_ids' holds -11: .* table of 10 rows, 0 to 9$"):
            signature.validate(bert_request([1, 2, -11], mask))
    assert signature.validate(bert_request([1, 2, -10], [1, 1, 0])) == 1


def test_a_float_input_cast_to_an_index_is_no_table_index(tmp_path: Path) -> None:
    """A float bucket cast to int64 before a Gather may be negative by design (-0.5 truncates to 0)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["bucket"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["picked"]),
        ],
        "buckets",
        [helper.make_tensor_value_info("bucket", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.zeros((5, 2), dtype=np.float32), "table")],
    )
    assert index_tables(graph) == {}


def test_fallback_ops_report_zero_for_every_quantized_op_type_that_fused(
    good_artifact: artifact.Artifact,
) -> None:
    counts = fallback_ops(good_artifact.model_path)
    assert {"MatMul", "Add"} <= set(counts)
    assert set(counts.values()) == {0}  # U8S8 on x86: onnxruntime fuses every QDQ group


def test_a_batch_merges_by_the_keys_its_caller_made(tiny_model: TinyModel) -> None:
    """The batcher makes each request's `batch_key` to form a batch and hands them to `run_batch`,
    which groups by them rather than making them again: requests it says differ run in calls of their
    own, and each gets its own answer either way."""
    runner = tiny_model()
    requests = [{"X": x(1, 3) + n} for n in range(3)]
    alone = [runner.run_batch([request], [1])[0] for request in requests]
    for keys, made in (([("a",)] * 3, [3]), ([("a",), ("b",), ("a",)], [2, 1])):
        calls: list[int] = []
        answers = runner.run_batch(requests, [1, 1, 1], calls=calls, keys=keys)
        assert calls == made
        for answer, expected in zip(answers, alone, strict=True):
            assert answer["Y"].tolist() == expected["Y"].tolist()  # type: ignore[index]


def test_requests_share_a_batch_key_only_with_the_same_dtypes_and_row_shapes() -> None:
    """Rows may differ; a dtype's kind, size or byte order, a row's shape or an input's name may not."""
    key = batch_key({"X": x(1, 3)})
    assert batch_key({"X": x(5, 3)}) == key
    for other in (x(1, 3, dtype=np.float64), x(1, 3).astype(">f4"), x(1, 4), x(1, 3, 1)):
        assert batch_key({"X": other}) != key
    assert batch_key({"Y": x(1, 3)}) != key
    assert batch_key({"a": x(1, 2), "b": x(1, 3)}) == batch_key({"b": x(2, 3), "a": x(2, 2)})  # in name order
    assert batch_key({"s": np.array([["ab"]])}) != batch_key({"s": np.array([["abc"]])})
