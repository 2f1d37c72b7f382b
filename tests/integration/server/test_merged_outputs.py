"""Requests merged into one onnxruntime call get exactly what the model gives each of them alone, also
where an output's first dimension is not the batch: a NonZero's positions (K rows, decided by the
values) or a constant list of class ids ([3]). Which outputs carry the batch is decided before any
merge (the declared shapes, then probe calls), never from one call's sizes: a 1-row and a 2-row
request make a 3-row call, and K or the class count can be 3 too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as http
import tritonclient.http.aio as http_aio
from onnx import TensorProto, helper, numpy_helper
from server_harness import MODEL, LocalServer, fp32_artifact, settings_for

from quantship.local.prometheus import free_port
from quantship.server import batch_policy
from quantship.server.errors import InferenceFailed
from quantship.server.runner import Runner
from quantship.server.runner_layout import BatchLayout
from quantship.server.settings import BatchSettings
from quantship.slo import Metric

CLASSES = np.array([7, 8, 9], dtype=np.int64)


def save(path: Path, nodes: list[onnx.NodeProto], outputs: dict[str, tuple[int, list[Any]]]) -> Path:
    """A graph of `nodes` on x [N, 4] FP32, with `outputs` {name: (element type, declared shape)}."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), *nodes],
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(name, kind, shape) for name, (kind, shape) in outputs.items()],
        [
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "first"),
            numpy_helper.from_array(np.array([1], np.int64), "second"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_positives(path: Path, *, column_only: bool = False) -> Path:
    """y = Relu(x), and `where` [K, 2]: the (row, column) of each positive value of x, as an NMS's
    selected indices. `column_only`: of each non-negative value of x's first column, as (row, 0)."""
    tested = "x"
    nodes = []
    if column_only:
        nodes.append(helper.make_node("Slice", ["x", "first", "second", "second"], ["column"]))
        tested = "column"
    compare = "GreaterOrEqual" if column_only else "Greater"
    nodes += [
        helper.make_node(compare, [tested, "zero"], ["picked"]),
        helper.make_node("NonZero", ["picked"], ["nonzero"]),
        helper.make_node("Transpose", ["nonzero"], ["where"], perm=[1, 0]),
    ]
    outputs = {"y": (TensorProto.FLOAT, ["N", 4]), "where": (TensorProto.INT64, ["K", 2])}
    return save(path, nodes, outputs)


def build_classes(path: Path) -> Path:
    """y = Relu(x), and `classes` = CLASSES, the same whatever the input (declared [3])."""
    constant = helper.make_node("Constant", [], ["classes"], value=numpy_helper.from_array(CLASSES))
    return save(path, [constant], {"y": (TensorProto.FLOAT, ["N", 4]), "classes": (TensorProto.INT64, [3])})


def positive_at(rows: int, column: int) -> np.ndarray:
    """`rows` rows of -1 but for a 1 in `column`: one positive value a row."""
    x = np.full((rows, 4), -1.0, np.float32)
    x[:, column] = 1.0
    return x


def counting_calls(runner: Runner) -> list[int]:
    """The rows of each call `runner.run` makes from now on."""
    calls: list[int] = []
    run = runner.run
    runner.run = lambda inputs: calls.append(len(inputs["x"])) or run(inputs)  # type: ignore[method-assign]
    return calls


def assert_as_alone(runner: Runner, requests: list[dict[str, np.ndarray]], outcomes: list[Any]) -> None:
    for request, outcome in zip(requests, outcomes, strict=True):
        alone = runner.session.run(None, request)
        assert set(outcome) == {"y", "where"}
        np.testing.assert_array_equal(outcome["y"], alone[0])
        np.testing.assert_array_equal(outcome["where"], alone[1])


def test_positions_whose_count_equals_the_merged_rows_are_not_cut_as_rows(tmp_path: Path) -> None:
    """K = 3 = the rows of a 1-row and a 2-row request: cut as rows, the 1-row request got the 2-row
    request's first position, [[0, 1]] for [[0, 3]]. `where` cannot be merged: each runs alone."""
    runner = Runner.load(build_positives(tmp_path / "positives.onnx"), threads=1)
    requests = [{"x": positive_at(1, 3)}, {"x": positive_at(2, 1)}]
    calls = counting_calls(runner)

    outcomes = runner.run_batch(requests, [1, 2])

    assert_as_alone(runner, requests, outcomes)
    assert outcomes[0]["where"].tolist() == [[0, 3]]  # type: ignore[index]
    assert calls == [1, 2]
    assert runner.layout == BatchLayout(frozenset({"y"}), frozenset(), alone=True)


def test_a_count_equal_to_the_rows_on_ones_and_zeros_is_caught_by_the_scattered_probe(tmp_path: Path) -> None:
    """x[:, 0] >= 0 holds for every row of ones and of zeros, so there K is the rows at every probe
    size; the probe's third fill (values of both signs) tells the count from the batch."""
    runner = Runner.load(build_positives(tmp_path / "column.onnx", column_only=True), threads=1)
    requests = [{"x": np.ones((1, 4), np.float32)}, {"x": np.zeros((2, 4), np.float32)}]

    outcomes = runner.run_batch(requests, [1, 2])

    assert_as_alone(runner, requests, outcomes)
    assert runner.layout.alone


def build_graph(
    path: Path, nodes: list[onnx.NodeProto], x: Any, outputs: list[Any], constants: dict[str, Any]
) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [x],
        outputs,
        [numpy_helper.from_array(np.array(v), k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_count_of_a_model_that_refuses_zeros_is_judged_on_two_fills_not_on_ones_alone(
    tmp_path: Path,
) -> None:
    """q = 100 / x (an integer Div: onnxruntime refuses a 0) and `where`, the rows whose q > 0. On
    ones K is the rows; the scattered fill has no zero, so the model runs on it and K differs."""
    nodes = [
        helper.make_node("Div", ["hundred", "x"], ["q"]),
        helper.make_node("Greater", ["q", "zero"], ["picked"]),
        helper.make_node("NonZero", ["picked"], ["nonzero"]),
        helper.make_node("Transpose", ["nonzero"], ["where"], perm=[1, 0]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1])
    outputs = [
        helper.make_tensor_value_info("q", TensorProto.INT64, ["N", 1]),
        helper.make_tensor_value_info("where", TensorProto.INT64, ["K", 2]),
    ]
    path = build_graph(
        tmp_path / "div.onnx", nodes, x, outputs, {"hundred": np.int64(100), "zero": np.int64(0)}
    )
    runner = Runner.load(path, threads=1)
    requests = [{"x": np.array([[5]], np.int64)}, {"x": np.array([[7]], np.int64)}]

    outcomes = runner.run_batch(requests, [1, 1])

    for request, outcome in zip(requests, outcomes, strict=True):  # each request's only row is its row 0
        assert outcome["where"].tolist() == runner.session.run(None, request)[1].tolist() == [[0, 0]]  # type: ignore[index]
    assert runner.layout.alone


def test_a_model_the_filled_probe_cannot_run_is_decided_by_its_first_merged_call(tmp_path: Path) -> None:
    """y = x reshaped to [rows, 2, S/2], declared under other names than the input's (as exporters
    name them): probes of width 1 fail, so the load leaves it undecided (batched as configured, not
    refused), and the first merged call probes at its requests' width and cuts y as rows."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "S"])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["Reshapey_dim_0", 2, "Reshapey_dim_2"])]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    path = build_graph(
        tmp_path / "reshape.onnx", nodes, x, outputs, {"shape": np.array([0, 2, -1], np.int64)}
    )
    runner = Runner.load(path, threads=1)
    cheaper_by_the_row = lambda runner, rows: 1e-6 / rows  # noqa: E731  (timed, a busy host may not batch)
    assert runner.layout.undecided and batch_policy.choose(runner, 8, cheaper_by_the_row).max_batch_size == 8
    requests = [{"x": np.arange(4 * n, dtype=np.float32).reshape(n, 4)} for n in (1, 2)]
    calls = counting_calls(runner)

    outcomes = runner.run_batch(requests, [1, 2])

    assert calls == [3]
    assert runner.layout == BatchLayout(frozenset({"y"}), frozenset(), alone=False)
    for request, outcome in zip(requests, outcomes, strict=True):
        np.testing.assert_array_equal(outcome["y"], request["x"].reshape(len(request["x"]), 2, 2))  # type: ignore[index]


def test_a_first_group_the_model_refuses_leaves_the_layout_for_the_next_group(tmp_path: Path) -> None:
    """The reshape model again: a first merged group of width 3 (which it refuses) decided 'alone'
    for good, and valid width-4 requests never merged again."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "S"])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["Reshapey_dim_0", 2, "Reshapey_dim_2"])]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    path = build_graph(
        tmp_path / "reshape.onnx", nodes, x, outputs, {"shape": np.array([0, 2, -1], np.int64)}
    )
    runner = Runner.load(path, threads=1)
    with pytest.raises(InferenceFailed):
        runner.run_batch([{"x": np.zeros((1, 3), np.float32)} for _ in range(2)], [1, 1])
    assert runner.layout.undecided
    calls = counting_calls(runner)

    runner.run_batch([{"x": np.ones((n, 4), np.float32)} for n in (1, 2)], [1, 2])

    assert calls == [3] and not runner.layout.undecided


def test_shapes_probed_in_vain_are_not_probed_again(tmp_path: Path) -> None:
    """y = table[x + 1] with a table of two: only zeros are a valid id, so one fill runs at any
    shapes and the layout stays undecided; each merged group paid the probe's calls again."""
    nodes = [
        helper.make_node("Add", ["x", "one"], ["ids"]),
        helper.make_node("Gather", ["table", "ids"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 1])]
    constants = {"one": np.int64(1), "table": np.array([10.0, 20.0], np.float32)}
    runner = Runner.load(build_graph(tmp_path / "ids.onnx", nodes, x, outputs, constants), threads=1)
    requests = [{"x": np.zeros((n, 1), np.int64)} for n in (1, 2)]
    calls: list[int] = []
    call = runner._call
    runner._call = lambda inputs: calls.append(len(inputs["x"])) or call(inputs)  # type: ignore[method-assign]

    runner.run_batch(requests, [1, 2])
    first = len(calls)
    outcomes = runner.run_batch(requests, [1, 2])

    assert calls[first:] == [1, 2], "the second group ran alone, with no probe"
    for request, outcome in zip(requests, outcomes, strict=True):
        np.testing.assert_array_equal(outcome["y"], np.full((len(request["x"]), 1), 20.0))  # type: ignore[index]


def test_a_model_parsing_numbers_from_strings_is_probed_on_numbers_and_merges(tmp_path: Path) -> None:
    """y = float(x) declared [M, 1]: it refuses "" and refused the words of the scattered fill, so it
    ran on one fill and never merged; numbers as strings give it two."""
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes,
        "parse",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "parse.onnx")
    runner = Runner.load(tmp_path / "parse.onnx", threads=1)
    assert runner.layout == BatchLayout(frozenset({"y"}), frozenset(), alone=False)


def test_a_string_models_count_is_not_judged_on_one_fill_repeated(tmp_path: Path) -> None:
    """x == "" counted by NonZero: every fill of a BYTES input was "", so three identical runs passed
    for three fills and `where` was cut as rows (the 1-row request got the 2-row one's positions)."""
    nodes = [
        helper.make_node("Equal", ["x", "empty"], ["picked"]),
        helper.make_node("NonZero", ["picked"], ["nonzero"]),
        helper.make_node("Transpose", ["nonzero"], ["where"], perm=[1, 0]),
    ]
    graph = helper.make_graph(
        nodes,
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, ["K", 2])],
        [helper.make_tensor("empty", TensorProto.STRING, [], [b""])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "strings.onnx")
    runner = Runner.load(tmp_path / "strings.onnx", threads=1)
    requests = [{"x": np.array([[""]], dtype=object)}, {"x": np.array([[""], [""]], dtype=object)}]

    outcomes = runner.run_batch(requests, [1, 2])

    for request, outcome in zip(requests, outcomes, strict=True):
        assert outcome["where"].tolist() == runner.session.run(None, request)[0].tolist()  # type: ignore[index]
    assert runner.layout.alone


