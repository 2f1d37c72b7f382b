"""Dynamic batching, in virtual time (looptime): real onnxruntime calls in the inference thread take no
loop time, so queue delays are exact."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import EMBEDDING_ROWS, build_embedding

from quantship.server.batcher import (
    LONE_BATCHES,
    PROBE_AFTER_RUNS,
    PROBE_INTERVAL_S,
    SWEEP_INTERVAL_S,
    Batcher,
)
from quantship.server.errors import ClientClosedRequest, InferenceFailed, InvalidInput, NotReady, Overloaded
from quantship.server.runner import Runner
from quantship.server.settings import BatchSettings

TinyModel = Callable[..., Runner]

pytestmark = pytest.mark.looptime


class Recorder:
    """A BatchObserver that keeps what it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.waits: list[float] = []

    def batch_ran(self, rows: int) -> None:
        self.batches.append(rows)

    def waited(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def executor() -> Any:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def rows(n: int, value: float = 0.0, width: int = 3) -> dict[str, np.ndarray]:
    return {"X": np.full((n, width), value, dtype=np.float32)}


def make(runner: Any, executor: Any, *, split_rows: int = 0, **settings: Any) -> tuple[Batcher, Recorder]:
    """A started batcher whose waits are timed in loop time (virtual here: exact)."""
    recorder = Recorder()
    clock = asyncio.get_running_loop().time
    batcher = Batcher(
        runner,
        BatchSettings(**settings),
        executor=executor,
        split_rows=split_rows,
        observer=recorder,
        clock=clock,
    )
    batcher.start()
    return batcher, recorder


async def test_concurrent_requests_share_one_call_and_get_their_own_rows(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, recorder = make(tiny_model(), executor)
    results = await asyncio.gather(*(batcher.submit(rows(i + 1, value=i), i + 1) for i in range(4)))
    assert recorder.batches == [1 + 2 + 3 + 4]
    for i, result in enumerate(results):
        assert result["Y"].shape == (i + 1, 3)
        np.testing.assert_array_equal(result["Y"], np.full((i + 1, 3), i + 1.0))
        assert result["label"].shape == (i + 1,)
    await batcher.close()


async def test_a_batch_stops_at_max_batch_size_rows(tiny_model: TinyModel, executor: Any) -> None:
    batcher, recorder = make(tiny_model(), executor, max_batch_size=4)
    await asyncio.gather(*(batcher.submit(rows(1), 1) for _ in range(10)))
    assert recorder.batches == [4, 4, 2]
    await batcher.close()


async def test_a_request_larger_than_a_batch_runs_alone_unsplit(tiny_model: TinyModel, executor: Any) -> None:
    batcher, recorder = make(tiny_model(), executor, max_batch_size=4)
    _, big = await asyncio.gather(batcher.submit(rows(1), 1), batcher.submit(rows(9), 9))
    assert recorder.batches == [1, 9]
    assert big["Y"].shape == (9, 3)
    await batcher.close()


async def test_the_queue_delay_gathers_requests_arriving_within_it(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, recorder = make(tiny_model(), executor, max_queue_delay_ms=10)

    async def later(delay: float) -> Any:
        await asyncio.sleep(delay)
        return await batcher.submit(rows(1), 1)

    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(later(0), later(0.004), later(0.009), later(0.030))
    assert recorder.batches == [3, 1]
    assert recorder.waits[:3] == pytest.approx([0.010, 0.006, 0.001], abs=1e-6)
    assert loop.time() - start == pytest.approx(0.040, abs=1e-6)  # the late one waited its own 10 ms
    await batcher.close()


async def test_without_a_delay_an_idle_server_answers_at_once(tiny_model: TinyModel, executor: Any) -> None:
    batcher, recorder = make(tiny_model(), executor, max_queue_delay_ms=0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await batcher.submit(rows(1), 1)
    assert loop.time() == start
    assert recorder.waits == [0.0]
    await batcher.close()


async def test_a_full_queue_answers_429_at_once_and_loses_nothing_queued(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher = Batcher(tiny_model(), BatchSettings(max_queue_size=2), executor=executor)
    waiting = [asyncio.create_task(batcher.submit(rows(1, value=v), 1)) for v in (1, 2)]
    await asyncio.sleep(0)  # both are queued; the worker has not started
    with pytest.raises(Overloaded, match="2 requests are already waiting"):
        await batcher.submit(rows(1), 1)
    batcher.start()
    answers = await asyncio.gather(*waiting)
    assert [float(a["Y"][0, 0]) for a in answers] == [2.0, 3.0]
    await batcher.close()


class HungUp:
    """A batcher.Gone whose client has gone once `gone` is set (as connections.ClientGone is)."""

    def __init__(self) -> None:
        self.gone = False

    async def wait(self) -> None:
        await asyncio.Event().wait()  # these tests read `gone` only


async def test_requests_whose_clients_hung_up_while_queued_do_not_run_and_are_answered_499(
    tiny_model: TinyModel, executor: Any
) -> None:
    """Two of a batch's four requests lose their clients while queued: both are answered 499, and the
    call runs the other two's rows only."""
    recorder = Recorder()
    batcher = Batcher(tiny_model(), BatchSettings(max_batch_size=8), executor=executor, observer=recorder)
    clients = [HungUp() for _ in range(4)]
    waiting = [asyncio.create_task(batcher.submit(rows(1, value=v), 1, c)) for v, c in enumerate(clients)]
    await asyncio.sleep(0)  # all four queued; the worker has not started
    clients[0].gone = clients[1].gone = True
    batcher.start()
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(a) for a in answers[:2]] == [ClientClosedRequest] * 2
    assert [float(a["Y"][0, 0]) for a in answers[2:]] == [3.0, 4.0]  # type: ignore[index]
    assert recorder.batches == [2]
    await batcher.close()


async def test_a_request_whose_client_hung_up_takes_no_rows_of_its_batch(
    tiny_model: TinyModel, executor: Any
) -> None:
    """Batches of at most 4 rows; 2, 2 and 2 rows queued, the middle one's client gone: the other two
    share one call, the gone one's rows not counted against the batch's."""
    recorder = Recorder()
    batcher = Batcher(tiny_model(), BatchSettings(max_batch_size=4), executor=executor, observer=recorder)
    hung_up = HungUp()
    waiting = [
        asyncio.create_task(batcher.submit(rows(2, value=v), 2, c))
        for v, c in ((1, None), (2, hung_up), (3, None))
    ]
    await asyncio.sleep(0)  # all three queued; the worker has not started
    hung_up.gone = True
    batcher.start()
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(answers[1], ClientClosedRequest)
    assert recorder.batches == [4], "one call of the two requests still wanted"
    await batcher.close()


async def test_a_full_queue_takes_a_request_in_the_place_of_one_whose_client_hung_up(
    tiny_model: TinyModel, executor: Any
) -> None:
    """The queue of 2 holds a request whose client has gone: a fresh one is taken in its place, not
    refused 429, and the one gone is answered 499 without running."""
    recorder = Recorder()
    settings = BatchSettings(max_batch_size=8, max_queue_size=2)
    batcher = Batcher(tiny_model(), settings, executor=executor, observer=recorder)
    hung_up = HungUp()
    waiting = [
        asyncio.create_task(batcher.submit(rows(1, value=v), 1, c)) for v, c in ((1, hung_up), (2, None))
    ]
    await asyncio.sleep(0)  # both queued; the worker has not started
    hung_up.gone = True
    fresh = asyncio.create_task(batcher.submit(rows(1, value=5), 1))
    await asyncio.sleep(0)  # taken, or refused
    batcher.start()
    answers = await asyncio.gather(*waiting, fresh, return_exceptions=True)
    assert isinstance(answers[0], ClientClosedRequest)
    assert [float(a["Y"][0, 0]) for a in answers[1:]] == [3.0, 6.0]  # type: ignore[index]
    assert recorder.batches == [2]
    await batcher.close()


async def test_a_full_queue_swept_within_the_sweep_interval_refuses_though_a_client_has_gone_since(
    tiny_model: TinyModel, executor: Any
) -> None:
    """The trade SWEEP_INTERVAL_S makes: a refusal sweeps the full queue at most that often, so a client
    that hangs up just after a sweep frees no place for a fresh request until the interval has passed
    (429 meanwhile, a client's retry); then the fresh one takes its place."""
    batcher = Batcher(tiny_model(), BatchSettings(max_queue_size=2), executor=executor)
    hung_up = HungUp()
    waiting = [asyncio.create_task(batcher.submit(rows(1), 1, c)) for c in (hung_up, None)]
    await asyncio.sleep(0)  # both queued; the worker has not started
    with pytest.raises(Overloaded):
        await batcher.submit(rows(1), 1)  # swept: nobody has gone yet
    hung_up.gone = True
    await asyncio.sleep(SWEEP_INTERVAL_S / 2)
    within = asyncio.create_task(batcher.submit(rows(1), 1))
    await asyncio.sleep(0)  # taken, or refused
    assert within.done() and isinstance(within.exception(), Overloaded), "no sweep within the interval"
    await asyncio.sleep(SWEEP_INTERVAL_S / 2)
    fresh = asyncio.create_task(batcher.submit(rows(1, value=5), 1))
    await asyncio.sleep(0)  # taken, in the place of the one whose client has gone
    batcher.start()
    answers = await asyncio.gather(*waiting, fresh, return_exceptions=True)
    assert isinstance(answers[0], ClientClosedRequest) and isinstance(answers[2], dict)
    await batcher.close()


async def test_a_merged_batch_rerun_one_request_at_a_time_counts_each_call_that_ran(
    tmp_path: Path, executor: Any
) -> None:
    """One request of a merged batch holds a token id past the table: onnxruntime refuses the merged
    call, and each request reruns alone. The batch-size histogram counts the calls that ran (the
    refused one too, as a split request's are), not one call of all the rows."""
    runner = Runner.load(build_embedding(tmp_path / "embedding.onnx"), threads=1)
    batcher, recorder = make(runner, executor)
    good = {"ids": np.array([[1, 2]], dtype=np.int64)}
    bad = {"ids": np.array([[3, 4], [5, EMBEDDING_ROWS]], dtype=np.int64)}
    answers = await asyncio.gather(
        batcher.submit(good, 1), batcher.submit(bad, 2), batcher.submit(good, 1), return_exceptions=True
    )
    assert isinstance(answers[1], InvalidInput), answers[1]
    for answer in (answers[0], answers[2]):
        np.testing.assert_array_equal(answer["E"], [[[4, 5, 6, 7], [8, 9, 10, 11]]])  # type: ignore[index]
    assert recorder.batches == [1 + 2 + 1, 1, 2, 1]
    await batcher.close()


async def test_a_model_without_a_batch_dimension_runs_one_request_per_call(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, recorder = make(tiny_model(first_dim=1), executor)
    assert not batcher.batchable
    await asyncio.gather(*(batcher.submit(rows(1), 1) for _ in range(3)))
    assert recorder.batches == [1, 1, 1]
    await batcher.close()


async def test_requests_of_different_inner_shapes_never_share_a_batch(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, recorder = make(tiny_model(width="W"), executor)
    narrow, wide, narrow_again = await asyncio.gather(
        batcher.submit(rows(1, width=3), 1),
        batcher.submit(rows(1, width=5), 1),
        batcher.submit(rows(1, width=3), 1),
    )
    assert recorder.batches == [1, 1, 1]  # the wide one starts the next batch, and cuts it short
    assert (narrow["Y"].shape, wide["Y"].shape, narrow_again["Y"].shape) == ((1, 3), (1, 5), (1, 3))
    await batcher.close()


async def test_input_onnxruntime_refuses_fails_only_its_own_request_as_invalid(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, _ = make(tiny_model(), executor)
    bad = {"X": np.zeros((1, 4), dtype=np.float32)}  # past validation, onnxruntime refuses it
    results = await asyncio.gather(batcher.submit(bad, 1), batcher.submit(rows(1), 1), return_exceptions=True)
    assert isinstance(results[0], InvalidInput)
    assert "the model refused the input: Got invalid dimensions for input: X" in str(results[0])
    assert isinstance(results[1], dict)
    assert (await batcher.submit(rows(1), 1))["Y"].shape == (1, 3)  # and it keeps serving
    await batcher.close()


async def test_closing_finishes_queued_requests_then_refuses_new_ones(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, _ = make(tiny_model(), executor, max_queue_delay_ms=50)
    queued = [asyncio.create_task(batcher.submit(rows(1), 1)) for _ in range(3)]
    await asyncio.sleep(0)
    await batcher.close()
    assert all(task.done() and task.result()["Y"].shape == (1, 3) for task in queued)
    with pytest.raises(NotReady, match="shutting down"):
        await batcher.submit(rows(1), 1)


class FailingObserver(Recorder):
    """An observer that fails once: a bug in metrics code must not kill the batcher's worker."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def batch_ran(self, rows: int) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("observer broke")
        super().batch_ran(rows)


async def test_a_failure_in_the_worker_fails_its_batch_with_500_and_the_worker_goes_on(
    tiny_model: TinyModel, executor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    observer = FailingObserver()
    batcher = Batcher(tiny_model(), BatchSettings(), executor=executor, observer=observer)
    batcher.start()
    with pytest.raises(InferenceFailed, match="observer broke"):
        await batcher.submit(rows(1), 1)
    assert "inference failed on a batch of 1 rows" in caplog.text  # logged with its traceback
    assert caplog.records[-1].exc_info is not None
    assert (await batcher.submit(rows(2), 2))["Y"].shape == (2, 3)  # the same worker answers
    assert observer.batches == [2]
    await batcher.close()


async def test_hurry_runs_waiting_requests_at_once_and_still_takes_new_ones(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, recorder = make(tiny_model(), executor, max_queue_delay_ms=60_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = [asyncio.create_task(batcher.submit(rows(1), 1)) for _ in range(2)]
    await asyncio.sleep(1)  # both wait for batch-mates, 59 s of delay to go
    batcher.hurry()  # shutdown has begun
    assert all(result["Y"].shape == (1, 3) for result in await asyncio.gather(*waiting))
    assert loop.time() - started < 2  # virtual time: the 60 s delay was not served
    assert recorder.batches == [2]
    assert (await batcher.submit(rows(1), 1))["Y"].shape == (1, 3)  # a late request is still answered
    assert loop.time() - started < 2
    await batcher.close()


class ThreadRecorder:
    """A runner that notes which thread each batch ran on."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.signature, self.threads = runner, runner.signature, list[str]()

    def run_batch(self, requests: Any, row_counts: Any, **options: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.runner.run_batch(requests, row_counts, **options)


@pytest.mark.parametrize(("inline_rows", "on_loop"), [(3, True), (2, False), (0, False)])
async def test_batches_up_to_inline_rows_run_on_the_event_loop_thread_and_others_in_the_executor(
    tiny_model: TinyModel, inline_rows: int, on_loop: bool
) -> None:
    runner = ThreadRecorder(tiny_model())
    with ThreadPoolExecutor(1, thread_name_prefix="inference") as pool:
        batcher = Batcher(runner, BatchSettings(), executor=pool, inline_rows=inline_rows)  # type: ignore[arg-type]
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(rows(1, value=i), 1) for i in range(3)))
        await batcher.close()
    assert [result["Y"][0, 0] for result in results] == [1.0, 2.0, 3.0]
    expected = threading.current_thread().name if on_loop else "inference_0"
    assert runner.threads == [expected]  # one call of 3 rows


class TaskRecorder:
    """A runner that notes which task each call ran in: the batcher's worker, or the caller's own."""

    def __init__(self, runner: Runner, fail: Exception | None = None) -> None:
        self.runner, self.signature, self.tasks, self.fail = runner, runner.signature, list[str](), fail

    def run_batch(self, requests: Any, row_counts: Any, **options: Any) -> Any:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop here: the inference thread
            self.tasks.append("executor")
        else:
            self.tasks.append(task.get_name() if task is not None else "?")
        if self.fail is not None:
            raise self.fail
        return self.runner.run_batch(requests, row_counts, **options)


def make_inline(runner: Any, executor: Any, **settings: Any) -> tuple[Batcher, Recorder]:
    recorder = Recorder()
    batcher = Batcher(runner, BatchSettings(**settings), executor=executor, inline_rows=4, observer=recorder)
    batcher.start()
    return batcher, recorder


async def test_one_request_at_a_time_skips_the_queue_after_lone_batches_and_concurrency_stops_it(
    tiny_model: TinyModel, executor: Any
) -> None:
    runner = TaskRecorder(tiny_model())
    batcher, recorder = make_inline(runner, executor)

    async def one(value: float, name: str) -> float:
        answer = await asyncio.create_task(batcher.submit(rows(1, value=value), 1), name=name)
        return float(answer["Y"][0, 0])

    count = LONE_BATCHES + 2
    assert [await one(i, f"alone-{i}") for i in range(count)] == [i + 1 for i in range(count)]
    assert runner.tasks == ["batcher"] * LONE_BATCHES + [f"alone-{count - 2}", f"alone-{count - 1}"]
    assert len(recorder.waits) == len(recorder.batches) == count  # observed all the same

    runner.tasks.clear()
    assert (await batcher.submit(rows(5), 5))["Y"].shape == (5, 3)
    assert runner.tasks == ["executor"]  # more rows than inline_rows: the worker hands it to its thread

    runner.tasks.clear()
    together = await asyncio.gather(*(one(10 + i, f"together-{i}") for i in range(3)))
    assert together == [11.0, 12.0, 13.0]
    assert runner.tasks == ["together-0", "batcher"]  # the first of a turn alone; the others share a batch
    assert recorder.batches[-2:] == [1, 2] and len(recorder.waits) == count + 4

    for i in range(LONE_BATCHES):
        await one(i, "sequential")
    runner.tasks.clear()
    assert await asyncio.gather(one(1, "pair-0"), one(2, "pair-1")) == [2.0, 3.0]
    assert runner.tasks == ["pair-0", "batcher"]  # a batch of one, but it came with another

    runner.tasks.clear()
    await one(20, "after")
    assert runner.tasks == ["batcher"]  # concurrency seen: back through the queue until lone batches return
    await batcher.close()


async def test_a_request_that_skips_the_queue_gets_the_errors_the_worker_would_give(
    tiny_model: TinyModel, executor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runner = TaskRecorder(tiny_model())
    batcher, _ = make_inline(runner, executor)
    for _ in range(LONE_BATCHES):
        await batcher.submit(rows(1), 1)
    bad = {"X": np.zeros((1, 4), dtype=np.float32)}  # past validation, onnxruntime refuses it
    with pytest.raises(InvalidInput, match="the model refused the input"):
        await asyncio.create_task(batcher.submit(bad, 1), name="bad")
    runner.fail = RuntimeError("kernel broke")
    with pytest.raises(InferenceFailed, match="kernel broke"):
        await asyncio.create_task(batcher.submit(rows(1), 1), name="broken")
    assert runner.tasks[-2:] == ["bad", "broken"]  # both ran in the caller's task
    assert "inference failed on a batch of 1 rows" in caplog.text
    assert caplog.records[-1].exc_info is not None
    runner.fail = None
    assert (await batcher.submit(rows(2), 2))["Y"].shape == (2, 3)  # and it keeps serving
    await batcher.close()


async def test_a_request_that_would_skip_the_queue_after_its_client_hung_up_does_not_run_and_is_499(
    tiny_model: TinyModel, executor: Any
) -> None:
    """A request whose client has gone by the time it is submitted (its body decoded slowly in a thread)
    would run alone on the loop for nobody: it is answered 499, as a queued one is, and nothing runs."""
    runner = TaskRecorder(tiny_model())
    batcher, recorder = make_inline(runner, executor)
    for _ in range(LONE_BATCHES):
        await batcher.submit(rows(1), 1)
    runner.tasks.clear()
    hung_up = HungUp()
    hung_up.gone = True
    with pytest.raises(ClientClosedRequest, match="the client disconnected before its request ran"):
        await asyncio.create_task(batcher.submit(rows(1), 1, hung_up), name="gone")
    assert runner.tasks == [] and len(recorder.batches) == len(recorder.waits) == LONE_BATCHES
    await asyncio.create_task(batcher.submit(rows(1), 1, HungUp()), name="present")
    assert runner.tasks == ["present"]  # the next request still runs alone: nothing but the 499 changed
    await batcher.close()


async def test_with_a_queue_delay_no_request_skips_the_queue(tiny_model: TinyModel, executor: Any) -> None:
    runner = TaskRecorder(tiny_model())
    batcher, _ = make_inline(runner, executor, max_queue_delay_ms=1)
    for _ in range(LONE_BATCHES + 2):
        await asyncio.create_task(batcher.submit(rows(1), 1), name="caller")
    assert runner.tasks == ["batcher"] * (LONE_BATCHES + 2)  # a delay asks to wait for batch-mates
    await batcher.close()


async def test_past_inline_rows_only_a_request_that_comes_alone_runs_on_the_loop_up_to_alone_rows(
    tiny_model: TinyModel, executor: Any
) -> None:
    runner = TaskRecorder(tiny_model())
    batcher = Batcher(runner, BatchSettings(), executor=executor, inline_rows=0, alone_rows=3)  # type: ignore[arg-type]
    batcher.start()
    for _ in range(LONE_BATCHES):
        await batcher.submit(rows(2), 2)
    assert runner.tasks == ["executor"] * LONE_BATCHES  # queued batches go by inline_rows: the thread

    runner.tasks.clear()
    await asyncio.create_task(batcher.submit(rows(3), 3), name="alone")
    await asyncio.sleep(0)  # a new turn of the loop
    await asyncio.create_task(batcher.submit(rows(4), 4), name="too-big")
    assert runner.tasks == ["alone", "executor"]
    await batcher.close()


def alone_ready(runner: Any, executor: Any, *, overlap: bool = True) -> Batcher:
    """A batcher whose calls all pass inline_rows (the thread's, or the loop's for a request alone):
    after `lone_batches`, the next request runs alone."""
    settings = BatchSettings()
    batcher = Batcher(runner, settings, executor=executor, inline_rows=0, alone_rows=3, overlap=overlap)
    batcher.start()
    return batcher


async def lone_batches(batcher: Batcher) -> None:
    for _ in range(LONE_BATCHES):
        await batcher.submit(rows(1), 1)


async def alone(batcher: Batcher, requests: int = 1) -> None:
    """Requests one at a time, each in a turn of the loop of its own (a task named "caller")."""
    for _ in range(requests):
        await asyncio.create_task(batcher.submit(rows(1), 1), name="caller")


@pytest.mark.parametrize(
    ("overlap", "probe"), [(True, "executor"), (False, "caller")], ids=["more than one cpu", "one cpu"]
)
async def test_past_inline_rows_a_probe_goes_through_the_queue_once_a_probe_interval_and_runs_have_passed(
    tiny_model: TinyModel, executor: Any, overlap: bool, probe: str
) -> None:
    """Where a call in the thread overlaps the loop's work; with one CPU nothing needs probing. At
    c=1 the probes find nothing and the skipping goes on."""
    runner = TaskRecorder(tiny_model())
    batcher = alone_ready(runner, executor, overlap=overlap)
    await lone_batches(batcher)  # through the thread: the interval and the count start there
    runner.tasks.clear()
    await alone(batcher, 2 * PROBE_AFTER_RUNS)  # high traffic: the interval holds them on the loop
    await asyncio.sleep(PROBE_INTERVAL_S * 0.9)
    await alone(batcher)
    await asyncio.sleep(PROBE_INTERVAL_S * 0.2)
    await alone(batcher)
    assert runner.tasks == ["caller"] * (2 * PROBE_AFTER_RUNS + 1) + [probe]

    runner.tasks.clear()  # low traffic: a probe interval between requests, but probes only so often
    for _ in range(PROBE_AFTER_RUNS + 1):
        await asyncio.sleep(PROBE_INTERVAL_S)
        await alone(batcher)
    assert runner.tasks == ["caller"] * PROBE_AFTER_RUNS + [probe]
    await batcher.close()


class HeldInThread(TaskRecorder):
    """A TaskRecorder whose calls in the inference thread wait for `open`, so that requests can
    arrive while one runs; `running` is set when one has begun."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self.open, self.running = threading.Event(), threading.Event()
        self.open.set()

    def run_batch(self, requests: Any, row_counts: Any, **options: Any) -> Any:
        outcomes = super().run_batch(requests, row_counts, **options)
        if self.tasks[-1] == "executor":
            self.running.set()
            self.open.wait(10)
        return outcomes


@pytest.mark.parametrize(
    ("another_comes", "then_ran_in"),
    [(True, ["executor", "executor"]), (False, ["next"])],
    ids=["a request comes meanwhile", "none comes"],
)
async def test_a_request_that_arrives_while_the_probe_runs_stops_the_skipping(
    tiny_model: TinyModel, executor: Any, another_comes: bool, then_ran_in: list[str]
) -> None:
    """At concurrency 2, a second client's request arrives while a call runs on the loop and is read
    only once it ends: it looks alone, and so would every request after it. The probe's call runs
    in the thread, the loop reads the request that comes meanwhile, and requests go through the
    queue from then on, until lone batches return. With none, the next request runs alone again."""
    runner = HeldInThread(tiny_model())
    batcher = alone_ready(runner, executor)
    await lone_batches(batcher)
    runner.tasks.clear()
    for _ in range(PROBE_AFTER_RUNS):
        await asyncio.create_task(batcher.submit(rows(1), 1), name="alone")
    await asyncio.sleep(PROBE_INTERVAL_S)
    runner.running.clear()
    runner.open.clear()
    probe = asyncio.create_task(batcher.submit(rows(1), 1), name="probe")
    await asyncio.to_thread(runner.running.wait, 10)  # the probe's call has begun in the thread
    meanwhile = [asyncio.create_task(batcher.submit(rows(1), 1), name="second")] if another_comes else []
    await asyncio.sleep(0)  # queued behind the probe
    runner.open.set()
    await asyncio.gather(probe, *meanwhile)
    await asyncio.create_task(batcher.submit(rows(1), 1), name="next")
    assert runner.tasks == ["alone"] * PROBE_AFTER_RUNS + ["executor", *then_ran_in]
    await batcher.close()


@pytest.mark.parametrize(("overlap", "after_ran_in"), [(True, "executor"), (False, "after")])
async def test_batches_of_one_that_left_requests_waiting_are_not_traffic_one_at_a_time(
    tiny_model: TinyModel, executor: Any, overlap: bool, after_ran_in: str
) -> None:
    """With batches capped at one request (a model batching does not pay for), every batch holds one:
    concurrency shows as requests still waiting when a batch ends, and where it costs (`overlap`),
    such batches must not count towards LONE_BATCHES. With one CPU they count, as before."""
    runner = TaskRecorder(tiny_model())
    settings = BatchSettings(max_batch_size=1)
    batcher = Batcher(runner, settings, executor=executor, inline_rows=0, alone_rows=1, overlap=overlap)
    batcher.start()
    pairs = 3
    for _ in range(pairs):
        await asyncio.gather(batcher.submit(rows(1), 1), batcher.submit(rows(1), 1))
    for _ in range(LONE_BATCHES - 2 * pairs):
        await batcher.submit(rows(1), 1)
    runner.tasks.clear()
    await asyncio.create_task(batcher.submit(rows(1), 1), name="after")
    assert runner.tasks == [after_ran_in]  # LONE_BATCHES batches of one; each pair's first left one waiting
    await batcher.close()


@pytest.mark.parametrize("given_up", [[0], [1, 2], [0, 1, 2]], ids=["the first", "later ones", "all"])
async def test_requests_whose_callers_gave_up_while_queued_do_not_run(
    tiny_model: TinyModel, executor: Any, given_up: list[int]
) -> None:
    """A gRPC deadline or cancellation while a request waits for batch-mates: its rows are not run
    (under overload with client timeouts they were most of the work; fresh requests waited behind)."""
    batcher, recorder = make(tiny_model(), executor, max_queue_delay_ms=10.0)
    calls = [asyncio.ensure_future(batcher.submit(rows(i + 1, value=i), i + 1)) for i in range(3)]
    await asyncio.sleep(0.001)  # queued, waiting for batch-mates
    for i in given_up:
        calls[i].cancel()

    answered = [await call for i, call in enumerate(calls) if i not in given_up]

    kept = [i for i in range(3) if i not in given_up]
    assert recorder.batches == ([sum(i + 1 for i in kept)] if kept else [])
    for i, result in zip(kept, answered, strict=True):
        np.testing.assert_array_equal(result["Y"], np.full((i + 1, 3), i + 1.0))
    await batcher.close()


async def test_waits_are_timed_finer_than_a_millisecond(tiny_model: TinyModel, executor: Any) -> None:
    """uvloop's loop.time() counts whole milliseconds: a 0.3 ms wait read 0 or 1 ms, and the
    histogram's sub-millisecond buckets held only zeros. The batcher's own clock is perf_counter."""
    recorder = Recorder()
    settings = BatchSettings(max_queue_delay_ms=0.3)
    batcher = Batcher(tiny_model(), settings, executor=executor, observer=recorder)
    batcher.start()
    started = time.perf_counter()

    await asyncio.gather(*(batcher.submit(rows(1), 1) for _ in range(2)))

    assert 0 < recorder.waits[0] <= time.perf_counter() - started
    assert recorder.waits[0] != round(recorder.waits[0], 3), "not whole milliseconds"
    await batcher.close()


async def test_requests_that_come_while_a_split_request_runs_run_between_its_calls(
    tiny_model: TinyModel, executor: Any
) -> None:
    """A batch of what waits, then a call of the split request, in turn: the small requests are not held
    for all of its calls, and it still answers as one call would."""
    batcher, recorder = make(tiny_model(), executor, max_batch_size=4, split_rows=4)
    answered: list[int] = []

    async def ask(count: int) -> dict[str, np.ndarray]:
        result = await batcher.submit(rows(count, value=count), count)
        answered.append(count)
        return result

    big, *_ = await asyncio.gather(ask(14), ask(1), ask(2), ask(3))

    assert recorder.batches == [4, 1 + 2, 4, 3, 4, 2]
    assert answered == [1, 2, 3, 14]
    np.testing.assert_array_equal(big["Y"], np.full((14, 3), 15.0))
    np.testing.assert_array_equal(big["label"], np.zeros(14))
    await batcher.close()


async def test_a_split_request_whose_caller_gave_up_makes_no_more_calls(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, recorder = make(tiny_model(), executor, max_batch_size=4, split_rows=4)
    big = asyncio.ensure_future(batcher.submit(rows(16), 16))
    await asyncio.sleep(0)  # queued first
    await batcher.submit(rows(1), 1)  # ran after the first call, while the second was handed on
    big.cancel()
    await batcher.submit(rows(1), 1)
    assert recorder.batches == [4, 1, 4, 1], "two of the four calls, then nothing more of it"
    await batcher.close()


async def test_closing_finishes_a_split_request_under_way(tiny_model: TinyModel, executor: Any) -> None:
    batcher, recorder = make(tiny_model(), executor, max_batch_size=4, split_rows=4)
    big = asyncio.ensure_future(batcher.submit(rows(10), 10))
    await asyncio.sleep(0)
    await batcher.close()
    assert big.done() and big.result()["Y"].shape == (10, 3)
    assert recorder.batches == [4, 4, 2]


async def test_a_split_request_onnxruntime_refuses_fails_alone_and_the_worker_goes_on(
    tiny_model: TinyModel, executor: Any
) -> None:
    batcher, _ = make(tiny_model(), executor, max_batch_size=4, split_rows=4)
    bad = {"X": np.zeros((10, 4), dtype=np.float32)}  # past validation, onnxruntime refuses it
    with pytest.raises(InvalidInput, match="the model refused the input"):
        await batcher.submit(bad, 10)
    assert (await batcher.submit(rows(10), 10))["Y"].shape == (10, 3)
    await batcher.close()


async def test_a_failure_in_the_worker_during_a_split_request_fails_it_with_500_and_the_worker_goes_on(
    tiny_model: TinyModel, executor: Any
) -> None:
    observer = FailingObserver()
    batcher = Batcher(
        tiny_model(), BatchSettings(max_batch_size=4), executor=executor, split_rows=4, observer=observer
    )
    batcher.start()
    with pytest.raises(InferenceFailed, match="observer broke"):
        await batcher.submit(rows(10), 10)
    assert (await batcher.submit(rows(10), 10))["Y"].shape == (10, 3)
    assert observer.batches == [4, 4, 2]
    await batcher.close()


async def test_a_split_request_counts_against_the_queue_size_until_answered(
    tiny_model: TinyModel, executor: Any
) -> None:
    """A split request leaves the queue for its calls, but not the bound (ten gRPC requests of 960 rows
    were all taken with a queue of 2, the last answered after 4.4 s): with a queue of 2, one under way
    and one queued, a third is refused 429. A place is free again once a split request's caller gave
    up, and once it is answered."""
    batcher, _ = make(tiny_model(), executor, max_batch_size=4, split_rows=4, max_queue_size=2)
    gate = threading.Event()
    executor.submit(gate.wait, 60)  # the first one's first call waits behind it
    first = asyncio.ensure_future(batcher.submit(rows(12, value=1), 12))
    second = asyncio.ensure_future(batcher.submit(rows(12, value=2), 12))
    await asyncio.sleep(0.001)  # the first taken, its call handed on; the second queued
    try:
        refused = asyncio.ensure_future(batcher.submit(rows(12), 12))
        await asyncio.sleep(0.001)
        assert refused.done(), "taken (the third of a queue of 2)"
        with pytest.raises(Overloaded, match="2 requests are already waiting"):
            refused.result()
        first.cancel()
        third = asyncio.ensure_future(batcher.submit(rows(12, value=3), 12))
        await asyncio.sleep(0.001)
        assert not third.done(), "taken"
    finally:
        gate.set()

    np.testing.assert_array_equal((await second)["Y"], np.full((12, 3), 3.0))
    np.testing.assert_array_equal((await third)["Y"], np.full((12, 3), 4.0))
    assert (await batcher.submit(rows(12), 12))["Y"].shape == (12, 3)
    await batcher.close()
