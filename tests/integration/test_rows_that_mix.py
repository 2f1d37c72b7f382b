"""Dynamic quantization takes one scale over all the rows of a call, so a row's answer depends on the
rows it runs with. The server never merges requests of such a model, and the accuracy gate judges it
row by row, as the server runs every row (in 256-row calls it measured numbers no request would
get). Real onnxruntime sessions on the sample model, quantized dynamically by onnxruntime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import quantize_dynamic, quantize_static

from quantship import agreement, runtime, zoo
from quantship.quantize.data import load_dataset, model_inputs
from quantship.quantize.evaluate import Evaluator, GateRequest, Metric, Task
from quantship.server import batch_policy
from quantship.server.batcher import Batcher
from quantship.server.runner import Runner
from quantship.server.settings import BatchSettings


@pytest.fixture(scope="module")
def dynamic_model(sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dynamic") / "dynamic.onnx"
    quantize_dynamic(sample.model, path)
    return path


@pytest.fixture(scope="module")
def dimmed_rows(sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Evaluation rows, every other one at 5% brightness: batched with bright rows, a dim row gets
    their scale, a coarse one for its values."""
    rows = np.load(sample.evaluation)[zoo.INPUT_NAME].astype(np.float32)
    rows[::2] *= 0.05
    path = tmp_path_factory.mktemp("dimmed") / "dimmed.npz"
    np.savez(path, **{zoo.INPUT_NAME: rows})
    return path