def test_an_output_the_model_does_not_declare_batched_is_learned_by_the_probe(tmp_path: Path) -> None:
    """y declared [M, 4], a name other than the input's N: the probe finds it leading with the rows at
    every size and fill, so the requests share one call."""
    runner = Runner.load(save(tmp_path / "renamed.onnx", [], {"y": (TensorProto.FLOAT, ["M", 4])}), threads=1)
    requests = [{"x": np.full((n, 4), float(n), np.float32)} for n in (1, 2)]
    calls = counting_calls(runner)

    outcomes = runner.run_batch(requests, [1, 2])

    assert calls == [3]
    assert runner.layout == BatchLayout(frozenset({"y"}), frozenset(), alone=False)
    for request, outcome in zip(requests, outcomes, strict=True):
        np.testing.assert_array_equal(outcome["y"], request["x"])  # type: ignore[index]


def test_a_constant_output_is_given_whole_to_each_request_of_one_merged_call(tmp_path: Path) -> None:
    """classes [7, 8, 9] came back as [9] and [7, 8]: cut as if its 3 were the call's 3 rows."""
    runner = Runner.load(build_classes(tmp_path / "classes.onnx"), threads=1)
    requests = [{"x": np.full((n, 4), float(n), np.float32)} for n in (1, 2)]
    calls = counting_calls(runner)

    outcomes = runner.run_batch(requests, [1, 2])

    assert calls == [3]
    for request, outcome in zip(requests, outcomes, strict=True):
        np.testing.assert_array_equal(outcome["classes"], CLASSES)  # type: ignore[index]
        np.testing.assert_array_equal(outcome["y"], request["x"])  # type: ignore[index]


