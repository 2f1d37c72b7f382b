"""ByteBudget: at most its bytes held at once, in turn, a piece past the whole budget alone."""

from __future__ import annotations

import asyncio

import pytest

from quantship.server.byte_budget import ByteBudget


async def _holder(budget: ByteBudget, size: int, release: asyncio.Event, order: list[int]) -> None:
    async with budget.hold(size):
        order.append(size)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):  # let every task that can run take its step
        await asyncio.sleep(0)


async def test_pieces_share_the_budget_and_the_rest_wait_in_turn() -> None:
    budget, order = ByteBudget(100), []
    releases = [asyncio.Event() for _ in range(4)]
    tasks = [
        asyncio.create_task(_holder(budget, size, release, order))
        for size, release in zip((60, 30, 50, 10), releases, strict=True)
    ]
    await _settle()
    assert order == [60, 30] and budget.in_flight == 90 and budget.waiting == 2
    # 10 would fit, but 50 came first: it waits with it rather than starve behind small pieces
    releases[1].set()
    await _settle()
    assert order == [60, 30] and budget.in_flight == 60
    releases[0].set()
    await _settle()
    assert order == [60, 30, 50, 10] and budget.in_flight == 60 and budget.waiting == 0
    releases[2].set(), releases[3].set()
    await asyncio.gather(*tasks)
    assert budget.in_flight == 0


async def test_a_piece_larger_than_the_budget_runs_alone() -> None:
    budget, order = ByteBudget(100), []
    small, large, after = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(_holder(budget, 10, small, order))]
    await _settle()
    tasks.append(asyncio.create_task(_holder(budget, 500, large, order)))
    await _settle()
    assert order == [10] and budget.waiting == 1  # waits for the budget to be empty
    small.set()
    await _settle()
    assert order == [10, 500] and budget.in_flight == 500
    tasks.append(asyncio.create_task(_holder(budget, 1, after, order)))
    await _settle()
    assert order == [10, 500] and budget.waiting == 1  # nothing beside it
    large.set(), after.set()
    await asyncio.gather(*tasks)
    assert order == [10, 500, 1] and budget.in_flight == 0


async def test_a_cancelled_waiter_leaves_its_place_to_those_behind_it() -> None:
    budget, order = ByteBudget(100), []
    first, never, last = asyncio.Event(), asyncio.Event(), asyncio.Event()
    held = asyncio.create_task(_holder(budget, 90, first, order))
    await _settle()
    blocked = asyncio.create_task(_holder(budget, 80, never, order))
    behind = asyncio.create_task(_holder(budget, 10, last, order))
    await _settle()
    assert budget.waiting == 2
    blocked.cancel()
    await _settle()
    assert order == [90, 10] and budget.waiting == 0 and budget.in_flight == 100
    with pytest.raises(asyncio.CancelledError):
        await blocked
    first.set(), last.set()
    await asyncio.gather(held, behind)
    assert budget.in_flight == 0


def test_a_budget_holds_at_least_a_byte() -> None:
    with pytest.raises(ValueError, match=">= 1 byte"):
        ByteBudget(0)