def test_dynamic_quantization_mixes_rows_and_static_does_not(
    sample: zoo.SampleModel, dynamic_model: Path, tmp_path: Path
) -> None:
    class Rows:
        def __init__(self) -> None:
            self.rows = iter([{zoo.INPUT_NAME: np.load(sample.calibration)[zoo.INPUT_NAME][:64]}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    static = tmp_path / "static.onnx"
    quantize_static(sample.model, static, Rows())

    assert runtime.rows_mix(dynamic_model) and not runtime.rows_mix(static)
    assert not runtime.rows_mix(Path(sample.model))


def test_the_server_never_merges_requests_whose_rows_mix(dynamic_model: Path) -> None:
    runner = Runner.load(dynamic_model, threads=1)

    policy = batch_policy.choose(runner, 32)

    assert (policy.max_batch_size, policy.split_rows, policy.reason) == (1, 1, batch_policy.ROWS_MIX)
    assert set(policy.seconds_per_row) == {1}, "one row timed: where it runs (loop or thread)"


def test_a_sequence_model_whose_rows_mix_is_never_merged_either(tmp_path: Path) -> None:
    """An open dimension besides the batch (a token or time axis, as an exported transformer or RNN
    has) leaves the batch size unmeasured; that must not let a dynamically quantized model's
    requests share a call (hunt-R: up to 0.11 apart in a BERT's logits, answered alone or merged)."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "steps", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "steps", 4])],
        [weight],
    )
    fp32, dynamic = tmp_path / "fp32.onnx", tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    quantize_dynamic(fp32, dynamic)
    runner = Runner.load(dynamic, threads=1)

    policy = batch_policy.choose(runner, 32)

    assert (policy.max_batch_size, policy.split_rows, policy.reason) == (1, 1, batch_policy.ROWS_MIX)
    # static: merged, where batching pays (given costs: timed ones beside a busy neighbour may not)
    cheaper_by_the_row = lambda runner, rows: 1e-6 / rows  # noqa: E731
    assert batch_policy.choose(Runner.load(fp32, threads=1), 32, cheaper_by_the_row).max_batch_size == 32


def test_the_gate_judges_rows_that_mix_one_at_a_time(
    sample: zoo.SampleModel, dynamic_model: Path, dimmed_rows: Path
) -> None:
    fp32 = onnxruntime.InferenceSession(sample.model)
    int8 = onnxruntime.InferenceSession(str(dynamic_model))
    rows = np.load(dimmed_rows)[zoo.INPUT_NAME]
    reference = fp32.run(["probabilities"], {zoo.INPUT_NAME: rows})[0]
    alone = np.concatenate([int8.run(["probabilities"], {zoo.INPUT_NAME: row[None]})[0] for row in rows])
    batched = int8.run(["probabilities"], {zoo.INPUT_NAME: rows})[0]
    dataset = load_dataset(dimmed_rows, model_inputs(onnx.load(sample.model)), role="evaluation")
    evaluator = Evaluator(Path(sample.model), dataset, "probabilities", GateRequest(task=Task.EMBEDDING))

    judged = evaluator.evaluate(dynamic_model).values[Metric.COSINE_MEAN.value]

    assert judged == pytest.approx(float(np.mean(agreement.cosine(alone, reference))), abs=1e-9)
    assert judged != pytest.approx(float(np.mean(agreement.cosine(batched, reference))), abs=1e-6)


def test_a_background_session_whose_rows_mix_runs_each_row_alone(
    dynamic_model: Path, dimmed_rows: Path
) -> None:
    """A background session (the clip observer) runs sampled requests together, in calls of up to
    `max_rows` rows (`run_many`); a model whose rows mix must run each row alone, as the served model
    and the gate ran them."""
    runner = Runner.load(dynamic_model, threads=1)
    rows = np.load(dimmed_rows)[zoo.INPUT_NAME]
    requests = [{zoo.INPUT_NAME: rows[:6]}, {zoo.INPUT_NAME: rows[6:8]}, {zoo.INPUT_NAME: rows[8:9]}]
    calls: list[int] = []

    many = runner.run_batch(requests, [6, 2, 1], split_rows=4, calls=calls)
    by_many = runner.run_many(requests, [6, 2, 1], max_rows=4)

    assert runner.rows_mix and calls == [1] * 9
    for request, answer, again in zip(requests, many, by_many, strict=True):
        assert isinstance(answer, dict)
        alone = [runner.run({zoo.INPUT_NAME: row[None]}) for row in request[zoo.INPUT_NAME]]
        for name, value in answer.items():
            expected = np.concatenate([part[name] for part in alone])
            np.testing.assert_array_equal(value, expected)
            np.testing.assert_array_equal(again[name], expected)
    whole = runner.run(requests[0])
    assert any(not np.array_equal(whole[name], by_many[0][name]) for name in whole), "the rows do mix"


class CountedHandOffs(ThreadPoolExecutor):
    """The inference thread, counting the calls handed to it (each a queue, two wake-ups and the
    event loop's self-pipe)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.hand_offs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.hand_offs += 1
        return super().submit(fn, *args, **kwargs)


class CallSizes:
    """A BatchObserver keeping the rows of each call (what quantship_batch_size records)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def batch_ran(self, rows: int) -> None:
        self.calls.append(rows)

    def waited(self, seconds: float) -> None:
        pass


async def test_a_large_request_whose_rows_mix_runs_a_row_a_call_but_not_a_hand_off_a_row(
    dynamic_model: Path, dimmed_rows: Path
) -> None:
    """Served, a request of many rows runs each alone, as the gate judged them, in turns of about a
    split call's time, not a hand-off to the inference thread a row: a 4000-row digits request took
    0.28-0.54 s through the batcher a row a hand-off, against 0.09 s of its one-row calls alone."""
    runner = Runner.load(dynamic_model, threads=1)
    policy = batch_policy.choose(runner, 32)
    request = np.resize(np.load(dimmed_rows)[zoo.INPUT_NAME], (400, 64))
    executor, sizes = CountedHandOffs(), CallSizes()
    batcher = Batcher(
        runner, BatchSettings(), executor=executor, inline_rows=policy.inline_rows,
        alone_rows=policy.alone_rows, overlap=policy.overlap, split_rows=policy.split_rows, observer=sizes,
    )  # fmt: skip
    batcher.start()
    try:
        answer, one_row = await asyncio.gather(
            batcher.submit({zoo.INPUT_NAME: request}, 400), batcher.submit({zoo.INPUT_NAME: request[:1]}, 1)
        )
    finally:
        await batcher.close()
        executor.shutdown()

    assert policy.split_rows == 1 and sizes.calls == [1] * 401, "every row alone, the one-row request's too"
    for name, value in answer.items():
        alone = np.concatenate([runner.run({zoo.INPUT_NAME: row[None]})[name] for row in request])
        np.testing.assert_array_equal(value, alone)
        np.testing.assert_array_equal(one_row[name], alone[:1])
    assert executor.hand_offs < 400 / 10, f"{executor.hand_offs} hand-offs to the inference thread"
