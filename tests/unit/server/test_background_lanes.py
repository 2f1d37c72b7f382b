"""Background lanes for sampled SLI work, in virtual time: bounded, batched, never fatal."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from quantship.server.background import Lane

pytestmark = pytest.mark.looptime


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def test_samples_offered_together_are_processed_in_one_hand_off(executor: ThreadPoolExecutor) -> None:
    handed: list[list[int]] = []
    lane: Lane[int] = Lane(
        "test", handed.append, executor=executor, capacity=100, on_drop=lambda: None, max_items=4
    )
    lane.start()
    for i in range(6):
        lane.offer(i)
    await lane.idle()
    assert handed == [[0, 1, 2, 3], [4, 5]]
    await lane.close(timeout=1)


async def test_a_full_lane_drops_and_counts_instead_of_growing(executor: ThreadPoolExecutor) -> None:
    dropped: list[int] = []
    release = threading.Event()
    lane: Lane[int] = Lane(
        "test",
        lambda items: release.wait(10),
        executor=executor,
        capacity=2,
        on_drop=lambda: dropped.append(1),
    )
    assert [lane.offer(i) for i in range(4)] == [True, True, False, False]  # the worker has not started
    assert len(dropped) == 2
    release.set()
    lane.start()
    await lane.close(timeout=1)


async def test_a_failing_batch_is_logged_and_the_lane_goes_on(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    handed: list[list[int]] = []

    def process(items: list[int]) -> None:
        if 0 in items:
            raise ValueError("a broken sample")
        handed.append(items)

    lane: Lane[int] = Lane("shadow", process, executor=executor, capacity=10, on_drop=lambda: None)
    lane.start()
    lane.offer(0)
    await lane.idle()
    lane.offer(1)
    await lane.idle()
    assert handed == [[1]]
    assert "shadow: processing 1 sampled requests failed" in caplog.text
    await lane.close(timeout=1)


async def test_closing_processes_what_is_queued_first(executor: ThreadPoolExecutor) -> None:
    handed: list[list[int]] = []
    lane: Lane[int] = Lane("test", handed.append, executor=executor, capacity=10, on_drop=lambda: None)
    lane.start()
    lane.offer(7)
    await asyncio.sleep(0)
    await lane.close(timeout=1)
    assert handed == [[7]]
