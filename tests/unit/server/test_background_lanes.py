"""Background lanes for sampled SLI work, in virtual time: bounded, batched, never fatal."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from quantship.server.background import NICE, TELL_PRICE_AFTER, CpuBudget, Lane, lower_priority
from quantship.server.errors import InvalidInput
from quantship.server.metrics import ServerMetrics
from quantship.server.starvation import STARVED_WINDOWS, WINDOW_S
from quantship.slo import STARVED_BEHIND_PER_S, DropReason, Metric, SampleKind

pytestmark = pytest.mark.looptime


def _burn(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU: a price the lane measures with the thread's clock."""
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def test_samples_offered_together_are_processed_in_one_hand_off(executor: ThreadPoolExecutor) -> None:
    handed: list[list[int]] = []
    lane: Lane[int] = Lane(
        "test", handed.append, executor=executor, capacity=100, on_drop=lambda reason: None, max_items=4
    )
    lane.start()
    for i in range(6):
        lane.offer(i)
    await lane.idle()
    assert handed == [[0, 1, 2, 3], [4, 5]]
    await lane.close(timeout=1)


async def test_a_full_lane_drops_and_counts_instead_of_growing(executor: ThreadPoolExecutor) -> None:
    dropped: list[str] = []
    release = threading.Event()
    lane: Lane[int] = Lane(
        "test",
        lambda items: release.wait(10),
        executor=executor,
        capacity=2,
        on_drop=dropped.append,
    )
    assert [lane.offer(i) for i in range(4)] == [True, True, False, False]  # the worker has not started
    assert dropped == ["behind", "behind"]
    release.set()
    lane.start()
    await lane.close(timeout=1)