def test_a_model_whose_outputs_declare_the_batch_learns_its_layout_without_a_call(tmp_path: Path) -> None:
    """The ordinary model pays nothing: the declared shapes decide."""
    path = save(tmp_path / "plain.onnx", [], {"y": (TensorProto.FLOAT, ["N", 4])})
    runner = Runner.load(path, threads=1)
    runner._call = lambda inputs: pytest.fail("the layout of a declared model needs no call")  # type: ignore[method-assign]
    assert runner.layout == BatchLayout(frozenset({"y"}), frozenset(), alone=False)


def test_the_batch_policy_does_not_batch_a_model_whose_outputs_cannot_be_split(tmp_path: Path) -> None:
    runner = Runner.load(build_positives(tmp_path / "positives.onnx"), threads=1)
    policy = batch_policy.choose(runner, 32)
    assert (policy.max_batch_size, policy.reason) == (1, batch_policy.UNSPLIT)
    assert set(policy.seconds_per_row) == {1}  # still timed for running on the event loop


def serve(model: Path, out: Path) -> LocalServer:
    """`model` served with a 50 ms queue delay, so that requests sent together share a call."""
    settings = settings_for(
        fp32_artifact(model, out),
        out.name,
        grpc_port=free_port(),
        batching=BatchSettings(max_queue_delay_ms=50),
    )
    return LocalServer(settings).start()


@pytest.fixture(scope="module")
def classes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    out = tmp_path_factory.mktemp("classes")
    server = serve(build_classes(out / "classes.onnx"), out / "artifact")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def positives_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    out = tmp_path_factory.mktemp("positives")
    server = serve(build_positives(out / "positives.onnx"), out / "artifact")
    yield server
    server.stop()


async def infer_together(server: LocalServer, transport: str, inputs: list[np.ndarray]) -> list[Any]:
    """Each of `inputs` as one request, all sent at once, by the real tritonclient (asyncio)."""
    if transport == "http":
        client: Any = http_aio.InferenceServerClient(server.address, conn_limit=len(inputs))
        tensor: Any = http.InferInput
    else:
        client = grpc_aio.InferenceServerClient(f"127.0.0.1:{server.settings.grpc_port}")
        tensor = grpc_aio.InferInput

    async def infer(x: np.ndarray) -> Any:
        made = tensor("x", list(x.shape), "FP32")
        made.set_data_from_numpy(x)
        return await client.infer(MODEL, [made])

    try:
        return list(await asyncio.gather(*(infer(x) for x in inputs)))
    finally:
        await client.close()


def batches(server: LocalServer) -> tuple[float, float]:
    """(calls, rows) the served model has run so far."""
    return server.metric(f"{Metric.BATCH_SIZE}_count"), server.metric(f"{Metric.BATCH_SIZE}_sum")


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_a_served_constant_output_comes_whole_to_each_request_of_a_merged_call(
    classes_server: LocalServer, transport: str
) -> None:
    calls, rows = batches(classes_server)
    results = await infer_together(
        classes_server, transport, [np.full((n, 4), n, np.float32) for n in (1, 2)]
    )
    assert [result.as_numpy("classes").tolist() for result in results] == [CLASSES.tolist()] * 2
    assert [result.as_numpy("y").tolist() for result in results] == [[[1.0] * 4], [[2.0] * 4] * 2]
    assert batches(classes_server) == (calls + 1, rows + 3)  # one merged call of both


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_served_positions_are_what_onnxruntime_gives_each_request_alone(
    positives_server: LocalServer, transport: str
) -> None:
    inputs = [positive_at(1, 3), positive_at(2, 1)]
    results = await infer_together(positives_server, transport, inputs)
    assert [result.as_numpy("where").tolist() for result in results] == [[[0, 3]], [[0, 1], [1, 1]]]
    batching = positives_server.service.ready_model().opened.batching
    assert (batching.max_batch_size, batching.reason) == (1, batch_policy.UNSPLIT)