async def test_a_failing_batch_is_counted_logged_once_in_a_while_and_the_lane_goes_on(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    """A session that cannot run on what the model serves fails every hand-off (a canary offers
    every request): each sample lost is counted, the log says so once per FAILURE_LOG_INTERVAL_S
    (a few hand-offs in a row here: one line)."""
    handed: list[list[int]] = []
    dropped: list[str] = []

    def process(items: list[int]) -> None:
        if 0 in items:
            raise InvalidInput("the model refused the input: a broken sample")
        handed.append(items)

    lane: Lane[int] = Lane("shadow", process, executor=executor, capacity=10, on_drop=dropped.append)
    lane.start()
    for _ in range(3):
        lane.offer(0)
        await lane.idle()
    lane.offer(1)
    await lane.idle()
    assert handed == [[1]]
    assert dropped == ["failed"] * 3
    (line,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert line.getMessage().startswith("shadow: 1 sampled requests lost, their processing failed: ")
    assert "a broken sample" in line.getMessage()
    assert not line.exc_info  # the session refused the inputs: no bug of ours to trace
    await lane.close(timeout=1)


async def test_a_lanes_processed_samples_are_counted_by_kind_and_lost_ones_are_not(
    executor: ThreadPoolExecutor,
) -> None:
    """quantship_samples_processed_total counts the sampled requests a lane's hand-offs processed:
    what the sampled SLOs' alerts require a minimum of. Every kind is exported from the start, at 0;
    a hand-off that failed counts as dropped, never as processed."""
    registry = CollectorRegistry()
    labels = {"model": "m", "revision": "r", "track": "canary"}
    metrics = ServerMetrics(registry, labels)

    def processed(kind: SampleKind) -> float | None:
        return registry.get_sample_value(str(Metric.SAMPLES_PROCESSED_TOTAL), {**labels, "kind": kind})

    assert {kind: processed(kind) for kind in SampleKind} == dict.fromkeys(SampleKind, 0.0)

    def process(items: list[int]) -> None:
        if 0 in items:
            raise InvalidInput("the model refused the input")

    lane: Lane[int] = Lane(
        "shadow",
        process,
        executor=executor,
        capacity=10,
        on_drop=lambda reason: metrics.sample_dropped(SampleKind.SHADOW, reason),
        on_processed=lambda count: metrics.samples_done(SampleKind.SHADOW, count),
        max_items=4,
    )
    lane.start()
    for item in (1, 2, 3, 4, 5):  # a full hand-off of four, then one
        lane.offer(item)
    await lane.idle()
    lane.offer(0)
    await lane.idle()
    await lane.close(timeout=1)

    assert processed(SampleKind.SHADOW) == 5
    assert processed(SampleKind.CLIP) == 0
    failed = {**labels, "kind": SampleKind.SHADOW, "reason": DropReason.FAILED}
    assert registry.get_sample_value(str(Metric.SAMPLES_DROPPED_TOTAL), failed) == 1


async def test_closing_processes_what_is_queued_first(executor: ThreadPoolExecutor) -> None:
    handed: list[list[int]] = []
    lane: Lane[int] = Lane("test", handed.append, executor=executor, capacity=10, on_drop=lambda reason: None)
    lane.start()
    lane.offer(7)
    await asyncio.sleep(0)
    await lane.close(timeout=1)
    assert handed == [[7]]


def test_the_cpu_budget_refills_at_its_share_up_to_its_burst() -> None:
    now = [0.0]
    budget = CpuBudget(0.05, burst_s=10, clock=lambda: now[0])
    assert budget.allows()  # starts full: 0.5 s of CPU
    budget.spend(0.6)
    assert not budget.allows()  # 0.1 s overdrawn
    now[0] = 1.9
    assert not budget.allows()  # 1.9 s x 0.05 = 0.095 refilled: still short
    now[0] = 2.1
    assert budget.allows()
    now[0] = 1000.0
    budget.allows()
    budget.spend(0.5)
    assert not budget.allows()  # an idle hour banked no more than the burst


async def test_samples_past_the_cpu_budget_are_dropped_as_budget_and_never_processed(
    executor: ThreadPoolExecutor,
) -> None:
    """The lane charges the budget with the worker thread's CPU time for each hand-off."""
    handed: list[list[int]] = []
    dropped: list[str] = []

    def busy(items: list[int]) -> None:
        handed.append(items)
        _burn(0.02)

    budget = CpuBudget(0.001, burst_s=10)  # 10 ms of CPU to start with, 1 ms more a second
    lane: Lane[int] = Lane(
        "clip", busy, executor=executor, capacity=10, on_drop=dropped.append, budget=budget, max_items=1
    )
    lane.start()
    assert lane.offer(1)
    await lane.idle()
    assert not lane.offer(2) and not lane.offer(3)  # the first hand-off overdrew the bucket
    assert handed == [[1]] and dropped == ["budget", "budget"]
    await lane.close(timeout=1)


def test_a_reservation_is_charged_at_once_and_settled_with_what_the_batch_took() -> None:
    budget = CpuBudget(0.05, burst_s=10, clock=lambda: 0.0)  # 0.5 s, no refill
    budget.reserve(0.3)
    budget.reserve(0.3)
    assert not budget.allows()  # 0.6 s reserved: overdrawn before anything ran
    budget.spend(0.1, reserved=0.6)  # both ran, cheaper than expected
    assert budget.allows()  # 0.4 s left
    budget.spend(0.45)
    assert not budget.allows()


async def test_a_starved_worker_cannot_bank_more_work_than_the_budget(executor: ThreadPoolExecutor) -> None:
    """Offers reserve the last hand-off's cost a sample when queued: while the worker is held up (a
    saturated core), the lane takes what the budget covers and drops the rest, instead of filling
    its queue with work that would all run once the core frees up."""
    handed: list[list[int]] = []
    release = threading.Event()

    def first_busy_then_held(items: list[int]) -> None:
        handed.append(items)
        if len(handed) == 1:
            _burn(0.02)  # the price of a sample
        else:
            release.wait(10)

    dropped: list[str] = []
    budget = CpuBudget(0.01, burst_s=10, clock=lambda: 0.0)  # 100 ms of CPU, no refill
    lane: Lane[int] = Lane(
        "shadow", first_busy_then_held, executor=executor, capacity=50, on_drop=dropped.append,
        budget=budget, max_items=1,
    )  # fmt: skip
    lane.start()
    assert lane.offer(0)
    await lane.idle()  # priced: ~20 ms a sample, ~80 ms of budget left
    accepted = [lane.offer(i) for i in range(1, 11)]
    assert accepted == [True] * 4 + [False] * 6  # 4 x 20 ms reserved; the queue had room for all 10
    assert dropped == ["budget"] * 6
    release.set()
    await lane.close(timeout=5)
    assert sorted(i for items in handed for i in items) == [0, 1, 2, 3, 4]


async def test_a_lane_probes_with_one_sample_and_charges_what_queued_meanwhile_at_its_price(
    executor: ThreadPoolExecutor,
) -> None:
    """Before the lane knows what a sample costs, samples queue unpriced behind a probe of one; once
    it has run they are charged at its price when taken, and what the budget does not cover is
    dropped, instead of all running for nothing while a starved worker catches up."""
    handed: list[list[int]] = []
    probe_may_run = threading.Event()

    def held_then_busy(items: list[int]) -> None:
        handed.append(items)
        if len(handed) == 1:
            probe_may_run.wait(10)
            _burn(0.02)  # the price of a sample

    dropped: list[str] = []
    budget = CpuBudget(0.01, burst_s=10, clock=lambda: 0.0)  # 100 ms of CPU, no refill
    lane: Lane[int] = Lane(
        "clip", held_then_busy, executor=executor, capacity=50, on_drop=dropped.append,
        budget=budget, max_items=16,
    )  # fmt: skip
    lane.start()
    assert lane.offer(0)
    await asyncio.sleep(0)  # the lane hands the probe off at once, without gathering batch-mates
    assert all(lane.offer(i) for i in range(1, 11))  # unpriced: queued, not yet charged
    probe_may_run.set()
    await lane.idle()
    # the probe took ~20 ms of the 100: the next four are charged 20 ms each, the other six dropped
    assert handed == [[0], [1, 2, 3, 4]]
    assert dropped == ["budget"] * 6
    await lane.close(timeout=5)


async def test_while_probing_a_lane_holds_one_hand_off_of_unpriced_samples_at_most(
    executor: ThreadPoolExecutor,
) -> None:
    """A canary offers every request and each sample holds its inputs: behind a slow probe, only
    `max_items` wait unpriced; the rest are dropped as "behind", however large the budget."""
    probe_may_run = threading.Event()
    handed: list[list[int]] = []

    def held(items: list[int]) -> None:
        handed.append(items)
        probe_may_run.wait(10)

    dropped: list[str] = []
    budget = CpuBudget(1.0, burst_s=10, clock=lambda: 0.0)  # 10 s of CPU: not what limits here
    lane: Lane[int] = Lane(
        "shadow", held, executor=executor, capacity=50, on_drop=dropped.append, budget=budget, max_items=4,
    )  # fmt: skip
    lane.start()
    assert lane.offer(0)
    await asyncio.sleep(0)  # the probe is handed off
    accepted = [lane.offer(i) for i in range(1, 11)]
    assert accepted == [True] * 4 + [False] * 6
    assert dropped == ["behind"] * 6
    probe_may_run.set()
    await lane.idle()
    assert lane.offer(11)  # priced now: the queue's capacity applies again
    await lane.close(timeout=5)
    assert sorted(i for items in handed for i in items) == [0, 1, 2, 3, 4, 11]


async def test_a_lane_logs_once_what_its_budget_buys_once_warm(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollout analysis with too few samples says so; the log says why. Priced once the session
    is warm, at the TELL_PRICE_AFTER-th hand-off: the first ones pay for warming it up. A lane
    without a budget says nothing."""
    caplog.set_level(logging.INFO, logger="quantship.server.background")
    handed = 0

    def costly(items: list[int]) -> None:
        nonlocal handed
        handed += 1
        price = 0.05 if handed < TELL_PRICE_AFTER else 0.01 if handed == TELL_PRICE_AFTER else 0.03
        _burn(price * len(items))

    budget = CpuBudget(0.1, burst_s=10, clock=lambda: 0.0)  # 1 s of CPU, no refill
    lane: Lane[int] = Lane(
        "shadow", costly, executor=executor, capacity=50, on_drop=lambda reason: None,
        budget=budget, max_items=16, gather_s=0.0,
    )  # fmt: skip
    unbudgeted: Lane[int] = Lane(
        "capture", lambda items: None, executor=executor, capacity=50, on_drop=lambda reason: None,
        gather_s=0.0,
    )  # fmt: skip
    lane.start()
    unbudgeted.start()
    for turn in range(TELL_PRICE_AFTER + 2):
        assert lane.offer(turn) and unbudgeted.offer(turn)
        await lane.idle()
        await unbudgeted.idle()
    await lane.close(timeout=5)
    await unbudgeted.close(timeout=5)
    told = [r.getMessage() for r in caplog.records if "pays for" in r.getMessage()]
    assert len(told) == 1
    found = re.search(r"^shadow: a sample costs ([\d.]+) ms .* pays for ([\d.]+) samples a minute", told[0])
    assert found is not None
    # The price of one hand-off swings with the machine's load (an EfficientNet-Lite0 clip sample:
    # 40-45 ms in the README, 88.8 logged by a walk on a busy host): the line says which load.
    said = re.search(r"\(hand-off (\d+)'s, at load average ([\d.]+) on (\d+) CPUs", told[0])
    assert said is not None, told[0]
    assert int(said.group(1)) == TELL_PRICE_AFTER and int(said.group(3)) == os.cpu_count()
    assert 10 <= float(found.group(1)) < 30  # the warm price at that hand-off, not before or after
    assert 300 <= float(found.group(2)) <= 600  # 6 s of CPU a minute at 10 ms or a little more


async def test_a_full_hand_off_goes_at_once_without_waiting_out_the_gathering(
    executor: ThreadPoolExecutor,
) -> None:
    """Offers faster than `max_items` per `gather_s` must not fill the queue while the lane waits:
    a burst of inline-served requests (1,300 a second) did, dropping capture picks as "behind"."""
    handed: list[list[int]] = []
    lane: Lane[int] = Lane(
        "capture", handed.append, executor=executor, capacity=8, on_drop=lambda reason: None,
        max_items=4, gather_s=60.0,
    )  # fmt: skip
    lane.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    lane.offer(0)
    await asyncio.sleep(0)  # the lane takes the first and begins to gather
    for i in range(1, 4):
        lane.offer(i)
    await lane.idle()
    assert handed == [[0, 1, 2, 3]]
    assert loop.time() - started < 1.0, "waited out the gathering with a full hand-off queued"
    await lane.close(timeout=1)


async def test_closing_does_not_wait_out_the_gathering(executor: ThreadPoolExecutor) -> None:
    """Shutdown's drain budget is shared: a lane gathering for batch-mates stops at once."""
    handed: list[list[int]] = []
    lane: Lane[int] = Lane(
        "test", handed.append, executor=executor, capacity=10, on_drop=lambda reason: None, gather_s=60.0
    )
    lane.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    lane.offer(7)
    await asyncio.sleep(0)  # the lane takes it and begins to gather
    await lane.close(timeout=120)
    assert handed == [[7]]
    assert loop.time() - started < 1.0, "closing waited out the gathering"


def _nice_of(thread_id: int) -> int:
    # /proc/<pid>/task/<tid>/stat: the 19th field is the nice value (after the parenthesised name)
    fields = Path(f"/proc/self/task/{thread_id}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])


def test_the_background_thread_runs_at_the_lowest_priority_and_no_other_thread_does() -> None:
    with ThreadPoolExecutor(1, initializer=lower_priority) as background, ThreadPoolExecutor(1) as other:
        background_tid = background.submit(threading.get_native_id).result()
        other_tid = other.submit(threading.get_native_id).result()
        assert _nice_of(background_tid) == NICE == 19
        assert _nice_of(other_tid) == _nice_of(threading.get_native_id()) == 0
        assert os.sched_getscheduler(background_tid) == os.SCHED_IDLE  # preempted by any other thread
        assert os.sched_getscheduler(other_tid) == os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.parametrize("probing", [False, True], ids=["queue full", "a probe's worth queued"])
async def test_a_lane_whose_worker_gets_no_cpu_for_minutes_says_so_in_the_log(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture, probing: bool
) -> None:
    """A worker that never runs (as SCHED_IDLE holds it on busy cores) while offers keep coming:
    drops as behind, from a full queue or, while a budgeted lane prices its first sample, past one
    hand-off's worth; a warning once they have lasted STARVED_WINDOWS windows of the loop's clock.
    Then the worker runs and the lane says it is no longer starved, counting what it processed.
    (The worker is held by not starting the lane: a thread held in real time would hold the
    loop's virtual clock to it.)"""
    caplog.set_level(logging.INFO, logger="quantship.server.starvation")
    dropped: list[str] = []
    lane: Lane[int] = Lane(
        "clip", lambda items: None, executor=executor, on_drop=dropped.append, max_items=4,
        capacity=100 if probing else 4, budget=CpuBudget(1.0) if probing else None,
    )  # fmt: skip
    for i in range(4 + 1):  # a hand-off's worth queued; the drop opens the first window, at 0
        lane.offer(i)
    offers_a_window = int(STARVED_BEHIND_PER_S * WINDOW_S) + 20
    for window in range(STARVED_WINDOWS + 1):
        assert not caplog.records
        for i in range(offers_a_window):
            lane.offer(i)
            await asyncio.sleep(WINDOW_S / offers_a_window)
        assert len(dropped) == 1 + (window + 1) * offers_a_window and set(dropped) == {"behind"}
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and warned[0].startswith("clip: the SLI worker is starved of CPU")
    lane.start()
    await lane.idle()  # the 4 queued all along, in the window from 180 s
    for i in range(10):
        lane.offer(i)
        await lane.idle()
    await asyncio.sleep(WINDOW_S)
    lane.offer(0)
    await lane.idle()  # this hand-off, past 240 s, ends that window
    told = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert told == ["clip: the SLI worker is no longer starved: 14 samples processed and 0 dropped "
                    "as behind in the last 60 s"]  # fmt: skip
    await lane.close(timeout=5)
